"""What crosses a process boundary in the Ray placement: message batches without their payload.

A :class:`trust_region.batch.MessageBatch` travels as a plain dict of its tensors (token ids, masks,
log-probs, rewards; no texts, no weights). ``payload`` (texts, problems) stays with the driver.

Tensors cross as numpy arrays (:func:`to_wire` / :func:`from_wire`): Ray moves them for about a
third of the cost of ``torch.Tensor`` objects (one call with a 32 x 24 message batch: 1.64 ms
against 5.10 ms; ``python -m experiments.bench_placement`` prints both). Values are unchanged bit
for bit; a dtype numpy lacks (bfloat16) travels as the tensor itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trust_region.batch import MessageBatch

TENSOR_FIELDS = tuple(f.name for f in dataclasses.fields(MessageBatch) if f.name != "payload")


_NO_NUMPY = (torch.bfloat16,)


def to_wire(t: Tensor) -> np.ndarray | Tensor:
    """A tensor as it crosses a process boundary: a CPU numpy array (same dtype and values)."""
    t = t.detach().cpu().contiguous()
    return t if t.dtype in _NO_NUMPY else t.numpy()


def from_wire(x: np.ndarray | Tensor) -> Tensor:
    """Inverse of :func:`to_wire` (a writable copy: Ray hands out read-only views)."""
    return x if isinstance(x, Tensor) else torch.from_numpy(np.array(x, copy=True))


def batch_to_wire(batch: MessageBatch) -> dict[str, Any]:
    """The batch's tensors as :func:`to_wire` arrays, payload dropped."""
    return {k: to_wire(getattr(batch, k)) for k in TENSOR_FIELDS}


def batch_from_wire(data: dict[str, Any]) -> MessageBatch:
    """Inverse of :func:`batch_to_wire` (``payload=None``)."""
    return MessageBatch(**{k: from_wire(data[k]) for k in TENSOR_FIELDS}, payload=None)


def rank_rows(n_rows: int, world_size: int, rank: int) -> tuple[list[int], int]:
    """The rows rank ``rank`` of an FSDP group computes: (rows, n_real).

    Rows are cut into ``world_size`` contiguous pieces of k = ceil(n_rows / world_size); a short
    piece is padded with copies of row 0 up to k rows, so every rank runs the same number of forward
    passes (FSDP's collectives need that). The first ``n_real`` entries are the rank's own rows; the
    padding rows' results are dropped (and get a zero gradient).
    """
    if n_rows < 1:
        raise ValueError("rank_rows needs at least one row")
    k = -(-n_rows // world_size)
    own = list(range(rank * k, min((rank + 1) * k, n_rows)))
    return own + [0] * (k - len(own)), len(own)


def zeros_like_rows(n_rows: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.zeros((n_rows, width), dtype=dtype)
