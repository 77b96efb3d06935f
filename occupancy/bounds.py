"""The improvement bounds of TeamTR and SAT (THEORY.md section 3), evaluated on exact stages.

Every function takes a :class:`occupancy.exact.StageEvaluation` (or one of its updates) and the
discount gamma, and returns a :class:`BoundCheck` comparing the exact truth with the bound.

Conventions (all numbers say which one they use):

- ``kl="reverse"``: TeamTR's expected reverse KL delta_i = sum_{x in X_j} d^{hat_pi^{i-1}}(x)
  KL(pi_cur(.|x) || pi_new(.|x)) under the *intermediate* occupancy, team weighting
  (``UpdateEvaluation.kl_reverse``). ``kl="reverse_agent"`` uses the agent weighting (the same
  divided by d(X_j), what a per-message monitor measures); it is >= the team weighting, so every
  bound stays valid and is looser.
- ``kl="forward_max"``: SAT's per-state maximum of the forward KL(pi_new(.|x) || pi_cur(.|x))
  over X_j (``UpdateEvaluation.kl_forward_max``).
- ``scale="a_max"``: A_max = max |A^{hat_pi^{i-1}}| over non-terminal (x, a) (TeamTR, SAT).
  ``scale="eps"``: Achiam et al. (2017)'s eps_i = max_x |E_{a ~ pi_new} A^{hat_pi^{i-1}}(x, a)|
  (<= A_max; the test function of the occupancy-shift argument, so the bound is tighter).

The constant: c_i = sqrt(2) gamma s_i / (1 - gamma)^2 with s_i the chosen scale of update i. For
the forward max-KL convention this is SAT's 2 gamma / (1 - gamma)^2 A_max sqrt(delta / 2) written
as c sqrt(delta). Each bound uses the scale of the advantage it involves (update i's base team),
which is what the telescoped proofs give; the ``paper`` stale form uses c = max_i c_i.

Sign conventions of :class:`BoundCheck`:

- ``slack = truth - bound`` for lower bounds (>= 0 iff the bound holds); for the two-sided bound
  of Proposition 3.3 and for upper bounds, ``slack = bound - truth`` (>= 0 iff it holds).
- ``tightness = used / penalty``: the share of the bound's penalty term that the instance uses.
  For a lower bound truth >= surrogate - penalty, used = surrogate - truth; tightness <= 1 iff the
  bound holds, 1 means attained, <= 0 means the truth beats the surrogate. It is scale free, unlike
  truth / bound, which is undefined when the bound crosses 0 (it usually is negative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from occupancy.exact import StageEvaluation, UpdateEvaluation

KL = Literal["reverse", "reverse_agent", "forward_max"]
Scale = Literal["a_max", "eps"]

#: Absolute tolerance (scaled by the magnitudes involved) below which a negative slack is
#: floating-point noise, not a violation.
FLOAT_TOL = 1e-9


@dataclass(frozen=True)
class BoundCheck:
    """One bound on one instance.

    - ``name``: the bound's identifier (e.g. ``"teamtr_thm3.4"``).
    - ``truth``: the exact quantity being bounded.
    - ``bound``: the bound's value.
    - ``surrogate``: the surrogate term of the bound (0 where there is none).
    - ``penalty``: the bound's penalty term (>= 0).
    - ``slack``: truth - bound (lower bounds) or bound - truth (upper and two-sided bounds).
    - ``tightness``: used penalty / penalty (see module docstring); nan when penalty = 0.
    - ``kl`` and ``scale``: the conventions used.
    - ``magnitude``: the largest |V|, |Q| or |J| the truth and the surrogate were computed from (their
      rounding error is a few ulp of it, however small they are themselves); 0 if unknown.
    """

    name: str
    truth: float
    bound: float
    surrogate: float
    penalty: float
    slack: float
    tightness: float
    kl: str
    scale: str
    magnitude: float = 0.0

    def violated(self, tol: float = FLOAT_TOL) -> bool:
        """True if the slack is negative beyond floating-point tolerance: ``tol`` times the largest
        magnitude involved (truth, bound, surrogate, penalty and the values they were computed from,
        e.g. J ~ 1e7 at rewards ~ 1e6, where a difference of two J's carries an error ~ 1e-9)."""
        mag = max(1.0, abs(self.truth), abs(self.bound), abs(self.surrogate), abs(self.penalty), abs(self.magnitude))
        return self.slack < -tol * mag


def penalty_constant(gamma: float, scale: float) -> float:
    """c = sqrt(2) gamma scale / (1 - gamma)^2 (TeamTR's c; SAT's 2 gamma / (1-gamma)^2 * sqrt(1/2))."""
    if not (0.0 <= gamma < 1.0):
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    return math.sqrt(2.0) * gamma * float(scale) / (1.0 - gamma) ** 2


def update_delta(u: UpdateEvaluation, kl: KL) -> float:
    """delta_i of update ``u`` under convention ``kl`` (clipped at 0 against round-off)."""
    if kl == "reverse":
        value = u.kl_reverse
    elif kl == "reverse_agent":
        value = u.kl_reverse_agent
    elif kl == "forward_max":
        value = u.kl_forward_max
    else:
        raise ValueError(f"kl must be 'reverse', 'reverse_agent' or 'forward_max', got {kl!r}")
    value = float(value)
    if math.isnan(value):
        # 0 * inf in an occupancy-weighted KL: a zero-occupancy state where the new policy dropped
        # an action (a saturated forward step). Treated as +inf, which makes the bound vacuous.
        return math.inf
    return max(value, 0.0)


def update_scale(u: UpdateEvaluation, scale: Scale) -> float:
    """A_max or Achiam's eps of update ``u``."""
    if scale == "a_max":
        return float(u.a_max)
    if scale == "eps":
        return float(u.eps_achiam)
    raise ValueError(f"scale must be 'a_max' or 'eps', got {scale!r}")


def _cterm(c: float, root: float) -> float:
    """c * sqrt(delta) with 0 * inf = 0 (a zero constant makes the step's surrogate exact)."""
    return 0.0 if c == 0.0 else c * root


def _lower(name: str, truth: float, surrogate: float, penalty: float, kl: str, scale: str,
           magnitude: float = 0.0) -> BoundCheck:
    bound = surrogate - penalty
    used = surrogate - truth
    noise = FLOAT_TOL * max(1.0, abs(magnitude))
    tight = used / penalty if penalty > 0 else (math.nan if abs(used) <= noise else math.copysign(math.inf, used))
    return BoundCheck(name, truth, bound, surrogate, penalty, truth - bound, tight, kl, scale, float(magnitude))


def _stage_magnitude(stage: StageEvaluation) -> float:
    """The largest value magnitude of a stage (J's and every update's value_scale)."""
    return max([abs(stage.J_start), abs(stage.J_end)] + [float(u.value_scale) for u in stage.updates])


def _label(kl: KL) -> str:
    return "sat" if kl == "forward_max" else "teamtr"


# ---------------------------------------------------------------------------------------------
# Per update and per stage


def per_update_bound(u: UpdateEvaluation, gamma: float, kl: KL = "reverse", scale: Scale = "a_max") -> BoundCheck:
    """Per-update improvement lower bound.

    Source: TeamTR Theorem 3.4 (``kl="reverse"``, exact advantages so zeta = 0) and SAT's
    single-step monotonic improvement theorem (``kl="forward_max"``):

        J(hat_pi^i) - J(hat_pi^{i-1}) >= L_i^seq - c_i sqrt(delta_i).

    Proof: performance-difference lemma, Achiam et al. (2017) Lemma 3 with the expected TV under the
    old occupancy, Pinsker and Jensen (reverse expected KL) or the per-state maximum (forward).
    """
    c = penalty_constant(gamma, update_scale(u, scale))
    pen = _cterm(c, math.sqrt(update_delta(u, kl)))
    return _lower(f"{_label(kl)}_per_update", u.improvement, u.L_seq, pen, kl, scale, u.value_scale)


def per_stage_bound(stage: StageEvaluation, gamma: float, kl: KL = "reverse", scale: Scale = "a_max") -> BoundCheck:
    """Per-stage improvement lower bound.

    Source: TeamTR Theorem 3.6 (``kl="reverse"``) and SAT's joint-stage monotonic improvement
    theorem (``kl="forward_max"``, with A_max^{(i)} of each update's base team):

        J(bar_pi) - J(pi_cur) >= sum_i L_i^seq - sum_i c_i sqrt(delta_i).
    """
    pen = sum(_cterm(penalty_constant(gamma, update_scale(u, scale)), math.sqrt(update_delta(u, kl))) for u in stage.updates)
    sur = sum(u.L_seq for u in stage.updates)
    return _lower(f"{_label(kl)}_per_stage", stage.J_end - stage.J_start, sur, pen, kl, scale, _stage_magnitude(stage))


# ---------------------------------------------------------------------------------------------
# Stale occupancy


def stale_surrogate_bound(
    stage: StageEvaluation, i: int, gamma: float, kl: KL = "reverse", scale: Scale = "a_max"
) -> BoundCheck:
    """Intermediate versus stale surrogate of update ``i`` (1-based), two-sided.

    Source: TeamTR Proposition 3.3 (README "Proposition 2" states the underlying occupancy bound):

        |L_i^seq - L_i^stale| <= c_i sum_{k<i} sqrt(delta_k),

    with L^stale the stale-occupancy surrogate (occupancy of hat_pi^0, advantage of hat_pi^{i-1}),
    c_i built on update i's advantage scale and delta_k the KL of upstream update k under its own
    intermediate occupancy. The proposition states the lower side; the proof gives both.
    ``truth`` = |L_seq - L_stale|, ``slack`` = bound - truth.
    """
    if not (1 <= i <= len(stage.updates)):
        raise ValueError(f"i must be in [1, {len(stage.updates)}], got {i}")
    u = stage.updates[i - 1]
    c = penalty_constant(gamma, update_scale(u, scale))
    pen = _cterm(c, sum(math.sqrt(update_delta(v, kl)) for v in stage.updates[: i - 1]))
    diff = abs(u.L_seq - u.L_stale_occ)
    mag = _stage_magnitude(stage)
    tight = diff / pen if pen > 0 else (math.nan if diff <= FLOAT_TOL * max(1.0, mag) else math.inf)
    return BoundCheck(f"{_label(kl)}_prop3.3", diff, pen, 0.0, pen, pen - diff, tight, kl, scale, mag)


def stale_penalty_sharp(stage: StageEvaluation, gamma: float, kl: KL = "reverse", scale: Scale = "a_max") -> float:
    """sum_i c_i sum_{k<=i} sqrt(delta_k): the sharp stale penalty (Thm 3.6 + Prop 3.3; = c n(n+1)/2 sqrt(delta))."""
    roots = [math.sqrt(update_delta(u, kl)) for u in stage.updates]
    cs = [penalty_constant(gamma, update_scale(u, scale)) for u in stage.updates]
    return float(sum(_cterm(c, sum(roots[: i + 1])) for i, c in enumerate(cs)))


def stale_penalty_paper(stage: StageEvaluation, gamma: float, kl: KL = "reverse", scale: Scale = "a_max") -> float:
    """c n sum_i sqrt(delta_i) with c = max_i c_i: the stale penalty as TeamTR Theorem 3.7 states it."""
    n = len(stage.updates)
    if n == 0:
        return 0.0
    c = max(penalty_constant(gamma, update_scale(u, scale)) for u in stage.updates)
    return float(_cterm(c, n * sum(math.sqrt(update_delta(u, kl)) for u in stage.updates)))


def stale_stage_bound(
    stage: StageEvaluation,
    gamma: float,
    kl: KL = "reverse",
    scale: Scale = "a_max",
    form: Literal["sharp", "paper"] = "sharp",
) -> BoundCheck:
    """Stale-occupancy stage lower bound.

    Source: TeamTR Theorem 3.7 (``form="paper"``: penalty c n sum_i sqrt(delta_i)) and its sharper
    form from Theorem 3.6 plus Proposition 3.3 (``form="sharp"``: c sum_i sum_{k<=i} sqrt(delta_k)):

        J(bar_pi) - J(pi_cur) >= sum_i L_i^stale - penalty.

    With ``kl="forward_max"`` the same argument runs on SAT's occupancy-shift lemma (derived here,
    SAT states no stale bound).
    """
    if form == "sharp":
        pen = stale_penalty_sharp(stage, gamma, kl, scale)
    elif form == "paper":
        pen = stale_penalty_paper(stage, gamma, kl, scale)
    else:
        raise ValueError(f"form must be 'sharp' or 'paper', got {form!r}")
    sur = sum(u.L_stale_occ for u in stage.updates)
    return _lower(f"{_label(kl)}_stale_{form}", stage.J_end - stage.J_start, sur, pen, kl, scale, _stage_magnitude(stage))


# ---------------------------------------------------------------------------------------------
# SAT's oracle upper bound


def sat_upper_bound(u: UpdateEvaluation, gamma: float) -> BoundCheck:
    """Oracle single-step upper bound (SAT): J(hat_pi^i) - J(hat_pi^{i-1}) <= A_max / (1 - gamma) sqrt(2 delta_max).

    delta_max is the forward per-state maximum KL. ``slack`` = bound - truth; ``tightness`` =
    truth / bound (<= 1 iff it holds).
    """
    bound = _cterm(float(u.a_max) / (1.0 - gamma), math.sqrt(2.0 * update_delta(u, "forward_max")))
    noise = FLOAT_TOL * max(1.0, float(u.value_scale))
    tight = u.improvement / bound if bound > 0 else (math.nan if abs(u.improvement) <= noise else math.inf)
    return BoundCheck("sat_upper", u.improvement, bound, 0.0, bound, bound - u.improvement, tight, "forward_max", "a_max",
                      float(u.value_scale))


# ---------------------------------------------------------------------------------------------
# Chain-rule forms (derived here; not in either paper)
#
# [I] For two policies that differ on some rows, the trajectory distributions satisfy, by the
# chain rule of KL, KL(P_{0:t} || P'_{0:t}) = sum_{s<t} E_{x_s ~ P_s} KL(pi(.|x_s) || pi'(.|x_s)).
# Pinsker on every marginal and Jensen over the discount weights (1 - gamma) gamma^t give
#
#     || d^{pi'} - d^{pi} ||_1 <= sqrt(2 gamma / (1 - gamma) * E_{x ~ d^pi} KL(pi(.|x) || pi'(.|x))),
#
# with the normalised occupancy d^pi of the *old* policy and the team-weighted expected reverse KL,
# i.e. exactly TeamTR's delta. With SAT's per-state forward maximum, KL(P' || P) <= t delta_max
# gives the same with delta_max. Against Achiam's Lemma 3 + Pinsker + Jensen
# (sqrt(2) gamma / (1 - gamma) sqrt(delta)) this is smaller by sqrt((1 - gamma) / gamma) (10x at
# gamma = 0.99), and for a stage it adds KLs, not square roots: after i - 1 updates the shift is
# <= sqrt(2 gamma / (1 - gamma) * sum_{k<i} delta_k^{(0)}) with delta_k^{(0)} the KL of update k
# under the *stage-start* occupancy (reverse), or sqrt(2 gamma / (1 - gamma) max_{k<i} delta_k^max)
# (forward max: one agent acts per state, so the per-step KL never exceeds the largest radius).
# Hence the stale penalty grows like N^{3/2} sqrt(delta) (reverse, uniform team-weighted delta),
# not N^2. Each chain penalty is eps_i (or A_max) / (1 - gamma) times the occupancy-shift bound.


def chain_constant(gamma: float, scale: float) -> float:
    """scale / (1 - gamma) * sqrt(2 gamma / (1 - gamma)): the chain-rule counterpart of c ([I])."""
    if not (0.0 <= gamma < 1.0):
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    return float(scale) / (1.0 - gamma) * math.sqrt(2.0 * gamma / (1.0 - gamma))


def stage_start_kls(mdp, pi_cur: np.ndarray, order, new_policies) -> list[float]:
    """delta_k^{(0)}: the team-weighted reverse KL of every update k of a stage under the stage-start
    occupancy d^{pi_cur} (one per update, in order). Needed by the reverse chain-rule stale bounds."""
    from occupancy.exact import evaluate, update_kl

    d0 = evaluate(mdp, pi_cur).d
    with np.errstate(invalid="ignore"):
        return [update_kl(mdp, d0, pi_cur, new_policies[j], int(j), "reverse", "team") for j in order]


def _chain_shift(gamma: float, kl_total: float) -> float:
    return math.sqrt(2.0 * gamma / (1.0 - gamma) * max(kl_total, 0.0)) if kl_total < math.inf else math.inf


def per_update_bound_chain(u: UpdateEvaluation, gamma: float, kl: KL = "reverse", scale: Scale = "eps") -> BoundCheck:
    """Per-update lower bound from the KL chain rule ([I], derived here; see the section comment):

        J(hat_pi^i) - J(hat_pi^{i-1}) >= L_i^seq - s_i / (1 - gamma) sqrt(2 gamma delta_i / (1 - gamma)),

    with delta_i TeamTR's team-weighted reverse KL under d^{hat_pi^{i-1}} (``kl="reverse"``) or
    SAT's forward per-state maximum (``kl="forward_max"``); ``reverse_agent`` is also valid (larger).
    """
    pen = _cterm(float(update_scale(u, scale)) / (1.0 - gamma), _chain_shift(gamma, update_delta(u, kl)))
    return _lower("chain_per_update", u.improvement, u.L_seq, pen, kl, scale, u.value_scale)


def _stale_kl(stage: StageEvaluation, i: int, kl: KL, kl0: Sequence[float] | None) -> float:
    if kl == "forward_max":
        return max((update_delta(v, kl) for v in stage.updates[: i - 1]), default=0.0)
    if kl0 is None or len(kl0) != len(stage.updates):
        raise ValueError("the reverse chain-rule stale bound needs kl0 = stage_start_kls(...), one per update")
    vals = [float(x) for x in kl0[: i - 1]]
    return math.inf if any(math.isnan(x) for x in vals) else float(sum(max(x, 0.0) for x in vals))


def stale_surrogate_bound_chain(
    stage: StageEvaluation, i: int, gamma: float, kl: KL = "reverse", scale: Scale = "eps",
    kl0: Sequence[float] | None = None,
) -> BoundCheck:
    """Intermediate versus stale surrogate of update ``i`` from the chain rule ([I]), two-sided:

        |L_i^seq - L_i^stale| <= s_i / (1 - gamma) sqrt(2 gamma / (1 - gamma) K_i),

    K_i = sum_{k<i} delta_k^{(0)} (``kl="reverse"``, ``kl0`` from :func:`stage_start_kls`) or
    max_{k<i} delta_k^max (``kl="forward_max"``). Compare TeamTR Prop 3.3's c sum_{k<i} sqrt(delta_k).
    """
    if not (1 <= i <= len(stage.updates)):
        raise ValueError(f"i must be in [1, {len(stage.updates)}], got {i}")
    u = stage.updates[i - 1]
    pen = _cterm(float(update_scale(u, scale)) / (1.0 - gamma), _chain_shift(gamma, _stale_kl(stage, i, kl, kl0)))
    diff = abs(u.L_seq - u.L_stale_occ)
    mag = _stage_magnitude(stage)
    tight = diff / pen if pen > 0 else (math.nan if diff <= FLOAT_TOL * max(1.0, mag) else math.inf)
    return BoundCheck("chain_stale_surrogate", diff, pen, 0.0, pen, pen - diff, tight, kl, scale, mag)


def stale_penalty_chain(
    stage: StageEvaluation, gamma: float, kl: KL = "reverse", scale: Scale = "eps", kl0: Sequence[float] | None = None
) -> float:
    """sum_i [per-update chain penalty_i + stale chain penalty_i] ([I]); O(N^{3/2}) for uniform delta."""
    total = 0.0
    for i, u in enumerate(stage.updates, start=1):
        s = float(update_scale(u, scale)) / (1.0 - gamma)
        total += _cterm(s, _chain_shift(gamma, update_delta(u, kl)))
        if i > 1:
            total += _cterm(s, _chain_shift(gamma, _stale_kl(stage, i, kl, kl0)))
    return total


def stale_stage_bound_chain(
    stage: StageEvaluation, gamma: float, kl: KL = "reverse", scale: Scale = "eps", kl0: Sequence[float] | None = None
) -> BoundCheck:
    """Stale-occupancy stage lower bound from the chain rule ([I]):
    J(bar_pi) - J(pi_cur) >= sum_i L_i^stale - :func:`stale_penalty_chain`."""
    pen = stale_penalty_chain(stage, gamma, kl, scale, kl0)
    sur = sum(u.L_stale_occ for u in stage.updates)
    return _lower("chain_stale_stage", stage.J_end - stage.J_start, sur, pen, kl, scale, _stage_magnitude(stage))


# ---------------------------------------------------------------------------------------------
# Everything at once


def all_bounds(
    stage: StageEvaluation, gamma: float, scales: tuple[Scale, ...] = ("a_max", "eps"), kl0: Sequence[float] | None = None
) -> list[BoundCheck]:
    """Every bound of this module on one stage, for both KL conventions and the given scales.

    Per update (TeamTR Thm 3.4 / SAT single step, and the chain-rule form): one check per update;
    Proposition 3.3 (and its chain-rule form): one per update i >= 2; per stage (Thm 3.6 / SAT joint)
    and stale (Thm 3.7 sharp and paper, chain rule): one each; SAT's upper bound: one per update.
    The reverse chain-rule stale bounds need ``kl0`` (:func:`stage_start_kls`); skipped without it.
    """
    out: list[BoundCheck] = []
    for scale in scales:
        for kl in ("reverse", "forward_max"):
            out.extend(per_update_bound(u, gamma, kl, scale) for u in stage.updates)
            out.append(per_stage_bound(stage, gamma, kl, scale))
            out.extend(stale_surrogate_bound(stage, i, gamma, kl, scale) for i in range(2, len(stage.updates) + 1))
            out.append(stale_stage_bound(stage, gamma, kl, scale, "sharp"))
            out.append(stale_stage_bound(stage, gamma, kl, scale, "paper"))
            out.extend(per_update_bound_chain(u, gamma, kl, scale) for u in stage.updates)
            if kl == "forward_max" or kl0 is not None:
                out.extend(stale_surrogate_bound_chain(stage, i, gamma, kl, scale, kl0) for i in range(2, len(stage.updates) + 1))
                out.append(stale_stage_bound_chain(stage, gamma, kl, scale, kl0))
    out.extend(sat_upper_bound(u, gamma) for u in stage.updates)
    return out


def bound_key(check: BoundCheck) -> str:
    """A label naming bound, KL convention and scale, e.g. ``teamtr_per_update[reverse,a_max]``."""
    return f"{check.name}[{check.kl},{check.scale}]"


def summarize(checks: list[BoundCheck], tol: float = FLOAT_TOL) -> dict[str, dict[str, float]]:
    """Per bound key: count, violations, median and worst (minimum) slack, median and worst (maximum) tightness."""
    groups: dict[str, list[BoundCheck]] = {}
    for c in checks:
        groups.setdefault(bound_key(c), []).append(c)
    table = {}
    for key, items in sorted(groups.items()):
        slack = np.array([c.slack for c in items])
        tight = np.array([c.tightness for c in items], dtype=float)
        tight = tight[np.isfinite(tight)]
        table[key] = {
            "count": len(items),
            "violations": int(sum(c.violated(tol) for c in items)),
            "median_slack": float(np.median(slack)),
            "worst_slack": float(slack.min()),
            "median_tightness": float(np.median(tight)) if tight.size else math.nan,
            "worst_tightness": float(tight.max()) if tight.size else math.nan,
        }
    return table
