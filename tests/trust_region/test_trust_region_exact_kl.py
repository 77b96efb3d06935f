"""The exact per-context KL monitor: brute force, >= 0, both directions, the trust region holds on
it (property test, both toy and tabular engines), held-out contexts, line search, certificate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from occupancy.families import initial_policy, make_family
from occupancy.policy import make_tabular_team, team_table
from occupancy.sampling import TabularSampler
from trust_region.advantage import AdvantageConfig, compute_advantages
from trust_region.certificate import CertificateConfig, certificate_terms
from trust_region.interfaces import ExactKLPolicy, supports_exact_kl
from trust_region.kl import categorical_kl
from trust_region.update import UpdateConfig, holdout_split, update_agent


def _brute_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row from explicit probabilities (float64, plain loops over entries)."""
    out = np.zeros(p.shape[0])
    for r in range(p.shape[0]):
        out[r] = sum(p[r, a] * math.log(p[r, a] / q[r, a]) for a in range(p.shape[1]) if p[r, a] > 0)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
def test_categorical_kl_matches_brute_force_both_directions(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(50, 7)) * 3, rng.normal(size=(50, 7)) * 3
    a[0, 3] = -np.inf  # a zero-probability action under pi_cur
    p, q = _softmax(a), _softmax(b)
    lp, lq = torch.log_softmax(torch.tensor(a), -1), torch.log_softmax(torch.tensor(b), -1)
    rev, fwd = categorical_kl(lp, lq, "reverse"), categorical_kl(lp, lq, "forward")
    np.testing.assert_allclose(rev.numpy(), _brute_kl(p, q), atol=1e-6, rtol=0)
    np.testing.assert_allclose(fwd[1:].numpy(), _brute_kl(q[1:], p[1:]), atol=1e-6, rtol=0)
    assert math.isinf(float(fwd[0]))  # pi_new puts mass where pi_cur has none
    assert bool((rev >= 0).all()) and bool((fwd >= 0).all())
    same = categorical_kl(lp, lp, "reverse")
    assert bool((same == 0).all())  # never negative, not even by rounding


def _tabular(family="chain", n=3, seed=0, lr=0.2):
    mdp = make_family(family, n, seed=seed, rounds=1, gamma=0.95)
    team = make_tabular_team(mdp, initial_policy(mdp, seed=seed))
    opts = [torch.optim.Adam(a.trainable_parameters(), lr=lr) for a in team]
    return mdp, team, opts, TabularSampler(mdp, seed=seed)


