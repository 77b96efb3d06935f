"""Exact KL-ball steps and the Stage-0 geometric-mixture projection (occupancy.projection)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from occupancy.exact import evaluate, kl_rows, update_kl
from occupancy.projection import geometric_projection, kl_ball_step, trust_region_stage
from occupancy.instances import random_policy, random_team_mdp

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _policy(rng: np.random.Generator, s: int, a: int, temp: float = 1.0) -> np.ndarray:
    z = rng.normal(size=(s, a)) / temp
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), delta=st.floats(1e-6, 3.0), weighting=st.sampled_from(["team", "agent"]))
def test_reverse_step_meets_the_radius(seed: int, delta: float, weighting: str) -> None:
    rng = np.random.default_rng(seed)
    mdp = random_team_mdp(rng, 3, 7, 3, 0.9)
    pi = random_policy(mdp, rng, 1.0)
    ev = evaluate(mdp, pi)
    agent = int(rng.integers(3))
    step = kl_ball_step(pi, mdp.agent_mask(agent), delta, ev.A, occupancy=ev.d, weighting=weighting)
    assert not step.saturated
    measured = update_kl(mdp, ev.d, pi, step.policy, agent, "reverse", weighting)
    assert measured == pytest.approx(delta, rel=1e-8)
    assert step.kl == pytest.approx(delta, rel=1e-8)
    # other agents' rows untouched, rows stay distributions
    assert np.array_equal(step.policy[~mdp.agent_mask(agent)], pi[~mdp.agent_mask(agent)])
    assert np.allclose(step.policy.sum(axis=1), 1.0)
    # a step along A raises the surrogate
    assert np.sum(ev.d * np.einsum("sa,sa->s", step.policy, ev.A)) >= -1e-12


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), delta=st.floats(1e-6, 0.5))
def test_forward_max_step_meets_the_radius_or_saturates(seed: int, delta: float) -> None:
    rng = np.random.default_rng(seed)
    s, a = 5, 4
    pi = _policy(rng, s, a)
    direction = rng.normal(size=(s, a))
    mask = rng.random(s) < 0.7
    mask[0] = True
    step = kl_ball_step(pi, mask, delta, direction, convention="forward_max")
    kl = kl_rows(step.policy, pi)[mask]
    limit = -np.log(pi[mask, direction[mask].argmax(axis=1)].clip(1e-300))  # argmax unique a.s.
    if delta < limit.max():
        assert not step.saturated
        assert kl.max() == pytest.approx(delta, rel=1e-8)
    else:
        assert step.saturated and np.isinf(step.eta)
        assert kl.max() == pytest.approx(limit.max(), rel=1e-8)
        assert step.kl == pytest.approx(limit.max(), rel=1e-8)


def test_forward_saturation_returns_the_argmax_limit() -> None:
    pi = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    direction = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])  # second row: tie between actions 1, 2
    step = kl_ball_step(pi, np.array([True, True]), 5.0, direction, convention="forward_max")
    assert step.saturated
    assert np.allclose(step.policy[0], [1.0, 0.0, 0.0])
    assert np.allclose(step.policy[1], [0.0, 0.25, 0.75])
    assert step.kl == pytest.approx(max(-np.log(0.5), -np.log(0.8)))


def test_flat_direction_does_not_move() -> None:
    pi = np.array([[0.5, 0.5], [0.1, 0.9]])
    direction = np.array([[2.0, 2.0], [-1.0, -1.0]])
    d = np.array([0.5, 0.5])
    step = kl_ball_step(pi, np.array([True, True]), 0.1, direction, occupancy=d)
    assert step.saturated and step.kl == 0.0 and step.flat.all()
    assert np.array_equal(step.policy, pi)
    # one flat row, one movable row: the radius is met by the movable row alone
    direction[1] = [0.0, 1.0]
    step = kl_ball_step(pi, np.array([True, True]), 0.1, direction, occupancy=d)
    assert not step.saturated and step.flat.tolist() == [True, False]
    assert np.array_equal(step.policy[0], pi[0])
    assert 0.5 * kl_rows(pi, step.policy)[1] == pytest.approx(0.1, rel=1e-9)


def test_zero_delta_and_zero_occupancy() -> None:
    pi = np.array([[0.3, 0.7]])
    step = kl_ball_step(pi, np.array([True]), 0.0, np.array([[1.0, 0.0]]), occupancy=np.array([1.0]))
    assert np.array_equal(step.policy, pi) and step.eta == 0.0
    step = kl_ball_step(pi, np.array([True]), 0.1, np.array([[1.0, 0.0]]), occupancy=np.array([0.0]))
    assert step.saturated and np.array_equal(step.policy, pi)


def test_bad_inputs_raise() -> None:
    pi = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="delta"):
        kl_ball_step(pi, np.ones(2, bool), -1.0, pi, occupancy=np.ones(2))
    with pytest.raises(ValueError, match="occupancy"):
        kl_ball_step(pi, np.ones(2, bool), 0.1, pi)
    with pytest.raises(ValueError, match="convention"):
        kl_ball_step(pi, np.ones(2, bool), 0.1, pi, convention="sideways")


def test_trust_region_stage_agent_weighting_per_update() -> None:
    rng = np.random.default_rng(3)
    mdp = random_team_mdp(rng, 3, 8, 3, 0.9)
    pi = random_policy(mdp, rng, 1.0)
    order = [2, 0, 1]
    new, steps = trust_region_stage(mdp, pi, order, 0.05, weighting="agent")
    team = pi
    for agent, step in zip(order, steps):
        d = evaluate(mdp, team).d
        assert update_kl(mdp, d, team, new[agent], agent, "reverse", "agent") == pytest.approx(0.05, rel=1e-8)
        team = mdp.replace_agent(team, agent, new[agent])


# ---------------------------------------------------------------------------------------------
# Stage-0 geometric projection


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), delta0=st.floats(1e-4, 1.0), temp=st.sampled_from([0.3, 1.0, 3.0]))
def test_geometric_projection_constraint(seed: int, delta0: float, temp: float) -> None:
    rng = np.random.default_rng(seed)
    pre, cur = _policy(rng, 6, 4, temp), _policy(rng, 6, 4, temp)
    res = geometric_projection(pre, cur, delta0)
    full = kl_rows(pre, cur)
    inside = full <= delta0
    assert np.all(res.lam[inside] == 0.0)
    assert np.array_equal(res.policy[inside], pre[inside])
    assert np.all(res.lam[~inside] > 0)
    kl = kl_rows(res.policy, cur)
    assert np.allclose(kl[~inside], delta0, rtol=1e-8)  # active constraint met with equality
    assert np.all(kl <= delta0 * (1 + 1e-8))
    assert np.allclose(res.kl, kl)


def _brute_force(pre: np.ndarray, cur: np.ndarray, delta0: float) -> float:
    """min KL(q || pre) s.t. KL(q || cur) <= delta0 by SLSQP over softmax logits (best of restarts)."""

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    def kl(p, q):
        return float(np.sum(p * (np.log(p) - np.log(q))))

    best = np.inf
    for z0 in (np.log(cur), 0.5 * (np.log(cur) + np.log(pre)), np.zeros_like(cur)):
        res = minimize(
            lambda z: kl(softmax(z), pre), z0, method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda z: delta0 - kl(softmax(z), cur)}],
            options={"ftol": 1e-12, "maxiter": 500},
        )
        q = softmax(res.x)
        if kl(q, cur) <= delta0 * (1 + 1e-6) + 1e-9:
            best = min(best, kl(q, pre))
    return best


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), delta0=st.floats(0.01, 0.5))
def test_geometric_projection_is_the_exact_minimiser(seed: int, delta0: float) -> None:
    rng = np.random.default_rng(seed)
    pre, cur = _policy(rng, 1, 4, 0.7), _policy(rng, 1, 4, 0.7)
    res = geometric_projection(pre, cur, delta0)
    ours = float(kl_rows(res.policy, pre)[0])
    brute = _brute_force(pre[0], cur[0], delta0)
    # ours is feasible and no numerical optimiser finds a better feasible point
    assert kl_rows(res.policy, cur)[0] <= delta0 * (1 + 1e-8)
    assert ours <= brute + 1e-7
    assert ours == pytest.approx(brute, abs=1e-5)


def test_geometric_projection_support_cases() -> None:
    cur = np.array([[0.25, 0.25, 0.5]])
    # pi_pre drops an action: feasible only if pi_cur(supp pi_pre) >= exp(-delta0)
    pre = np.array([[0.0, 0.5, 0.5]])
    # KL(pre || cur) = 0.5 log 2 = 0.347; the floor -log(0.75) = 0.288 < 0.3: feasible and active
    res = geometric_projection(pre, cur, 0.3)
    assert res.feasible[0] and res.lam[0] > 0 and kl_rows(res.policy, cur)[0] == pytest.approx(0.3, rel=1e-8)
    assert res.policy[0, 0] == 0.0
    res = geometric_projection(pre, cur, 0.1)  # 0.288 > 0.1: infeasible, pi_cur returned
    assert not res.feasible[0] and np.isinf(res.lam[0]) and np.array_equal(res.policy, cur)
    # pi_cur lacks an action pi_pre uses: KL(pre || cur) = inf, the projection is still finite
    cur2 = np.array([[0.0, 0.5, 0.5]])
    pre2 = np.array([[0.2, 0.2, 0.6]])
    res = geometric_projection(pre2, cur2, 0.05)
    assert res.feasible[0] and res.policy[0, 0] == 0.0
    assert kl_rows(res.policy, cur2)[0] == pytest.approx(0.05, rel=1e-8)
    # mask: rows outside are pi_cur's
    res = geometric_projection(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([[0.5, 0.5], [0.5, 0.5]]), 0.01, mask=np.array([True, False]))
    assert np.array_equal(res.policy[1], [0.5, 0.5]) and res.lam[1] == 0.0
