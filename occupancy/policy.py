"""TabularAgent: a softmax table over the states an agent owns; what the shared core trains.

Agent j of a :class:`occupancy.mdp.TeamMDP` acts on X_j = {x : router[x] == j}. Its policy is
pi_j(a | x) = softmax(logits[row(x)])_a with one trainable logit row (A,) per owned state, i.e. a
parameter of shape (|X_j|, A), float64 by default so that its tables pass the exact engine's
row-sum check (1e-8) without renormalisation.

It implements :class:`trust_region.interfaces.AgentPolicy` and
:class:`trust_region.interfaces.ExactKLPolicy` (the reference pi_cur is a copy of the logit table)
for the tabular MessageBatch of
:mod:`occupancy.sampling` (one message = one action: state in ``batch.context[:, 0]``, action in
``batch.tokens[:, 0]``), and the sampler's team contract through :meth:`probs` ((|X_j|, A) rows in
increasing state order). :func:`team_table` assembles the team policy (S, A) for the exact engine.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from occupancy.mdp import TeamMDP
from trust_region.batch import MessageBatch
from trust_region.kl import categorical_kl

#: probabilities are floored at this before taking logs of an initial policy (keeps logits finite)
PROB_FLOOR = 1e-300


class TabularAgent(torch.nn.Module):
    """Softmax policy of agent ``agent_id`` on its own states.

    Args:
        agent_id: j, in [0, mdp.n_agents).
        mdp: the TeamMDP (its router defines the owned states).
        init_policy: optional initial policy, a team table (S, A) (rows of X_j used) or the agent's
            rows (|X_j|, A); default uniform. Logits are log-probabilities (floored at 1e-300).
        dtype: parameter dtype (float64 default).
    """

    def __init__(
        self, agent_id: int, mdp: TeamMDP, init_policy: np.ndarray | Tensor | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        mdp._check_agent(agent_id)
        self.agent_id = int(agent_id)
        router = np.asarray(mdp.router)
        owned = np.flatnonzero(router == agent_id)
        row_of = np.full(mdp.n_states, -1, dtype=np.int64)
        row_of[owned] = np.arange(owned.size)
        self.n_states, self.n_actions = mdp.n_states, mdp.n_actions
        self.register_buffer("states", torch.from_numpy(owned.astype(np.int64)), persistent=False)
        self.register_buffer("row_of", torch.from_numpy(row_of), persistent=False)
        if init_policy is None:
            logits = torch.zeros(owned.size, mdp.n_actions, dtype=dtype)
        else:
            p = init_policy.detach().cpu().numpy() if isinstance(init_policy, Tensor) else np.asarray(init_policy)
            p = np.asarray(p, dtype=np.float64)
            if p.shape == (mdp.n_states, mdp.n_actions):
                p = p[owned]
            elif p.shape != (owned.size, mdp.n_actions):
                raise ValueError(
                    f"init_policy must have shape (S, A) = {(mdp.n_states, mdp.n_actions)} or "
                    f"(|X_j|, A) = {(owned.size, mdp.n_actions)}, got {p.shape}"
                )
            if not np.all(np.isfinite(p)) or p.min() < 0:
                raise ValueError("init_policy must be finite and non-negative")
            sums = p.sum(axis=1)
            if owned.size and np.abs(sums - 1.0).max() > 1e-6:
                raise ValueError("init_policy rows must be distributions")
            logits = torch.from_numpy(np.log(np.clip(p, PROB_FLOOR, None))).to(dtype)
        self.logits = torch.nn.Parameter(logits)

    # ------------------------------------------------------------------ AgentPolicy
    def _rows(self, batch: MessageBatch) -> Tensor:
        """(M,) row of each message's state in the logit table; ValueError for a state the agent
        does not own or an action out of range."""
        states = batch.context[:, 0]
        if bool(((states < 0) | (states >= self.n_states)).any()):
            raise ValueError(f"TabularAgent {self.agent_id}: state id out of [0, {self.n_states})")
        rows = self.row_of[states]
        if bool((rows < 0).any()):
            bad = int(states[rows < 0][0])
            raise ValueError(f"TabularAgent {self.agent_id}: state {bad} is not owned by this agent")
        actions = batch.tokens[:, 0]
        if bool(((actions < 0) | (actions >= self.n_actions)).any()):
            raise ValueError(f"TabularAgent {self.agent_id}: action out of [0, {self.n_actions})")
        return rows

    def log_probs(self, batch: MessageBatch) -> Tensor:
        """(M, T) log pi_j(a | x) with x = batch.context[:, 0], a = batch.tokens[:, 0] in column 0
        (further columns, padding in the tabular engine, hold 0). Raises ValueError for a state the
        agent does not own or an action out of range."""
        rows = self._rows(batch)
        logp = torch.log_softmax(self.logits[rows], dim=-1).gather(1, batch.tokens[:, 0:1])  # (M, 1)
        t = batch.tokens.shape[1]
        if t == 1:
            return logp
        return torch.cat([logp, torch.zeros(len(batch), t - 1, dtype=logp.dtype)], dim=1)

    # ------------------------------------------------------------------ ExactKLPolicy
    def kl_reference(self, batch: MessageBatch) -> Tensor:
        """pi_cur for :meth:`exact_kl`: a copy of the logit table (|X_j|, A) (any batch)."""
        return self.logits.detach().clone()

    def exact_kl(self, batch: MessageBatch, reference: Tensor, direction: str = "reverse") -> Tensor:
        """(M, T) float64: column 0 the exact KL over the action set at each message's state between
        the reference table and the current one (``"reverse"``: KL(pi_ref || pi), ``"forward"``:
        KL(pi || pi_ref)); further columns 0."""
        rows = self._rows(batch)
        with torch.no_grad():
            kl = categorical_kl(torch.log_softmax(reference[rows].to(torch.float64), dim=-1),
                                torch.log_softmax(self.logits.detach()[rows].to(torch.float64), dim=-1), direction)
        out = torch.zeros(batch.tokens.shape, dtype=torch.float64)
        out[:, 0] = kl
        return out

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [self.logits]

    def snapshot(self) -> Tensor:
        """A copy of the logits (the only trainable parameters)."""
        return self.logits.detach().clone()

    def restore(self, snapshot: Tensor) -> None:
        """Write the logits of :meth:`snapshot` back in place (the optimizer keeps its reference)."""
        with torch.no_grad():
            self.logits.copy_(snapshot)

    # ------------------------------------------------------------------ tables
    def probs(self) -> Tensor:
        """pi_j on its own states (|X_j|, A), rows in increasing state order (detached)."""
        return torch.softmax(self.logits.detach(), dim=-1)

    def table(self) -> np.ndarray:
        """(S, A) float64: the agent's rows where it is active, uniform elsewhere."""
        out = np.full((self.n_states, self.n_actions), 1.0 / self.n_actions)
        out[self.states.numpy()] = self.probs().to(torch.float64).numpy()
        return out


def make_tabular_team(mdp: TeamMDP, init_policy: np.ndarray | None = None) -> list[TabularAgent]:
    """One :class:`TabularAgent` per agent of ``mdp``, all from the same initial team table."""
    return [TabularAgent(j, mdp, init_policy) for j in range(int(mdp.n_agents))]


def team_table(mdp: TeamMDP, team: Sequence[TabularAgent]) -> np.ndarray:
    """The team policy (S, A) float64 assembled from each agent's rows (terminal rows uniform)."""
    pi = np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
    for agent in team:
        pi[agent.states.numpy()] = agent.probs().to(torch.float64).numpy()
    return mdp.check_policy(pi, "team policy")


__all__ = ["TabularAgent", "make_tabular_team", "team_table"]