def test_tabular_exact_kl_matches_brute_force():
    mdp, team, opts, sampler = _tabular()
    batch = sampler.sample(team, sampler.draw_prompts(32), 4)
    j = 1
    agent, sub = team[j], batch.for_agent(j)
    assert isinstance(agent, ExactKLPolicy) and supports_exact_kl(agent)
    pi0 = team_table(mdp, team)
    ref = agent.kl_reference(sub)
    with torch.no_grad():
        agent.logits.add_(torch.randn(agent.logits.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    pi1 = team_table(mdp, team)
    states = sub.context[:, 0].numpy()
    for direction, (p, q) in {"reverse": (pi0, pi1), "forward": (pi1, pi0)}.items():
        kl = agent.exact_kl(sub, ref, direction)
        assert kl.shape == sub.tokens.shape and kl.dtype == torch.float64
        np.testing.assert_allclose(kl[:, 0].numpy(), _brute_kl(p[states], q[states]), atol=1e-6, rtol=0)
        assert bool((kl >= 0).all())


def test_toy_exact_kl_matches_brute_force(make_team):
    team, _, sampler, prompts = make_team(n_agents=2, msg_len=3, vocab=4)
    agent = team[0]
    sub = sampler.sample(team, prompts(4), 3).for_agent(0)
    ref = agent.kl_reference(sub)
    with torch.no_grad():
        agent.logits.mul_(3.0)
    states = sub.context[:, 0]
    p = torch.softmax(ref[states], -1).numpy()  # (M, L, V)
    q = torch.softmax(agent.logits.detach()[states], -1).numpy()
    for direction, (x, y) in {"reverse": (p, q), "forward": (q, p)}.items():
        kl = agent.exact_kl(sub, ref, direction)
        brute = np.stack([_brute_kl(x[:, u], y[:, u]) for u in range(x.shape[1])], axis=1)
        np.testing.assert_allclose(kl.numpy(), brute, atol=1e-6, rtol=0)


def _exact_mean_on_batch(agent, sub, ref, direction="reverse", statistic="mean", q=0.99):
    per = agent.exact_kl(sub, ref, direction).to(torch.float64).sum(1)
    return float(per.mean()) if statistic == "mean" else float(torch.quantile(per, q, interpolation="higher"))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("delta", [0.003, 0.03, 0.3])
def test_property_every_accepted_tabular_update_is_inside_delta(seed, delta):
    """Random seeds, radii, families, directions, statistics and step rules: the exact KL of every
    accepted update on the batch contexts (recomputed here from the tables) is <= delta."""
    rng = np.random.default_rng(seed)
    family = ["chain", "board", "vote", "agree"][seed % 4]
    mdp, team, opts, sampler = _tabular(family, n=3, seed=seed, lr=float(rng.choice([0.1, 0.5, 2.0])))
    cfg = UpdateConfig(delta=delta, epochs=3, minibatch_size=16,
                       monitor_direction=["reverse", "forward"][seed % 2],
                       monitor_statistic=["mean", "quantile"][(seed // 2) % 2], monitor_quantile=0.9,
                       backtrack=["retry", "line_search"][(seed // 3) % 2])
    batch = sampler.sample(team, sampler.draw_prompts(16), 4)
    for j, agent in enumerate(team):
        own = batch.agent == j
        sub = batch.select(own)
        ref = agent.kl_reference(sub)
        adv = compute_advantages(batch, j, AdvantageConfig()).select(own)
        rep = update_agent(agent, opts[j], sub, adv, cfg, rng=rng)
        true = _exact_mean_on_batch(agent, sub, ref, cfg.monitor_direction, cfg.monitor_statistic, 0.9)
        assert true <= delta + 1e-12, (j, true, rep)
        assert rep.kl == pytest.approx(true, abs=1e-12) and rep.monitor == "exact"
        assert rep.kl_exact_mean >= 0 and rep.kl_exact_forward_mean >= 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("delta", [0.01, 0.1])
def test_property_every_accepted_toy_update_is_inside_delta(seed, delta, make_team):
    """Multi-token messages: the token-decomposed exact KL on the batch contexts stays <= delta."""
    team, opts, sampler, prompts = make_team(n_agents=2, msg_len=3, seed=seed, lr=0.5)
    batch = sampler.sample(team, prompts(4), 4)
    own = batch.agent == 1
    sub = batch.select(own)
    ref = team[1].kl_reference(sub)
    adv = compute_advantages(batch, 1, AdvantageConfig()).select(own)
    cfg = UpdateConfig(delta=delta, epochs=4, minibatch_size=4)
    rep = update_agent(team[1], opts[1], sub, adv, cfg, rng=np.random.default_rng(seed))
    assert _exact_mean_on_batch(team[1], sub, ref) <= delta
    assert rep.n_rejected > 0  # lr 0.5 breaches: the check acted


@pytest.mark.parametrize("enforce_on", ["train", "heldout", "both"])
def test_held_out_contexts_are_monitored_not_trained(enforce_on, make_team):
    team, opts, sampler, prompts = make_team(n_agents=2, msg_len=2, seed=0, lr=0.5, n_prompts=8)
    batch = sampler.sample(team, prompts(8), 4)
    own = batch.agent == 1
    sub = batch.select(own)
    ref = team[1].kl_reference(sub)
    adv = compute_advantages(batch, 1, AdvantageConfig()).select(own)
    cfg = UpdateConfig(delta=0.05, epochs=3, minibatch_size=4, holdout_fraction=0.25, enforce_on=enforce_on)
    before = team[1].logits.detach().clone()
    rep = update_agent(team[1], opts[1], sub, adv, cfg, rng=np.random.default_rng(0))
    assert rep.n_heldout == 8 and rep.n_messages == 32  # 8 of 32 trajectories, one message each
    per = team[1].exact_kl(sub, ref).sum(1)
    assert math.isfinite(rep.kl_heldout) and rep.kl_gap == pytest.approx(rep.kl_heldout - rep.kl_train)
    assert rep.kl_train <= 0.05 if enforce_on in ("train", "both") else True
    assert rep.kl_heldout <= 0.05 if enforce_on in ("heldout", "both") else True
    assert rep.kl == pytest.approx({"train": rep.kl_train, "heldout": rep.kl_heldout,
                                    "both": max(rep.kl_train, rep.kl_heldout)}[enforce_on])
    assert float(per.mean()) == pytest.approx((24 * rep.kl_train + 8 * rep.kl_heldout) / 32)
    assert not torch.equal(team[1].logits.detach(), before)


def test_held_out_trajectories_take_no_gradient(make_team):
    """With a learning rate and SGD, only states of training messages move."""
    team, _, sampler, prompts = make_team(n_agents=2, msg_len=1, seed=1, n_prompts=8)
    batch = sampler.sample(team, prompts(8), 2)
    own = batch.agent == 1
    sub = batch.select(own)
    adv = compute_advantages(batch, 1, AdvantageConfig()).select(own)
    opt = torch.optim.SGD(team[1].trainable_parameters(), lr=0.1)
    before = team[1].logits.detach().clone()
    cfg = UpdateConfig(delta=math.inf, kl_target=0.1, holdout_fraction=0.5, max_grad_norm=None, beta=0.0)
    rep = update_agent(team[1], opt, sub, adv, cfg, rng=np.random.default_rng(3))
    moved = (team[1].logits.detach() - before).abs().sum(dim=(1, 2)) > 0
    states = sub.context[:, 0]
    train, held = holdout_split(sub, 0.5, np.random.default_rng(3))
    assert rep.n_heldout == int(held.sum()) > 0
    only_held = set(states[held].tolist()) - set(states[train].tolist())
    assert only_held and not any(bool(moved[s]) for s in only_held)


def test_line_search_rejection_restores_exactly(make_team):
    team, opts, sampler, prompts = make_team(n_agents=2, seed=0, lr=0.05)
    batch = sampler.sample(team, prompts(4), 4)
    own = batch.agent == 1
    sub, adv = batch.select(own), compute_advantages(batch, 1, AdvantageConfig()).select(own)
    agent, opt = team[1], opts[1]
    update_agent(agent, opt, sub, adv, UpdateConfig(delta=math.inf, kl_target=0.01, epochs=2, minibatch_size=4))
    params = agent.logits.detach().clone()
    state = {k: v.clone() for k, v in opt.state[agent.logits].items()}
    for g in opt.param_groups:
        g["lr"] = 100.0
    rep = update_agent(agent, opt, sub, adv, UpdateConfig(delta=1e-12, max_backtracks=3, backtrack="line_search"))
    assert rep.stopped_early and rep.n_steps == 0 and rep.n_rejected == 4  # the step + 3 halvings
    assert torch.equal(agent.logits.detach(), params)
    assert all(torch.equal(state[k], v) for k, v in opt.state[agent.logits].items())
    assert rep.kl == 0.0


def test_line_search_accepts_a_shorter_step(make_team):
    team, opts, sampler, prompts = make_team(n_agents=2, seed=0, lr=0.3)
    batch = sampler.sample(team, prompts(4), 4)
    own = batch.agent == 1
    sub, adv = batch.select(own), compute_advantages(batch, 1, AdvantageConfig()).select(own)
    rep = update_agent(team[1], opts[1], sub, adv,
                       UpdateConfig(delta=0.02, epochs=3, minibatch_size=4, backtrack="line_search", max_backtracks=8))
    assert rep.n_rejected > 0 and rep.n_steps > 0 and rep.kl <= 0.02


class _NoExact(torch.nn.Module):
    """A toy agent without exact_kl (only sampled monitors apply)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.agent_id = inner, inner.agent_id

    def log_probs(self, batch):
        return self.inner.log_probs(batch)

    def trainable_parameters(self):
        return self.inner.trainable_parameters()

    def snapshot(self):
        return self.inner.snapshot()

    def restore(self, s):
        self.inner.restore(s)


def test_agent_without_exact_kl_falls_back_with_a_warning(make_team):
    team, opts, sampler, prompts = make_team(n_agents=2, seed=0, lr=0.05)
    batch = sampler.sample(team, prompts(4), 4)
    own = batch.agent == 1
    sub, adv = batch.select(own), compute_advantages(batch, 1, AdvantageConfig()).select(own)
    agent = _NoExact(team[1])
    assert not supports_exact_kl(agent)
    with pytest.warns(UserWarning, match="no exact_kl"):
        rep = update_agent(agent, opts[1], sub, adv, UpdateConfig(delta=0.05))
    assert rep.monitor == "k3" and math.isnan(rep.kl_exact_mean)
    rep = update_agent(agent, opts[1], sub, adv, UpdateConfig(delta=0.05, monitor_estimator="k1"))
    assert rep.monitor == "k1"


def test_certificate_uses_the_exact_kl_unclamped():
    kw = dict(mean_weighted_ratio_advantage=0.1, zeta_clip=0.0, zeta_ratio=0.0, zeta_norm=0.0, n_agents=2,
              n_trajectories=10, a_max=1.0, config=CertificateConfig(gamma=0.5))
    t = certificate_terms(kl=0.04, kl_exact=True, **kw)
    assert t.kl_term == pytest.approx(t.c * 0.2)
    with pytest.raises(ValueError, match="exact KL"):
        certificate_terms(kl=-1e-3, kl_exact=True, **kw)
    assert certificate_terms(kl=-1e-3, **kw).kl_term == 0.0  # sampled: clamped (documented)


def test_bad_holdout_config():
    with pytest.raises(ValueError, match="UpdateConfig.holdout_fraction"):
        UpdateConfig(holdout_fraction=1.0)
    with pytest.raises(ValueError, match="UpdateConfig.enforce_on"):
        UpdateConfig(enforce_on="heldout")
    with pytest.raises(ValueError, match="UpdateConfig.backtrack"):
        UpdateConfig(backtrack="bisect")
