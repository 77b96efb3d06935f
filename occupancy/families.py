"""Seeded instance families of structured team MDPs (THEORY.md sections 1 and 4).

Every family builds its state set from (round r, environment state s, turn t, shared context c):
agent t acts at turn t, sees the state (s, c) (its row of the team policy), and its action moves the
context to c' ~ K_t(. | s, c, a). After the last turn (t = N - 1) the round ends: a final reward
that depends on (s, c_final) is paid (folded, as its expectation, into r(x, a) of the last turn),
the environment steps to s' ~ E(. | s, c_final) and the next round starts at turn 0 with the
context reset to c0(s'). Contexts are compact statistics (a board status, a vote count, the
previous action, a bounded random context), never the full history, so N = 32 stays small.

Rounds:
- ``rounds = 1``: one round, bandit-like: N turns, then the absorbing terminal state.
- ``rounds = R > 1``: R rounds with the round index in the state, then the terminal state.
- ``rounds = 0``: continuing (no terminal state, no round index): rounds go on forever and the
  per-turn gamma < 1 makes the return finite; samplers truncate (see occupancy.sampling).

State layout (``decode_states`` returns these arrays): state id
``((r * E + s) * N + t) * C + c`` for the structured states, and, when rounds >= 1, one terminal
state with id ``S - 1`` (router -1, turn -1). ``mdp.turn`` is t in [0, N) (-1 for the terminal).
The initial distribution mu is uniform over environment states at round 0, turn 0, c = c0(s).
Rewards are scaled so that one round pays at most about 1 (except "agree" with
scale "agent" or "pair" and "crowd", see below).

Families (``FAMILIES``):
- ``"layered"``: random layered team: random sparse context kernels (``branching`` successors),
  random rewards U(0, 1) / N per turn, random environment kernel; context of bounded size
  ``n_context``. Generic; mostly does not realise the N^2 stale penalty.
- ``"board"``: shared answer board, context in {0 empty, 1 wrong, 2 correct}; actions
  0 pass, 1 propose (only acts on an empty board), 2 revise (only acts on a non-empty board).
  An acting agent produces an answer with probability p = min(1, kappa / N) (so the board does not
  saturate as N grows: P(some answer after N agents) <= 1 - (1 - kappa/N)^N ~ 1 - e^-kappa), and
  the answer is correct with probability q_i(s) = sigmoid(skill_i - difficulty_s). Final reward 1
  for a correct board, -wrong_penalty for a wrong one; ``cost`` per non-pass message. Each
  upstream update moves the probability that agent i sees an empty / wrong / correct board, and
  agent i's advantage has opposite signs on these contexts: the coherent shift of THEORY section 4.
- ``"vote"``: vote count, context = number of recorded yes votes in [0, N]; actions 0 no, 1 yes;
  a vote is mis-recorded with probability ``flip``. Final reward 1 when the count reaches the
  threshold K_s = round(tau_s N) (tau_s spread around ``threshold`` over environment states),
  ``cost`` (default 1 / (2N)) per yes vote. An agent's best action depends on the running count
  (pivotal near K_s), and upstream updates shift the count distribution coherently.
- ``"chain"``: adjacent interactions only: context = previous agent's recorded action (a
  ``noise`` fraction is replaced by a uniform action); reward W_t[s](c, a) ~ U(0, 1) / N depends on
  the pair (a_{t-1}, a_t) only. Upstream influence decays along the chain.

- ``"agree"``: pairwise agreement, context = number of recorded yes votes in [0, N]; actions
  0 no, 1 yes; agent t earns ``per_pair`` for every earlier agent whose recorded vote equals its
  own (per_pair = 1/N for ``scale="agent"``, 1 for "pair", 2/N^2 for "round"). Every pair of agents
  interacts (a dense Hessian of J in the agents' policies), so the stale penalty grows with the
  number of pairs: measured with per-state KL steps, about N^2 when A_max grows like N
  (scale="pair") and about N^1 at fixed A_max (scale="agent"). With bounded per-agent rewards
  and non-degenerate policies, pairwise interaction strengths are limited (a Parseval argument
  on the Walsh coefficients of the return), which is why board and vote grow more slowly.

- ``"crowd"``: "follow the crowd", one environment state, context = count c in [0, N] of "yes"
  messages so far this round; actions 0 "no" (c unchanged, reward 0) and 1 "yes" (c <- c + 1,
  reward b_t + kappa z_t(c)), with b_t ~ U(bonus - spread, bonus + spread) (seeded) and z_t(c) =
  clip((c - t/2) / sqrt(t/4), -3, 3) the count standardised under a uniform team. The bonus makes
  every update push "yes" up (a coherent shift of the downstream count distribution, TV ~
  sqrt(i delta) after i updates, the chain-rule maximum); the kappa term makes the downstream
  agents' advantage magnitude grow with the count, so the shift and the advantage are correlated at
  order one. No saturation (the count has room N). Rewards are per agent and O(1) (a round pays
  O(N)). Rounds repeat the game with the count reset.

Variants (``VARIANTS``, accepted by make_family like a family; ``FAMILY_NAMES`` lists all names):
- ``"agree_pair"``: ``agree`` with scale="pair" (A_max grows like N).

Environment step between rounds: for board and vote a curriculum driven by the outcome (success:
s -> s + 1, failure: s -> s - 1, clipped; with probability ``env_noise`` a uniform s'), so that
actions change the environment-state distribution when gamma > 0; for layered and chain a random
kernel E(s' | s, c_final) (also for agree; crowd has a single environment state).

API (kept stable; the theory-verification code depends on it):
    make_family(name, n_agents, *, seed, rounds=1, gamma=0.95, **params) -> TeamMDP
    FAMILIES: tuple[str, ...]
    initial_policy(mdp, seed, temperature=1.0) -> (S, A) array
    decode_states(mdp) -> dict of int arrays (S,): "round", "env", "turn", "context", "terminal"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from occupancy.mdp import TeamMDP

FAMILIES: tuple[str, ...] = ("layered", "board", "vote", "chain", "agree", "crowd")
#: Named parameter variants of the families: name -> (family, fixed parameters). make_family accepts
#: them like a family (extra parameters may be given, the fixed ones win only where not given).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"agree_pair": ("agree", {"scale": "pair"})}
#: Every name make_family accepts: the families, then the variants.
FAMILY_NAMES: tuple[str, ...] = FAMILIES + tuple(VARIANTS)


# ---------------------------------------------------------------------------------------------
# Typed, validated parameters per family


def _check(cond: bool, family: str, field_name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{family} family: parameter {field_name!r} {msg}")


@dataclass(frozen=True)
class LayeredParams:
    """n_env E >= 1, n_context C >= 1, n_actions A >= 1, branching k >= 1 successor contexts per
    (turn, s, c, a), reward_scale > 0 (rewards U(0, reward_scale) / N per turn), env_concentration >
    0 (Dirichlet concentration of E(. | s, c))."""

    n_env: int = 2
    n_context: int = 3
    n_actions: int = 3
    branching: int = 2
    reward_scale: float = 1.0
    env_concentration: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_env", "n_context", "n_actions", "branching"):
            _check(int(getattr(self, name)) >= 1, "layered", name, f"must be an integer >= 1, got {getattr(self, name)}")
        _check(self.reward_scale > 0, "layered", "reward_scale", f"must be > 0, got {self.reward_scale}")
        _check(self.env_concentration > 0, "layered", "env_concentration", f"must be > 0, got {self.env_concentration}")


@dataclass(frozen=True)
class BoardParams:
    """n_env E >= 1 difficulty levels (default 1 for one round, 3 otherwise); kappa > 0: expected
    number of answers produced if all N agents act (p = min(1, kappa / N)); skill_mean, skill_std:
    agents' logit skills ~ Normal(skill_mean, skill_std); difficulty_spread >= 0: difficulties
    linspace(-spread, spread, E); cost >= 0 per non-pass message; wrong_penalty >= 0; env_noise in
    [0, 1]."""

    n_env: int | None = None
    kappa: float = 1.0
    skill_mean: float = 0.5
    skill_std: float = 1.0
    difficulty_spread: float = 1.0
    cost: float = 0.0
    wrong_penalty: float = 0.0
    env_noise: float = 0.1

    def __post_init__(self) -> None:
        _check(self.n_env is None or int(self.n_env) >= 1, "board", "n_env", f"must be >= 1, got {self.n_env}")
        _check(self.kappa > 0, "board", "kappa", f"must be > 0, got {self.kappa}")
        _check(self.skill_std >= 0, "board", "skill_std", f"must be >= 0, got {self.skill_std}")
        _check(self.difficulty_spread >= 0, "board", "difficulty_spread", f"must be >= 0, got {self.difficulty_spread}")
        _check(self.cost >= 0, "board", "cost", f"must be >= 0, got {self.cost}")
        _check(self.wrong_penalty >= 0, "board", "wrong_penalty", f"must be >= 0, got {self.wrong_penalty}")
        _check(0 <= self.env_noise <= 1, "board", "env_noise", f"must be in [0, 1], got {self.env_noise}")


@dataclass(frozen=True)
class VoteParams:
    """n_env E >= 1 thresholds (default 1 for one round, 3 otherwise); threshold in (0, 1]: central
    quorum fraction tau; threshold_spread >= 0: tau_s in tau + linspace(-spread, spread, E);
    cost >= 0 per yes vote (None: 1 / (2N)); flip in [0, 0.5]: mis-recording probability;
    env_noise in [0, 1]."""

    n_env: int | None = None
    threshold: float = 0.5
    threshold_spread: float = 0.15
    cost: float | None = None
    flip: float = 0.1
    env_noise: float = 0.1

    def __post_init__(self) -> None:
        _check(self.n_env is None or int(self.n_env) >= 1, "vote", "n_env", f"must be >= 1, got {self.n_env}")
        _check(0 < self.threshold <= 1, "vote", "threshold", f"must be in (0, 1], got {self.threshold}")
        _check(self.threshold_spread >= 0, "vote", "threshold_spread", f"must be >= 0, got {self.threshold_spread}")
        _check(self.cost is None or self.cost >= 0, "vote", "cost", f"must be >= 0 or None, got {self.cost}")
        _check(0 <= self.flip <= 0.5, "vote", "flip", f"must be in [0, 0.5], got {self.flip}")
        _check(0 <= self.env_noise <= 1, "vote", "env_noise", f"must be in [0, 1], got {self.env_noise}")


@dataclass(frozen=True)
class ChainParams:
    """n_env E >= 1 (default 1 for one round, 2 otherwise), n_actions A >= 2, noise in [0, 1]
    (probability that the recorded action is replaced by a uniform one), reward_scale > 0,
    env_concentration > 0."""

    n_env: int | None = None
    n_actions: int = 3
    noise: float = 0.1
    reward_scale: float = 1.0
    env_concentration: float = 1.0

    def __post_init__(self) -> None:
        _check(self.n_env is None or int(self.n_env) >= 1, "chain", "n_env", f"must be >= 1, got {self.n_env}")
        _check(int(self.n_actions) >= 2, "chain", "n_actions", f"must be >= 2, got {self.n_actions}")
        _check(0 <= self.noise <= 1, "chain", "noise", f"must be in [0, 1], got {self.noise}")
        _check(self.reward_scale > 0, "chain", "reward_scale", f"must be > 0, got {self.reward_scale}")
        _check(self.env_concentration > 0, "chain", "env_concentration", f"must be > 0, got {self.env_concentration}")


@dataclass(frozen=True)
class AgreeParams:
    """n_env E >= 1 (default 1 for one round, 2 otherwise); scale in {"agent", "pair", "round"}:
    reward per agreeing pair 1/N ("agent": each agent earns <= 1, A_max = O(1)), 1 ("pair": A_max
    grows like N) or 2/N^2 ("round": a round pays <= 1); flip in [0, 0.5]: mis-recording
    probability of a vote; env_concentration > 0."""

    n_env: int | None = None
    scale: str = "agent"
    flip: float = 0.0
    env_concentration: float = 1.0

    def __post_init__(self) -> None:
        _check(self.n_env is None or int(self.n_env) >= 1, "agree", "n_env", f"must be >= 1, got {self.n_env}")
        _check(self.scale in ("agent", "pair", "round"), "agree", "scale", f"must be 'agent', 'pair' or 'round', got {self.scale!r}")
        _check(0 <= self.flip <= 0.5, "agree", "flip", f"must be in [0, 0.5], got {self.flip}")
        _check(self.env_concentration > 0, "agree", "env_concentration", f"must be > 0, got {self.env_concentration}")


@dataclass(frozen=True)
class CrowdParams:
    """n_env E >= 1 (default 1): environment states, each with its own bonus draws, uniform
    environment step between rounds; bonus: centre of the "yes" bonus b_t(s) ~ U(bonus -
    bonus_spread, bonus + bonus_spread) (seeded), bonus_spread >= 0; kappa >= 0: weight of the
    standardised count z_t(c) in the "yes" reward."""

    n_env: int | None = None
    bonus: float = 0.5
    bonus_spread: float = 0.25
    kappa: float = 0.5

    def __post_init__(self) -> None:
        _check(self.n_env is None or int(self.n_env) >= 1, "crowd", "n_env", f"must be >= 1, got {self.n_env}")
        _check(self.bonus_spread >= 0, "crowd", "bonus_spread", f"must be >= 0, got {self.bonus_spread}")
        _check(self.kappa >= 0, "crowd", "kappa", f"must be >= 0, got {self.kappa}")


_PARAMS: dict[str, type] = {
    "layered": LayeredParams, "board": BoardParams, "vote": VoteParams, "chain": ChainParams, "agree": AgreeParams,
    "crowd": CrowdParams,
}


# ---------------------------------------------------------------------------------------------
# The generic structured builder


@dataclass(frozen=True)
class _Spec:
    """Arrays describing one structured family (N agents, E env states, C contexts, A actions,
    k successors per context step):

    - next_ctx (N, E, C, A, k) int, next_p (N, E, C, A, k) float: K_t(c' | s, c, a) (duplicates add).
    - reward (N, E, C, A): immediate reward of the message.
    - final_reward (E, C): paid at the end of a round on (s, c_final).
    - env_next (E, C, E): E(s' | s, c_final).
    - c0 (E,) int: context at turn 0 of a round in env state s.
    """

    next_ctx: np.ndarray
    next_p: np.ndarray
    reward: np.ndarray
    final_reward: np.ndarray
    env_next: np.ndarray
    c0: np.ndarray


def _build(
    spec: _Spec, n_agents: int, rounds: int, gamma: float, name: str, info: dict[str, Any]
) -> TeamMDP:
    n, e, c, a, k = spec.next_ctx.shape
    assert n == n_agents
    r_idx = max(rounds, 1)
    n_struct = r_idx * e * n * c
    has_terminal = rounds >= 1
    s_total = n_struct + int(has_terminal)
    term = s_total - 1

    def sid(r, s, t, cc):
        return ((r * e + s) * n + t) * c + cc

    rr, ss, tt, cc, aa, kk = np.meshgrid(
        np.arange(r_idx), np.arange(e), np.arange(n), np.arange(c), np.arange(a), np.arange(k), indexing="ij"
    )
    x = sid(rr, ss, tt, cc)
    row = x * a + aa
    nxt = spec.next_ctx[tt, ss, cc, aa, kk]
    p = spec.next_p[tt, ss, cc, aa, kk]

    rows, cols, vals = [], [], []
    # within a round
    mid = tt < n - 1
    rows.append(row[mid])
    cols.append(sid(rr[mid], ss[mid], tt[mid] + 1, nxt[mid]))
    vals.append(p[mid])
    # end of a round
    last = tt == n - 1
    r_l, s_l, c_l, row_l, p_l = rr[last], ss[last], nxt[last], row[last], p[last]
    if rounds == 1:
        rows.append(row_l)
        cols.append(np.full(row_l.shape, term))
        vals.append(p_l)
    else:
        sp_ = np.arange(e)
        prob_env = spec.env_next[s_l, c_l]  # (L, E)
        if rounds == 0:
            r_next = np.zeros_like(r_l)
        else:
            r_next = r_l + 1
        cont = r_next < r_idx
        # continuing rounds
        rows.append(np.repeat(row_l[cont], e))
        cols.append(sid(np.repeat(r_next[cont], e), np.tile(sp_, cont.sum()), 0, spec.c0[np.tile(sp_, cont.sum())]))
        vals.append((p_l[cont, None] * prob_env[cont]).ravel())
        # last round -> terminal
        if has_terminal:
            done = ~cont
            rows.append(row_l[done])
            cols.append(np.full(int(done.sum()), term))
            vals.append(p_l[done])
    if has_terminal:
        rows.append(term * a + np.arange(a))
        cols.append(np.full(a, term))
        vals.append(np.ones(a))
    rows_a, cols_a, vals_a = (np.concatenate(v) for v in (rows, cols, vals))
    keep = vals_a > 0
    trans = sp.csr_matrix((vals_a[keep], (rows_a[keep], cols_a[keep])), shape=(s_total * a, s_total))

    # rewards: immediate + expected final reward on the last turn
    expected_final = np.einsum("seak,seak->sea", spec.next_p[n - 1], spec.final_reward[np.arange(e)[:, None, None, None], spec.next_ctx[n - 1]])
    rew_struct = spec.reward.copy()
    rew_struct[n - 1] += expected_final
    rewards = np.zeros((s_total, a))
    # state order (r, s, t, c): reward (N, E, C, A) -> (E, N, C, A) repeated over rounds
    rewards[:n_struct] = np.broadcast_to(rew_struct.transpose(1, 0, 2, 3)[None], (r_idx, e, n, c, a)).reshape(n_struct, a)

    router = np.full(s_total, -1, dtype=np.int64)
    turn = np.full(s_total, -1, dtype=np.int64)
    grid_t = np.broadcast_to(np.arange(n)[None, None, :, None], (r_idx, e, n, c)).reshape(-1)
    router[:n_struct] = grid_t
    turn[:n_struct] = grid_t
    terminal = np.zeros(s_total, dtype=bool)
    if has_terminal:
        terminal[term] = True
    initial = np.zeros(s_total)
    initial[sid(0, np.arange(e), 0, spec.c0)] = 1.0 / e
    info = dict(info)
    info.update(
        n_env=e, n_context=c, n_actions=a, rounds=rounds, n_agents=n_agents,
        layout="id = ((round * n_env + env) * n_agents + turn) * n_context + context; terminal last (rounds >= 1)",
    )
    return TeamMDP(
        transitions=trans, rewards=rewards, router=router, initial=initial, gamma=gamma, n_agents=n_agents,
        terminal=terminal, turn=turn, name=name, info=info,
    )


def decode_states(mdp: TeamMDP) -> dict[str, np.ndarray]:
    """Structured coordinates of every state of a family instance: int arrays (S,) "round", "env",
    "turn", "context" (-1 on the terminal state) and bool "terminal"."""
    info = mdp.info
    for key in ("n_env", "n_context", "rounds"):
        if key not in info:
            raise ValueError(f"decode_states needs a family instance (info[{key!r}] missing)")
    e, c, n = int(info["n_env"]), int(info["n_context"]), mdp.n_agents
    ids = np.arange(mdp.n_states)
    out = {
        "context": ids % c,
        "turn": (ids // c) % n,
        "env": (ids // (c * n)) % e,
        "round": ids // (c * n * e),
    }
    term = np.asarray(mdp.terminal)
    for key in out:
        out[key] = np.where(term, -1, out[key]).astype(np.int64)
    out["terminal"] = term.copy()
    return out


# ---------------------------------------------------------------------------------------------
# Family specs


def _curriculum(success: np.ndarray, n_env: int, noise: float) -> np.ndarray:
    """E(s' | s, c) (E, C, E) from success (E, C) bool: s+1 on success, s-1 on failure (clipped),
    a uniform s' with probability noise."""
    e, c = success.shape
    s = np.arange(e)[:, None]
    target = np.where(success, np.minimum(s + 1, e - 1), np.maximum(s - 1, 0))
    out = np.full((e, c, e), noise / e)
    out[np.arange(e)[:, None], np.arange(c)[None, :], target] += 1.0 - noise
    return out


def _n_env_default(value: int | None, rounds: int, multi: int) -> int:
    return int(value) if value is not None else (1 if rounds == 1 else multi)


def _layered(n: int, rng: np.random.Generator, rounds: int, p: LayeredParams) -> _Spec:
    e, c, a, k = p.n_env, p.n_context, p.n_actions, p.branching
    next_ctx = rng.integers(0, c, size=(n, e, c, a, k))
    next_p = rng.dirichlet(np.ones(k), size=(n, e, c, a))
    reward = rng.uniform(0.0, p.reward_scale, size=(n, e, c, a)) / n
    env_next = rng.dirichlet(np.full(e, p.env_concentration), size=(e, c))
    return _Spec(next_ctx, next_p, reward, np.zeros((e, c)), env_next, np.zeros(e, dtype=np.int64))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _board(n: int, rng: np.random.Generator, rounds: int, p: BoardParams) -> _Spec:
    e = _n_env_default(p.n_env, rounds, 3)
    c, a = 3, 3
    skill = rng.normal(p.skill_mean, p.skill_std, size=n)
    difficulty = np.linspace(-p.difficulty_spread, p.difficulty_spread, e) if e > 1 else np.zeros(1)
    q = _sigmoid(skill[:, None] - difficulty[None, :])  # (N, E)
    pa = min(1.0, p.kappa / n)
    # successors: k = 3, next context k (0 empty, 1 wrong, 2 correct)
    next_ctx = np.broadcast_to(np.arange(3), (n, e, c, a, 3)).copy()
    probs = np.zeros((n, e, c, a, 3))
    eye = np.eye(3)
    for cc in range(3):
        probs[:, :, cc, 0] = eye[cc]  # pass
    answer = np.stack([np.zeros_like(q), 1.0 - q, q], axis=-1)  # (N, E, 3)
    # propose: acts on an empty board only
    probs[:, :, 0, 1] = (1 - pa) * eye[0] + pa * answer
    probs[:, :, 1, 1] = eye[1]
    probs[:, :, 2, 1] = eye[2]
    # revise: acts on a non-empty board only
    probs[:, :, 0, 2] = eye[0]
    probs[:, :, 1, 2] = (1 - pa) * eye[1] + pa * answer
    probs[:, :, 2, 2] = (1 - pa) * eye[2] + pa * answer
    reward = np.zeros((n, e, c, a))
    reward[..., 1:] = -p.cost
    final = np.tile(np.array([0.0, -p.wrong_penalty, 1.0]), (e, 1))
    env_next = _curriculum(np.tile(np.array([False, False, True]), (e, 1)), e, p.env_noise)
    return _Spec(next_ctx, probs, reward, final, env_next, np.zeros(e, dtype=np.int64))


def _vote(n: int, rng: np.random.Generator, rounds: int, p: VoteParams) -> _Spec:
    e = _n_env_default(p.n_env, rounds, 3)
    c, a = n + 1, 2
    cost = 1.0 / (2 * n) if p.cost is None else p.cost
    tau = p.threshold + (np.linspace(-p.threshold_spread, p.threshold_spread, e) if e > 1 else np.zeros(1))
    kq = np.clip(np.round(tau * n), 1, n).astype(np.int64)  # (E,)
    counts = np.arange(c)
    up = np.minimum(counts + 1, n)
    next_ctx = np.zeros((n, e, c, a, 2), dtype=np.int64)
    next_ctx[..., 0] = counts[None, None, :, None]
    next_ctx[..., 1] = up[None, None, :, None]
    next_p = np.zeros((n, e, c, a, 2))
    next_p[:, :, :, 0] = [1 - p.flip, p.flip]  # no: unchanged unless mis-recorded
    next_p[:, :, :, 1] = [p.flip, 1 - p.flip]  # yes: +1 unless mis-recorded
    reward = np.zeros((n, e, c, a))
    reward[..., 1] = -cost
    success = counts[None, :] >= kq[:, None]  # (E, C)
    final = success.astype(np.float64)
    env_next = _curriculum(success, e, p.env_noise)
    del rng  # the vote family is deterministic given its parameters
    return _Spec(next_ctx, next_p, reward, final, env_next, np.zeros(e, dtype=np.int64))


def _chain(n: int, rng: np.random.Generator, rounds: int, p: ChainParams) -> _Spec:
    e = _n_env_default(p.n_env, rounds, 2)
    a = int(p.n_actions)
    c = a
    next_ctx = np.broadcast_to(np.arange(a), (n, e, c, a, a)).copy()
    next_p = np.full((n, e, c, a, a), p.noise / a)
    next_p[:, :, :, np.arange(a), np.arange(a)] += 1.0 - p.noise
    reward = rng.uniform(0.0, p.reward_scale, size=(n, e, c, a)) / n
    env_next = rng.dirichlet(np.full(e, p.env_concentration), size=(e, c))
    return _Spec(next_ctx, next_p, reward, np.zeros((e, c)), env_next, np.zeros(e, dtype=np.int64))


def _agree(n: int, rng: np.random.Generator, rounds: int, p: AgreeParams) -> _Spec:
    e = _n_env_default(p.n_env, rounds, 2)
    c, a = n + 1, 2
    counts = np.arange(c)
    next_ctx = np.zeros((n, e, c, a, 2), dtype=np.int64)
    next_ctx[..., 0] = counts[None, None, :, None]
    next_ctx[..., 1] = np.minimum(counts + 1, n)[None, None, :, None]
    next_p = np.zeros((n, e, c, a, 2))
    next_p[:, :, :, 0] = [1 - p.flip, p.flip]
    next_p[:, :, :, 1] = [p.flip, 1 - p.flip]
    per_pair = {"agent": 1.0 / n, "pair": 1.0, "round": 2.0 / n**2}[p.scale]
    turn = np.arange(n)[:, None, None]
    reward = np.zeros((n, e, c, a))
    reward[..., 1] = per_pair * np.broadcast_to(counts[None, None, :], (n, e, c))  # agree with earlier yes votes
    reward[..., 0] = per_pair * np.maximum(turn - counts[None, None, :], 0)  # agree with earlier no votes
    env_next = rng.dirichlet(np.full(e, p.env_concentration), size=(e, c))
    return _Spec(next_ctx, next_p, reward, np.zeros((e, c)), env_next, np.zeros(e, dtype=np.int64))


def _crowd(n: int, rng: np.random.Generator, rounds: int, p: CrowdParams) -> _Spec:
    """Context = count c in [0, N] of "yes" messages so far this round; action 1 ("yes") moves
    c -> min(c + 1, N) and pays b_t(s) + kappa z_t(c), action 0 pays 0."""
    e = 1 if p.n_env is None else int(p.n_env)
    c, a = n + 1, 2
    b = rng.uniform(p.bonus - p.bonus_spread, p.bonus + p.bonus_spread, size=(n, e))
    counts = np.arange(c)
    next_ctx = np.zeros((n, e, c, a, 1), dtype=np.int64)
    next_ctx[:, :, :, 0, 0] = counts
    next_ctx[:, :, :, 1, 0] = np.minimum(counts + 1, n)
    next_p = np.ones((n, e, c, a, 1))
    t = np.arange(n)[:, None]
    z = np.clip((counts[None, :] - t / 2) / np.sqrt(np.maximum(t, 1) / 4), -3, 3)  # (N, C)
    reward = np.zeros((n, e, c, a))
    reward[..., 1] = b[:, :, None] + p.kappa * z[:, None, :]
    env_next = np.full((e, c, e), 1.0 / e)
    return _Spec(next_ctx, next_p, reward, np.zeros((e, c)), env_next, np.zeros(e, dtype=np.int64))


_BUILDERS: dict[str, Callable[..., _Spec]] = {
    "layered": _layered, "board": _board, "vote": _vote, "chain": _chain, "agree": _agree, "crowd": _crowd,
}


def make_family(name: str, n_agents: int, *, seed: int, rounds: int = 1, gamma: float = 0.95, **params: Any) -> TeamMDP:
    """A seeded instance of family ``name`` (one of ``FAMILIES``) with ``n_agents`` agents.

    Args:
        name: a family ("layered", "board", "vote", "chain", "agree", "crowd") or a variant
            (``VARIANTS``: "agree_pair" = agree with scale="pair"); see the module docstring.
        n_agents: N >= 1 (agent t acts at turn t of every round).
        seed: seeds every random draw of the instance.
        rounds: 1 (one round then terminal), R > 1 (R rounds then terminal) or 0 (continuing).
        gamma: per-turn discount in [0, 1).
        **params: fields of the family's parameter dataclass (LayeredParams, BoardParams,
            VoteParams, ChainParams, AgreeParams, CrowdParams); unknown names raise ValueError.

    Returns:
        TeamMDP with ``turn`` set and ``info`` = {"family", "params", "seed", "n_env",
        "n_context", "n_actions", "rounds", "n_agents", "layout"}.
    """
    if name in VARIANTS:
        base, fixed = VARIANTS[name]
        mdp = make_family(base, n_agents, seed=seed, rounds=rounds, gamma=gamma, **{**fixed, **params})
        return replace(mdp, name=name + mdp.name[len(base):], info={**mdp.info, "family": name, "variant_of": base})
    if name not in _BUILDERS:
        raise ValueError(f"unknown family {name!r}; choose one of {FAMILY_NAMES}")
    if int(n_agents) != n_agents or n_agents < 1:
        raise ValueError(f"n_agents must be an integer >= 1, got {n_agents}")
    if int(rounds) != rounds or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0 (0 = continuing), got {rounds}")
    if not (0.0 <= float(gamma) < 1.0):
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    cls = _PARAMS[name]
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{name} family: unknown parameter(s) {unknown}; allowed: {sorted(allowed)}")
    p = cls(**params)
    rng = np.random.default_rng(seed)
    spec = _BUILDERS[name](int(n_agents), rng, int(rounds), p)
    info = {"family": name, "params": asdict(p), "seed": int(seed), "gamma": float(gamma)}
    return _build(spec, int(n_agents), int(rounds), float(gamma), f"{name}-N{n_agents}-R{rounds}-seed{seed}", info)


def initial_policy(mdp: TeamMDP, seed: int, temperature: float = 1.0) -> np.ndarray:
    """A random non-degenerate team policy (S, A): softmax(z / temperature) with z ~ Normal(0, 1)
    per entry (every probability > 0); terminal rows uniform. Larger temperature: closer to uniform."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(mdp.n_states, mdp.n_actions)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    pi = np.exp(z)
    pi /= pi.sum(axis=1, keepdims=True)
    pi[np.asarray(mdp.terminal)] = 1.0 / mdp.n_actions
    return pi


__all__ = [
    "FAMILIES", "VARIANTS", "FAMILY_NAMES", "make_family", "initial_policy", "decode_states",
    "LayeredParams", "BoardParams", "VoteParams", "ChainParams", "AgreeParams", "CrowdParams",
]
