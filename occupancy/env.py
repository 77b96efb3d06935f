"""A TeamMDP as a PettingZoo AEC environment (gymnasium spaces).

- Agents: ``"agent_0" .. "agent_{N-1}"``; the acting agent (``agent_selection``) is router[x] of
  the current state x, so the order of turns is the team's router, not a fixed cycle.
- Spaces: observation ``Discrete(S)`` (the state id as a 0-d int64 array, returned by :meth:`observe` for every agent;
  the state is the shared context), action ``Discrete(A)``; ``state()`` / ``state_space`` give the
  same id.
- Step: the acting agent's action a draws x' ~ T(. | x, a); every agent receives the team reward
  r(x, a) (a cooperative team). Discounting is per turn (``infos[agent]["gamma"]``) and is the
  learner's business: rewards are not discounted here.
- End: all agents are terminated when x' is terminal; truncated after ``max_steps`` messages
  (default: the sampler's horizon, gamma^H <= 1e-8). Dead agents are then stepped with ``None``
  as the AEC API requires.
- Infos: ``{"state": x, "turn": mdp.turn[x] (or -1), "step": t, "gamma": gamma}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv

from occupancy.mdp import TeamMDP
from occupancy.sampling import default_horizon


class TeamAECEnv(AECEnv):
    """The team MDP ``mdp`` as an AEC environment (see the module docstring).

    Args:
        mdp: the TeamMDP.
        max_steps: truncation length; default ``default_horizon(mdp.gamma)``.
        render_mode: None or "ansi" (``render()`` returns a one-line description).
    """

    metadata = {"name": "team_mdp_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def __init__(self, mdp: TeamMDP, max_steps: int | None = None, render_mode: str | None = None) -> None:
        super().__init__()
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.mdp = mdp
        self.render_mode = render_mode
        self.max_steps = default_horizon(mdp.gamma) if max_steps is None else int(max_steps)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.possible_agents = [f"agent_{j}" for j in range(mdp.n_agents)]
        self._obs_space = spaces.Discrete(mdp.n_states)
        self._act_space = spaces.Discrete(mdp.n_actions)
        self.observation_spaces = {a: self._obs_space for a in self.possible_agents}
        self.action_spaces = {a: self._act_space for a in self.possible_agents}
        self.state_space = spaces.Discrete(mdp.n_states)
        self._trans = mdp.transitions.tocsr()
        self._mu = np.clip(np.asarray(mdp.initial, dtype=np.float64), 0, None)
        self._mu /= self._mu.sum()
        self._turn = None if mdp.turn is None else np.asarray(mdp.turn)
        self._rng = np.random.default_rng()
        self._x = 0
        self._t = 0

    def observation_space(self, agent: str) -> spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self.action_spaces[agent]

    # ------------------------------------------------------------------ helpers
    def _info(self) -> dict[str, Any]:
        turn = -1 if self._turn is None else int(self._turn[self._x])
        return {"state": int(self._x), "turn": turn, "step": int(self._t), "gamma": float(self.mdp.gamma)}

    def _select(self) -> None:
        owner = int(self.mdp.router[self._x])
        self.agent_selection = self.possible_agents[owner] if owner >= 0 else self.agents[0]

    # ------------------------------------------------------------------ AEC API
    def reset(self, seed: int | None = None, options: dict | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self._x = int(self._rng.choice(self.mdp.n_states, p=self._mu))
        self._t = 0
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        done = bool(self.mdp.terminal[self._x])
        self.terminations = {a: done for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos = {a: self._info() for a in self.agents}
        self._select()

    def observe(self, agent: str) -> np.ndarray:
        """The state id as a 0-d int64 array (an element of Discrete(S))."""
        return np.array(self._x, dtype=np.int64)

    def state(self) -> np.ndarray:
        return np.array(self._x, dtype=np.int64)

    def step(self, action: Any) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        if action is None or not self._act_space.contains(int(action)):
            raise ValueError(f"{agent}: action must be an int in [0, {self.mdp.n_actions}), got {action!r}")
        a = int(action)
        x = self._x
        reward = float(self.mdp.rewards[x, a])
        row = x * self.mdp.n_actions + a
        lo, hi = self._trans.indptr[row], self._trans.indptr[row + 1]
        probs = self._trans.data[lo:hi]
        self._x = int(self._trans.indices[lo:hi][self._rng.choice(hi - lo, p=probs / probs.sum())])
        self._t += 1
        self._cumulative_rewards[agent] = 0.0
        self.rewards = {ag: reward for ag in self.agents}
        self._accumulate_rewards()
        terminal = bool(self.mdp.terminal[self._x])
        truncated = not terminal and self._t >= self.max_steps
        self.terminations = {ag: terminal for ag in self.agents}
        self.truncations = {ag: truncated for ag in self.agents}
        self.infos = {ag: self._info() for ag in self.agents}
        self._select()

    def render(self) -> str | None:
        if self.render_mode is None:
            return None
        return f"step {self._t}: state {self._x}, active {self.agent_selection}"

    def close(self) -> None:
        pass


def team_env(mdp: TeamMDP, **kwargs: Any) -> TeamAECEnv:
    """``TeamAECEnv(mdp, **kwargs)``."""
    return TeamAECEnv(mdp, **kwargs)


__all__ = ["TeamAECEnv", "team_env"]
