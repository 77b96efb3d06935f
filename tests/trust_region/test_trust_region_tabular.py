"""The shared core on the tabular engine: TabularAgent, sampled KL vs exact KL, run_stage trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from occupancy.exact import evaluate, update_kl
from occupancy.families import initial_policy, make_family
from occupancy.policy import TabularAgent, make_tabular_team, team_table
from occupancy.sampling import TabularSampler
from trust_region.advantage import AdvantageConfig, compute_advantages
from trust_region.kl import message_kl
from trust_region.interfaces import AgentPolicy
from trust_region.stage import StageConfig, run_stage
from trust_region.update import UpdateConfig, eval_log_probs, update_agent



def _setup(make_team, family="chain", n=3, seed=0, lr=0.05):
    mdp = make_family(family, n, seed=seed, rounds=1, gamma=0.95)
    pi0 = initial_policy(mdp, seed=seed)
    team = make_tabular_team(mdp, pi0)
    opts = [torch.optim.Adam(a.trainable_parameters(), lr=lr) for a in team]
    sampler = TabularSampler(mdp, seed=seed)
    return mdp, pi0, team, opts, sampler


def test_tabular_agent_protocol_and_log_probs(make_team):
    mdp, pi0, team, _, sampler = _setup(make_team)
    assert all(isinstance(a, AgentPolicy) for a in team)
    np.testing.assert_allclose(team_table(mdp, team), pi0, atol=1e-12)
    batch = sampler.sample(team, sampler.draw_prompts(8), 4)
    for j, agent in enumerate(team):
        sub = batch.for_agent(j)
        lp = agent.log_probs(sub)
        assert lp.shape == (len(sub), 1)
        expected = np.log(pi0[sub.context[:, 0].numpy(), sub.tokens[:, 0].numpy()])
        np.testing.assert_allclose(lp[:, 0].detach().numpy(), expected, atol=1e-10)
        # the sampler recorded the same behaviour log-probs (float32)
        np.testing.assert_allclose(sub.behaviour_logp[:, 0].numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="not owned"):
        team[0].log_probs(batch.for_agent(1))


def test_tabular_snapshot_restore(make_team):
    mdp, _, team, opts, _ = _setup(make_team)
    snap = team[0].snapshot()
    with torch.no_grad():
        team[0].logits.add_(1.0)
    team[0].restore(snap)
    assert torch.equal(team[0].logits.detach(), snap)
    assert opts[0].param_groups[0]["params"][0] is team[0].logits  # restored in place


def test_sampled_kl_monitor_matches_exact_kl(make_team):
    """After one update, the batch's per-message k3 mean estimates the exact reverse KL under the
    agent's own occupancy (the sampler draws exactly from it in a one-round family)."""
    mdp, pi0, team, opts, sampler = _setup(make_team, lr=0.2)
    batch = sampler.sample(team, sampler.draw_prompts(256), 8)
    j = 1
    own = batch.agent == j
    adv = compute_advantages(batch, j, AdvantageConfig()).select(own)
    sub = batch.select(own)
    logp_cur = eval_log_probs(team[j], sub)
    rep = update_agent(team[j], opts[j], sub, adv, UpdateConfig(delta=math.inf, kl_target=0.05, epochs=3,
                                                                  minibatch_size=256))
    per = message_kl(eval_log_probs(team[j], sub), logp_cur, sub.mask, "k3", "reverse")
    pi_new = team_table(mdp, team)
    d = evaluate(mdp, pi0).d
    exact = update_kl(mdp, d, pi0, pi_new, j, "reverse", "agent")
    se = float(per.std()) / math.sqrt(per.numel())
    assert exact > 1e-3  # the agent moved
    assert abs(float(per.mean()) - exact) < 4 * se + 1e-9, (float(per.mean()), exact, se)
    assert rep.kl_k3_mean == pytest.approx(float(per.mean()))


@pytest.mark.parametrize("mode, prefix", [("intermediate", False), ("intermediate", True), ("stale_is", False)])
def test_run_stage_trains_a_tabular_team(mode, prefix, make_team):
    mdp, pi0, team, opts, sampler = _setup(make_team, family="chain", lr=0.05)
    cfg = StageConfig(mode=mode, prefix_reuse=prefix, prompts_per_stage=32, group_size=8,
                      update=UpdateConfig(delta=0.05, epochs=4, minibatch_size=64))
    rng = np.random.default_rng(0)
    j0 = evaluate(mdp, pi0).J
    betas = None
    for s in range(6):
        rep = run_stage(team, opts, sampler, sampler.draw_prompts, cfg, rng, betas=betas, stage=s)
        betas = rep.betas
        # every accepted update is inside the sampled trust region
        assert all(u.kl <= 0.05 for u in rep.updates)
        assert rep.sample_calls == (1 if prefix or mode == "stale_is" else 3)
    j1 = evaluate(mdp, team_table(mdp, team)).J
    assert j1 > j0 + 0.1, (j0, j1)


def test_protocols_alias_and_old_estimator_names_still_import():
    import trust_region.advantage as adv
    import trust_region.interfaces as interfaces
    import trust_region.kl as kl
    import trust_region.protocols as protocols

    assert protocols.AgentPolicy is interfaces.AgentPolicy and protocols.Sampler is interfaces.Sampler
    assert kl.ESTIMATORS == kl.KL_ESTIMATORS == ("k1", "k2", "k3")
    assert adv.ESTIMATORS == adv.ADVANTAGE_ESTIMATORS == ("group", "gae")


def test_every_core_config_field_has_help():
    from dataclasses import fields

    from trust_region.certificate import CertificateConfig

    for cls in (StageConfig, UpdateConfig, AdvantageConfig, CertificateConfig):
        for f in fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
