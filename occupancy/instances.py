"""Random instances of the theory engine: generic random TeamMDPs and random team policies.

Used by the bound checks (``experiments.bound_check``, ``experiments.bound_tightness``), the
property tests and the exact-engine benchmark. Structured families (boards, votes, crowds) live in
:mod:`occupancy.families`.
"""

from __future__ import annotations

import numpy as np

from occupancy.mdp import TeamMDP


def random_team_mdp(
    rng: np.random.Generator,
    n_agents: int,
    n_states: int,
    n_actions: int,
    gamma: float,
    *,
    concentration: float = 0.3,
    p_terminal: float = 0.1,
) -> TeamMDP:
    """A generic random TeamMDP: ``n_states`` non-terminal states plus one absorbing terminal state.

    Every agent owns at least one state (random router); transitions are Dirichlet(concentration)
    rows (small concentration: nearly deterministic, large occupancy shifts) with an extra
    ``p_terminal`` chance of ending; rewards uniform in [-1, 1]; mu Dirichlet(1) on non-terminals.
    Shapes of the result: S = n_states + 1 states, A = n_actions actions.
    """
    if n_states < n_agents:
        raise ValueError(f"n_states ({n_states}) must be >= n_agents ({n_agents})")
    s_all = n_states + 1
    router = np.concatenate([np.arange(n_agents), rng.integers(0, n_agents, n_states - n_agents)])
    rng.shuffle(router)
    router = np.concatenate([router, [-1]]).astype(np.int64)
    trans = np.zeros((s_all, n_actions, s_all))
    body = rng.dirichlet(np.full(n_states, concentration), size=(n_states, n_actions))
    trans[:n_states, :, :n_states] = (1.0 - p_terminal) * body
    trans[:n_states, :, n_states] += p_terminal
    trans[n_states, :, n_states] = 1.0
    rewards = np.zeros((s_all, n_actions))
    rewards[:n_states] = rng.uniform(-1.0, 1.0, size=(n_states, n_actions))
    initial = np.zeros(s_all)
    initial[:n_states] = rng.dirichlet(np.ones(n_states))
    terminal = np.zeros(s_all, dtype=bool)
    terminal[n_states] = True
    return TeamMDP(
        transitions=trans, rewards=rewards, router=router, initial=initial, gamma=gamma,
        n_agents=n_agents, terminal=terminal, name="random",
        info={"generator": "random_team_mdp", "concentration": concentration, "p_terminal": p_terminal},
    )


def random_policy(mdp: TeamMDP, rng: np.random.Generator, temperature: float) -> np.ndarray:
    """Softmax of Gaussian logits / temperature, shape (S, A); low temperature = near-deterministic."""
    logits = rng.normal(size=(mdp.n_states, mdp.n_actions)) / max(temperature, 1e-6)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
