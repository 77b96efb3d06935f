"""Exact evaluation of a team policy in float64 (THEORY.md sections 1-2).

Shapes: S states, A actions, B policies of a batch. A team policy ``pi`` is an array (S, A).

- V^pi = (I - gamma P_pi)^-1 r_pi; Q^pi(x, a) = r(x, a) + gamma sum_x' T(x' | x, a) V^pi(x');
  A^pi = Q^pi - V^pi.
- d^pi = (1 - gamma) mu^T (I - gamma P_pi)^-1, the normalised discounted occupancy, so that
  J(pi) = mu^T V^pi = 1 / (1 - gamma) * E_{x ~ d^pi, a ~ pi}[r(x, a)].

Two paths, both sharing one factorisation of (I - gamma P_pi) between the V and the d solve:

- dense (small or densely filled instances, see DENSE_LIMIT): T (S, A, S), r and mu are copied
  into dense arrays once per instance (cached); a call is one contraction P_pi = einsum(pi, T), one
  LAPACK LU (getrf) and two triangular solves (getrs) -- no scipy.sparse object is built;
- sparse (otherwise): the sparsity pattern of I - gamma P_pi in CSC form is computed once per
  instance (cached) and a call fills its values with one bincount. An upper triangular pattern
  (layered instances) with few levels is solved level by level (:func:`_level_solve`, no
  factorisation); other patterns by SuperLU (``splu``; natural order without pivot search when
  triangular, COLAMD otherwise).

:func:`evaluate_batch` evaluates B policies on one instance at once (small dense instances: one
batched einsum and batched LAPACK solves; otherwise one solve per policy).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.linalg import lapack

from occupancy.mdp import _ATOL, TeamMDP

#: method="auto" takes the dense path iff S <= DENSE_LIMIT, or S <= DENSE_FULL_LIMIT and T stores at
#: least DENSE_FILL * S * A * S entries. Measured with ``python -m experiments.bench_exact --switch``
#: (2-core x86 VM, one BLAS thread, numpy 2.4 / scipy 1.17): on the structured families (2-9 stored
#: entries per (x, a) row, 40-400 states) dense / sparse time is 0.44-0.81 at 41-85 states, 0.91-1.06
#: at 85-97 states and 1.2-8 above 109 states (sparse ~50-90 us, dense O(S^3)); on dense random
#: instances (random_team_mdp, all S entries stored) the dense path is 4-5x faster at 50-300 states.
DENSE_LIMIT = 96
DENSE_FULL_LIMIT = 1500
DENSE_FILL = 0.25
#: evaluate_batch solves the whole batch in one batched LAPACK call iff S <= BATCH_LIMIT (dense path;
#: larger S: one dense evaluate per policy). Measured by ``bench_exact`` (64 policies, board family):
#: batched / looped speed 8.5x at 7 states, 4.4x at 13, 1.5x at 25, 1.05x at 49, 0.68x at 73.
BATCH_LIMIT = 48
Method = Literal["auto", "dense", "sparse"]
KLDirection = Literal["reverse", "forward"]
Weighting = Literal["team", "agent"]
METHODS = ("auto", "dense", "sparse")


@dataclass(frozen=True)
class Evaluation:
    """Exact quantities of one team policy: V (S,), Q (S, A), A (S, A), d (S,), J."""

    V: np.ndarray
    Q: np.ndarray
    A: np.ndarray
    d: np.ndarray
    J: float


@dataclass(frozen=True)
class BatchEvaluation:
    """Exact quantities of B team policies on one instance: V (B, S), Q (B, S, A), A (B, S, A),
    d (B, S), J (B,). ``batch[i]`` is the :class:`Evaluation` of policy i."""

    V: np.ndarray
    Q: np.ndarray
    A: np.ndarray
    d: np.ndarray
    J: np.ndarray

    def __len__(self) -> int:
        return int(self.J.shape[0])

    def __getitem__(self, i: int) -> Evaluation:
        return Evaluation(V=self.V[i], Q=self.Q[i], A=self.A[i], d=self.d[i], J=float(self.J[i]))


# ---------------------------------------------------------------------------------------------
# Per-instance caches (built on first use, dropped with the instance)


@dataclass(frozen=True)
class _Dense:
    """Dense copies of one instance: T (S, A, S), T_flat (S*A, S) (a view), r (S, A), mu (S,)."""

    T: np.ndarray
    T_flat: np.ndarray
    r: np.ndarray
    mu: np.ndarray


@dataclass(frozen=True)
class _Sparse:
    """The CSC pattern of I - gamma P_pi (union over actions, plus the diagonal) of one instance.

    ``source`` (nnz_T,): the flat (x * A + a) row of every stored entry of T; ``pos`` (nnz_T,): its
    slot in the system's data array; ``diag`` (S,): the diagonal slots; ``indices``/``indptr``: the
    CSC structure (nnz,); ``permc``: SuperLU column ordering (NATURAL when upper triangular);
    ``levels``: for upper triangular systems with few levels, the level schedule of
    :func:`_level_solve` (None otherwise)."""

    source: np.ndarray
    pos: np.ndarray
    diag: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    nnz: int
    permc: str
    levels: "tuple[_Level, ...] | None" = None


@dataclass(frozen=True)
class _Level:
    """States of one level (their successors all lie in lower levels) and the off-diagonal entries of
    the system that a level solve needs: ``back_*`` the entries of these states' rows (slot, column,
    local row), ``fwd_*`` the entries of these states' columns (slot, row, local column)."""

    states: np.ndarray
    back_slots: np.ndarray
    back_cols: np.ndarray
    back_local: np.ndarray
    fwd_slots: np.ndarray
    fwd_rows: np.ndarray
    fwd_local: np.ndarray


