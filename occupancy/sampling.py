"""Vectorised team rollouts of a TeamMDP that produce a :class:`trust_region.batch.MessageBatch`.

Many trajectories advance together (numpy, one vectorised step per turn). Every visit of a
non-terminal state x is one *message*: the active agent router[x] draws one action (one "token").

MessageBatch fields as filled here (M messages):
- ``context`` (M, 1): the state id x; ``tokens`` (M, 1): the action a; masks all True.
- ``agent``: router[x]; ``turn``: the step index t inside the trajectory (0, 1, ...).
- ``behaviour_logp`` (M, 1): log pi(a | x) of the team that sampled the message (float32).
- ``reward`` (M,): the immediate reward r(x, a) (the MDP's expected reward; the tabular engine has
  deterministic rewards, so the only randomness is in actions and transitions).
- ``returns`` (M,): the discounted return of the whole trajectory from turn 0,
  G = sum_t gamma^t r(x_t, a_t), with the per-turn gamma (the same value on every message of the
  trajectory).
- ``group``: the index of the trajectory's prompt in ``prompts``; ``trajectory``: prompt_index *
  group_size + member; ``generated``: True, or False for messages kept by prefix reuse.

Prompts: in the tabular engine a "prompt" is an initial state drawn from mu
(:func:`draw_prompts`); the ``group_size`` trajectories of a prompt all start there.

Episodes run until the terminal state or for at most ``horizon`` steps. The default horizon is
H = ceil(log(tol) / log(gamma)) with tol = 1e-8 (H = 1 for gamma = 0), so that gamma^H <= 1e-8.
Truncation bias: the discarded tail of a return is sum_{t >= H} gamma^t r_t, so
|E[G_H] - J| <= gamma^H max|r| / (1 - gamma) <= 1e-8 max|r| / (1 - gamma), and the sampled
occupancy misses at most gamma^H <= 1e-8 of its mass. Terminating families (rounds >= 1) end before
H whenever R * N < H (e.g. gamma = 0.95 gives H = 360).

Team contract (``team`` argument of :meth:`TabularSampler.sample` and ``resample_from``):
- a team policy array (S, A) (numpy or torch), rows are distributions; or
- a sequence of N agent objects, agent j exposing either ``table() -> (S, A)`` (its full policy
  table; only the rows of X_j = {x : router[x] == j} are used) or ``probs()`` returning a
  numpy/torch array that is either (S, A) (rows of X_j used) or (|X_j|, A) (the rows of X_j in
  increasing state order). The team policy is assembled from agent j's rows where router == j;
  terminal rows are set uniform (they are never used). Torch tensors are detached and copied to
  float64 numpy.

Randomness: every draw goes through ``TabularSampler.rng`` (a numpy Generator seeded by
``seed``); save ``sampler.rng.bit_generator.state`` to resume exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from occupancy.mdp import TeamMDP
from trust_region.batch import MessageBatch

DEFAULT_TOL = 1e-8


def default_horizon(gamma: float, tol: float = DEFAULT_TOL) -> int:
    """Smallest H with gamma^H <= tol (1 for gamma = 0)."""
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    if gamma <= 0:
        return 1
    return max(1, int(math.ceil(math.log(tol) / math.log(gamma))))


def draw_prompts(mdp: TeamMDP, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` initial states drawn i.i.d. from mu, int64 (n,)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    mu = np.clip(np.asarray(mdp.initial, dtype=np.float64), 0.0, None)
    return rng.choice(mdp.n_states, size=int(n), p=mu / mu.sum()).astype(np.int64)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def team_policy(mdp: TeamMDP, team: Any) -> np.ndarray:
    """The team policy (S, A) float64 from an array or a sequence of agents (module docstring)."""
    s, a = mdp.n_states, mdp.n_actions
    if isinstance(team, (np.ndarray, torch.Tensor)):
        pi = _to_numpy(team).copy()
        if pi.shape != (s, a):
            raise ValueError(f"team policy must have shape (S, A) = {(s, a)}, got {pi.shape}")
    else:
        agents = list(team)
        if len(agents) != mdp.n_agents:
            raise ValueError(f"team needs one agent per router id ({mdp.n_agents}), got {len(agents)}")
        pi = np.full((s, a), 1.0 / a)
        router = np.asarray(mdp.router)
        for j, agent in enumerate(agents):
            rows = router == j
            if hasattr(agent, "table"):
                tab = _to_numpy(agent.table())
            elif hasattr(agent, "probs"):
                tab = _to_numpy(agent.probs())
            else:
                raise TypeError(f"agent {j} ({type(agent).__name__}) has neither table() nor probs()")
            if tab.shape == (s, a):
                pi[rows] = tab[rows]
            elif tab.shape == (int(rows.sum()), a):
                pi[rows] = tab
            else:
                raise ValueError(
                    f"agent {j}'s table must have shape (S, A) = {(s, a)} or (|X_j|, A) = {(int(rows.sum()), a)}, got {tab.shape}"
                )
    pi[np.asarray(mdp.terminal)] = 1.0 / a
    return mdp.check_policy(pi, "team policy")


@dataclass(frozen=True)
class _Messages:
    """Flat per-message arrays (m,) of a set of rollouts (unsorted)."""

    traj: np.ndarray
    turn: np.ndarray
    state: np.ndarray
    action: np.ndarray
    logp: np.ndarray
    reward: np.ndarray


class TabularSampler:
    """Vectorised rollouts of ``mdp`` (see the module docstring for the contract).

    Args:
        mdp: the TeamMDP.
        seed: seed of ``self.rng``.
        horizon: maximum trajectory length; default :func:`default_horizon` (gamma^H <= tol).
        tol: truncation tolerance used for the default horizon.
    """

    def __init__(self, mdp: TeamMDP, seed: int = 0, *, horizon: int | None = None, tol: float = DEFAULT_TOL) -> None:
        self.mdp = mdp
        self.rng = np.random.default_rng(seed)
        self.horizon = default_horizon(mdp.gamma, tol) if horizon is None else int(horizon)
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        trans = mdp.transitions.tocsr()
        trans.sort_indices()
        self._indptr = trans.indptr.astype(np.int64)
        self._indices = trans.indices.astype(np.int64)
        counts = np.diff(self._indptr)
        row_of = np.repeat(np.arange(trans.shape[0], dtype=np.int64), counts)
        cum = np.cumsum(trans.data)
        start = np.concatenate([[0.0], cum])[self._indptr[:-1]]
        total = np.concatenate([[0.0], cum])[self._indptr[1:]] - start
        local = (cum - start[row_of]) / np.where(total > 0, total, 1.0)[row_of]
        # strictly increasing across rows: key in (row, row + 1]
        self._key = row_of + np.minimum(local, 1.0)
        self._terminal = np.asarray(mdp.terminal)
        self._discount = mdp.gamma ** np.arange(self.horizon + 1, dtype=np.float64)

    # ------------------------------------------------------------------ prompts
    def draw_prompts(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """``n`` initial states from mu (int64 (n,)), drawn with ``rng`` (default ``self.rng``)."""
        return draw_prompts(self.mdp, n, self.rng if rng is None else rng)

    # ------------------------------------------------------------------ core
    def _next_states(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        rows = states * self.mdp.n_actions + actions
        target = rows + self.rng.random(rows.shape[0])
        pos = np.searchsorted(self._key, target, side="right")
        pos = np.clip(pos, self._indptr[rows], self._indptr[rows + 1] - 1)
        return self._indices[pos]

    def _actions(self, pi: np.ndarray, states: np.ndarray) -> np.ndarray:
        cum = np.cumsum(pi[states], axis=1)
        u = self.rng.random(states.shape[0])[:, None] * cum[:, -1:]
        return np.minimum((cum <= u).sum(axis=1), pi.shape[1] - 1)

    def _rollout(self, pi: np.ndarray, start: np.ndarray, start_turn: np.ndarray) -> _Messages:
        """Roll out trajectories b = 0..B-1 from state start[b] at step start_turn[b] until the
        terminal state or step ``horizon``."""
        b = start.shape[0]
        traj_ids = np.arange(b, dtype=np.int64)
        x = start.astype(np.int64).copy()
        t = start_turn.astype(np.int64).copy()
        alive = ~self._terminal[x] & (t < self.horizon)
        log_pi = np.log(np.where(pi > 0, pi, 1.0))
        out: list[tuple[np.ndarray, ...]] = []
        while alive.any():
            idx = np.flatnonzero(alive)
            xs = x[idx]
            acts = self._actions(pi, xs)
            out.append((traj_ids[idx], t[idx], xs, acts, log_pi[xs, acts], self.mdp.rewards[xs, acts]))
            x[idx] = self._next_states(xs, acts)
            t[idx] += 1
            alive[idx] = ~self._terminal[x[idx]] & (t[idx] < self.horizon)
        if not out:
            empty_i = np.zeros(0, dtype=np.int64)
            return _Messages(empty_i, empty_i, empty_i, empty_i, np.zeros(0), np.zeros(0))
        cols = [np.concatenate(c) for c in zip(*out)]
        return _Messages(*cols)

    def _to_batch(
        self, traj: np.ndarray, group: np.ndarray, turn: np.ndarray, state: np.ndarray, action: np.ndarray,
        logp: np.ndarray, reward: np.ndarray, generated: np.ndarray, n_traj: int,
    ) -> MessageBatch:
        order = np.lexsort((turn, traj))
        traj, group, turn, state, action, logp, reward, generated = (
            v[order] for v in (traj, group, turn, state, action, logp, reward, generated)
        )
        ret = np.bincount(traj, weights=self._discount[turn] * reward, minlength=n_traj)
        m = traj.shape[0]
        return MessageBatch(
            trajectory=torch.from_numpy(traj.astype(np.int64)),
            group=torch.from_numpy(group.astype(np.int64)),
            agent=torch.from_numpy(np.asarray(self.mdp.router)[state].astype(np.int64)),
            turn=torch.from_numpy(turn.astype(np.int64)),
            context=torch.from_numpy(state.astype(np.int64)).reshape(m, 1),
            context_mask=torch.ones(m, 1, dtype=torch.bool),
            tokens=torch.from_numpy(action.astype(np.int64)).reshape(m, 1),
            mask=torch.ones(m, 1, dtype=torch.bool),
            behaviour_logp=torch.from_numpy(logp.astype(np.float32)).reshape(m, 1),
            reward=torch.from_numpy(reward.astype(np.float32)),
            returns=torch.from_numpy(ret[traj].astype(np.float32)),
            generated=torch.from_numpy(generated.astype(bool)),
        )

    # ------------------------------------------------------------------ public
    def sample(self, team: Any, prompts: Sequence[int] | np.ndarray, group_size: int) -> MessageBatch:
        """Fresh rollouts of ``team``: ``group_size`` trajectories from every prompt state.

        Args:
            team: (S, A) policy or a sequence of agents (module docstring).
            prompts: initial state ids (P,), e.g. from :meth:`draw_prompts`.
            group_size: G >= 1 trajectories per prompt.

        Returns:
            MessageBatch of the P * G trajectories (trajectory id = p * G + g, group = p). A
            trajectory that starts in a terminal state has no message.
        """
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        prompts = np.asarray(prompts, dtype=np.int64).reshape(-1)
        if prompts.size and (prompts.min() < 0 or prompts.max() >= self.mdp.n_states):
            raise ValueError(f"prompts must be state ids in [0, {self.mdp.n_states})")
        pi = team_policy(self.mdp, team)
        start = np.repeat(prompts, group_size)
        n_traj = start.shape[0]
        msgs = self._rollout(pi, start, np.zeros(n_traj, dtype=np.int64))
        group = msgs.traj // group_size
        return self._to_batch(
            msgs.traj, group, msgs.turn, msgs.state, msgs.action, msgs.logp, msgs.reward,
            np.ones(msgs.traj.shape[0], dtype=bool), n_traj,
        )

    def resample_from(self, team: Any, batch: MessageBatch, agent: int) -> MessageBatch:
        """Prefix reuse: keep every trajectory of ``batch`` up to (excluding) the first turn of
        ``agent`` and regenerate the rest from that state with ``team``. Trajectories in which
        ``agent`` never speaks are kept whole. Kept messages have ``generated=False`` (their
        ``behaviour_logp`` is the one recorded in ``batch``); returns are recomputed for the new
        trajectories. Trajectory and group ids are preserved.

        Guarantee: if ``team`` differs from the team that sampled ``batch`` only in the rows of
        ``agent``, the result is distributed exactly as fresh rollouts of ``team`` from the same
        prompts (the prefix before ``agent``'s first turn does not depend on those rows).
        """
        self.mdp._check_agent(agent)
        pi = team_policy(self.mdp, team)
        traj = batch.trajectory.numpy().astype(np.int64)
        group = batch.group.numpy().astype(np.int64)
        turn = batch.turn.numpy().astype(np.int64)
        state = batch.context[:, 0].numpy().astype(np.int64)
        action = batch.tokens[:, 0].numpy().astype(np.int64)
        logp = batch.behaviour_logp[:, 0].numpy().astype(np.float64)
        n_traj = int(traj.max()) + 1 if traj.size else 0
        # first turn of `agent` per trajectory (horizon + 1 if it never speaks)
        never = np.iinfo(np.int64).max
        first = np.full(n_traj, never, dtype=np.int64)
        is_agent = np.asarray(self.mdp.router)[state] == agent
        np.minimum.at(first, traj[is_agent], turn[is_agent])
        keep = turn < first[traj]
        cut = is_agent & (turn == first[traj])
        cut_traj, cut_turn, cut_state = traj[cut], turn[cut], state[cut]
        traj_group = np.zeros(n_traj, dtype=np.int64)
        traj_group[traj] = group
        new = self._rollout(pi, cut_state, cut_turn)
        new_traj = cut_traj[new.traj]
        all_traj = np.concatenate([traj[keep], new_traj])
        return self._to_batch(
            all_traj,
            traj_group[all_traj],
            np.concatenate([turn[keep], new.turn]),
            np.concatenate([state[keep], new.state]),
            np.concatenate([action[keep], new.action]),
            np.concatenate([logp[keep], new.logp]),
            np.concatenate([self.mdp.rewards[state[keep], action[keep]], new.reward]),
            np.concatenate([np.zeros(int(keep.sum()), dtype=bool), np.ones(new.traj.shape[0], dtype=bool)]),
            n_traj,
        )


# ---------------------------------------------------------------------------------------------
# Estimators (for checking the sampler against the exact engine)


def _sizes(batch: MessageBatch, n_trajectories: int | None, group_size: int | None) -> tuple[int, int]:
    traj = batch.trajectory.numpy()
    n = (int(traj.max()) + 1 if traj.size else 0) if n_trajectories is None else int(n_trajectories)
    if group_size is None:
        n_groups = int(batch.group.max()) + 1 if len(batch) else 1
        group_size = max(1, n // max(n_groups, 1))
    if n < 1 or n % group_size:
        raise ValueError(f"n_trajectories ({n}) must be a positive multiple of group_size ({group_size})")
    return n, int(group_size)


def _cluster_mean_se(values: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over trajectories of per-trajectory values (n, ...) when the
    trajectories come in groups of ``group_size`` sharing a prompt (SE over group means)."""
    g = values.reshape(values.shape[0] // group_size, group_size, *values.shape[1:]).mean(axis=1)
    k = g.shape[0]
    se = g.std(axis=0, ddof=1) / math.sqrt(k) if k > 1 else np.full(g.shape[1:], np.inf)
    return g.mean(axis=0), se


def trajectory_returns(batch: MessageBatch, n_trajectories: int | None = None) -> np.ndarray:
    """Return G of every trajectory (n,) float64; trajectories without messages count as 0."""
    traj = batch.trajectory.numpy()
    n = int(traj.max()) + 1 if n_trajectories is None else int(n_trajectories)
    out = np.zeros(n)
    out[traj] = batch.returns.numpy().astype(np.float64)
    return out


def estimate_J(
    batch: MessageBatch, n_trajectories: int | None = None, group_size: int | None = None
) -> tuple[float, float]:
    """Monte-Carlo J = E[G] from a batch whose prompts were drawn from mu: (mean, standard error).

    ``n_trajectories`` counts trajectories without messages (started in a terminal state; default:
    max trajectory id + 1); the standard error treats the ``group_size`` trajectories of a prompt as
    one cluster (default group_size = n_trajectories / number of groups).
    """
    n, gs = _sizes(batch, n_trajectories, group_size)
    mean, se = _cluster_mean_se(trajectory_returns(batch, n), gs)
    return float(mean), float(se)


def empirical_occupancy(
    mdp: TeamMDP, batch: MessageBatch, n_trajectories: int | None = None, group_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate d^pi on non-terminal states from a batch sampled from mu: (d_hat (S,), se (S,)).

    d_hat(x) = mean over trajectories of sum_t (1 - gamma) gamma^t 1{x_t = x}; terminal entries are
    0 (their mass, gamma^T, is not recorded by messages). ``se`` is the standard error over prompt
    groups (see :func:`estimate_J`). Memory (n_groups, S).
    """
    n, gs = _sizes(batch, n_trajectories, group_size)
    traj = batch.trajectory.numpy().astype(np.int64)
    state = batch.context[:, 0].numpy().astype(np.int64)
    w = (1.0 - mdp.gamma) * mdp.gamma ** batch.turn.numpy().astype(np.float64)
    s = mdp.n_states
    k = n // gs
    per_group = np.bincount((traj // gs) * s + state, weights=w, minlength=k * s).reshape(k, s) / gs
    mean = per_group.mean(axis=0)
    se = per_group.std(axis=0, ddof=1) / math.sqrt(k) if k > 1 else np.full(s, np.inf)
    return mean, se


__all__ = [
    "TabularSampler", "draw_prompts", "team_policy", "default_horizon", "estimate_J",
    "empirical_occupancy", "trajectory_returns", "DEFAULT_TOL",
]
