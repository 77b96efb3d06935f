"""Bounded group-normalised advantages (TeamTR eq. 9) and GAE with truncated traces (SAT).

Two estimators, both returning one advantage per *message* (M,) that
:func:`broadcast_to_tokens` spreads over the message's tokens:

``estimator="group"`` (TeamTR, eq. 9). The team is graded once per trajectory; ``batch.returns``
holds that sequence-level return R_g on every message of trajectory g. Within each prompt group
(``batch.group``) of G trajectories

    mu = (1/G) sum_g R_g,   sigma = sqrt((1/G) sum_g (R_g - mu)^2 + eps),
    A_g = clip((R_g - mu) / sigma, -A_clip, A_clip),

population variance (divisor G), ``eps`` *inside* the square root, and A_g broadcast to every
message (hence every token) of trajectory g.

``estimator="gae"`` (SAT, section B.4). Per-message rewards ``batch.reward`` r_t (t = position of
the message in its trajectory, messages sorted by turn) and optional values V(s_t) (default V = 0:
the project has no critic), terminal value 0:

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t),
    A_t     = delta_t + gamma lambda c_{t+1} A_{t+1}     (A after the last message = 0),

i.e. A_t = sum_l (gamma lambda)^l (prod_{m=1..l} c_{t+m}) delta_{t+l}, the Retrace/V-trace-like form
of papers.md B.4 (the paper gives no exact form), with truncated importance weights
c_t = min(1, rho_t); rho_t is the ratio (new / behaviour) of the message at t, which differs from 1
only for messages of agents already updated in the stage. For the agent being updated, the
trajectory's aggregate is the *sum* of A_t over that agent's messages in the trajectory (SAT's code
sums token-level GAE to sequence level), which is then group-normalised and clipped exactly as
above (over the trajectories of the group in which the agent speaks) and broadcast to that agent's
messages.

Shapes: M messages, T tokens per message, K trajectories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from trust_region.batch import MessageBatch

ADVANTAGE_ESTIMATORS = ("group", "gae")
#: deprecated name of :data:`ADVANTAGE_ESTIMATORS` (kept importable for now)
ESTIMATORS = ADVANTAGE_ESTIMATORS
NORMALIZATIONS = ("group", "baseline", "none")


@dataclass(frozen=True)
class AdvantageConfig:
    """How advantages are estimated.

    - ``estimator``: ``"group"`` (sequence-level return, TeamTR eq. 9) or ``"gae"`` (SAT).
    - ``normalization``: ``"group"`` ((R - mu) / sqrt(var + eps)), ``"baseline"`` (R - mu, the
      "without group normalisation" ablation) or ``"none"`` (raw R).
    - ``eps``: added to the population variance *inside* the square root; > 0.
    - ``a_clip``: symmetric clip of the advantage; ``math.inf`` disables it (the "no hard clip"
      ablation). TeamTR does not report it; SAT uses 5.
    - ``gamma``, ``lam``: per-turn discount and trace parameter of the GAE estimator.
    """

    estimator: Literal["group", "gae"] = field(default="group", metadata={
        "help": "advantage estimator: 'group' (sequence-level return, TeamTR eq. 9) or 'gae' (SAT)"})
    normalization: Literal["group", "baseline", "none"] = field(default="group", metadata={
        "help": "'group': (R - mu) / sqrt(var + eps); 'baseline': R - mu; 'none': raw R"})
    eps: float = field(default=1e-6, metadata={"help": "added to the group variance inside the square root (> 0)"})
    a_clip: float = field(default=5.0, metadata={
        "help": "symmetric advantage clip A_clip (> 0; inf disables it); also A_max of the certificate by default"})
    gamma: float = field(default=1.0, metadata={"help": "per-turn discount of the GAE estimator, in [0, 1]"})
    lam: float = field(default=0.95, metadata={"help": "trace parameter lambda of the GAE estimator, in [0, 1]"})

    def __post_init__(self) -> None:
        if self.estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"AdvantageConfig.estimator must be one of {ADVANTAGE_ESTIMATORS}, got {self.estimator!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"AdvantageConfig.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"AdvantageConfig.eps must be a finite number > 0, got {self.eps}")
        if not self.a_clip > 0:
            raise ValueError(f"AdvantageConfig.a_clip must be > 0 (math.inf disables clipping), got {self.a_clip}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"AdvantageConfig.gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"AdvantageConfig.lam must be in [0, 1], got {self.lam}")


@dataclass(frozen=True)
class Advantages:
    """Per-message advantages for one update (all (M,) float32, aligned with the batch rows).

    - ``value``: the bounded advantage the objective uses (clipped).
    - ``unclipped``: the same before the A_clip clip (for zeta_clip).
    - ``raw_loo``: the unnormalised leave-one-out estimate R_g - mean_{g' != g} R_g' of the
      trajectory's advantage in return units (for zeta_norm); NaN where the group has one member.
    - ``valid``: (M,) bool, False for messages the estimator gives no advantage (in GAE mode,
      messages of other agents than the one being updated).
    """

    value: Tensor
    unclipped: Tensor
    raw_loo: Tensor
    valid: Tensor

    def select(self, index: Tensor) -> "Advantages":
        return Advantages(self.value[index], self.unclipped[index], self.raw_loo[index], self.valid[index])


# ---------------------------------------------------------------------------- helpers
def trajectory_index(batch: MessageBatch) -> tuple[Tensor, Tensor]:
    """Dense trajectory ids: returns (ids (K,) of the unique trajectories, inverse (M,) in [0, K))."""
    ids, inverse = torch.unique(batch.trajectory, return_inverse=True)
    return ids, inverse


def check_sorted(batch: MessageBatch) -> None:
    """Raise ValueError unless the messages are sorted by (trajectory, turn) with unique turns."""
    if len(batch) < 2:
        return
    tr, tu = batch.trajectory, batch.turn
    same = tr[1:] == tr[:-1]
    ok = (tr[1:] > tr[:-1]) | (same & (tu[1:] > tu[:-1]))
    if not bool(ok.all()):
        raise ValueError("MessageBatch must be sorted by (trajectory, turn) with increasing turns")


def _segment_mean(values: Tensor, seg: Tensor, n_seg: int) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` (K,) per segment id ``seg`` (K,) in [0, n_seg); returns (means, counts)."""
    counts = torch.zeros(n_seg, dtype=values.dtype).index_add_(0, seg, torch.ones_like(values))
    sums = torch.zeros(n_seg, dtype=values.dtype).index_add_(0, seg, values)
    return sums / counts.clamp_min(1), counts


def group_normalize(
    values: Tensor, groups: Tensor, normalization: str, eps: float, a_clip: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Group-normalise per-trajectory values.

    Args: ``values`` (K,) float64 per-trajectory returns (or aggregated advantages), ``groups``
    (K,) int64 group ids.
    Returns (clipped (K,), unclipped (K,), leave-one-out raw advantage (K,), NaN for singleton
    groups). Population variance (divisor G) with ``eps`` inside the square root.
    """
    g_ids, g_inv = torch.unique(groups, return_inverse=True)
    n_g = int(g_ids.numel())
    mean, counts = _segment_mean(values, g_inv, n_g)
    centred = values - mean[g_inv]
    var, _ = _segment_mean(centred**2, g_inv, n_g)
    if normalization == "group":
        unclipped = centred / torch.sqrt(var[g_inv] + eps)
    elif normalization == "baseline":
        unclipped = centred
    elif normalization == "none":
        unclipped = values.clone()
    else:
        raise ValueError(f"unknown normalization {normalization!r}")
    clipped = unclipped.clamp(-a_clip, a_clip) if math.isfinite(a_clip) else unclipped.clone()
    n = counts[g_inv]
    sums = mean[g_inv] * n
    loo = torch.where(n > 1, values - (sums - values) / (n - 1).clamp_min(1), torch.full_like(values, math.nan))
    return clipped, unclipped, loo


def broadcast_to_tokens(advantages: Tensor, mask: Tensor) -> Tensor:
    """(M,) per-message advantages -> (M, T) per-token advantages, 0 on padding."""
    return advantages[:, None].to(torch.float32) * mask.to(torch.float32)


# ---------------------------------------------------------------------------- estimators
def group_advantages(batch: MessageBatch, config: AdvantageConfig) -> Advantages:
    """TeamTR eq. (9): sequence-level returns, group-normalised, clipped, broadcast to messages.

    Every message of trajectory g gets A_g (agent filtering is the caller's ``select``).
    """
    _, inv = trajectory_index(batch)
    k = int(inv.max()) + 1 if len(batch) else 0
    ret = torch.zeros(k, dtype=torch.float64).index_put_((inv,), batch.returns.to(torch.float64))
    if not torch.equal(ret[inv], batch.returns.to(torch.float64)):
        raise ValueError("MessageBatch.returns must be the same on every message of a trajectory")
    grp = torch.zeros(k, dtype=torch.int64).index_put_((inv,), batch.group)
    clipped, unclipped, loo = group_normalize(ret, grp, config.normalization, config.eps, config.a_clip)
    valid = torch.ones(len(batch), dtype=torch.bool)
    return Advantages(
        clipped[inv].to(torch.float32), unclipped[inv].to(torch.float32), loo[inv].to(torch.float32), valid
    )


def truncated_gae(
    batch: MessageBatch,
    gamma: float,
    lam: float,
    log_rho: Tensor | None = None,
    values: Tensor | None = None,
) -> Tensor:
    """Per-message GAE(lambda) with truncated traces c_t = min(1, exp(log_rho_t)).

    A_t = delta_t + gamma * lam * c_{t+1} * A_{t+1}, delta_t = r_t + gamma V_{t+1} - V_t,
    V after a trajectory's last message = 0. ``log_rho`` (M,) (default 0, i.e. c = 1: plain GAE),
    ``values`` (M,) V(s_t) of each message's context (default 0: no critic). Returns (M,) float64.
    Requires messages sorted by (trajectory, turn).
    """
    check_sorted(batch)
    m = len(batch)
    if m == 0:
        return torch.zeros(0, dtype=torch.float64)
    r = batch.reward.detach().cpu().to(torch.float64).numpy()
    v = np.zeros(m) if values is None else values.detach().cpu().to(torch.float64).numpy()
    c = np.ones(m) if log_rho is None else np.minimum(np.exp(log_rho.detach().cpu().to(torch.float64).numpy()), 1.0)
    traj = batch.trajectory.cpu().numpy()
    # dense layout (K trajectories, L positions): position = row index - first row of the trajectory
    starts = np.flatnonzero(np.r_[True, traj[1:] != traj[:-1]])
    k_id = np.cumsum(np.r_[False, traj[1:] != traj[:-1]])
    pos = np.arange(m) - starts[k_id]
    k, length = starts.size, int(pos.max()) + 1
    R, V, C = (np.zeros((k, length + 1)) for _ in range(3))
    R[k_id, pos], V[k_id, pos], C[k_id, pos] = r, v, c
    A = np.zeros((k, length + 1))  # column L and positions past a trajectory's end stay 0
    for t in range(length - 1, -1, -1):
        A[:, t] = R[:, t] + gamma * V[:, t + 1] - V[:, t] + gamma * lam * C[:, t + 1] * A[:, t + 1]
    return torch.from_numpy(A[k_id, pos].copy())


def gae_advantages(
    batch: MessageBatch,
    agent: int,
    config: AdvantageConfig,
    log_rho: Tensor | None = None,
    values: Tensor | None = None,
) -> Advantages:
    """SAT-style advantages for ``agent``: truncated GAE per message, summed over the agent's
    messages of each trajectory, group-normalised over the trajectories of the group in which the
    agent speaks, clipped, broadcast to the agent's messages (others get ``valid=False``, value 0).
    """
    per_msg = truncated_gae(batch, config.gamma, config.lam, log_rho=log_rho, values=values)
    own = batch.agent == agent
    m = len(batch)
    out_v = torch.zeros(m, dtype=torch.float32)
    out_u = torch.zeros(m, dtype=torch.float32)
    out_l = torch.full((m,), math.nan, dtype=torch.float32)
    if not bool(own.any()):
        return Advantages(out_v, out_u, out_l, own.clone())
    tr_ids, inv = torch.unique(batch.trajectory[own], return_inverse=True)
    k = int(tr_ids.numel())
    agg = torch.zeros(k, dtype=torch.float64).index_add_(0, inv, per_msg[own])
    grp = torch.zeros(k, dtype=torch.int64).index_put_((inv,), batch.group[own])
    clipped, unclipped, loo = group_normalize(agg, grp, config.normalization, config.eps, config.a_clip)
    out_v[own] = clipped[inv].to(torch.float32)
    out_u[own] = unclipped[inv].to(torch.float32)
    out_l[own] = loo[inv].to(torch.float32)
    return Advantages(out_v, out_u, out_l, own.clone())


def compute_advantages(
    batch: MessageBatch,
    agent: int,
    config: AdvantageConfig,
    log_rho: Tensor | None = None,
    values: Tensor | None = None,
) -> Advantages:
    """Advantages (M,) of every message of ``batch`` for an update of ``agent`` (dispatch on
    ``config.estimator``; ``log_rho`` is used only by ``"gae"``)."""
    if config.estimator == "group":
        return group_advantages(batch, config)
    return gae_advantages(batch, agent, config, log_rho=log_rho, values=values)