#: Level solves pay while the Python loop over levels stays short against one SuperLU factorisation:
#: used iff an upper triangular system has <= MAX_LEVELS levels with >= MIN_LEVEL_WIDTH states on
#: average (the family instances: about N * rounds levels of ~S / (N * rounds) states).
MAX_LEVELS = 4096
MIN_LEVEL_WIDTH = 8


def _level_schedule(s: int, rows: np.ndarray, cols: np.ndarray) -> "tuple[_Level, ...] | None":
    """Levels of an upper triangular pattern with CSC entries (rows, cols) (diagonal included):
    depth(x) = 1 + max depth of x's successors (0 for states without off-diagonal entries)."""
    off = np.flatnonzero(rows != cols)
    r_off, c_off = rows[off], cols[off]
    by_row = np.argsort(r_off, kind="stable")
    r_sorted, c_sorted = r_off[by_row], c_off[by_row]
    starts = np.flatnonzero(np.r_[True, r_sorted[1:] != r_sorted[:-1]]) if off.size else np.zeros(0, np.int64)
    owners = r_sorted[starts]
    depth = np.zeros(s, dtype=np.int64)
    for _ in range(min(MAX_LEVELS, s) + 1):
        if not off.size:
            break
        new = depth.copy()
        new[owners] = np.maximum.reduceat(depth[c_sorted] + 1, starts)
        if np.array_equal(new, depth):
            break
        depth = new
    else:
        return None
    n_levels = int(depth.max()) + 1
    if n_levels > MAX_LEVELS or s < MIN_LEVEL_WIDTH * n_levels:
        return None
    order = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[order], np.arange(n_levels + 1))
    local = np.empty(s, dtype=np.int64)
    for k in range(n_levels):
        local[order[bounds[k]:bounds[k + 1]]] = np.arange(bounds[k + 1] - bounds[k])
    back = np.argsort(depth[r_off], kind="stable")
    back_bounds = np.searchsorted(depth[r_off][back], np.arange(n_levels + 1))
    fwd = np.argsort(depth[c_off], kind="stable")
    fwd_bounds = np.searchsorted(depth[c_off][fwd], np.arange(n_levels + 1))
    levels = []
    for k in range(n_levels):
        b = back[back_bounds[k]:back_bounds[k + 1]]
        f = fwd[fwd_bounds[k]:fwd_bounds[k + 1]]
        levels.append(_Level(states=order[bounds[k]:bounds[k + 1]], back_slots=off[b], back_cols=c_off[b],
                             back_local=local[r_off[b]], fwd_slots=off[f], fwd_rows=r_off[f], fwd_local=local[c_off[f]]))
    return tuple(levels)


