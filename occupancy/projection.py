"""Exact trust-region steps on a tabular team (THEORY.md sections 3 and 5).

Shapes: S states, A actions; policies are team arrays (S, A) whose rows are owned by agents.

1. The KL-ball step (:func:`kl_ball_step`). On the rows of one agent (a bool mask (S,)),
   pi_eta(a | x) = pi(a | x) exp(eta D(x, a)) / Z_eta(x), with D a direction (S, A) (the advantage
   by default) and eta >= 0 chosen by a bracketing root search (Brent's method, i.e. safeguarded
   bisection) so that the update's KL equals ``delta``. Conventions:

   - ``"reverse"``: the occupancy-weighted reverse KL of TeamTR,
     sum_{x in X_j} d(x) KL(pi(.|x) || pi_eta(.|x)) (``weighting="team"``), or the same divided by
     d(X_j) (``weighting="agent"``, the expectation over the agent's own contexts, i.e. what a
     per-message LLM monitor estimates).
   - ``"forward_max"``: SAT's per-state maximum max_{x in X_j} KL(pi_eta(.|x) || pi(.|x)).

   Both are non-decreasing in eta. Per state, d/deta KL(pi || pi_eta) = E_{pi_eta} D - E_pi D and
   d/deta KL(pi_eta || pi) = eta Var_{pi_eta}(D). The reverse KL grows without bound unless D is
   constant on the support of pi ("flat" state). The forward KL saturates: as eta -> inf, pi_eta
   tends to pi restricted to argmax_a D(x, a), whose KL is -log pi(argmax set | x). When ``delta``
   is out of reach the step returns the eta -> inf limit and reports the KL it achieves
   (``saturated=True``); flat states are never moved.

   A step along D is the exact maximiser of sum_x w(x) E_{pi'} D(x, .) under an expected reverse
   KL constraint (TRPO/natural-gradient geometry) up to the choice of convention; here it is used
   as a family of exact trust-region moves of a given size.

2. The Stage-0 geometric-mixture projection (:func:`geometric_projection`, SAT eq. (18)-(19),
   TeamTR's trust-region alignment step): per state, pi_new proportional to
   pi_pre^{1/(1+lambda)} pi_cur^{lambda/(1+lambda)} with lambda(x) >= 0 the smallest value with
   KL(pi_new || pi_cur) <= delta_0 (lambda = 0 when pi_pre is already inside). This is the exact
   minimiser of KL(q || pi_pre) subject to KL(q || pi_cur) <= delta_0 (Lagrangian stationarity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import brentq

Convention = Literal["reverse", "forward_max"]
Weighting = Literal["team", "agent"]

_ETA_MAX = 1e12
_FLAT_TOL = 1e-12


@dataclass(frozen=True)
class StepResult:
    """Outcome of :func:`kl_ball_step`.

    - ``policy`` (S, A): the team policy after the step (rows outside the mask unchanged).
    - ``eta``: the step size (``inf`` for the saturated forward limit, 0 for a flat direction).
    - ``kl``: the KL achieved under the requested convention (equals ``delta`` unless saturated).
    - ``target``: the requested ``delta``.
    - ``saturated``: True when ``delta`` cannot be reached (forward KL bounded, or every weighted
      state flat); the returned policy is then the eta -> inf limit (or pi itself when flat).
    - ``flat``: bool (S,), the masked states where D is constant on the support of pi.
    """

    policy: np.ndarray
    eta: float
    kl: float
    target: float
    saturated: bool
    flat: np.ndarray


def logsumexp(x: np.ndarray, axis: int | None = None, keepdims: bool = False) -> np.ndarray:
    """log sum exp along ``axis`` (all -inf gives -inf); a lean version of scipy's."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else (np.squeeze(out, axis=axis) if axis is not None else out.reshape(()))


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def _tilted_log(logp: np.ndarray, direction: np.ndarray, eta: float) -> np.ndarray:
    """log pi_eta (R, A) for rows of log pi (R, A) and direction (R, A)."""
    logits = logp + eta * np.where(np.isfinite(logp), direction, 0.0)
    return logits - logsumexp(logits, axis=1, keepdims=True)


