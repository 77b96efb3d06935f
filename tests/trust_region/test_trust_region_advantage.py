"""Bounded group-normalised advantages and GAE with truncated traces, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


from trust_region.advantage import (
    AdvantageConfig,
    broadcast_to_tokens,
    compute_advantages,
    gae_advantages,
    group_advantages,
    truncated_gae,
)
from trust_region.batch import MessageBatch


def make_batch(trajectory, group, agent, turn, reward=None, returns=None, msg_len=2):
    m = len(trajectory)
    tokens = torch.zeros(m, msg_len, dtype=torch.int64)
    mask = torch.ones(m, msg_len, dtype=torch.bool)
    if msg_len > 1:
        mask[0, -1] = False  # one ragged message
    return MessageBatch(
        trajectory=torch.tensor(trajectory),
        group=torch.tensor(group),
        agent=torch.tensor(agent),
        turn=torch.tensor(turn),
        context=torch.zeros(m, 1, dtype=torch.int64),
        context_mask=torch.ones(m, 1, dtype=torch.bool),
        tokens=tokens,
        mask=mask,
        behaviour_logp=torch.full((m, msg_len), -1.0),
        reward=torch.tensor(reward if reward is not None else [0.0] * m, dtype=torch.float32),
        returns=torch.tensor(returns if returns is not None else [0.0] * m, dtype=torch.float32),
        generated=torch.ones(m, dtype=torch.bool),
    )


def test_group_normalisation_population_std_eps_inside_sqrt():
    # two groups: trajectories 0..3 in group 0 (returns 1, 0, 0, 3), 4..5 in group 1 (2, 2); two messages each
    rets = [1.0, 0.0, 0.0, 3.0, 2.0, 2.0]
    traj = [t for t in range(6) for _ in range(2)]
    grp = [0 if t < 4 else 1 for t in traj]
    batch = make_batch(traj, grp, [k % 2 for k in range(12)], [k % 2 for k in range(12)],
                       returns=[rets[t] for t in traj])
    eps = 0.25
    adv = group_advantages(batch, AdvantageConfig(eps=eps, a_clip=1.2))
    r = np.array(rets[:4])
    expected = (r - r.mean()) / math.sqrt(r.var() + eps)  # numpy var: population (ddof=0)
    got_unclipped = adv.unclipped.numpy()[::2][:4]
    np.testing.assert_allclose(got_unclipped, expected, rtol=1e-6)
    np.testing.assert_allclose(adv.value.numpy()[::2][:4], np.clip(expected, -1.2, 1.2), rtol=1e-6)
    # both messages of a trajectory carry the same advantage
    assert torch.equal(adv.value[0::2], adv.value[1::2])
    # a constant group has advantage 0
    assert torch.equal(adv.value[8:], torch.zeros(4))
    # leave-one-out raw advantage R_g - mean of the others
    assert adv.raw_loo[0].item() == pytest.approx(1.0 - (0 + 0 + 3) / 3)


def test_returns_must_be_constant_within_a_trajectory():
    batch = make_batch([0, 0], [0, 0], [0, 1], [0, 1], returns=[1.0, 0.0])
    with pytest.raises(ValueError, match="returns"):
        group_advantages(batch, AdvantageConfig())


def test_eps_inside_not_outside_sqrt():
    batch = make_batch([0, 1], [0, 0], [0, 0], [0, 0], returns=[1.0, 0.0], msg_len=1)
    adv = group_advantages(batch, AdvantageConfig(eps=0.75, a_clip=math.inf))
    # mu = .5, var = .25, sigma = sqrt(.25 + .75) = 1  (eps outside would give .5 + .75)
    assert adv.value.tolist() == pytest.approx([0.5, -0.5])


def test_baseline_and_none_normalisations():
    batch = make_batch([0, 1, 2], [0, 0, 0], [0, 0, 0], [0, 0, 0], returns=[3.0, 1.0, 2.0], msg_len=1)
    base = group_advantages(batch, AdvantageConfig(normalization="baseline", a_clip=math.inf))
    assert base.value.tolist() == pytest.approx([1.0, -1.0, 0.0])
    raw = group_advantages(batch, AdvantageConfig(normalization="none", a_clip=2.5))
    assert raw.value.tolist() == pytest.approx([2.5, 1.0, 2.0])
    assert raw.unclipped.tolist() == pytest.approx([3.0, 1.0, 2.0])


def test_broadcast_to_tokens():
    batch = make_batch([0, 1], [0, 0], [0, 1], [0, 0], returns=[1.0, 0.0])
    tok = broadcast_to_tokens(torch.tensor([2.0, -1.0]), batch.mask)
    assert tok.tolist() == [[2.0, 0.0], [-1.0, -1.0]]


def test_truncated_gae_hand_computed():
    # trajectory 0: three messages, rewards (0.5, 0, 1); trajectory 1: one message, reward 2
    batch = make_batch([0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 2, 0], [0, 1, 2, 0], reward=[0.5, 0.0, 1.0, 2.0])
    gamma, lam = 0.9, 0.8
    log_rho = torch.log(torch.tensor([3.0, 0.5, 0.25, 1.0]))  # c = (1, .5, .25, 1)
    values = torch.tensor([0.2, 0.1, 0.3, 0.4])
    got = truncated_gae(batch, gamma, lam, log_rho=log_rho, values=values).tolist()
    d2 = 1.0 - 0.3
    d1 = 0.0 + gamma * 0.3 - 0.1
    d0 = 0.5 + gamma * 0.1 - 0.2
    a2 = d2
    a1 = d1 + gamma * lam * 0.25 * a2
    a0 = d0 + gamma * lam * 0.5 * a1
    assert got == pytest.approx([a0, a1, a2, 2.0 - 0.4])


def test_plain_gae_without_critic_is_discounted_reward_to_go():
    batch = make_batch([0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 2], reward=[0.0, 0.0, 1.0])
    got = truncated_gae(batch, 1.0, 0.5).tolist()
    assert got == pytest.approx([0.25, 0.5, 1.0])


def test_gae_advantages_aggregate_agent_messages_and_normalise():
    # two trajectories of one group; agent 0 speaks at turns 0 and 2
    batch = make_batch([0, 0, 0, 1, 1, 1], [0] * 6, [0, 1, 0, 0, 1, 0], [0, 1, 2, 0, 1, 2],
                       reward=[0, 0, 1.0, 0, 0, 0.0])
    cfg = AdvantageConfig(estimator="gae", gamma=1.0, lam=0.5, a_clip=math.inf, eps=1e-12)
    adv = gae_advantages(batch, agent=0, config=cfg)
    # traj 0: per-message GAE (.25, .5, 1); agent 0 sum = 1.25; traj 1: 0 -> normalised +-1
    assert adv.valid.tolist() == [True, False, True, True, False, True]
    assert adv.value[adv.valid].tolist() == pytest.approx([1.0, 1.0, -1.0, -1.0], rel=1e-5)
    assert adv.value[~adv.valid].tolist() == [0.0, 0.0]
    same = compute_advantages(batch, 0, cfg)
    assert torch.equal(same.value, adv.value)


def test_unsorted_batch_rejected_by_gae():
    batch = make_batch([0, 0], [0, 0], [0, 1], [1, 0])
    with pytest.raises(ValueError, match="sorted"):
        truncated_gae(batch, 1.0, 1.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(estimator="td"), "estimator"),
        (dict(normalization="z"), "normalization"),
        (dict(eps=0.0), "eps"),
        (dict(a_clip=0.0), "a_clip"),
        (dict(gamma=1.5), "gamma"),
        (dict(lam=-0.1), "lam"),
    ],
)
def test_bad_advantage_config(kwargs, field):
    with pytest.raises(ValueError, match=f"AdvantageConfig.{field}"):
        AdvantageConfig(**kwargs)
