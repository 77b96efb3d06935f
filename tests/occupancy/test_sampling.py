"""The vectorised sampler agrees with the exact engine; prefix reuse is distributionally exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occupancy.exact import evaluate
from occupancy.families import FAMILIES, initial_policy, make_family
from occupancy.mdp import TeamMDP
from occupancy.sampling import (
    TabularSampler,
    default_horizon,
    draw_prompts,
    empirical_occupancy,
    estimate_J,
    team_policy,
)
from trust_region.batch import MessageBatch

Z = 4.0
CASES = [(f, n, r) for f in FAMILIES for (n, r) in ((3, 1), (3, 2), (3, 0))]


def check_against_exact(mdp: TeamMDP, pi: np.ndarray, batch: MessageBatch, n_traj: int, group_size: int):
    ev = evaluate(mdp, pi)
    j_hat, j_se = estimate_J(batch, n_traj, group_size)
    assert abs(j_hat - ev.J) <= Z * j_se, (j_hat, ev.J, j_se)
    d_hat, d_se = empirical_occupancy(mdp, batch, n_traj, group_size)
    nt = ~mdp.terminal
    # states with a meaningful number of visits: the CLT applies
    visited = nt & (ev.d > 1e-3)
    z = np.abs(d_hat - ev.d)[visited] / (d_se[visited] + 1e-8)  # deterministic states: se = 0, truncation tol 1e-8
    assert z.max() <= Z, (z.max(), np.flatnonzero(visited)[np.argmax(z)])
    # rarely visited states: bounded by 4 SE or a small absolute slack
    rare = nt & ~visited
    assert np.all(np.abs(d_hat - ev.d)[rare] <= Z * d_se[rare] + 2e-3)
    # every agent's occupancy mass
    for j in range(mdp.n_agents):
        m = mdp.router == j
        assert abs(d_hat[m].sum() - ev.d[m].sum()) <= Z * np.sqrt((d_se[m] ** 2).sum()) * np.sqrt(m.sum()) + 1e-8


@pytest.mark.parametrize("name,n,rounds", CASES)
def test_sampler_agrees_with_exact(name, n, rounds):
    mdp = make_family(name, n, seed=0, rounds=rounds, gamma=0.9)
    pi = initial_policy(mdp, seed=1)
    smp = TabularSampler(mdp, seed=2)
    p, g = 2000, 4
    batch = smp.sample(pi, smp.draw_prompts(p), g)
    check_against_exact(mdp, pi, batch, p * g, g)


def test_sampler_test_can_fail():
    """A sampler run with the wrong team must be rejected by the same check."""
    mdp = make_family("board", 3, seed=0, rounds=2, gamma=0.9)
    pi = initial_policy(mdp, seed=1)
    other = initial_policy(mdp, seed=9)
    smp = TabularSampler(mdp, seed=2)
    batch = smp.sample(other, smp.draw_prompts(2000), 4)
    with pytest.raises(AssertionError):
        check_against_exact(mdp, pi, batch, 8000, 4)


def test_batch_fields():
    mdp = make_family("vote", 4, seed=0, rounds=2, gamma=0.8)
    pi = initial_policy(mdp, seed=1)
    smp = TabularSampler(mdp, seed=0)
    prompts = smp.draw_prompts(5)
    batch = smp.sample(pi, prompts, 3)
    assert isinstance(batch, MessageBatch)
    m = len(batch)
    assert m == 15 * 8  # N turns x R rounds, every trajectory
    assert batch.context.shape == (m, 1) and batch.tokens.shape == (m, 1)
    assert bool(batch.mask.all()) and bool(batch.context_mask.all()) and bool(batch.generated.all())
    x, a = batch.context[:, 0].numpy(), batch.tokens[:, 0].numpy()
    np.testing.assert_array_equal(batch.agent.numpy(), mdp.router[x])
    np.testing.assert_allclose(batch.behaviour_logp[:, 0].numpy(), np.log(pi[x, a]), rtol=1e-6)
    np.testing.assert_allclose(batch.reward.numpy(), mdp.rewards[x, a], rtol=1e-6, atol=1e-7)
    traj, turn = batch.trajectory.numpy(), batch.turn.numpy()
    np.testing.assert_array_equal(batch.group.numpy(), traj // 3)
    order = np.lexsort((turn, traj))
    np.testing.assert_array_equal(order, np.arange(m))
    for k in range(15):
        sel = traj == k
        np.testing.assert_array_equal(turn[sel], np.arange(8))
        assert x[sel][0] == prompts[k // 3]
        ret = np.sum(0.8 ** turn[sel] * mdp.rewards[x[sel], a[sel]])
        np.testing.assert_allclose(batch.returns.numpy()[sel], ret, rtol=1e-6, atol=1e-7)


def test_seeded_and_rng_state():
    mdp = make_family("chain", 3, seed=0, rounds=0, gamma=0.7)
    pi = initial_policy(mdp, seed=1)
    a = TabularSampler(mdp, seed=5).sample(pi, [0, 1, 0], 2)
    b = TabularSampler(mdp, seed=5).sample(pi, [0, 1, 0], 2)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.context, b.context)
    smp = TabularSampler(mdp, seed=5)
    state = smp.rng.bit_generator.state
    c = smp.sample(pi, [0], 4)
    smp.rng.bit_generator.state = state
    assert torch.equal(c.tokens, smp.sample(pi, [0], 4).tokens)


def test_truncation_horizon_for_continuing_instances():
    mdp = make_family("board", 2, seed=0, rounds=0, gamma=0.5)
    h = default_horizon(0.5)
    assert 0.5**h <= 1e-8 < 0.5 ** (h - 1)
    batch = TabularSampler(mdp, seed=0).sample(initial_policy(mdp, 0), [0, 0], 1)
    assert len(batch) == 2 * h and int(batch.turn.max()) == h - 1
    assert default_horizon(0.0) == 1


class TableAgent:
    def __init__(self, pi):
        self.pi = pi

    def table(self):
        return torch.tensor(self.pi)


class RowsAgent:
    def __init__(self, rows):
        self.rows = rows

    def probs(self):
        return self.rows


def test_team_as_agents():
    mdp = make_family("board", 3, seed=0, rounds=2)
    pis = [initial_policy(mdp, seed=j) for j in range(3)]
    expected = np.full((mdp.n_states, 3), 1 / 3)
    for j in range(3):
        expected[mdp.router == j] = pis[j][mdp.router == j]
    np.testing.assert_allclose(team_policy(mdp, [TableAgent(p) for p in pis]), expected)
    rows = [RowsAgent(pis[j][mdp.router == j]) for j in range(3)]
    np.testing.assert_allclose(team_policy(mdp, rows), expected)
    with pytest.raises(ValueError, match="one agent per router id"):
        team_policy(mdp, [TableAgent(pis[0])])
    with pytest.raises(TypeError, match="neither table"):
        team_policy(mdp, [object()] * 3)
    bad = pis[0].copy()
    bad[mdp.router == 0] *= 2
    with pytest.raises(ValueError, match="not a distribution"):
        team_policy(mdp, [TableAgent(bad), TableAgent(pis[1]), TableAgent(pis[2])])


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("agent", [0, 2])
def test_prefix_reuse_is_exact(name, agent):
    """Sample with team b, change only `agent`, resample from its first turn: the result must be
    distributed as fresh rollouts of the new team (exact J and occupancy within 4 SE)."""
    mdp = make_family(name, 3, seed=1, rounds=2, gamma=0.9)
    base = initial_policy(mdp, seed=1)
    new = base.copy()
    m = mdp.router == agent
    new[m] = initial_policy(mdp, seed=7, temperature=0.3)[m]
    smp = TabularSampler(mdp, seed=3)
    p, g = 2000, 4
    batch = smp.sample(base, smp.draw_prompts(p), g)
    re = smp.resample_from(new, batch, agent)
    check_against_exact(mdp, new, re, p * g, g)
    # the same check fails for the stale batch (the change is large enough to be detected)
    with pytest.raises(AssertionError):
        check_against_exact(mdp, new, batch, p * g, g)


def test_prefix_reuse_keeps_the_prefix():
    mdp = make_family("layered", 4, seed=0, rounds=2, gamma=0.9)
    pi = initial_policy(mdp, seed=0)
    smp = TabularSampler(mdp, seed=0)
    batch = smp.sample(pi, smp.draw_prompts(50), 2)
    re = smp.resample_from(pi, batch, 2)
    assert len(re) == len(batch)  # fixed-length episodes
    kept = ~re.generated
    # in every trajectory agent 2 first speaks at turn 2: turns 0, 1 are kept, the rest generated
    np.testing.assert_array_equal(kept.numpy(), re.turn.numpy() < 2)
    old_keep = batch.turn < 2
    assert torch.equal(re.tokens[kept], batch.tokens[old_keep])
    assert torch.equal(re.context[kept], batch.context[old_keep])
    assert torch.equal(re.behaviour_logp[kept], batch.behaviour_logp[old_keep])
    assert torch.equal(re.trajectory, batch.trajectory) and torch.equal(re.group, batch.group)
    assert re.num_generated_tokens == len(re) - int(old_keep.sum())
    # returns recomputed per trajectory from the new messages
    traj, turn = re.trajectory.numpy(), re.turn.numpy()
    x, a = re.context[:, 0].numpy(), re.tokens[:, 0].numpy()
    for k in range(5):
        sel = traj == k
        ret = np.sum(0.9 ** turn[sel] * mdp.rewards[x[sel], a[sel]])
        np.testing.assert_allclose(re.returns.numpy()[sel], ret, rtol=1e-6)


def test_prefix_reuse_when_agent_never_speaks():
    """A random TeamMDP where agent 1 owns an unreachable state only: trajectories are kept whole."""
    rng = np.random.default_rng(0)
    t = np.zeros((3, 2, 3))
    t[0, :, 1] = 1.0
    t[1, :, 0] = 0.5
    t[1, :, 1] = 0.5
    t[2, :, 2] = 1.0
    mdp = TeamMDP(t, rng.normal(size=(3, 2)), np.array([0, 0, 1]), np.array([1.0, 0, 0]), 0.5)
    smp = TabularSampler(mdp, seed=0)
    batch = smp.sample(mdp.uniform_policy(), [0, 0], 2)
    re = smp.resample_from(mdp.uniform_policy(), batch, 1)
    assert not bool(re.generated.any())
    assert torch.equal(re.tokens, batch.tokens) and torch.equal(re.returns, batch.returns)


def test_draw_prompts_follow_mu():
    mdp = make_family("vote", 3, seed=0, rounds=2)  # 3 environment states, mu uniform on them
    prompts = draw_prompts(mdp, 30000, np.random.default_rng(0))
    counts = np.bincount(prompts, minlength=mdp.n_states) / 30000
    start = np.flatnonzero(mdp.initial > 0)
    assert set(np.unique(prompts)) == set(start)
    np.testing.assert_allclose(counts[start], mdp.initial[start], atol=0.015)