def _row_kl(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(p || q) per row from log-probabilities, 0 log 0 = 0."""
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (logp - logq), 0.0)
    return np.maximum(terms.sum(axis=1), 0.0)


def _limit_log(logp: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The eta -> inf limit: pi restricted to the argmax of D on its support, renormalised."""
    d = np.where(np.isfinite(logp), direction, -np.inf)
    top = d.max(axis=1, keepdims=True)
    keep = d >= top - _FLAT_TOL * np.maximum(1.0, np.abs(top))
    logits = np.where(keep, logp, -np.inf)
    return logits - logsumexp(logits, axis=1, keepdims=True)


def flat_rows(pi: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Bool (R,): rows where D is constant on the support of pi (the step cannot move them)."""
    support = pi > 0
    hi = np.where(support, direction, -np.inf).max(axis=1)
    lo = np.where(support, direction, np.inf).min(axis=1)
    return (hi - lo) <= _FLAT_TOL * np.maximum(1.0, np.maximum(np.abs(hi), np.abs(lo)))


def kl_ball_step(
    pi: np.ndarray,
    mask: np.ndarray,
    delta: float,
    direction: np.ndarray,
    *,
    convention: Convention = "reverse",
    occupancy: np.ndarray | None = None,
    weighting: Weighting = "team",
    rtol: float = 1e-10,
) -> StepResult:
    """Move the masked rows of ``pi`` (S, A) along ``direction`` (S, A) until the KL equals ``delta``.

    Args:
        pi: team policy (S, A).
        mask: bool (S,), the rows to move (X_j of one agent).
        delta: target KL >= 0.
        direction: D (S, A), e.g. the advantage A^pi; -A gives a step that lowers the surrogate.
        convention: ``"reverse"`` (expected KL(pi || pi') under ``occupancy``) or ``"forward_max"``
            (max over masked states of KL(pi' || pi)).
        occupancy: d (S,), required for ``"reverse"``.
        weighting: ``"team"`` (sum_{X_j} d KL) or ``"agent"`` (divided by d(X_j)); reverse only.
        rtol: relative tolerance on the achieved KL.

    Returns:
        :class:`StepResult`.
    """
    pi = np.asarray(pi, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if pi.ndim != 2 or direction.shape != pi.shape:
        raise ValueError(f"pi and direction must both have shape (S, A), got {pi.shape} and {direction.shape}")
    if mask.shape != (pi.shape[0],):
        raise ValueError(f"mask must have shape (S,) = ({pi.shape[0]},), got {mask.shape}")
    if not np.isfinite(delta) or delta < 0:
        raise ValueError(f"delta must be finite and >= 0, got {delta}")
    if not np.all(np.isfinite(direction[mask])):
        raise ValueError("direction must be finite on the masked rows")
    if convention not in ("reverse", "forward_max"):
        raise ValueError(f"convention must be 'reverse' or 'forward_max', got {convention!r}")
    if weighting not in ("team", "agent"):
        raise ValueError(f"weighting must be 'team' or 'agent', got {weighting!r}")

    rows = np.flatnonzero(mask)
    logp = _log(pi[rows])
    dir_rows = direction[rows]
    flat = np.zeros(pi.shape[0], dtype=bool)
    flat[rows] = flat_rows(pi[rows], dir_rows)

    if convention == "reverse":
        if occupancy is None:
            raise ValueError("occupancy (S,) is required for the reverse (expected) KL convention")
        d = np.asarray(occupancy, dtype=np.float64)
        if d.shape != (pi.shape[0],):
            raise ValueError(f"occupancy must have shape (S,) = ({pi.shape[0]},), got {d.shape}")
        w = d[rows]
        if weighting == "agent":
            mass = w.sum()
            w = w / mass if mass > 0 else np.zeros_like(w)

        def kl_of(eta: float) -> float:
            return float(np.dot(w, _row_kl(logp, _tilted_log(logp, dir_rows, eta))))

        movable = (~flat[rows]) & (w > 0)
        sup_kl = np.inf if movable.any() else 0.0
    else:

        def kl_of(eta: float) -> float:
            if rows.size == 0:
                return 0.0
            return float(_row_kl(_tilted_log(logp, dir_rows, eta), logp).max())

        sup_kl = float(_row_kl(_limit_log(logp, dir_rows), logp).max()) if rows.size else 0.0

    out = pi.copy()
    if delta == 0.0 or rows.size == 0:
        return StepResult(out, 0.0, 0.0, float(delta), False, flat)
    if sup_kl <= delta * (1 + rtol):
        # Out of reach: return the eta -> inf limit (forward) or pi itself (all weighted rows flat).
        if convention == "forward_max" and sup_kl > 0:
            new_log = _limit_log(logp, dir_rows)
            out[rows] = np.exp(new_log)
            out[flat] = pi[flat]  # flat rows are not moved (exactly)
            return StepResult(out, np.inf, sup_kl, float(delta), True, flat)
        return StepResult(out, 0.0, 0.0, float(delta), True, flat)

    scale = float(np.abs(dir_rows[~flat[rows]]).max()) if (~flat[rows]).any() else 1.0
    hi = 1.0 / max(scale, 1e-300)
    while kl_of(hi) < delta:
        hi *= 4.0
        if hi > _ETA_MAX / max(scale, 1e-300):
            new_log = _tilted_log(logp, dir_rows, hi)
            out[rows] = np.exp(new_log)
            out[flat] = pi[flat]  # flat rows are not moved (exactly)
            return StepResult(out, hi, kl_of(hi), float(delta), True, flat)
    eta = brentq(lambda e: kl_of(e) - delta, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    out[rows] = np.exp(_tilted_log(logp, dir_rows, eta))
    out[flat] = pi[flat]  # flat rows are not moved (exactly)
    achieved = kl_of(eta)
    return StepResult(out, float(eta), achieved, float(delta), False, flat)


# ---------------------------------------------------------------------------------------------
# Stage-0 geometric-mixture projection (THEORY.md section 5)


@dataclass(frozen=True)
class ProjectionResult:
    """Outcome of :func:`geometric_projection`.

    - ``policy`` (S, A): pi_new (rows outside the mask are pi_cur's).
    - ``lam`` (S,): lambda(x) >= 0 (0 when pi_pre is already inside; inf when only pi_cur itself
      is feasible, see ``feasible``; 0 outside the mask).
    - ``kl`` (S,): KL(pi_new || pi_cur) per state.
    - ``feasible`` bool (S,): False where no q with KL(q || pi_pre) < inf satisfies the constraint
      (pi_pre puts zero mass on actions that carry more than 1 - exp(-delta_0) of pi_cur); those rows
      are set to pi_cur (the lambda -> inf limit of the mixture path).
    """

    policy: np.ndarray
    lam: np.ndarray
    kl: np.ndarray
    feasible: np.ndarray


def _mixture_log(log_pre: np.ndarray, log_cur: np.ndarray, t: float) -> np.ndarray:
    """log of pi_pre^t pi_cur^(1-t), normalised (one row)."""
    with np.errstate(invalid="ignore"):
        logits = np.where(np.isfinite(log_pre) & np.isfinite(log_cur), t * log_pre + (1 - t) * log_cur, -np.inf)
    if t == 0.0:
        logits = log_cur.copy()
    if t == 1.0:
        logits = log_pre.copy()
    return logits - logsumexp(logits)


def _kl1(logp: np.ndarray, logq: np.ndarray) -> float:
    return float(_row_kl(logp[None, :], logq[None, :])[0])


def geometric_projection(
    pi_pre: np.ndarray,
    pi_cur: np.ndarray,
    delta0: float,
    mask: np.ndarray | None = None,
) -> ProjectionResult:
    """Project ``pi_pre`` (S, A) onto the per-state forward-KL ball of radius ``delta0`` around
    ``pi_cur`` (S, A) along the geometric mixture path (THEORY.md section 5; SAT Stage-0).

    With t = 1 / (1 + lambda) in (0, 1], pi_t proportional to pi_pre^t pi_cur^(1-t) and
    KL(pi_t || pi_cur) is non-decreasing in t; t is found by Brent's method so that the KL equals
    ``delta0`` when pi_pre lies outside, and t = 1 (lambda = 0) when it lies inside.
    """
    pi_pre = np.asarray(pi_pre, dtype=np.float64)
    pi_cur = np.asarray(pi_cur, dtype=np.float64)
    if pi_pre.shape != pi_cur.shape or pi_pre.ndim != 2:
        raise ValueError(f"pi_pre and pi_cur must both have shape (S, A), got {pi_pre.shape} and {pi_cur.shape}")
    if not np.isfinite(delta0) or delta0 < 0:
        raise ValueError(f"delta0 must be finite and >= 0, got {delta0}")
    s = pi_pre.shape[0]
    mask = np.ones(s, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != (s,):
        raise ValueError(f"mask must have shape (S,) = ({s},), got {mask.shape}")

    out = pi_cur.copy()
    lam = np.zeros(s)
    kl = np.zeros(s)
    feasible = np.ones(s, dtype=bool)
    log_pre_all, log_cur_all = _log(pi_pre), _log(pi_cur)
    for x in np.flatnonzero(mask):
        log_pre, log_cur = log_pre_all[x], log_cur_all[x]
        full = _kl1(log_pre, log_cur)
        if full <= delta0:
            out[x], lam[x], kl[x] = pi_pre[x], 0.0, full
            continue
        common = np.isfinite(log_pre) & np.isfinite(log_cur)
        if not common.any():
            feasible[x], lam[x], kl[x] = False, np.inf, 0.0
            continue
        # t -> 0+: pi_t -> pi_cur restricted to supp(pi_pre), whose KL is -log pi_cur(supp pi_pre).
        floor = float(-logsumexp(log_cur[common]))
        if floor > delta0:
            feasible[x], lam[x], kl[x] = False, np.inf, 0.0
            continue
        g = lambda t: _kl1(_mixture_log(log_pre, log_cur, t), log_cur) - delta0  # noqa: E731
        lo = 1e-300 if floor > 0 else 0.0
        t_hi = 1.0
        if not np.isfinite(full):
            # KL(pi_pre || pi_cur) = inf (pi_cur has zeros under pi_pre): finite for every t < 1.
            t_hi = 1.0 - 1e-16
            while not np.isfinite(g(t_hi)):
                t_hi = 1.0 - 2 * (1.0 - t_hi)
        if g(lo) >= 0:
            t = lo
        else:
            t = brentq(g, lo, t_hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        row = np.exp(_mixture_log(log_pre, log_cur, t))
        out[x], lam[x] = row, (1.0 / t - 1.0) if t > 0 else np.inf
        kl[x] = _kl1(_log(row), log_cur)
    return ProjectionResult(policy=out, lam=lam, kl=kl, feasible=feasible)


# ---------------------------------------------------------------------------------------------
# A whole stage of exact trust-region steps


Source = Literal["intermediate", "stage_start"]


def trust_region_stage(
    mdp,
    pi_cur: np.ndarray,
    order,
    delta,
    *,
    direction: Source | object = "intermediate",
    radius_occupancy: Source = "intermediate",
    convention: Convention = "reverse",
    weighting: Weighting = "team",
    sign: float = 1.0,
    method: str = "auto",
    evaluations: list | None = None,
) -> tuple[list[np.ndarray], list[StepResult]]:
    """Run one stage of KL-ball steps and return the new policies (for ``evaluate_stage``).

    Update i moves agent sigma(i) from hat_pi^{i-1} along D_i with KL = delta_i, where
    - ``direction="intermediate"``: D_i = sign * A^{hat_pi^{i-1}} (TeamTR, fresh rollouts);
      ``"stage_start"``: D_i = sign * A^{hat_pi^0} (naive sequential training on the stage-start
      batch); or a callable ``(i, agent, eval_prev, eval_start) -> (S, A)`` (1-based i, exact
      :class:`occupancy.exact.Evaluation` objects), used as is (``sign`` ignored);
    - the radius is measured under d^{hat_pi^{i-1}} (``radius_occupancy="intermediate"``) or
      d^{hat_pi^0} (``"stage_start"``), with ``convention`` and ``weighting`` as in
      :func:`kl_ball_step`.

    Args:
        mdp: a :class:`occupancy.mdp.TeamMDP`.
        pi_cur: team policy (S, A) at the stage start.
        order: the update order sigma (agent ids).
        delta: a float (every update) or a sequence, one radius per update.
        method: linear-solver choice passed to :func:`occupancy.exact.evaluate`.
        evaluations: if a list is given, the exact evaluations of hat_pi^0, ..., hat_pi^{N-1} (the
            base team of every update) are appended to it, so that callers can reuse them.

    Returns:
        (new_policies, steps): ``new_policies[j]`` a team-shaped (S, A) array whose X_j rows are
        agent j's new policy (agents not in ``order`` keep pi_cur), and the StepResult of each update.
    """
    from occupancy.exact import evaluate  # local import: exact imports nothing from here

    order = [int(j) for j in order]
    deltas = [float(delta)] * len(order) if np.ndim(delta) == 0 else [float(x) for x in delta]
    if len(deltas) != len(order):
        raise ValueError(f"delta needs one radius per update ({len(order)}), got {len(deltas)}")
    pi_cur = mdp.check_policy(pi_cur, "pi_cur")
    e0 = evaluate(mdp, pi_cur, method=method, check=False)
    team = pi_cur.copy()
    new_policies = [pi_cur.copy() for _ in range(mdp.n_agents)]
    steps: list[StepResult] = []
    prev = e0
    for i, agent in enumerate(order, start=1):
        if i > 1:
            prev = evaluate(mdp, team, method=method, check=False)
        if evaluations is not None:
            evaluations.append(prev)
        if callable(direction):
            d_dir = np.asarray(direction(i, agent, prev, e0), dtype=np.float64)
        elif direction == "intermediate":
            d_dir = sign * prev.A
        elif direction == "stage_start":
            d_dir = sign * e0.A
        else:
            raise ValueError(f"direction must be 'intermediate', 'stage_start' or a callable, got {direction!r}")
        if radius_occupancy not in ("intermediate", "stage_start"):
            raise ValueError(f"radius_occupancy must be 'intermediate' or 'stage_start', got {radius_occupancy!r}")
        occ = prev.d if radius_occupancy == "intermediate" else e0.d
        step = kl_ball_step(
            team, mdp.agent_mask(agent), deltas[i - 1], d_dir,
            convention=convention, occupancy=occ, weighting=weighting,
        )
        steps.append(step)
        new_policies[agent] = step.policy
        team = mdp.replace_agent(team, agent, step.policy)
    return new_policies, steps
