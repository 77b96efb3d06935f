"""Token-level tensors of a causal LM, written once: left padding and teacher-forced logits.

Shapes: R rows (messages), W padded width, T the longest message of the rows, V the vocabulary.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def left_pad(seqs: Sequence[Sequence[int] | Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """(input ids (R, W), attention mask (R, W)): every sequence right aligned, ``pad_id`` before it."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s):
            ids[r, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
            attention[r, width - len(s):] = 1
    return ids, attention


def position_ids(attention: Tensor) -> Tensor:
    """Positions (R, W) counting only attended tokens (0 on the left padding)."""
    return (attention.cumsum(dim=1) - 1).clamp(min=0)


def message_logits(model: torch.nn.Module, contexts: Sequence[Tensor], messages: Sequence[Tensor],
                   pad_id: int) -> tuple[Tensor, Tensor, list[int]]:
    """Teacher-force ``context ++ message`` per row; returns ``(logits, targets, lengths)``:

    - ``logits`` (R, T, V): ``logits[r, k]`` predicts ``targets[r, k]``;
    - ``targets`` (R, T): the last T tokens of each padded sequence; row r's message is its last
      ``lengths[r]`` positions (the sequences are left padded so every message ends at the end).

    The model is asked for the last T + 1 positions only (``logits_to_keep``). Differentiable when
    grad is enabled.
    """
    device = next(model.parameters()).device
    lengths = [len(m) for m in messages]
    t = max(lengths)
    ids, attention = left_pad([torch.cat([c, m]) for c, m in zip(contexts, messages)], pad_id)
    ids, attention = ids.to(device), attention.to(device)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids(attention), use_cache=False,
                   logits_to_keep=t + 1).logits[:, :-1]
    return logits, ids[:, ids.shape[1] - t:], lengths


def message_rows(batch: object, rows: Sequence[int] | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """(contexts, messages) of ``rows`` of a :class:`trust_region.batch.MessageBatch`, unpadded."""
    idx = range(len(batch)) if rows is None else rows  # type: ignore[arg-type]
    ctx = [batch.context[i][batch.context_mask[i]] for i in idx]  # type: ignore[attr-defined]
    msg = [batch.tokens[i][batch.mask[i]] for i in idx]  # type: ignore[attr-defined]
    return ctx, msg