def _level_solve(plan: _Sparse, data: np.ndarray, rhs: np.ndarray, transpose: bool) -> np.ndarray:
    """Solve M x = rhs (``transpose=False``, back substitution from the sinks) or M^T x = rhs (forward
    substitution from the sources) for the upper triangular M with CSC values ``data``, one level
    at a time (every state of a level depends only on already solved levels)."""
    x = np.empty_like(rhs)
    diag = data[plan.diag]
    for lev in (reversed(plan.levels) if transpose else plan.levels):
        acc = rhs[lev.states]
        if transpose and lev.fwd_slots.size:
            acc = acc - np.bincount(lev.fwd_local, weights=data[lev.fwd_slots] * x[lev.fwd_rows], minlength=acc.size)
        elif not transpose and lev.back_slots.size:
            acc = acc - np.bincount(lev.back_local, weights=data[lev.back_slots] * x[lev.back_cols], minlength=acc.size)
        x[lev.states] = acc / diag[lev.states]
    return x


_DENSE_CACHE: "weakref.WeakKeyDictionary[TeamMDP, _Dense]" = weakref.WeakKeyDictionary()
_SPARSE_CACHE: "weakref.WeakKeyDictionary[TeamMDP, _Sparse]" = weakref.WeakKeyDictionary()


def _dense(mdp: TeamMDP) -> _Dense:
    arrays = _DENSE_CACHE.get(mdp)
    if arrays is None:
        t = mdp.dense_transitions()
        arrays = _Dense(T=t, T_flat=t.reshape(-1, mdp.n_states), r=np.asarray(mdp.rewards),
                        mu=np.asarray(mdp.initial))
        _DENSE_CACHE[mdp] = arrays
    return arrays


