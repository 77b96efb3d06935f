"""Exact evaluation of a team policy in float64 (THEORY.md sections 1-2).

Shapes: S states, A actions. A team policy ``pi`` is an array (S, A).

- V^pi = (I - gamma P_pi)^-1 r_pi; Q^pi(x, a) = r(x, a) + gamma sum_x' T(x' | x, a) V^pi(x');
  A^pi = Q^pi - V^pi.
- d^pi = (1 - gamma) mu^T (I - gamma P_pi)^-1, the normalised discounted occupancy, so that
  J(pi) = mu^T V^pi = 1 / (1 - gamma) * E_{x ~ d^pi, a ~ pi}[r(x, a)].

Both solves share one factorisation of (I - gamma P_pi): a dense LU for small S (<= DENSE_LIMIT),
a sparse LU (scipy.sparse.linalg.splu) otherwise, in natural order when the system is triangular.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from occupancy.mdp import TeamMDP

DENSE_LIMIT = 256
Method = Literal["auto", "dense", "sparse"]
KLDirection = Literal["reverse", "forward"]
Weighting = Literal["team", "agent"]


@dataclass(frozen=True)
class Evaluation:
    """Exact quantities of one team policy: V (S,), Q (S, A), A (S, A), d (S,), J."""

    V: np.ndarray
    Q: np.ndarray
    A: np.ndarray
    d: np.ndarray
    J: float


def policy_transitions(mdp: TeamMDP, pi: np.ndarray) -> sp.csr_matrix:
    """P_pi (S, S) with P_pi[x, x'] = sum_a pi(a | x) T(x' | x, a)."""
    s, a = mdp.n_states, mdp.n_actions
    rows = np.repeat(np.arange(s), a)
    cols = np.arange(s * a)
    select = sp.csr_matrix((np.asarray(pi, dtype=np.float64).ravel(), (rows, cols)), shape=(s, s * a))
    return (select @ mdp.transitions).tocsr()


def evaluate(mdp: TeamMDP, pi: np.ndarray, method: Method = "auto", check: bool = True) -> Evaluation:
    """Exact V, Q, A, d and J of team policy ``pi`` (S, A)."""
    if check:
        pi = mdp.check_policy(pi)
    s = mdp.n_states
    gamma = mdp.gamma
    r_pi = np.einsum("sa,sa->s", pi, mdp.rewards)
    p_pi = policy_transitions(mdp, pi)
    use_dense = method == "dense" or (method == "auto" and s <= DENSE_LIMIT)
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    if use_dense:
        system = np.eye(s) - gamma * p_pi.toarray()
        lu = sla.lu_factor(system)
        v = sla.lu_solve(lu, r_pi)
        y = sla.lu_solve(lu, mdp.initial, trans=1)
    else:
        system = (sp.identity(s, format="csc") - gamma * p_pi.tocsc()).tocsc()
        # Layered (terminating) instances only move to higher state ids: the system is upper
        # triangular and the natural ordering factorises it without fill-in (5-50x faster).
        triangular = sp.tril(system, -1).nnz == 0
        lu = spla.splu(system, permc_spec="NATURAL" if triangular else "COLAMD")
        v = lu.solve(r_pi)
        y = lu.solve(mdp.initial, trans="T")
    d = (1.0 - gamma) * y
    q = mdp.rewards + gamma * (mdp.transitions @ v).reshape(s, mdp.n_actions)
    adv = q - v[:, None]
    return Evaluation(V=v, Q=q, A=adv, d=d, J=float(mdp.initial @ v))


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
    for i, agent in enumerate(order, start=1):
        prev, new = evals[i - 1], evals[i]
        pi_prev, pi_next = teams[i - 1], teams[i]
        mask = mdp.agent_mask(agent)
        f = expected_advantage(pi_next, prev.A)
        updates.append(
            UpdateEvaluation(
                agent=agent,
                improvement=new.J - prev.J,
                L_seq=surrogate(mdp, prev.d, prev.A, pi_next, agent),
                L_stale_occ=surrogate(mdp, e0.d, prev.A, pi_next, agent),
                L_stale_batch=surrogate(mdp, e0.d, e0.A, pi_next, agent),
                kl_reverse=update_kl(mdp, prev.d, pi_prev, pi_next, agent, "reverse", "team"),
                kl_reverse_agent=update_kl(mdp, prev.d, pi_prev, pi_next, agent, "reverse", "agent"),
                kl_forward_max=max_kl(mdp, pi_prev, pi_next, agent, "forward"),
                tv=expected_tv(mdp, prev.d, pi_prev, pi_next, agent),
                occupancy_drift=float(np.abs(prev.d[mask] - e0.d[mask]).sum()),
                a_max=float(np.abs(prev.A[nonterminal]).max()) if nonterminal.any() else 0.0,
                eps_achiam=float(np.abs(f[mask]).max()) if mask.any() else 0.0,
            )
        )
    return StageEvaluation(J_start=e0.J, J_end=evals[-1].J, order=order, updates=tuple(updates))
