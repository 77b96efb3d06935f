"""TeamMDP: a turn-based team MDP (THEORY.md section 1), validated at construction.

A finite state set X (size S), a common finite action set (size A), a router naming the single
active agent of every non-terminal state, transitions T(x' | x, a), rewards r(x, a), an initial
distribution mu and a per-turn discount gamma in [0, 1).

The team policy pi = (pi_1, ..., pi_N) is an array (S, A) whose rows are owned by agents: agent j
acts on X_j = {x : router[x] == j}. Terminal states are absorbing with zero reward; they have no
owner (router -1) and their policy rows are irrelevant.

Transitions are stored once, as a scipy CSR matrix of shape (S * A, S) with row ``x * A + a``,
so that the same object serves dense solves of tiny instances and sparse solves of 10^5+ states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

_ATOL = 1e-9


def _fail(msg: str) -> None:
    raise ValueError(f"TeamMDP: {msg}")


@dataclass(frozen=True, eq=False)
class TeamMDP:
    """See the module docstring. Build with dense (S, A, S) or sparse (S*A, S) transitions.

    Args:
        transitions: T, dense array (S, A, S) or scipy sparse matrix (S*A, S); rows are distributions.
        rewards: r, array (S, A), finite.
        router: int array (S,), the active agent of each state in [0, n_agents); -1 only for terminal states.
        initial: mu, array (S,), a distribution.
        gamma: per-turn discount in [0, 1).
        n_agents: N; defaults to max(router) + 1.
        terminal: bool array (S,), absorbing zero-reward states without owner; default none.
        turn: optional int array (S,) giving the turn index of each state (structured instances).
        name: a label for reports.
        info: free-form description of how the instance was built (family parameters, seed).
    """

    transitions: Any
    rewards: np.ndarray
    router: np.ndarray
    initial: np.ndarray
    gamma: float
    n_agents: int | None = None
    terminal: np.ndarray | None = None
    turn: np.ndarray | None = None
    name: str = "team-mdp"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        rewards = np.asarray(self.rewards, dtype=np.float64)
        if rewards.ndim != 2:
            _fail(f"rewards must have shape (S, A), got {rewards.shape}")
        n_states, n_actions = rewards.shape
        if n_states < 1 or n_actions < 1:
            _fail(f"need at least one state and one action, got rewards shape {rewards.shape}")
        if not np.all(np.isfinite(rewards)):
            _fail("rewards must be finite")

        trans = self.transitions
        if sp.issparse(trans):
            if trans.shape != (n_states * n_actions, n_states):
                _fail(f"sparse transitions must have shape (S*A, S) = {(n_states * n_actions, n_states)}, got {trans.shape}")
            trans = sp.csr_matrix(trans, dtype=np.float64)
        else:
            arr = np.asarray(trans, dtype=np.float64)
            if arr.shape != (n_states, n_actions, n_states):
                _fail(f"transitions must have shape (S, A, S) = {(n_states, n_actions, n_states)}, got {arr.shape}")
            trans = sp.csr_matrix(arr.reshape(n_states * n_actions, n_states))
        trans.sum_duplicates()
        if trans.nnz and (not np.all(np.isfinite(trans.data)) or trans.data.min() < -_ATOL):
            _fail("transition probabilities must be finite and non-negative")
        row_sums = np.asarray(trans.sum(axis=1)).ravel()
        bad = np.flatnonzero(np.abs(row_sums - 1.0) > 1e-8)
        if bad.size:
            x, a = divmod(int(bad[0]), n_actions)
            _fail(
                f"transition row (state {x}, action {a}) is not a distribution: sums to {row_sums[bad[0]]:.6g} "
                f"({bad.size} bad rows)"
            )

        initial = np.asarray(self.initial, dtype=np.float64)
        if initial.shape != (n_states,):
            _fail(f"initial distribution must have shape (S,) = ({n_states},), got {initial.shape}")
        if initial.min() < -_ATOL or abs(initial.sum() - 1.0) > 1e-8:
            _fail(f"initial distribution must be non-negative and sum to 1, sums to {initial.sum():.6g}")

        gamma = float(self.gamma)
        if not (0.0 <= gamma < 1.0):
            _fail(f"gamma must be in [0, 1), got {self.gamma}")

        terminal = (
            np.zeros(n_states, dtype=bool) if self.terminal is None else np.asarray(self.terminal, dtype=bool)
        )
        if terminal.shape != (n_states,):
            _fail(f"terminal must have shape (S,) = ({n_states},), got {terminal.shape}")

        router = np.asarray(self.router)
        if router.shape != (n_states,):
            _fail(f"router must have shape (S,) = ({n_states},), got {router.shape}")
        if not np.issubdtype(router.dtype, np.integer):
            _fail(f"router must hold integer agent ids, got dtype {router.dtype}")
        router = router.astype(np.int64)
        n_agents = int(router.max()) + 1 if self.n_agents is None else int(self.n_agents)
        if n_agents < 1:
            _fail(f"n_agents must be >= 1, got {n_agents}")
        orphan = np.flatnonzero(~terminal & ((router < 0) | (router >= n_agents)))
        if orphan.size:
            _fail(
                f"state {int(orphan[0])} has no owner: router value {int(router[orphan[0]])} is not an agent in "
                f"[0, {n_agents}) and the state is not terminal ({orphan.size} such states)"
            )
        if np.any(terminal & (router != -1)):
            _fail("terminal states must have router value -1 (no owner)")
        if terminal.any():
            term_idx = np.flatnonzero(terminal)
            if np.abs(rewards[term_idx]).max() > 0:
                _fail("terminal states must have zero reward")
            rows = (term_idx[:, None] * n_actions + np.arange(n_actions)[None, :]).ravel()
            self_prob = np.asarray(trans[rows, np.repeat(term_idx, n_actions)]).ravel()
            if np.any(np.abs(self_prob - 1.0) > 1e-8):
                _fail("terminal states must be absorbing (T(x | x, a) = 1)")

        turn = None if self.turn is None else np.asarray(self.turn, dtype=np.int64)
        if turn is not None and turn.shape != (n_states,):
            _fail(f"turn must have shape (S,) = ({n_states},), got {turn.shape}")

        for name, value in (
            ("transitions", trans),
            ("rewards", rewards),
            ("router", router),
            ("initial", initial),
            ("gamma", gamma),
            ("n_agents", n_agents),
            ("terminal", terminal),
            ("turn", turn),
        ):
            object.__setattr__(self, name, value)
        for arr in (rewards, router, initial, terminal):
            arr.setflags(write=False)

    # ------------------------------------------------------------------ sizes
    @property
    def n_states(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.rewards.shape[1])

    def agent_mask(self, agent: int) -> np.ndarray:
        """Bool (S,): the states X_j where ``agent`` is active."""
        self._check_agent(agent)
        return self.router == agent

    def _check_agent(self, agent: int) -> None:
        if not (0 <= int(agent) < self.n_agents):
            raise ValueError(f"agent must be in [0, {self.n_agents}), got {agent}")

    def dense_transitions(self) -> np.ndarray:
        """T as a dense array (S, A, S); only for small instances."""
        return self.transitions.toarray().reshape(self.n_states, self.n_actions, self.n_states)

    # ------------------------------------------------------------------ policies
    def uniform_policy(self) -> np.ndarray:
        """The uniform team policy (S, A)."""
        return np.full((self.n_states, self.n_actions), 1.0 / self.n_actions)

    def check_policy(self, pi: np.ndarray, name: str = "policy") -> np.ndarray:
        """Validate a team policy (S, A) and return it as float64."""
        pi = np.asarray(pi, dtype=np.float64)
        if pi.shape != (self.n_states, self.n_actions):
            raise ValueError(f"{name} must have shape (S, A) = {(self.n_states, self.n_actions)}, got {pi.shape}")
        if not np.all(np.isfinite(pi)) or pi.min() < -_ATOL:
            raise ValueError(f"{name} must be finite and non-negative")
        sums = pi.sum(axis=1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-8)
        if bad.size:
            raise ValueError(f"{name} row {int(bad[0])} is not a distribution: sums to {sums[bad[0]]:.6g}")
        return pi

    def replace_agent(self, pi: np.ndarray, agent: int, new: np.ndarray) -> np.ndarray:
        """The team ``pi`` with agent ``agent``'s rows taken from ``new`` (both (S, A))."""
        mask = self.agent_mask(agent)
        out = np.array(pi, dtype=np.float64, copy=True)
        out[mask] = np.asarray(new, dtype=np.float64)[mask]
        return out
