"""Exactness of the tabular engine (occupancy.exact) against brute force.

References, independent of the engine's linear solves:
- path enumeration: every action / transition sequence of a finite-horizon (terminating)
  instance, each path kept separately (no merging of states, i.e. no dynamic programming);
- truncated Neumann series sum_{t < H} gamma^t P^t with gamma^H < 1e-15 for cyclic instances.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from occupancy import exact
from occupancy.exact import agent_occupancy, evaluate, evaluate_batch, evaluate_stage, kl_rows, tv_rows, uses_dense_path
from occupancy.families import FAMILIES, initial_policy, make_family
from occupancy.instances import random_policy, random_team_mdp
from occupancy.mdp import TeamMDP

TOL = 1e-10
#: The two solver paths of occupancy.exact; every exactness test runs on both.
PATHS = ("dense", "sparse")


# ---------------------------------------------------------------------------------------------
# brute force


def enumerate_paths(mdp: TeamMDP, pi: np.ndarray, x0: int, a0: int | None = None, max_depth: int = 200):
    """Enumerate every path from state x0 (first action forced to a0 if given) until the terminal
    state. Returns (J, occ): J = E[sum_t gamma^t r_t], occ (S,) the normalised discounted occupancy
    (terminal mass gamma^T added to the terminal state). Raises if a path outlives max_depth."""
    s, a_n, g = mdp.n_states, mdp.n_actions, mdp.gamma
    t_dense = mdp.dense_transitions()
    states = np.array([x0])
    probs = np.array([1.0])
    j_val = 0.0
    occ = np.zeros(s)
    depth = 0
    while states.size:
        term = mdp.terminal[states]
        occ += np.bincount(states[term], probs[term] * g**depth, minlength=s)
        states, probs = states[~term], probs[~term]
        if not states.size:
            break
        if depth > max_depth:
            raise AssertionError("instance is not finite-horizon")
        occ += np.bincount(states, probs * (1 - g) * g**depth, minlength=s)
        if depth == 0 and a0 is not None:
            act = np.zeros((states.size, a_n))
            act[:, a0] = 1.0
        else:
            act = pi[states]
        w_act = probs[:, None] * act  # (n, A)
        j_val += g**depth * float(np.sum(w_act * mdp.rewards[states]))
        w = w_act[:, :, None] * t_dense[states]  # (n, A, S): one new path per nonzero entry
        idx = np.nonzero(w > 0)
        states, probs = idx[2], w[idx]
        depth += 1
    return j_val, occ


def brute_force_eval(mdp: TeamMDP, pi: np.ndarray):
    """V (S,), Q (S, A), d (S,), J by path enumeration (finite-horizon instances)."""
    s, a = mdp.n_states, mdp.n_actions
    v = np.array([enumerate_paths(mdp, pi, x)[0] for x in range(s)])
    q = np.array([[enumerate_paths(mdp, pi, x, b)[0] for b in range(a)] for x in range(s)])
    d = np.zeros(s)
    j_val = 0.0
    for x in np.flatnonzero(mdp.initial > 0):
        jx, occ = enumerate_paths(mdp, pi, int(x))
        d += mdp.initial[x] * occ
        j_val += mdp.initial[x] * jx
    return v, q, d, j_val


def neumann_eval(mdp: TeamMDP, pi: np.ndarray, tol: float = 1e-15):
    """V, Q, d, J by the truncated series sum_{t<H} gamma^t P^t (no linear solve)."""
    t_dense = mdp.dense_transitions()
    p = np.einsum("xa,xay->xy", pi, t_dense)
    r = np.einsum("xa,xa->x", pi, mdp.rewards)
    g = mdp.gamma
    h = 1 if g == 0 else int(np.ceil(np.log(tol) / np.log(g))) + 1
    v = np.zeros(mdp.n_states)
    term = r.copy()
    row = np.asarray(mdp.initial, dtype=float).copy()
    d = np.zeros(mdp.n_states)
    for t in range(h):
        v += g**t * term
        d += (1 - g) * g**t * row
        term = p @ term
        row = row @ p
    q = mdp.rewards + g * np.einsum("xay,y->xa", t_dense, v)
    return v, q, d, float(mdp.initial @ v)


# ---------------------------------------------------------------------------------------------
# instances


def random_dag(seed: int, n_agents: int = 3, layers: int = 3, width: int = 3, n_actions: int = 2, gamma: float = 0.9):
    """A random finite-horizon TeamMDP: layered states, random owners, branching transitions to the
    next layer (or the terminal state after the last), random rewards."""
    rng = np.random.default_rng(seed)
    s = layers * width + 1
    term = s - 1
    t = np.zeros((s, n_actions, s))
    for layer in range(layers):
        for k in range(width):
            x = layer * width + k
            for a in range(n_actions):
                if layer == layers - 1:
                    t[x, a, term] = 1.0
                else:
                    nxt = rng.choice(width, size=2, replace=False) + (layer + 1) * width
                    t[x, a, nxt] = rng.dirichlet([1.0, 1.0])
    t[term, :, term] = 1.0
    rewards = rng.normal(size=(s, n_actions))
    rewards[term] = 0.0
    router = rng.integers(0, n_agents, size=s)
    router[:n_agents] = np.arange(n_agents)[: min(n_agents, width)] if width >= n_agents else router[:n_agents]
    router[term] = -1
    terminal = np.zeros(s, dtype=bool)
    terminal[term] = True
    mu = np.zeros(s)
    mu[:width] = rng.dirichlet(np.ones(width))
    return TeamMDP(t, rewards, router, mu, gamma, n_agents=n_agents, terminal=terminal)


def random_cyclic(seed: int, s: int = 6, n_actions: int = 3, n_agents: int = 2, gamma: float = 0.8):
    """A random TeamMDP with dense cyclic transitions and no terminal state."""
    rng = np.random.default_rng(seed)
    t = rng.dirichlet(np.ones(s), size=(s, n_actions))
    rewards = rng.normal(size=(s, n_actions))
    router = np.arange(s) % n_agents
    return TeamMDP(t, rewards, router, rng.dirichlet(np.ones(s)), gamma, n_agents=n_agents)


FINITE_CASES = [(f, n, r) for f in FAMILIES for (n, r) in ((2, 1), (3, 1), (2, 2))]


def tiny_family(name: str, n: int, rounds: int, seed: int = 0) -> TeamMDP:
    params = {"n_context": 2, "n_env": 2} if name == "layered" else ({"n_env": 2} if rounds > 1 else {})
    return make_family(name, n, seed=seed, rounds=rounds, gamma=0.9, **params)


def assert_eval_equal(mdp, ev, v, q, d, j_val):
    np.testing.assert_allclose(ev.V, v, atol=TOL, rtol=0)
    np.testing.assert_allclose(ev.Q, q, atol=TOL, rtol=0)
    np.testing.assert_allclose(ev.A, q - v[:, None], atol=TOL, rtol=0)
    np.testing.assert_allclose(ev.d, d, atol=TOL, rtol=0)
    assert abs(ev.J - j_val) < TOL
    assert abs(ev.d.sum() - 1.0) < TOL
    for j in range(mdp.n_agents):
        np.testing.assert_allclose(agent_occupancy(mdp, ev.d, j), np.where(mdp.router == j, d, 0.0), atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("name,n,rounds", FINITE_CASES)
def test_family_matches_path_enumeration(name, n, rounds, method):
    mdp = tiny_family(name, n, rounds)
    pi = initial_policy(mdp, seed=5)
    ref = brute_force_eval(mdp, pi)
    assert_eval_equal(mdp, evaluate(mdp, pi, method=method), *ref)


@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("seed", range(4))
def test_random_dag_matches_path_enumeration(seed, method):
    mdp = random_dag(seed)
    rng = np.random.default_rng(seed + 100)
    pi = rng.dirichlet(np.ones(mdp.n_actions), size=mdp.n_states)
    ref = brute_force_eval(mdp, pi)
    assert_eval_equal(mdp, evaluate(mdp, pi, method=method), *ref)


@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("seed", range(4))
def test_random_cyclic_matches_neumann_series(seed, method):
    mdp = random_cyclic(seed)
    pi = np.random.default_rng(seed).dirichlet(np.ones(mdp.n_actions), size=mdp.n_states)
    ref = neumann_eval(mdp, pi)
    assert_eval_equal(mdp, evaluate(mdp, pi, method=method), *ref)


@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("name", FAMILIES)
def test_continuing_family_matches_neumann_series(name, method):
    mdp = make_family(name, 3, seed=1, rounds=0, gamma=0.8)
    pi = initial_policy(mdp, seed=2)
    assert not mdp.terminal.any()
    assert_eval_equal(mdp, evaluate(mdp, pi, method=method), *neumann_eval(mdp, pi))


def test_enumeration_detects_a_wrong_value():
    """The reference must be able to fail: perturb one reward and the comparison breaks."""
    mdp = tiny_family("board", 2, 1)
    pi = initial_policy(mdp, seed=5)
    v, q, d, j_val = brute_force_eval(mdp, pi)
    rewards = np.array(mdp.rewards)
    x = int(np.flatnonzero(mdp.router == 1)[0])
    rewards[x, 0] += 1e-6
    other = TeamMDP(mdp.transitions, rewards, mdp.router, mdp.initial, mdp.gamma, terminal=mdp.terminal)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(evaluate(other, pi).Q, q, atol=TOL, rtol=0)


@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("name,n,rounds", [(f, 3, 1) for f in FAMILIES] + [(f, 2, 2) for f in FAMILIES])
def test_stage_matches_enumeration(name, n, rounds, method):
    mdp = tiny_family(name, n, rounds, seed=3)
    pi0 = initial_policy(mdp, seed=1)
    news = [initial_policy(mdp, seed=10 + j) for j in range(n)]
    order = list(range(n))[::-1]
    stage = evaluate_stage(mdp, pi0, order, news, method=method)
    teams = [pi0]
    for j in order:
        nxt = teams[-1].copy()
        nxt[mdp.router == j] = news[j][mdp.router == j]
        teams.append(nxt)
    refs = [brute_force_eval(mdp, t) for t in teams]
    g = mdp.gamma
    assert abs(stage.J_start - refs[0][3]) < TOL and abs(stage.J_end - refs[-1][3]) < TOL
    d0, adv0 = refs[0][2], refs[0][1] - refs[0][0][:, None]
    for i, (j, u) in enumerate(zip(order, stage.updates), start=1):
        v, q, d, jv = refs[i - 1]
        adv = q - v[:, None]
        m = mdp.router == j
        f = np.einsum("xa,xa->x", teams[i], adv)
        f0 = np.einsum("xa,xa->x", teams[i], adv0)
        assert u.agent == j
        assert abs(u.improvement - (refs[i][3] - jv)) < TOL
        assert abs(u.L_seq - np.sum(d[m] * f[m]) / (1 - g)) < TOL
        assert abs(u.L_stale_occ - np.sum(d0[m] * f[m]) / (1 - g)) < TOL
        assert abs(u.L_stale_batch - np.sum(d0[m] * f0[m]) / (1 - g)) < TOL
        kl_rev = kl_rows(teams[i - 1], teams[i])
        assert abs(u.kl_reverse - np.sum(d[m] * kl_rev[m])) < TOL
        assert abs(u.kl_reverse_agent - np.sum(d[m] * kl_rev[m]) / d[m].sum()) < TOL
        assert abs(u.kl_forward_max - kl_rows(teams[i], teams[i - 1])[m].max()) < TOL
        assert abs(u.tv - np.sum(d[m] * tv_rows(teams[i - 1], teams[i])[m])) < TOL
        assert abs(u.occupancy_drift - np.abs(d[m] - d0[m]).sum()) < TOL
        # the performance-difference lemma: the seq surrogate with the *new* occupancy is exact
        d_new = refs[i][2]
        assert abs(u.improvement - np.sum(d_new[m] * f[m]) / (1 - g)) < TOL


PDL_CASES = [(f, r) for f in FAMILIES for r in (1, 3, 0)]


@pytest.mark.parametrize("name,rounds", PDL_CASES)
def test_performance_difference_identity(name, rounds):
    mdp = make_family(name, 4, seed=7, rounds=rounds, gamma=0.95)
    pi = initial_policy(mdp, seed=1)
    pi2 = initial_policy(mdp, seed=2, temperature=0.5)
    e1, e2 = evaluate(mdp, pi), evaluate(mdp, pi2)
    rhs = np.sum(e2.d[:, None] * pi2 * e1.A) / (1 - mdp.gamma)
    assert abs((e2.J - e1.J) - rhs) < 1e-10
    # J = 1/(1-gamma) E_{d, pi}[r]
    assert abs(e1.J - np.sum(e1.d[:, None] * pi * mdp.rewards) / (1 - mdp.gamma)) < 1e-10


@pytest.mark.parametrize("seed", range(3))
def test_performance_difference_identity_random(seed):
    mdp = random_cyclic(seed, s=12, gamma=0.97)
    rng = np.random.default_rng(seed)
    pi, pi2 = (rng.dirichlet(np.ones(mdp.n_actions), size=mdp.n_states) for _ in range(2))
    e1, e2 = evaluate(mdp, pi), evaluate(mdp, pi2)
    assert abs((e2.J - e1.J) - np.sum(e2.d[:, None] * pi2 * e1.A) / (1 - mdp.gamma)) < 1e-10


@pytest.mark.parametrize("name,rounds", [(f, r) for f in FAMILIES for r in (1, 4, 0)])
def test_dense_and_sparse_agree(name, rounds):
    mdp = make_family(name, 6, seed=2, rounds=rounds, gamma=0.95)
    pi = initial_policy(mdp, seed=3)
    a, b = evaluate(mdp, pi, method="dense"), evaluate(mdp, pi, method="sparse")
    for field in ("V", "Q", "A", "d"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-11, rtol=0)
    assert abs(a.J - b.J) < 1e-11
    assert abs(a.d.sum() - 1) < 1e-12 and abs(b.d.sum() - 1) < 1e-12
    assert a.d.min() > -1e-14


def test_gamma_zero_is_the_expected_first_reward():
    mdp = make_family("chain", 3, seed=0, rounds=1, gamma=0.0)
    pi = initial_policy(mdp, seed=0)
    ev = evaluate(mdp, pi)
    np.testing.assert_allclose(ev.d, mdp.initial, atol=1e-15)
    assert abs(ev.J - mdp.initial @ np.sum(pi * mdp.rewards, axis=1)) < 1e-15


@pytest.mark.parametrize("rounds", [1, 0])
def test_sparse_solve_of_100k_states(rounds):
    t0 = time.process_time()  # CPU time: the machine may be shared
    mdp = make_family("layered", 20, seed=0, rounds=rounds, gamma=0.95, n_env=50, n_context=100, n_actions=3, branching=2)
    assert mdp.n_states >= 100_000
    pi = initial_policy(mdp, seed=0)
    ev = evaluate(mdp, pi)  # auto -> sparse LU
    elapsed = time.process_time() - t0
    assert abs(ev.d.sum() - 1) < 1e-9
    assert ev.d.min() > -1e-12
    assert abs(ev.J - np.sum(ev.d[:, None] * pi * mdp.rewards) / (1 - mdp.gamma)) < 1e-8
    # Bellman residual of the sparse solve
    s = mdp.n_states
    resid = ev.Q - (mdp.rewards + mdp.gamma * (mdp.transitions @ ev.V).reshape(s, -1))
    assert np.abs(resid).max() < 1e-10
    assert np.abs(ev.V - np.sum(pi * ev.Q, axis=1)).max() < 1e-9
    assert elapsed < 20.0, f"100k-state build and solve took {elapsed:.1f} s CPU"


# ---------------------------------------------------------------------------------------------
# the two solver paths and the batch


def _switch_instances():
    """Random and structured instances with S around occupancy.exact.DENSE_LIMIT."""
    out = []
    for k, s in enumerate(range(exact.DENSE_LIMIT - 12, exact.DENSE_LIMIT + 14, 5)):
        rng = np.random.default_rng(k)
        mdp = random_team_mdp(rng, 3, s, 3, 0.95, concentration=float(rng.choice([0.05, 1.0])),
                              p_terminal=float(rng.choice([0.0, 0.1])))
        out.append((mdp, random_policy(mdp, rng, 1.0)))
    for name, n, rounds in (("board", 8, 2), ("layered", 8, 2), ("crowd", 6, 2), ("chain", 8, 2), ("vote", 10, 1)):
        mdp = make_family(name, n, seed=1, rounds=rounds, gamma=0.95)
        out.append((mdp, initial_policy(mdp, seed=2)))
    return out


def test_paths_agree_to_1e12_around_the_switch():
    sizes = []
    for mdp, pi in _switch_instances():
        sizes.append(mdp.n_states)
        a, b = evaluate(mdp, pi, method="dense"), evaluate(mdp, pi, method="sparse")
        scale = max(1.0, float(np.abs(a.V).max()))
        for field in ("V", "Q", "A"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-12 * scale, rtol=0)
        np.testing.assert_allclose(a.d, b.d, atol=1e-12, rtol=0)
        assert abs(a.J - b.J) <= 1e-12 * scale
    assert min(sizes) < exact.DENSE_LIMIT < max(sizes)


def test_auto_switch():
    small = make_family("board", 2, seed=0, rounds=1)
    large = make_family("board", 32, seed=0, rounds=4)
    assert small.n_states <= exact.DENSE_LIMIT < large.n_states
    assert uses_dense_path(small) and not uses_dense_path(large)
    assert uses_dense_path(large, "dense") and not uses_dense_path(small, "sparse")
    # a densely filled instance above DENSE_LIMIT stays on the dense path (4-5x faster measured)
    full = random_team_mdp(np.random.default_rng(0), 2, 2 * exact.DENSE_LIMIT, 2, 0.9)
    assert uses_dense_path(full)
    with pytest.raises(ValueError, match="method"):
        evaluate(small, small.uniform_policy(), method="lu")


@pytest.mark.parametrize("method", PATHS)
def test_batch_matches_single_evaluations(method):
    rng = np.random.default_rng(3)
    mdp = random_team_mdp(rng, 2, 9, 3, 0.9)
    pis = np.stack([random_policy(mdp, rng, t) for t in (0.3, 1.0, 3.0, 1.0)])
    batch = evaluate_batch(mdp, pis, method=method)
    assert len(batch) == 4 and batch.V.shape == (4, mdp.n_states) and batch.Q.shape == (4, mdp.n_states, 3)
    for i, pi in enumerate(pis):
        one = evaluate(mdp, pi, method=method)
        for field in ("V", "Q", "A", "d"):
            np.testing.assert_allclose(getattr(batch[i], field), getattr(one, field), atol=1e-13, rtol=0)
        assert abs(batch[i].J - one.J) < 1e-13
    with pytest.raises(ValueError, match="shape"):
        evaluate_batch(mdp, pis[0], method=method)


@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("bad,match", [("nan", "finite"), ("neg", "non-negative"), ("sum", "not a distribution"),
                                       ("shape", "shape")])
def test_policy_validation(method, bad, match):
    mdp = make_family("board", 2, seed=0, rounds=1)
    pi = mdp.uniform_policy()
    if bad == "nan":
        pi[1, 0] = np.nan
    elif bad == "neg":
        pi[1] = [1.5, -0.25, -0.25]
    elif bad == "sum":
        pi[1, 0] += 0.01
    else:
        pi = pi[:-1]
    with pytest.raises(ValueError, match=match):
        evaluate(mdp, pi, method=method)
    with pytest.raises(ValueError, match=match):
        evaluate_batch(mdp, pi[None], method=method)


def test_cached_arrays_belong_to_their_instance():
    """Two instances with the same shapes but different rewards do not share cached arrays."""
    mdp = make_family("board", 2, seed=0, rounds=1)
    rewards = np.array(mdp.rewards)
    rewards[~mdp.terminal] += 1.0
    other = TeamMDP(mdp.transitions, rewards, mdp.router, mdp.initial, mdp.gamma, terminal=mdp.terminal)
    pi = mdp.uniform_policy()
    for method in PATHS:
        j1, j2 = evaluate(mdp, pi, method=method).J, evaluate(other, pi, method=method).J
        assert j2 > j1 + 0.5


def test_level_solve_matches_superlu_and_dense():
    """Layered instances take the level-scheduled triangular solve; it agrees with SuperLU on the
    same pattern and with the dense path."""
    import dataclasses

    for name, n, rounds in (("vote", 6, 2), ("crowd", 8, 2), ("board", 8, 4), ("agree", 8, 2)):
        mdp = make_family(name, n, seed=4, rounds=rounds, gamma=0.99)
        pi = initial_policy(mdp, seed=5)
        plan = exact._sparse(mdp)
        assert plan.levels is not None, name
        assert sorted(np.concatenate([lev.states for lev in plan.levels]).tolist()) == list(range(mdp.n_states))
        lev = evaluate(mdp, pi, method="sparse")
        exact._SPARSE_CACHE[mdp] = dataclasses.replace(plan, levels=None)
        lu = evaluate(mdp, pi, method="sparse")
        dense = evaluate(mdp, pi, method="dense")
        scale = max(1.0, float(np.abs(dense.V).max()))
        for ref in (lu, dense):
            for field in ("V", "Q", "d"):
                np.testing.assert_allclose(getattr(lev, field), getattr(ref, field), atol=1e-12 * scale, rtol=0)
