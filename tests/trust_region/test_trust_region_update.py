"""update_agent: trust-region enforcement, exact undo of breaching steps, beta control."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trust_region.advantage import AdvantageConfig, compute_advantages
from trust_region.certificate import CertificateConfig, hoeffding_term, penalty_constant
from trust_region.kl import kl_statistic, message_kl, per_message
from trust_region.update import UpdateConfig, adaptive_beta, eval_log_probs, update_agent



def _setup(make_team, seed=0, lr=0.5, optimizer="adam", agent=1, msg_len=2):
    team, opts, sampler, prompts = make_team(n_agents=3, msg_len=msg_len, seed=seed, lr=lr, optimizer=optimizer)
    batch = sampler.sample(team, prompts(4), 4)
    own = batch.agent == agent
    adv = compute_advantages(batch, agent, AdvantageConfig()).select(own)
    return team, opts, batch.select(own), adv


def _measure(agent, batch, logp_cur, ref, cfg: UpdateConfig) -> float:
    if cfg.monitor_estimator == "exact":
        per = per_message(agent.exact_kl(batch, ref, cfg.monitor_direction).detach().to(torch.float64), batch.mask,
                          cfg.monitor_reduce)
    else:
        logp = eval_log_probs(agent, batch)
        per = message_kl(logp, logp_cur, batch.mask, cfg.monitor_estimator, cfg.monitor_direction, cfg.monitor_reduce)
    return float(kl_statistic(per, cfg.monitor_statistic, cfg.monitor_quantile))


@pytest.mark.parametrize(
    "cfg",
    [
        UpdateConfig(delta=0.02, epochs=4, minibatch_size=4, beta=0.0, monitor_estimator="k1"),
        UpdateConfig(delta=0.02, epochs=4, minibatch_size=4, monitor_estimator="k3"),
        UpdateConfig(delta=0.05, epochs=3, minibatch_size=8, monitor_estimator="k3", monitor_statistic="quantile",
                     monitor_quantile=0.9, monitor_reduce="mean", penalty_direction="forward"),
        UpdateConfig(delta=0.02, epochs=4, minibatch_size=4, enforce_every="epoch", ratio_level="token",
                     monitor_estimator="k1"),
        UpdateConfig(delta=0.02, epochs=4, minibatch_size=4),  # exact monitor (default)
        UpdateConfig(delta=0.05, epochs=3, minibatch_size=8, monitor_direction="forward", monitor_statistic="quantile",
                     monitor_quantile=0.9),
        UpdateConfig(delta=0.02, epochs=4, minibatch_size=4, backtrack="line_search"),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_accepted_updates_stay_inside_delta(cfg, seed, make_team):
    team, opts, batch, adv = _setup(make_team, seed=seed, lr=0.5)
    agent = team[1]
    logp_cur = eval_log_probs(agent, batch)
    ref = agent.kl_reference(batch)
    rep = update_agent(agent, opts[1], batch, adv, cfg, rng=np.random.default_rng(seed))
    measured = _measure(agent, batch, logp_cur, ref, cfg)
    assert rep.monitor == cfg.monitor_estimator
    assert measured <= cfg.delta
    assert rep.kl == pytest.approx(measured)
    assert rep.kl_max_accepted <= cfg.delta
    # lr 0.5 with Adam is far too large for delta = 0.02: enforcement must have acted, and the
    # agent must still have moved (some steps accepted) unless every try was rejected
    assert rep.n_rejected > 0
    assert rep.n_steps > 0 or rep.stopped_early


def test_no_trust_region_lets_kl_grow_past_delta(make_team):
    team, opts, batch, adv = _setup(make_team, lr=0.5)
    cfg = UpdateConfig(delta=math.inf, kl_target=0.02, epochs=4, minibatch_size=4)
    rep = update_agent(team[1], opts[1], batch, adv, cfg)
    assert rep.n_rejected == 0 and rep.n_steps == 4 * math.ceil(len(batch) / 4)
    assert rep.kl > 0.02  # the same setting breaches a radius of 0.02 (see the test above)


def _opt_state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, dict):
            if not _opt_state_equal(x, y):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_breaching_step_is_undone_bitwise(optimizer, make_team):
    team, opts, batch, adv = _setup(make_team, lr=0.05, optimizer=optimizer)
    agent, opt = team[1], opts[1]
    if optimizer == "sgd":
        opt = torch.optim.SGD(agent.trainable_parameters(), lr=0.05, momentum=0.9)
    # warm the optimizer up so that it has state (Adam moments, SGD momentum) worth restoring
    update_agent(agent, opt, batch, adv, UpdateConfig(delta=math.inf, kl_target=0.01, epochs=2, minibatch_size=4))
    params_before = agent.logits.detach().clone()
    state_before = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                    for k, v in opt.state[agent.logits].items()}
    lr_before = opt.param_groups[0]["lr"]
    for g in opt.param_groups:
        g["lr"] = 100.0  # every step now breaches a tiny radius
    lr_before = 100.0
    others = [a.logits.detach().clone() for a in team]
    cfg = UpdateConfig(delta=1e-8, max_backtracks=2, beta=0.01, adaptive_beta=False)
    rep = update_agent(agent, opt, batch, adv, cfg)
    assert rep.n_steps == 0 and rep.n_rejected == 3 and rep.stopped_early
    assert torch.equal(agent.logits.detach(), params_before)  # bitwise
    state_after = opt.state[agent.logits]
    assert _opt_state_equal(state_before, dict(state_after))
    assert opt.param_groups[0]["lr"] == lr_before  # the lr backoff was undone
    assert all(torch.equal(a.logits.detach(), o) for a, o in zip(team, others))
    # beta was raised by 1.5 per rejection
    assert rep.beta_end == pytest.approx(0.01 * 1.5**3)
    assert rep.kl == 0.0


def test_fresh_optimizer_state_restored_when_first_step_breaches(make_team):
    team, opts, batch, adv = _setup(make_team, lr=100.0)
    agent, opt = team[1], opts[1]
    before = agent.logits.detach().clone()
    rep = update_agent(agent, opt, batch, adv, UpdateConfig(delta=1e-8, max_backtracks=0))
    assert rep.n_rejected == 1 and rep.stopped_early
    assert torch.equal(agent.logits.detach(), before)
    assert len(opt.state) == 0  # Adam has no moments yet, as before the rejected step


def test_only_this_agents_parameters_change(make_team):
    team, opts, batch, adv = _setup(make_team, lr=0.05)
    before = [a.logits.detach().clone() for a in team]
    rep = update_agent(team[1], opts[1], batch, adv, UpdateConfig(delta=0.05, epochs=2, minibatch_size=4))
    assert rep.n_steps > 0
    assert torch.equal(team[0].logits, before[0]) and torch.equal(team[2].logits, before[2])
    assert not torch.equal(team[1].logits, before[1])


def test_update_improves_surrogate_with_small_steps(make_team):
    team, opts, batch, adv = _setup(make_team, lr=0.05)
    rep = update_agent(team[1], opts[1], batch, adv, UpdateConfig(delta=0.05, epochs=4, minibatch_size=8),
                       certificate=CertificateConfig(gamma=0.5), a_max=5.0)
    assert rep.certificate is not None
    assert rep.certificate.surrogate > 0  # a sampled improvement of the surrogate on the batch
    assert rep.kl <= 0.05


def test_optimizer_with_foreign_parameters_rejected(make_team):
    team, opts, batch, adv = _setup(make_team)
    with pytest.raises(ValueError, match="optimizer"):
        update_agent(team[1], opts[0], batch, adv, UpdateConfig())


def test_batch_of_another_agent_rejected(make_team):
    team, opts, batch, adv = _setup(make_team, agent=1)
    with pytest.raises(ValueError, match="other than"):
        update_agent(team[0], opts[0], batch, adv, UpdateConfig())


def test_adaptive_beta_rule():
    assert adaptive_beta(1.0, 0.02, 0.01, 100, 1000) == pytest.approx(1.0 + 0.2 * 0.1)
    assert adaptive_beta(1.0, 0.0, 0.01, 100, 1000) == pytest.approx(1.0 - 0.2 * 0.1)
    assert adaptive_beta(1.0, 0.011, 0.01, 1000, 1000) == pytest.approx(1.1)


def test_certificate_terms_formulae(make_team):
    team, opts, batch, adv = _setup(make_team, lr=0.05)
    cc = CertificateConfig(gamma=0.9, delta_conf=0.1)
    rep = update_agent(team[1], opts[1], batch, adv, UpdateConfig(delta=0.05), certificate=cc, a_max=5.0, n_agents=3)
    t = rep.certificate
    c = math.sqrt(2) * 0.9 * 5.0 / 0.1**2
    assert penalty_constant(0.9, 5.0) == pytest.approx(c)
    assert t.kl_term == pytest.approx(c * math.sqrt(max(rep.kl, 0.0)))
    assert t.hoeffding_term == pytest.approx(5.0 / 0.1 * math.sqrt(math.log(2 * 3 / 0.1) / (2 * rep.n_trajectories)))
    assert t.hoeffding_term == pytest.approx(hoeffding_term(5.0, 0.9, 3, rep.n_trajectories, 0.1))
    assert t.zeta_proxy == pytest.approx(t.zeta_clip + t.zeta_ratio + t.zeta_norm)
    assert t.bias_term == pytest.approx(t.zeta_proxy / 0.1)
    assert t.certificate == pytest.approx(t.surrogate - t.kl_term - t.bias_term)
    assert t.certificate_hp == pytest.approx(t.certificate - t.hoeffding_term)
    d = rep.to_dict()
    assert all(isinstance(v, float) for v in d.values())
    assert d["agent1/cert/certificate"] == pytest.approx(t.certificate)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(delta=0.0), "delta"),
        (dict(delta=-1.0), "delta"),
        (dict(delta=float("nan")), "delta"),
        (dict(clip_eps=0.0), "clip_eps"),
        (dict(clip_eps=-0.1), "clip_eps"),
        (dict(epochs=0), "epochs"),
        (dict(minibatch_size=0), "minibatch_size"),
        (dict(beta=-1.0), "beta"),
        (dict(monitor_estimator="k4"), "monitor_estimator"),
        (dict(monitor_direction="sideways"), "monitor_direction"),
        (dict(monitor_statistic="max"), "monitor_statistic"),
        (dict(monitor_quantile=0.0), "monitor_quantile"),
        (dict(penalty_estimator="kl"), "penalty_estimator"),
        (dict(ratio_level="sentence"), "ratio_level"),
        (dict(max_backtracks=-1), "max_backtracks"),
        (dict(backtrack_beta_factor=0.5), "backtrack_beta_factor"),
        (dict(lr_backoff=0.0), "lr_backoff"),
        (dict(delta=math.inf), "kl_target"),
        (dict(enforce_every="never"), "enforce_every"),
    ],
)
def test_bad_update_config(kwargs, field):
    with pytest.raises(ValueError, match=f"UpdateConfig.{field}"):
        UpdateConfig(**kwargs)
