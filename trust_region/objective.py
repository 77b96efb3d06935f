"""Clipped surrogates with a KL penalty (TeamTR eq. 10, SAT section B.4).

Message level (TeamTR, SAT): per message m with token log-ratios l_u = log pi_new - log pi_cur,
    u(m) = sum_u l_u,   w = exp(u)  (product of the message's token ratios, no length normalisation),
    obj(m) = weight(m) * min(w A, exp(clip(u, log(1 - eps), log(1 + eps))) A),
the PPO clip applied in log space as in SAT's formula (identical to clip(w, 1-eps, 1+eps)).
Loss = -mean_m obj(m) + beta * mean_m KL_m, KL_m the token-decomposed per-message KL estimate.

Token level (PPO/GRPO style): per token r_u = exp(l_u),
    obj_u = weight(m) * min(r_u A, clip(r_u, 1-eps, 1+eps) A), averaged over all unmasked tokens
of the minibatch (token-mean), same KL penalty.

Shapes: logp_new, logp_cur, mask (M, T); advantages, weights (M,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from trust_region.kl import LOG_RATIO_CLAMP, Direction, Estimator, message_kl

RatioLevel = Literal["message", "token"]


@dataclass
class ObjectiveTerms:
    """Pieces of one loss evaluation. ``loss`` carries the graph; the others are detached floats.

    - ``surrogate``: mean_m obj(m) (the clipped, weighted objective, before the penalty);
    - ``kl_penalty``: mean_m KL_m (direction/estimator of the config), before multiplying by beta;
    - ``clip_fraction``: fraction of messages (message level) or tokens (token level) whose ratio
      lies outside [1 - eps, 1 + eps].
    """

    loss: Tensor
    surrogate: float
    kl_penalty: float
    clip_fraction: float


def message_log_ratio(logp_new: Tensor, logp_cur: Tensor, mask: Tensor) -> Tensor:
    """u (M,) = sum over the message's tokens of log pi_new - log pi_cur."""
    diff = torch.where(mask, logp_new - logp_cur, torch.zeros_like(logp_new))
    return diff.sum(dim=1)


def message_ratio(logp_new: Tensor, logp_cur: Tensor, mask: Tensor) -> Tensor:
    """w (M,) = exp(u) = product of the message's token ratios (u clamped to +-20 for overflow)."""
    return torch.exp(message_log_ratio(logp_new, logp_cur, mask).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def clipped_message_objective(
    logp_new: Tensor, logp_cur: Tensor, mask: Tensor, advantages: Tensor, clip_eps: float, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-message clipped objective (M,) and a (M,) bool "ratio was clipped" flag.

    obj = weight * min(exp(u) A, exp(clip(u, log(1-eps), log(1+eps))) A).
    """
    u = message_log_ratio(logp_new, logp_cur, mask)
    lo, hi = math.log(1.0 - clip_eps) if clip_eps < 1 else -math.inf, math.log(1.0 + clip_eps)
    w = torch.exp(u.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    w_clip = torch.exp(u.clamp(lo, hi).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    a = advantages.to(w.dtype)
    obj = torch.minimum(w * a, w_clip * a)
    if weights is not None:
        obj = obj * weights.to(obj.dtype)
    clipped = (u < lo) | (u > hi)
    return obj, clipped.detach()


def clipped_token_objective(
    logp_new: Tensor, logp_cur: Tensor, mask: Tensor, advantages: Tensor, clip_eps: float, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-token clipped objective (M, T) (0 on padding) and a (M, T) bool clipped flag."""
    lr = torch.where(mask, logp_new - logp_cur, torch.zeros_like(logp_new))
    lr = lr.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    r = torch.exp(lr)
    r_clip = r.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    a = advantages.to(r.dtype)[:, None]
    obj = torch.minimum(r * a, r_clip * a)
    if weights is not None:
        obj = obj * weights.to(obj.dtype)[:, None]
    obj = torch.where(mask, obj, torch.zeros_like(obj))
    clipped = ((r < 1.0 - clip_eps) | (r > 1.0 + clip_eps)) & mask
    return obj, clipped.detach()


def surrogate_loss(
    logp_new: Tensor,
    logp_cur: Tensor,
    mask: Tensor,
    advantages: Tensor,
    *,
    clip_eps: float,
    beta: float,
    ratio_level: RatioLevel = "message",
    weights: Tensor | None = None,
    kl_estimator: Estimator = "k3",
    kl_direction: Direction = "reverse",
) -> ObjectiveTerms:
    """Loss to *minimise*: -(clipped surrogate) + beta * mean per-message KL estimate.

    ``logp_cur`` is the behaviour (update-start) log-prob, treated as a constant. The KL penalty
    estimates KL in ``kl_direction`` ("reverse" = KL(pi_cur || pi_new), TeamTR; "forward" =
    KL(pi_new || pi_cur), SAT's paper) with the token-decomposed ``kl_estimator`` from pi_cur samples.
    """
    logp_cur = logp_cur.detach()
    if ratio_level == "message":
        obj, clipped = clipped_message_objective(logp_new, logp_cur, mask, advantages, clip_eps, weights)
        surrogate = obj.mean()
        clip_fraction = clipped.to(torch.float64).mean()
    elif ratio_level == "token":
        obj, clipped = clipped_token_objective(logp_new, logp_cur, mask, advantages, clip_eps, weights)
        n_tok = mask.sum().clamp_min(1)
        surrogate = obj.sum() / n_tok
        clip_fraction = clipped.sum().to(torch.float64) / n_tok
    else:
        raise ValueError(f"ratio_level must be 'message' or 'token', got {ratio_level!r}")
    kl = message_kl(logp_new, logp_cur, mask, kl_estimator, kl_direction).mean()
    loss = -surrogate + beta * kl if beta != 0 else -surrogate
    return ObjectiveTerms(
        loss=loss,
        surrogate=float(surrogate.detach()),
        kl_penalty=float(kl.detach()),
        clip_fraction=float(clip_fraction),
    )