def _sparse(mdp: TeamMDP) -> _Sparse:
    plan = _SPARSE_CACHE.get(mdp)
    if plan is None:
        s, a = mdp.n_states, mdp.n_actions
        t = mdp.transitions
        source = np.repeat(np.arange(s * a, dtype=np.int64), np.diff(t.indptr))
        rows = np.concatenate([source // a, np.arange(s, dtype=np.int64)])
        cols = np.concatenate([t.indices.astype(np.int64), np.arange(s, dtype=np.int64)])
        keys, slot = np.unique(cols * s + rows, return_inverse=True)  # CSC order: by column, then row
        indices, key_cols = keys % s, keys // s
        indptr = np.concatenate([[0], np.cumsum(np.bincount(key_cols, minlength=s))])
        # Layered (terminating) instances only move to higher state ids: the system is upper
        # triangular and the natural ordering factorises it without fill-in (5-50x faster).
        triangular = bool(np.all(indices <= key_cols))
        plan = _Sparse(source=source, pos=slot[: source.size], diag=slot[source.size:],
                       indices=indices.astype(np.int32), indptr=indptr.astype(np.int32), nnz=int(keys.size),
                       permc="NATURAL" if triangular else "COLAMD",
                       levels=_level_schedule(s, indices, key_cols) if triangular else None)
        _SPARSE_CACHE[mdp] = plan
    return plan


def uses_dense_path(mdp: TeamMDP, method: str = "auto") -> bool:
    """Whether :func:`evaluate` solves ``mdp`` with the dense path under ``method``."""
    if method not in METHODS:
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    if method != "auto":
        return method == "dense"
    s = mdp.n_states
    return s <= DENSE_LIMIT or (s <= DENSE_FULL_LIMIT and mdp.transitions.nnz >= DENSE_FILL * s * s * mdp.n_actions)


def _checked(mdp: TeamMDP, pi: np.ndarray, name: str = "policy") -> np.ndarray:
    """``pi`` as float64 (S, A), validated with two reductions; the detailed message comes from
    TeamMDP.check_policy (same conditions: NaN/inf fail both comparisons below)."""
    pi = np.asarray(pi, dtype=np.float64)
    if pi.shape == (mdp.n_states, mdp.n_actions) and np.abs(pi.sum(axis=1) - 1.0).max() <= 1e-8 and pi.min() >= -_ATOL:
        return pi
    return mdp.check_policy(pi, name)


def policy_transitions(mdp: TeamMDP, pi: np.ndarray) -> sp.csr_matrix:
    """P_pi (S, S) as a sparse matrix, P_pi[x, x'] = sum_a pi(a | x) T(x' | x, a)."""
    s, a = mdp.n_states, mdp.n_actions
    rows = np.repeat(np.arange(s), a)
    cols = np.arange(s * a)
    select = sp.csr_matrix((np.asarray(pi, dtype=np.float64).ravel(), (rows, cols)), shape=(s, s * a))
    return (select @ mdp.transitions).tocsr()


# ---------------------------------------------------------------------------------------------
# The two solvers


def _solve_dense(mdp: TeamMDP, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V (S,), y (S,), Q (S, A)) with y = mu^T (I - gamma P_pi)^-1, by one LU."""
    arr = _dense(mdp)
    g = mdp.gamma
    system = np.einsum("sa,sat->st", pi, arr.T)
    system *= -g
    system.flat[:: mdp.n_states + 1] += 1.0
    lu, piv, info = lapack.dgetrf(system, overwrite_a=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"I - gamma P_pi is singular (getrf info {info})")
    v = lapack.dgetrs(lu, piv, np.einsum("sa,sa->s", pi, arr.r))[0]
    y = lapack.dgetrs(lu, piv, arr.mu, trans=1)[0]
    q = arr.r + g * (arr.T_flat @ v).reshape(arr.r.shape)
    return v, y, q


def _solve_sparse(mdp: TeamMDP, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V (S,), y (S,), Q (S, A)) as :func:`_solve_dense`, with one sparse LU."""
    plan = _sparse(mdp)
    s, g = mdp.n_states, mdp.gamma
    t = mdp.transitions
    data = np.bincount(plan.pos, weights=t.data * pi.ravel()[plan.source], minlength=plan.nnz)
    data *= -g
    data[plan.diag] += 1.0
    r_pi = np.einsum("sa,sa->s", pi, mdp.rewards)
    if plan.levels is not None:
        v = _level_solve(plan, data, r_pi, transpose=False)
        y = _level_solve(plan, data, np.asarray(mdp.initial, dtype=np.float64), transpose=True)
        q = mdp.rewards + g * (t @ v).reshape(s, mdp.n_actions)
        return v, y, q
    system = sp.csc_matrix((data, plan.indices, plan.indptr), shape=(s, s))
    if plan.permc == "NATURAL":
        # Upper triangular: no fill-in and nothing to pivot (each column has only its diagonal on or
        # below the diagonal), so pivot search and supernode relaxation are switched off; measured
        # ~2x faster than the default options and than spsolve_triangular (vote N=64, 25k states).
        lu = spla.splu(system, permc_spec="NATURAL", diag_pivot_thresh=0.0, relax=1, panel_size=1)
    else:
        lu = spla.splu(system, permc_spec=plan.permc)
    v = lu.solve(r_pi)
    y = lu.solve(np.asarray(mdp.initial), trans="T")
    q = mdp.rewards + g * (t @ v).reshape(s, mdp.n_actions)
    return v, y, q


def evaluate(mdp: TeamMDP, pi: np.ndarray, method: Method = "auto", check: bool = True) -> Evaluation:
    """Exact V, Q, A, d and J of team policy ``pi`` (S, A).

    ``method``: "dense", "sparse" or "auto" (see DENSE_LIMIT); ``check=False`` skips the
    validation of ``pi`` (callers that built it themselves)."""
    pi = _checked(mdp, pi) if check else np.asarray(pi, dtype=np.float64)
    v, y, q = (_solve_dense if uses_dense_path(mdp, method) else _solve_sparse)(mdp, pi)
    return Evaluation(V=v, Q=q, A=q - v[:, None], d=(1.0 - mdp.gamma) * y, J=float(mdp.initial @ v))


def evaluate_batch(mdp: TeamMDP, pis: np.ndarray, method: Method = "auto", check: bool = True) -> BatchEvaluation:
    """Exact V, Q, A, d and J of B team policies ``pis`` (B, S, A) on one instance.

    Dense path with S <= BATCH_LIMIT: one batched contraction and batched LAPACK solves (no Python
    loop over the batch); otherwise one solve per policy."""
    pis = np.asarray(pis, dtype=np.float64)
    s, a = mdp.n_states, mdp.n_actions
    if pis.ndim != 3 or pis.shape[1:] != (s, a):
        raise ValueError(f"pis must have shape (B, S, A) = (B, {s}, {a}), got {pis.shape}")
    if check:
        for i in range(pis.shape[0]):
            _checked(mdp, pis[i], f"policy {i}")
    g = mdp.gamma
    if uses_dense_path(mdp, method) and s <= BATCH_LIMIT:
        arr = _dense(mdp)
        system = np.einsum("bsa,sat->bst", pis, arr.T)
        system *= -g
        system += np.eye(s)
        r_pi = np.einsum("bsa,sa->bs", pis, arr.r)
        v = np.linalg.solve(system, r_pi[..., None])[..., 0]
        y = np.linalg.solve(np.swapaxes(system, 1, 2), np.broadcast_to(arr.mu, r_pi.shape)[..., None])[..., 0]
        q = arr.r + g * np.einsum("sat,bt->bsa", arr.T, v)
    else:
        solve = _solve_dense if uses_dense_path(mdp, method) else _solve_sparse
        parts = [solve(mdp, pis[i]) for i in range(pis.shape[0])]
        v, y, q = (np.stack([p[k] for p in parts]) if parts else np.zeros((0, s) if k < 2 else (0, s, a)) for k in range(3))
    return BatchEvaluation(V=v, Q=q, A=q - v[..., None], d=(1.0 - g) * y, J=v @ np.asarray(mdp.initial))


def optimal_J(mdp: TeamMDP, max_iter: int = 200) -> float:
    """J of an optimal team policy (policy iteration with the exact evaluator; the team policy is a
    single-agent policy on X, so a deterministic optimum exists)."""
    s, a = mdp.n_states, mdp.n_actions
    pi = np.full((s, a), 1.0 / a)
    best = None
    for _ in range(max_iter):
        ev = evaluate(mdp, pi)
        greedy = np.argmax(ev.Q + 1e-12 * np.arange(a)[::-1], axis=1)  # ties -> lowest action
        new = np.zeros((s, a))
        new[np.arange(s), greedy] = 1.0
        new[np.asarray(mdp.terminal)] = 1.0 / a
        if best is not None and np.array_equal(greedy, best):
            return float(ev.J)
        best, pi = greedy, new
    return float(evaluate(mdp, pi).J)


def agent_occupancy(mdp: TeamMDP, d: np.ndarray, agent: int, normalise: bool = False) -> np.ndarray:
    """d restricted to X_agent (S,), zero elsewhere; ``normalise`` divides by d(X_agent)."""
    out = np.where(mdp.agent_mask(agent), d, 0.0)
    if normalise:
        mass = out.sum()
        if mass <= 0:
            raise ValueError(f"agent {agent} has zero occupancy: cannot normalise")
        out = out / mass
    return out


def expected_advantage(pi_new: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """f(x) = E_{a ~ pi_new(.|x)} A(x, a), shape (S,)."""
    return np.einsum("sa,sa->s", pi_new, adv)


def surrogate(
    mdp: TeamMDP, d: np.ndarray, adv: np.ndarray, pi_new: np.ndarray, agent: int
) -> float:
    """L = 1/(1-gamma) sum_{x in X_agent} d(x) sum_a pi_new(a|x) A(x, a) for occupancy d (S,) and
    advantage A (S, A) of some base team."""
    mask = mdp.agent_mask(agent)
    f = expected_advantage(pi_new, adv)
    return float(np.sum(d[mask] * f[mask]) / (1.0 - mdp.gamma))


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p(.|x) || q(.|x)) per row (S,), with 0 log 0 = 0 and +inf where q = 0 < p."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=1)


def tv_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation 1/2 sum_a |p - q| per row (S,)."""
    return 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(axis=1)


def update_kl(
    mdp: TeamMDP,
    d: np.ndarray,
    pi_cur: np.ndarray,
    pi_new: np.ndarray,
    agent: int,
    direction: KLDirection = "reverse",
    weighting: Weighting = "team",
) -> float:
    """Expected KL of agent ``agent``'s update under occupancy d (S,).

    direction "reverse": KL(pi_cur || pi_new) (TeamTR); "forward": KL(pi_new || pi_cur).
    weighting "team": sum_{x in X_j} d(x) KL(x) (inactive states contribute 0; the quantity in the
    bounds); "agent": the same divided by d(X_j), i.e. the expectation over the agent's own
    contexts (what a per-message LLM monitor estimates; always >= the team weighting).
    """
    mask = mdp.agent_mask(agent)
    kl = kl_rows(pi_cur, pi_new) if direction == "reverse" else kl_rows(pi_new, pi_cur)
    if direction not in ("reverse", "forward"):
        raise ValueError(f"direction must be 'reverse' or 'forward', got {direction!r}")
    # States with zero occupancy contribute 0 even where the KL is infinite (avoid 0 * inf = nan).
    weighted = mask & (d > 0)
    total = float(np.sum(d[weighted] * kl[weighted]))
    if weighting == "agent":
        mass = float(d[mask].sum())
        return total / mass if mass > 0 else 0.0
    if weighting != "team":
        raise ValueError(f"weighting must be 'team' or 'agent', got {weighting!r}")
    return total


def max_kl(
    mdp: TeamMDP, pi_cur: np.ndarray, pi_new: np.ndarray, agent: int, direction: KLDirection = "forward"
) -> float:
    """Per-state maximum KL over X_agent (SAT's convention is forward: KL(pi_new || pi_cur))."""
    mask = mdp.agent_mask(agent)
    kl = kl_rows(pi_new, pi_cur) if direction == "forward" else kl_rows(pi_cur, pi_new)
    return float(kl[mask].max()) if mask.any() else 0.0


def expected_tv(mdp: TeamMDP, d: np.ndarray, pi_cur: np.ndarray, pi_new: np.ndarray, agent: int) -> float:
    """sum_{x in X_agent} d(x) TV(pi_cur(.|x), pi_new(.|x))."""
    mask = mdp.agent_mask(agent)
    return float(np.sum(d[mask] * tv_rows(pi_cur, pi_new)[mask]))


# ---------------------------------------------------------------------------------------------
# A stage and its evaluations (THEORY.md section 2)


@dataclass(frozen=True)
class UpdateEvaluation:
    """Exact quantities of update i of a stage (agent sigma(i)); all floats.

    - ``improvement``: J(hat_pi^i) - J(hat_pi^{i-1}).
    - ``L_seq``: surrogate with occupancy and advantage of hat_pi^{i-1} (intermediate, TeamTR).
    - ``L_stale_occ``: occupancy of hat_pi^0, advantage of hat_pi^{i-1} (the papers' stale quantity).
    - ``L_stale_batch``: occupancy and advantage of hat_pi^0 (naive sequential training).
    - ``kl_reverse``: E_{d^{hat_pi^{i-1}}}[KL(pi_cur || pi_new)] over X_j, team weighting.
    - ``kl_reverse_agent``: the same, agent weighting (divided by d^{hat_pi^{i-1}}(X_j)).
    - ``kl_forward_max``: max over X_j of KL(pi_new || pi_cur) (SAT).
    - ``tv``: E_{d^{hat_pi^{i-1}}}[TV] over X_j.
    - ``occupancy_drift``: || d^{hat_pi^{i-1}} - d^{hat_pi^0} ||_1 on X_j.
    - ``a_max``: max |A^{hat_pi^{i-1}}| over all (x, a) with x non-terminal.
    - ``eps_achiam``: max_x |E_{a ~ pi_new} A^{hat_pi^{i-1}}(x, a)|.
    - ``value_scale``: max |Q^{hat_pi^{i-1}}|, |V^{hat_pi^{i-1}}|, |V^{hat_pi^i}|: the magnitude the
      differences above (improvement, A = Q - V) are computed from, so their rounding error is a few
      ulp of it (used by the bounds' violation tolerance).
    """

    agent: int
    improvement: float
    L_seq: float
    L_stale_occ: float
    L_stale_batch: float
    kl_reverse: float
    kl_reverse_agent: float
    kl_forward_max: float
    tv: float
    occupancy_drift: float
    a_max: float
    eps_achiam: float
    value_scale: float = 0.0

    def gap(self, mode: str) -> float:
        """Gap_i(mode) = improvement - L_i^mode, mode in {"seq", "stale_occ", "stale_batch"}."""
        return self.improvement - {"seq": self.L_seq, "stale_occ": self.L_stale_occ, "stale_batch": self.L_stale_batch}[mode]


@dataclass(frozen=True)
class StageEvaluation:
    """A stage: J before and after, and one UpdateEvaluation per update in order."""

    J_start: float
    J_end: float
    order: tuple[int, ...]
    updates: tuple[UpdateEvaluation, ...]

    def penalty(self, mode: str) -> float:
        """P(mode) = |sum_i Gap_i(mode)|."""
        return abs(sum(u.gap(mode) for u in self.updates))

    def abs_penalty(self, mode: str) -> float:
        """sum_i |Gap_i(mode)|."""
        return sum(abs(u.gap(mode)) for u in self.updates)


def intermediate_teams(
    mdp: TeamMDP, pi_cur: np.ndarray, order: Sequence[int], new_policies: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """[hat_pi^0, ..., hat_pi^N]: hat_pi^i = hat_pi^{i-1}[sigma(i) <- new_policies[sigma(i)]].

    ``new_policies[j]`` is a team-shaped array (S, A) whose X_j rows are agent j's new policy.
    """
    teams = [mdp.check_policy(pi_cur, "pi_cur")]
    for agent in order:
        teams.append(mdp.replace_agent(teams[-1], agent, new_policies[agent]))
    return teams


def evaluate_stage(
    mdp: TeamMDP,
    pi_cur: np.ndarray,
    order: Sequence[int],
    new_policies: Sequence[np.ndarray],
    method: Method = "auto",
    evaluations: Sequence[Evaluation] = (),
) -> StageEvaluation:
    """Exact stage evaluation: for every update the true improvement, the three surrogates, KLs,
    TV and occupancy drift (see :class:`UpdateEvaluation`).

    ``evaluations`` may hold already computed evaluations of hat_pi^0, hat_pi^1, ... (a prefix of
    the N + 1 intermediate teams, e.g. from the KL-ball steps that built the stage); the rest are
    solved here."""
    order = tuple(int(j) for j in order)
    if sorted(order) != sorted(set(order)):
        raise ValueError(f"order must not repeat an agent, got {order}")
    for j in order:
        mdp._check_agent(j)
    if len(new_policies) != mdp.n_agents:
        raise ValueError(f"new_policies needs one (S, A) array per agent ({mdp.n_agents}), got {len(new_policies)}")
    teams = intermediate_teams(mdp, pi_cur, order, new_policies)
    if len(evaluations) > len(teams):
        raise ValueError(f"evaluations: at most {len(teams)} (hat_pi^0..hat_pi^N), got {len(evaluations)}")
    evals = list(evaluations) + [evaluate(mdp, t, method=method) for t in teams[len(evaluations):]]
    e0 = evals[0]
    updates = []
    nonterminal = ~mdp.terminal
    a_max = [float(np.abs(e.A[nonterminal]).max()) if nonterminal.any() else 0.0 for e in evals[:-1]]
    v_max = [float(np.abs(e.V).max()) for e in evals]
    q_max = [float(np.abs(e.Q).max()) for e in evals[:-1]]
    g = mdp.gamma
    # Everything below is computed on agent j's rows only (the formulas of surrogate, update_kl,
    # max_kl and expected_tv restricted to X_j): O(|X_j|) per update instead of O(S).
    for i, agent in enumerate(order, start=1):
        prev, new = evals[i - 1], evals[i]
        rows = np.flatnonzero(mdp.agent_mask(agent))
        p_prev, p_next = teams[i - 1][rows], teams[i][rows]
        d_rows, d0_rows = prev.d[rows], e0.d[rows]
        f = expected_advantage(p_next, prev.A[rows])
        kl_rev = kl_rows(p_prev, p_next)
        # states with zero occupancy contribute 0 even where the KL is infinite (avoid 0 * inf = nan)
        seen = d_rows > 0
        kl_team = float(np.sum(d_rows[seen] * kl_rev[seen]))
        mass = float(d_rows.sum())
        updates.append(
            UpdateEvaluation(
                agent=agent,
                improvement=new.J - prev.J,
                L_seq=float(np.sum(d_rows * f) / (1.0 - g)),
                L_stale_occ=float(np.sum(d0_rows * f) / (1.0 - g)),
                L_stale_batch=float(np.sum(d0_rows * expected_advantage(p_next, e0.A[rows])) / (1.0 - g)),
                kl_reverse=kl_team,
                kl_reverse_agent=kl_team / mass if mass > 0 else 0.0,
                kl_forward_max=float(kl_rows(p_next, p_prev).max()) if rows.size else 0.0,
                tv=float(np.sum(d_rows * tv_rows(p_prev, p_next))),
                occupancy_drift=float(np.abs(d_rows - d0_rows).sum()),
                a_max=a_max[i - 1],
                eps_achiam=float(np.abs(f).max()) if rows.size else 0.0,
                value_scale=max(q_max[i - 1], v_max[i - 1], v_max[i]),
            )
        )
    return StageEvaluation(J_start=e0.J, J_end=evals[-1].J, order=order, updates=tuple(updates))
