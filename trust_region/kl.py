"""The KL of an update: exact per-context KL (the default monitor) and sampled estimators.

Exact per-context KL (``"exact"``, the default trust-region monitor). An agent that can give its
whole next-token (next-action) distribution at every position of its messages offers
``exact_kl`` (:class:`trust_region.interfaces.ExactKLPolicy`); at each visited context the KL
between pi_cur and pi_new over the full vocabulary (action set) is computed exactly by
:func:`categorical_kl` and summed over the message's positions (token decomposition). It is never
negative, and exact at every visited context: the only error left is which contexts were visited.

Sampled estimators (options, and the only choice for an agent without full distributions),
from samples of the *behaviour* (current) policy, token-decomposed.

Notation: samples x ~ p = pi_cur (the policy that generated the batch, or the agent at update
start), q = pi_new (the policy being trained); per token l = log q(x) - log p(x), r = exp(l).

Reverse KL(p || q) = KL(pi_cur || pi_new) (TeamTR eq. 11, Lemma 3.2), estimated per token by
- k1 = -l                    unbiased, can be negative;
- k2 = l^2 / 2               biased (second-order accurate), >= 0;
- k3 = (r - 1) - l           unbiased, >= 0 (Schulman's estimator; SAT's code; verl low_var_kl).

Forward KL(q || p) = KL(pi_new || pi_cur) (SAT's trust region and penalty), estimated from the
*same* p-samples with the importance weight r, since KL(q||p) = E_p[r l]:
- k1 = r l                   unbiased, can be negative;
- k2 = r l^2 / 2             biased (the importance-weighted k2), >= 0;
- k3 = r l - (r - 1)         unbiased (E_p[r - 1] = 0), >= 0.

For a message (a token sequence) the *token-decomposed* estimate is the sum over its tokens: with
the reverse direction, sum_u k(x_u) is an estimate of the sequence-level KL(pi_cur(.|s) ||
pi_new(.|s)) because both the sample and the prefix come from pi_cur (chain rule). In the forward
direction the token sum estimates sum_u E_{x_<u ~ pi_cur}[KL_u(pi_new || pi_cur)], i.e. each
token's forward KL under pi_cur's prefix distribution; it is the sequence-level forward KL exactly
when messages are one token long (the tabular engine) and an approximation otherwise.

Shapes: (M, T) per token, mask (M, T) bool, (M,) per message.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Estimator = Literal["k1", "k2", "k3"]
Direction = Literal["reverse", "forward"]
KL_ESTIMATORS = ("k1", "k2", "k3")
#: deprecated name of :data:`KL_ESTIMATORS` (kept importable for now)
ESTIMATORS = KL_ESTIMATORS
DIRECTIONS = ("reverse", "forward")

#: trust-region monitors: exact per-context KL, or one of the sampled estimators
MONITORS = ("exact",) + KL_ESTIMATORS

#: log-ratios are clamped to this magnitude before exponentiation (avoids inf in r = exp(l))
LOG_RATIO_CLAMP = 20.0


def _log_ratio(logp_new: Tensor, logp_cur: Tensor) -> Tensor:
    return (logp_new - logp_cur).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def reverse_kl_tokens(logp_new: Tensor, logp_cur: Tensor, estimator: Estimator = "k3") -> Tensor:
    """Per-token estimate (M, T) of the REVERSE KL(pi_cur || pi_new) from pi_cur samples.

    ``logp_new``/``logp_cur``: (M, T) log-probs of the sampled tokens under pi_new / pi_cur.
    """
    lr = _log_ratio(logp_new, logp_cur)
    if estimator == "k1":
        return -lr
    if estimator == "k2":
        return 0.5 * lr**2
    if estimator == "k3":
        return torch.expm1(lr) - lr
    raise ValueError(f"KL estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def forward_kl_tokens(logp_new: Tensor, logp_cur: Tensor, estimator: Estimator = "k3") -> Tensor:
    """Per-token estimate (M, T) of the FORWARD KL(pi_new || pi_cur) from pi_cur samples
    (importance weight r = pi_new / pi_cur)."""
    lr = _log_ratio(logp_new, logp_cur)
    r = torch.exp(lr)
    if estimator == "k1":
        return r * lr
    if estimator == "k2":
        return 0.5 * r * lr**2
    if estimator == "k3":
        return r * lr - torch.expm1(lr)
    raise ValueError(f"KL estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def kl_tokens(
    logp_new: Tensor, logp_cur: Tensor, estimator: Estimator = "k3", direction: Direction = "reverse"
) -> Tensor:
    """Per-token KL estimate (M, T) in the named ``direction`` ("reverse" = KL(pi_cur||pi_new),
    "forward" = KL(pi_new||pi_cur)), always from pi_cur samples."""
    if direction == "reverse":
        return reverse_kl_tokens(logp_new, logp_cur, estimator)
    if direction == "forward":
        return forward_kl_tokens(logp_new, logp_cur, estimator)
    raise ValueError(f"KL direction must be one of {DIRECTIONS}, got {direction!r}")


def per_message(token_values: Tensor, mask: Tensor, reduce: Literal["sum", "mean"] = "sum") -> Tensor:
    """Token-decomposed per-message value (M,): sum (default; TeamTR eq. 11) or mean (SAT's code)
    of ``token_values`` (M, T) over the message's unmasked tokens."""
    masked = torch.where(mask, token_values, torch.zeros_like(token_values))
    total = masked.sum(dim=1)
    if reduce == "sum":
        return total
    if reduce == "mean":
        return total / mask.sum(dim=1).clamp_min(1).to(total.dtype)
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


def message_kl(
    logp_new: Tensor,
    logp_cur: Tensor,
    mask: Tensor,
    estimator: Estimator = "k3",
    direction: Direction = "reverse",
    reduce: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """Per-message KL estimate (M,) in ``direction`` from pi_cur samples (token-decomposed)."""
    return per_message(kl_tokens(logp_new, logp_cur, estimator, direction), mask, reduce)


def quantile(values: Tensor, q: float) -> Tensor:
    """Empirical q-quantile of (M,) values: the smallest sample value with at least a fraction q
    of the samples at or below it (``torch.quantile(..., interpolation="higher")``), so the
    quantile is always an observed per-message KL (conservative for q close to 1)."""
    if values.numel() == 0:
        raise ValueError("quantile of an empty tensor")
    return torch.quantile(values.to(torch.float64), q, interpolation="higher")


def kl_statistic(per_message_kl: Tensor, statistic: Literal["mean", "quantile"], q: float = 0.99) -> Tensor:
    """Reduce per-message KL (M,) over messages: the mean (TeamTR eq. 11) or the q = (1 - alpha)
    quantile (SAT's backtracking rule). The direction is whatever produced ``per_message_kl``."""
    if statistic == "mean":
        return per_message_kl.to(torch.float64).mean()
    if statistic == "quantile":
        return quantile(per_message_kl, q)
    raise ValueError(f"statistic must be 'mean' or 'quantile', got {statistic!r}")


def categorical_reverse_kl(p_cur: Tensor, p_new: Tensor) -> Tensor:
    """Exact REVERSE KL(p_cur || p_new) of categorical distributions (..., A) -> (...)."""
    return torch.special.xlogy(p_cur, p_cur).sum(-1) - torch.special.xlogy(p_cur, p_new).sum(-1)


def categorical_forward_kl(p_cur: Tensor, p_new: Tensor) -> Tensor:
    """Exact FORWARD KL(p_new || p_cur) of categorical distributions (..., A) -> (...)."""
    return categorical_reverse_kl(p_new, p_cur)


def categorical_kl(logp_cur: Tensor, logp_new: Tensor, direction: Direction = "reverse") -> Tensor:
    """Exact KL of categorical distributions given as log-probabilities (..., V) -> (...) float64.

    ``"reverse"``: KL(pi_cur || pi_new) = sum_v p_cur (log p_cur - log p_new); ``"forward"``:
    KL(pi_new || pi_cur). Terms with zero weight are 0 (also against -inf). The result is clamped
    at 0 only to remove float rounding of a quantity that is mathematically >= 0.
    """
    if direction == "reverse":
        lp, lq = logp_cur.to(torch.float64), logp_new.to(torch.float64)
    elif direction == "forward":
        lp, lq = logp_new.to(torch.float64), logp_cur.to(torch.float64)
    else:
        raise ValueError(f"KL direction must be one of {DIRECTIONS}, got {direction!r}")
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0)
