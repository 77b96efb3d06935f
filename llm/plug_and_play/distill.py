"""Alignment of a replacement model to the incumbent's trust region (plug-and-play step 4-5):
exact token KL on team contexts, forward distillation with early stopping, weight noise, and the
shared-tokenizer check. Shapes: R messages, L_r tokens of message r, V the vocabulary."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from llm.config.errors import ConfigError
from llm.plug_and_play.config import DistillSection
from llm.tokens import message_logits, message_rows


class TokenizerMismatchError(ConfigError):
    """The replacement's tokenizer differs from the incumbent's: token-level KL, distillation on
    token distributions and logit mixing are undefined across vocabularies."""


def check_shared_tokenizer(incumbent: Any, replacement: Any, method: str) -> None:
    """Raise :class:`TokenizerMismatchError` when the two tokenizers' vocabularies (or EOS) differ
    and ``method`` works on token distributions (``distill``, ``mix``)."""
    if method not in ("distill", "mix"):
        return
    va, vb = incumbent.get_vocab(), replacement.get_vocab()
    if va != vb or incumbent.eos_token_id != replacement.eos_token_id:
        only_a = len(set(va) - set(vb))
        only_b = len(set(vb) - set(va))
        moved = sum(1 for k in set(va) & set(vb) if va[k] != vb[k])
        raise TokenizerMismatchError(
            f"method {method!r} compares next-token distributions and needs the incumbent's tokenizer, but the "
            f"replacement's differs (vocab sizes {len(va)} vs {len(vb)}; {only_a} tokens only in the incumbent's, "
            f"{only_b} only in the replacement's, {moved} with other ids; EOS {incumbent.eos_token_id} vs "
            f"{replacement.eos_token_id}). Use a replacement of the same tokenizer family (e.g. Qwen2.5 -> Qwen3) "
            "or method: direct")


@torch.no_grad()
def perturb_weights(model: torch.nn.Module, std: float, seed: int) -> None:
    """Add N(0, (std * sd(W))^2) noise to every floating-point parameter W in place (tied weights once)."""
    if std <= 0:
        return
    g = torch.Generator().manual_seed(int(seed))
    for p in model.parameters():
        if p.is_floating_point() and p.numel() > 1:
            scale = float(p.detach().float().std())
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * (std * scale)
            p.add_(noise.to(p.device, p.dtype))


def message_logprobs(model: torch.nn.Module, contexts: Sequence[Tensor], messages: Sequence[Tensor],
                     temperature: float, pad_id: int, vocab: int | None = None) -> list[Tensor]:
    """Full next-token log-probabilities at every message position: one (L_r, V) tensor per row
    (log_softmax(logits / T), V cut to ``vocab``), for messages teacher-forced after their contexts
    (:func:`llm.tokens.message_logits`). Differentiable when grad is enabled."""
    logits, _, lengths = message_logits(model, contexts, messages, pad_id)
    t_max = max(lengths)
    if vocab is not None:
        logits = logits[..., :vocab]
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (R, t_max, V)
    return [logp[r, t_max - n:] for r, n in enumerate(lengths)]


def _token_kls(teacher: list[Tensor], student: list[Tensor]) -> list[Tensor]:
    """Per row, KL(teacher || student) at every position (L_r,)."""
    return [(t.exp() * (t - s)).sum(-1) for t, s in zip(teacher, student)]


@torch.no_grad()
def measure_kl(incumbent: torch.nn.Module, new: torch.nn.Module, batch, temperature: float, pad_id: int,
               micro_batch: int = 4) -> dict[str, float]:
    """Exact token KL(incumbent || new) on the messages of ``batch`` (all rows): ``token_mean``
    (mean over tokens), ``message_sum`` (per-message sum over tokens, mean over messages), ``token_max``."""
    ctx, msg = message_rows(batch)
    vocab = _shared_vocab(incumbent, new)
    per_msg: list[Tensor] = []
    for s in range(0, len(msg), micro_batch):
        c, m = ctx[s:s + micro_batch], msg[s:s + micro_batch]
        t = message_logprobs(incumbent, c, m, temperature, pad_id, vocab)
        q = message_logprobs(new, c, m, temperature, pad_id, vocab)
        per_msg += [k.double().cpu() for k in _token_kls(t, q)]
    allk = torch.cat(per_msg)
    return {"token_mean": float(allk.mean()), "message_sum": float(torch.stack([k.sum() for k in per_msg]).mean()),
            "token_max": float(allk.max()), "messages": len(per_msg), "tokens": int(allk.numel())}


def _shared_vocab(a: torch.nn.Module, b: torch.nn.Module) -> int:
    return min(a.get_output_embeddings().weight.shape[0], b.get_output_embeddings().weight.shape[0])


def distill(new: torch.nn.Module, incumbent: torch.nn.Module, train_batch, monitor_batch, cfg: DistillSection,
            delta0: float, reduction: str, temperature: float, pad_id: int, seed: int = 0,
            progress: bool = False) -> list[dict[str, float]]:
    """Forward distillation (teacher = incumbent) of ``new`` in place until the monitored KL
    (``reduction`` of :func:`measure_kl` on ``monitor_batch``) is <= delta0 or ``cfg.max_steps``.
    Returns the history: one row per measurement (step 0 = before any step).

    Early stopping on the monitored messages: ``new`` ends with the weights of the measurement with
    the lowest monitored KL (:func:`best_row` of the history; the last one when delta0 was reached).
    With few training messages distillation overfits them and the monitored KL can rise again."""
    ctx, msg = message_rows(train_batch)
    vocab = _shared_vocab(incumbent, new)
    params = [p for p in new.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(seed)
    history = [{"step": 0, "loss": math.nan, **measure_kl(incumbent, new, monitor_batch, temperature, pad_id)}]
    best_value, best_state = history[0][reduction], _trainable_copy(new)
    bar = tqdm(total=cfg.max_steps, desc="distill", unit="step", disable=not progress)
    step = 0
    was = new.training
    try:
        while history[-1][reduction] > delta0 and step < cfg.max_steps:
            step += 1
            idx = rng.choice(len(msg), size=min(cfg.batch_size, len(msg)), replace=False)
            c, m = [ctx[i] for i in idx], [msg[i] for i in idx]
            with torch.no_grad():
                teacher = message_logprobs(incumbent, c, m, temperature, pad_id, vocab)
            new.train()
            student = message_logprobs(new, c, m, temperature, pad_id, vocab)
            new.eval()
            loss = torch.cat(_token_kls([t.to(s.device) for t, s in zip(teacher, student)], student)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                history.append({"step": step, "loss": float(loss.detach()),
                                **measure_kl(incumbent, new, monitor_batch, temperature, pad_id)})
                if history[-1][reduction] < best_value:
                    best_value, best_state = history[-1][reduction], _trainable_copy(new)
    finally:
        new.train(was)
        bar.close()
    if history[-1][reduction] > best_value:  # the last measurement is not the best: go back to it
        with torch.no_grad():
            for p, saved in zip((p for p in new.parameters() if p.requires_grad), best_state):
                p.copy_(saved.to(p.device))
    return history


def best_row(history: list[dict[str, float]], reduction: str) -> dict[str, float]:
    """The first measurement of a :func:`distill` history with the lowest monitored KL."""
    return min(history, key=lambda row: row[reduction])


def _trainable_copy(model: torch.nn.Module) -> list[torch.Tensor]:
    """CPU copies of the trainable parameters (the early-stopping snapshot)."""
    return [p.detach().to("cpu", copy=True) for p in model.parameters() if p.requires_grad]
