"""run_stage: sampling counts per mode, update order, target-only updates, weights, configs, training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from trust_region.advantage import AdvantageConfig
from trust_region.certificate import CertificateConfig
from trust_region.stage import StageConfig, run_stage, stage_order
from trust_region.update import UpdateConfig


FAST = UpdateConfig(delta=0.05, epochs=1, minibatch_size=None)


def _run(make_team, mode, n_agents=3, prefix_reuse=False, k=2, order="fixed", seed=0, on_call=None, update=FAST, **kw):
    team, opts, sampler, prompts = make_team(n_agents=n_agents, seed=seed, lr=0.05, on_call=on_call)
    cfg = StageConfig(mode=mode, prefix_reuse=prefix_reuse, resample_every=k, order=order, prompts_per_stage=3,
                      group_size=2, update=update, **kw)
    rep = run_stage(team, opts, sampler, prompts, cfg, np.random.default_rng(seed))
    return rep, sampler, team


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(
    "mode, expected",
    [
        ("intermediate", lambda n: (n, 0)),
        ("stale", lambda n: (1, 0)),
        ("stale_is", lambda n: (1, 0)),
        ("stale_happo", lambda n: (1, 0)),
        ("joint", lambda n: (1, 0)),
    ],
)
def test_sample_counts(mode, expected, n, make_team):
    rep, sampler, _ = _run(make_team, mode, n_agents=n)
    assert (sampler.sample_calls, sampler.resample_calls) == expected(n)
    assert (rep.sample_calls, rep.resample_calls) == expected(n)
    assert len(rep.updates) == n


@pytest.mark.parametrize("n, k", [(3, 2), (4, 2), (5, 2), (5, 3), (3, 1), (3, 5)])
def test_resample_every_k_counts(n, k, make_team):
    rep, sampler, _ = _run(make_team, "resample_every_k", n_agents=n, k=k)
    assert sampler.sample_calls == math.ceil(n / k) == rep.sample_calls
    assert sampler.resample_calls == 0
    gen = [u.trajectories_generated for u in rep.updates]
    assert gen == [6 if i % k == 0 else 0 for i in range(n)]  # 3 prompts x group 2


@pytest.mark.parametrize("order", ["fixed", "reversed", "random"])
def test_prefix_reuse_counts(order, make_team):
    rep, sampler, _ = _run(make_team, "intermediate", n_agents=3, prefix_reuse=True, order=order, seed=3)
    assert sampler.sample_calls == 1 and sampler.resample_calls == 2
    assert (rep.sample_calls, rep.resample_calls) == (1, 2)
    # resample_from is called with the agent that changed last
    assert sampler.resample_agents == rep.order[:-1]
    # prefix reuse generates fewer tokens than fresh intermediate rollouts: at least one of the two
    # agents changed before a resample is not agent 0 (who speaks first), so prefixes are kept
    fresh, _, _ = _run(make_team, "intermediate", n_agents=3, order=order, seed=3)
    assert rep.tokens_generated < fresh.tokens_generated
    kept_first = rep.order[0] != 0
    assert (rep.updates[1].trajectories_generated, rep.updates[1].tokens_generated < 36) == (6, kept_first)


def test_orders():
    cfg = StageConfig(order="reversed")
    assert stage_order(cfg, 4, np.random.default_rng(0)) == [3, 2, 1, 0]
    cfg = StageConfig(order="fixed", fixed_order=(2, 0, 1))
    assert stage_order(cfg, 3, np.random.default_rng(0)) == [2, 0, 1]
    cfg = StageConfig(order="reversed", fixed_order=(2, 0, 1))
    assert stage_order(cfg, 3, np.random.default_rng(0)) == [1, 0, 2]
    rng = np.random.default_rng(0)
    orders = {tuple(stage_order(StageConfig(order="random"), 4, rng)) for _ in range(30)}
    assert len(orders) > 1 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    with pytest.raises(ValueError, match="fixed_order"):
        stage_order(StageConfig(fixed_order=(1, 0)), 3, rng)


@pytest.mark.parametrize("mode", ["intermediate", "resample_every_k"])
def test_only_the_target_agent_changes_between_samples(mode, make_team):
    """Between two consecutive rollout calls exactly the agent updated in between has changed."""
    seen: list[list[torch.Tensor]] = []

    def on_call(kind, team):
        seen.append([a.logits.detach().clone() for a in team])

    rep, sampler, team = _run(make_team, mode, n_agents=3, k=1, order="random", seed=5, on_call=on_call)
    seen.append([a.logits.detach().clone() for a in team])  # after the stage
    assert len(seen) == 4
    for i, j in enumerate(rep.order):
        changed = [not torch.equal(x, y) for x, y in zip(seen[i], seen[i + 1])]
        assert changed == [a == j for a in range(3)], (i, j, changed)


def test_stale_modes_share_the_stage_start_batch_and_weights(make_team):
    upd = UpdateConfig(delta=0.5, epochs=3, minibatch_size=2, beta=0.0)
    stale, _, _ = _run(make_team, "stale", update=upd)
    is_, _, _ = _run(make_team, "stale_is", update=upd)
    happo, _, _ = _run(make_team, "stale_happo", update=upd)
    joint, _, _ = _run(make_team, "joint", update=upd)
    # first update: no agent has been updated yet, all weights are 1
    for rep in (is_, happo):
        first = rep.updates[0]
        assert first.weight_min == first.weight_max == 1.0
    # later updates: truncated weights <= 1 (some < 1); HAPPO weights are untruncated (some > 1)
    assert all(u.weight_max <= 1.0 for u in is_.updates)
    assert any(u.weight_min < 1.0 for u in is_.updates[1:])
    assert any(u.weight_max > 1.0 for u in happo.updates[1:])
    # stale and joint run identical updates (an update depends only on the agent and the fixed batch)
    for a, b in zip(stale.updates, joint.updates):
        assert a.kl == b.kl and a.n_steps == b.n_steps


def test_stale_is_with_gae_uses_truncated_traces(make_team):
    upd = UpdateConfig(delta=0.5, epochs=3, minibatch_size=2, beta=0.0)
    rep, _, _ = _run(make_team, "stale_is", update=upd, advantage=AdvantageConfig(estimator="gae", lam=0.9))
    # traces, not trajectory weights: the objective weights stay 1
    assert all(u.weight_min == u.weight_max == 1.0 for u in rep.updates)
    assert all(u.n_messages > 0 for u in rep.updates)


def test_every_accepted_update_in_a_stage_is_inside_delta(make_team):
    upd = UpdateConfig(delta=0.01, epochs=3, minibatch_size=2)
    team, opts, sampler, prompts = make_team(n_agents=3, seed=1, lr=1.0)
    cfg = StageConfig(mode="intermediate", prompts_per_stage=4, group_size=3, update=upd)
    betas = None
    for s in range(2):
        rep = run_stage(team, opts, sampler, prompts, cfg, np.random.default_rng(s), betas=betas, stage=s)
        betas = rep.betas
        assert all(u.kl <= 0.01 for u in rep.updates)
    assert sum(u.n_rejected for u in rep.updates) > 0


def test_report_to_dict_is_json_floats(make_team):
    rep, _, _ = _run(make_team, "intermediate", certificate=CertificateConfig(gamma=0.9))
    d = rep.to_dict()
    assert all(isinstance(v, float) for v in d.values())
    json.dumps(d)
    assert d["stage/sample_calls"] == 3.0
    assert d["stage/cert/sum_certificate"] == pytest.approx(sum(u.certificate.certificate for u in rep.updates))
    assert "agent2/cert/kl_term" in d


def test_team_trains_over_stages(make_team):
    team, opts, sampler, prompts = make_team(n_agents=2, seed=2, lr=0.1, msg_len=1, vocab=3, n_prompts=2)
    cfg = StageConfig(mode="intermediate", prompts_per_stage=4, group_size=8,
                      update=UpdateConfig(delta=0.1, epochs=2, minibatch_size=8))
    rng = np.random.default_rng(0)
    betas = None
    first = last = None
    for s in range(12):
        rep = run_stage(team, opts, sampler, prompts, cfg, rng, betas=betas, stage=s)
        betas = rep.betas
        first = rep.batch_mean_returns[0] if first is None else first
        last = rep.batch_mean_returns[-1]
    # exact team return of the toy team (all tokens independent of the previous message here)
    assert last > first + 0.2, (first, last)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(mode="sequential"), "mode"),
        (dict(prefix_reuse=True, mode="stale"), "prefix_reuse"),
        (dict(resample_every=0, mode="resample_every_k"), "resample_every"),
        (dict(order="sorted"), "order"),
        (dict(fixed_order=(0, 0, 1)), "fixed_order"),
        (dict(group_size=1), "group_size"),
        (dict(group_size=0, advantage=AdvantageConfig(normalization="none")), "group_size"),
        (dict(prompts_per_stage=0), "prompts_per_stage"),
        (dict(advantage=AdvantageConfig(a_clip=math.inf)), "certificate.a_max"),
        (dict(update=dict(delta=0.0)), "UpdateConfig.delta"),
        (dict(update=dict(clip_eps=0.0)), "UpdateConfig.clip_eps"),
        (dict(is_log_ratio_clip=0.0), "is_log_ratio_clip"),
        (dict(update="fast"), "update"),
    ],
)
def test_bad_stage_config(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        StageConfig(**kwargs)


def test_group_size_one_allowed_without_normalisation_and_from_dict():
    cfg = StageConfig.from_dict(dict(group_size=1, advantage=dict(normalization="none"), update=dict(delta=0.02)))
    assert cfg.update.delta == 0.02 and cfg.advantage.normalization == "none"
    with pytest.raises(ValueError, match="unknown"):
        StageConfig.from_dict(dict(groupsize=4))


def test_run_stage_argument_checks(make_team):
    team, opts, sampler, prompts = make_team(n_agents=2)
    with pytest.raises(ValueError, match="optimizer"):
        run_stage(team, opts[:1], sampler, prompts, StageConfig(), np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        run_stage(team, opts, sampler, prompts, StageConfig(), 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="betas"):
        run_stage(team, opts, sampler, prompts, StageConfig(), np.random.default_rng(0), betas=[0.1])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode, prefix", [("intermediate", False), ("intermediate", True), ("stale_is", False),
                                          ("resample_every_k", False)])
def test_resume_mid_stage_reproduces_the_uninterrupted_stage(mode, prefix, make_team):
    def full_run(make_team):
        team, opts, sampler, prompts = make_team(n_agents=3, seed=4, lr=0.05)
        cfg = StageConfig(mode=mode, prefix_reuse=prefix, resample_every=2, order="random", prompts_per_stage=3,
                          group_size=2, update=UpdateConfig(delta=0.05, epochs=2, minibatch_size=2))
        seen = []
        rep = run_stage(team, opts, sampler, prompts, cfg, np.random.default_rng(7), stage=5,
                        on_update=lambda p: seen.append((p.next_index, p.updates[-1].agent)))
        return team, rep, seen

    team_a, rep_a, seen_a = full_run(make_team)
    assert [k for k, _ in seen_a] == [1, 2, 3]
    assert [a for _, a in seen_a] == rep_a.order

    # interrupted after the first update, then resumed from the captured progress
    team, opts, sampler, prompts = make_team(n_agents=3, seed=4, lr=0.05)
    cfg = StageConfig(mode=mode, prefix_reuse=prefix, resample_every=2, order="random", prompts_per_stage=3,
                      group_size=2, update=UpdateConfig(delta=0.05, epochs=2, minibatch_size=2))
    rng = np.random.default_rng(7)
    captured = []

    def stop_after_first(p):
        captured.append(p)
        raise _Stop

    with pytest.raises(_Stop):
        run_stage(team, opts, sampler, prompts, cfg, rng, on_update=stop_after_first, stage=5)
    progress = captured[0]
    assert progress.next_index == 1 and len(progress.updates) == 1
    rep_b = run_stage(team, opts, sampler, prompts, cfg, rng, resume=progress)
    assert rep_b.order == rep_a.order and rep_b.stage == 5
    assert (rep_b.sample_calls, rep_b.resample_calls) == (rep_a.sample_calls, rep_a.resample_calls)
    for a, b in zip(team_a, team):
        assert torch.equal(a.logits, b.logits)
    assert rep_b.betas == rep_a.betas
    assert [u.kl for u in rep_b.updates] == [u.kl for u in rep_a.updates]


def test_resume_without_a_needed_batch_is_refused(make_team):
    team, opts, sampler, prompts = make_team(n_agents=3)
    cfg = StageConfig(mode="stale", prompts_per_stage=2, group_size=2)
    captured = []

    def stop(p):
        captured.append(p)
        raise _Stop

    with pytest.raises(_Stop):
        run_stage(team, opts, sampler, prompts, cfg, np.random.default_rng(0), on_update=stop)
    captured[0].batch = None
    with pytest.raises(ValueError, match="resume.batch"):
        run_stage(team, opts, sampler, prompts, cfg, np.random.default_rng(0), resume=captured[0])


@pytest.mark.parametrize("n, p", [(2, 4), (3, 3), (3, 7), (4, 5)])
def test_token_matched_generates_the_stale_budget_and_not_more(n, p, make_team):
    """token_matched: N fresh batches on 1/N of the prompts each; the stage generates exactly the
    P * G trajectories of one stale batch (counted by the sampler), every prompt used once."""
    from trust_region.stage import prompt_part

    def run(mode):
        team, opts, sampler, prompts = make_team(n_agents=n, seed=1, lr=0.05, n_prompts=p)
        seen = []
        inner = sampler.sample

        def counting_sample(team_, prompts_, group_size):
            b = inner(team_, prompts_, group_size)
            seen.append((list(prompts_), b.num_trajectories, b.num_generated_tokens))
            return b

        sampler.sample = counting_sample
        cfg = StageConfig(mode=mode, prompts_per_stage=p, group_size=2, update=FAST)
        return run_stage(team, opts, sampler, prompts, cfg, np.random.default_rng(0)), seen, prompts(p)

    rep, seen, stage_prompts = run("token_matched")
    stale, seen_stale, _ = run("stale")
    assert len(seen) == n == rep.sample_calls and rep.resample_calls == 0
    assert sum(t for _, t, _ in seen) == p * 2 == rep.trajectories_generated == stale.trajectories_generated
    assert sum(k for _, _, k in seen) == rep.tokens_generated == stale.tokens_generated  # fixed-length toy messages
    assert [q for part, _, _ in seen for q in part] == stage_prompts  # each prompt exactly once, in order
    sizes = [len(part) for part, _, _ in seen]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert [u.trajectories_generated for u in rep.updates] == [2 * s for s in sizes]
    assert prompt_part(list(range(7)), 3, 0) == [0, 1, 2] and prompt_part(list(range(7)), 3, 2) == [5, 6]


def test_token_matched_needs_a_prompt_per_agent(make_team):
    team, opts, sampler, prompts = make_team(n_agents=3)
    cfg = StageConfig(mode="token_matched", prompts_per_stage=2, group_size=2, update=FAST)
    with pytest.raises(ValueError, match="prompts_per_stage"):
        run_stage(team, opts, sampler, prompts, cfg, np.random.default_rng(0))
    assert sampler.sample_calls == 0


def test_a_new_mode_is_one_table_entry(make_team):
    from trust_region.stage import STAGE_MODES, StageMode, register_stage_mode

    name = "every_third_test_only"
    register_stage_mode(StageMode(name, "test", lambda c, i: i % 3 == 0))
    try:
        rep, sampler, _ = _run(make_team, name, n_agents=4)
        assert sampler.sample_calls == 2 == rep.sample_calls
        with pytest.raises(ValueError, match="already registered"):
            register_stage_mode(StageMode(name, "again", lambda c, i: True))
    finally:
        STAGE_MODES.pop(name)
