"""End to end: `llm.train` with a 3-agent heterogeneous tiny team, every mode of the core, resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import trust_region.stage as stage_module
from llm.train.config import config_from_dict
from llm.sampler import TeamSampler
from llm.train import Trainer, main

MODES = [
    ("intermediate", {}),
    ("intermediate", {"prefix_reuse": True}),
    ("stale", {}),
    ("stale_is", {}),
    ("stale_happo", {}),
    ("joint", {}),
    ("resample_every_k", {"resample_every": 2}),
]
EXPECTED_EVENTS = {
    "intermediate": ["S", "U0", "S", "U1", "S", "U2"],
    "intermediate+reuse": ["S", "U0", "R", "U1", "R", "U2"],
    "stale": ["S", "U0", "U1", "U2"],
    "stale_is": ["S", "U0", "U1", "U2"],
    "stale_happo": ["S", "U0", "U1", "U2"],
    "joint": ["S", "U0", "U1", "U2"],
    "resample_every_k": ["S", "U0", "U1", "S", "U2"],
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _flat(agent) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in agent.model.parameters()])


@pytest.fixture
def make_trainer(parity_grader):
    """``make_trainer(cfg, **kw)``: a Trainer whose grader has reward variance for random tiny models."""

    def make(cfg: dict, **kw) -> Trainer:
        trainer = Trainer(config_from_dict(cfg), **kw)
        trainer.task.grader = parity_grader
        return trainer

    return make


@pytest.fixture
def record(monkeypatch):
    """Record sampling calls and agent updates, and which agents' weights each update changed."""
    log = {"events": [], "changed": []}
    real_update = stage_module.update_agent
    real_sample, real_resample = TeamSampler.sample, TeamSampler.resample_from

    def update_agent(agent, optimizer, batch, adv, config, **kw):
        team = log["team"]
        before = [_flat(a) for a in team]
        report = real_update(agent, optimizer, batch, adv, config, **kw)
        after = [_flat(a) for a in team]
        log["events"].append(f"U{agent.agent_id}")
        log["changed"].append((agent.agent_id, report, [not torch.equal(b, a) for b, a in zip(before, after)]))
        return report

    def sample(self, team, prompts, group_size):
        log["team"] = team
        log["events"].append("S")
        return real_sample(self, team, prompts, group_size)

    def resample_from(self, team, batch, agent):
        log["events"].append("R")
        return real_resample(self, team, batch, agent)

    monkeypatch.setattr(stage_module, "update_agent", update_agent)
    monkeypatch.setattr(TeamSampler, "sample", sample)
    monkeypatch.setattr(TeamSampler, "resample_from", resample_from)
    return log


@pytest.mark.parametrize("mode,extra", MODES, ids=[m + ("+reuse" if e.get("prefix_reuse") else "") for m, e in MODES])
def test_two_stages_every_mode(tiny_run_config, make_trainer, tiny_model_dirs, tmp_path, record, mode, extra):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run", mode=mode, **extra)
    trainer = make_trainer(cfg)
    result = trainer.run()
    key = mode + ("+reuse" if extra.get("prefix_reuse") else "")
    assert record["events"] == EXPECTED_EVENTS[key] * 2
    assert result.updates_done == 6 and len(result.reports) == 2
    n_changed_target = 0
    for j, report, changed in record["changed"]:
        # only the target agent's weights change in its update
        assert not any(changed[k] for k in range(3) if k != j), (j, changed)
        n_changed_target += changed[j]
        # every accepted update stays inside the trust region (monitored token KL <= delta)
        if report.n_steps > 0:
            assert report.kl <= report.delta + 1e-6 and report.kl_max_accepted <= report.delta + 1e-6
    assert n_changed_target >= 3
    backend_calls = trainer.backend.counter.total_calls
    n_samples = EXPECTED_EVENTS[key].count("S") * 2
    if not extra.get("prefix_reuse"):
        assert backend_calls == n_samples * 3  # one generate call per turn (fixed router, 3 turns)
        assert trainer.backend.counter.total_tokens == sum(r.tokens_generated for r in result.reports)
    # run directory: resolved config, per-update JSONL with agent{j}/ keys, checkpoints, cursor
    out = tmp_path / "run"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in rows if "agent" in r]
    assert [r["update"] for r in updates] == [1, 2, 3, 4, 5, 6]
    assert all(f"agent{r['agent']}/kl" in r for r in updates)
    assert yaml.safe_load((out / "config.yaml").read_text())["resolved_stage_config"]["mode"] == mode
    cursor = json.loads((out / "cursor.json").read_text())
    assert cursor["stage"] == 2 and cursor["updates_done"] == 6
    assert sorted(p.name for p in (out / "checkpoints").glob("agent*/*.safetensors")) != []


def test_intermediate_resamples_before_every_update_and_prefix_reuse_saves_tokens(tiny_run_config, make_trainer, tiny_model_dirs, tmp_path):
    out = {}
    for reuse in (False, True):
        cfg = tiny_run_config(tiny_model_dirs, tmp_path / f"run{reuse}", prefix_reuse=reuse)
        trainer = make_trainer(cfg)
        result = trainer.run()
        stats = trainer.sampler.history
        out[reuse] = dict(
            calls=trainer.backend.counter.total_calls,
            tokens=trainer.backend.counter.total_tokens,
            messages=sum(s.generated_messages for s in stats),
            reused=sum(s.reused_messages for s in stats),
            stage_tokens=sum(r.tokens_generated for r in result.reports),
            gap=max(s.logp_gap_max_abs for s in stats),
        )
        assert [r.sample_calls + r.resample_calls for r in result.reports] == [3, 3]
    fresh, reuse = out[False], out[True]
    # 2 stages x 3 updates x 4 trajectories x 3 turns; with reuse, the update after agent 1 keeps turn 0
    # and the one after agent 2 keeps turns 0-1 (the update after agent 0 regenerates everything)
    assert fresh["messages"] == 72 and fresh["calls"] == 18 and fresh["reused"] == 0
    assert reuse["messages"] == 2 * (12 + 12 + 8) and reuse["reused"] == 2 * 4 and reuse["calls"] == 2 * (3 + 3 + 2)
    assert reuse["tokens"] < fresh["tokens"]
    assert fresh["stage_tokens"] == fresh["tokens"] and reuse["stage_tokens"] == reuse["tokens"]
    assert max(fresh["gap"], reuse["gap"]) < 1e-4
    print(f"\ngenerated tokens fresh={fresh['tokens']} prefix-reuse={reuse['tokens']}; max |logp gap|={fresh['gap']:.2e}")


def _params(team) -> list[torch.Tensor]:
    return [_flat(a) for a in team]


class Killed(RuntimeError):
    pass


def test_resume_after_kill_matches_uninterrupted_run(tiny_run_config, make_trainer, tiny_model_dirs, tmp_path, monkeypatch):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "full", prefix_reuse=True)
    full = make_trainer(cfg).run()
    reference = _params(full.team)
    ref_cursor = json.loads((tmp_path / "full" / "cursor.json").read_text())

    # (a) killed right after the 2nd agent update was checkpointed
    def hook(n):
        if n == 2:
            raise Killed

    cfg_a = tiny_run_config(tiny_model_dirs, tmp_path / "a", prefix_reuse=True)
    with pytest.raises(Killed):
        make_trainer(cfg_a, on_update_hook=hook).run()
    resumed = make_trainer(cfg_a).run()
    assert resumed.resumed_from == 2
    assert all(torch.equal(a, b) for a, b in zip(reference, _params(resumed.team)))

    # (b) killed in the middle of a sampling call of stage 2 (nothing of that update saved)
    calls = {"n": 0}
    real_sample = TeamSampler.sample

    def dying_sample(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return real_sample(self, *args, **kw)

    cfg_b = tiny_run_config(tiny_model_dirs, tmp_path / "b", prefix_reuse=True)
    monkeypatch.setattr(TeamSampler, "sample", dying_sample)
    with pytest.raises(Killed):
        make_trainer(cfg_b).run()
    monkeypatch.setattr(TeamSampler, "sample", real_sample)
    resumed_b = make_trainer(cfg_b).run()
    assert all(torch.equal(a, b) for a, b in zip(reference, _params(resumed_b.team)))
    for run in ("a", "b"):
        cursor = json.loads((tmp_path / run / "cursor.json").read_text())
        assert cursor["rng"] == ref_cursor["rng"] and cursor["betas"] == ref_cursor["betas"]
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["update"] for r in rows if "agent" in r] == [1, 2, 3, 4, 5, 6]
        assert [r["stage"] for r in rows if "agent" not in r] == [0, 1]
    # a finished run resumed again does nothing; a different config is refused
    again = make_trainer(cfg_a).run()
    assert again.updates_done == 6 and again.reports == []
    cfg_a["train"]["update"]["delta"] = 0.5
    from llm.config import ConfigError

    with pytest.raises(ConfigError, match="different config"):
        make_trainer(cfg_a).run()


def test_cli_runs_a_yaml_config(tiny_run_config, tiny_model_dirs, tmp_path, capsys):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "cli", stages=1, mode="stale")
    cfg["team"]["agents"] = cfg["team"]["agents"][:2]
    cfg["tensorboard"] = True
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["--config", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["updates_done"] == 2
    assert any((tmp_path / "cli" / "tb").iterdir())


@pytest.mark.parametrize("mode,kill_at", [("stale_is", 1), ("resample_every_k", 2)])
def test_resume_mid_stage_restores_the_saved_batch(tiny_run_config, make_trainer, tiny_model_dirs, tmp_path, mode, kill_at):
    """Stale-batch modes need the stage's batch after a kill: it is saved with the cursor."""
    full = make_trainer(tiny_run_config(tiny_model_dirs, tmp_path / "full", stages=1, mode=mode)).run()

    def hook(n):
        if n == kill_at:
            raise Killed

    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "killed", stages=1, mode=mode)
    with pytest.raises(Killed):
        make_trainer(cfg, on_update_hook=hook).run()
    cursor = json.loads((tmp_path / "killed" / "cursor.json").read_text())
    assert cursor["progress"]["next_index"] == kill_at and cursor["progress"]["batch_dir"]
    resumed = make_trainer(cfg).run()
    assert all(torch.equal(a, b) for a, b in zip(_params(full.team), _params(resumed.team)))
    assert [u.kl for u in resumed.reports[0].updates] == [u.kl for u in full.reports[0].updates]


def test_contamination_check_runs_before_model_load(tiny_run_config, tiny_model_dirs, tmp_path, monkeypatch):
    from llm.config import ConfigError
    from llm.data.benchmarks import DataError, load_benchmark

    try:
        item = load_benchmark("aime2024")[0]
    except DataError:
        pytest.skip("AIME 2024 benchmark data not found")
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"problem": item.prompt, "answer": 1}) + "\n", encoding="utf-8")
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "run")
    cfg["task"] = {"kind": "jsonl", "path": str(path), "contamination_policy": "error"}
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    with pytest.raises(ConfigError, match="overlap evaluation benchmarks"):
        Trainer(config_from_dict(cfg))


def _letter_share(response: str, problem) -> "Grade":
    """A trivially learnable reward: the share of the final response's characters that are
    lowercase ASCII letters (a random tiny model starts well inside (0, 1))."""
    from llm.rewards.base import Grade

    share = sum("a" <= c <= "z" for c in response) / max(len(response), 1)
    return Grade(float(share), True, response[-8:])


def test_team_reward_rises_on_a_trivially_learnable_reward(tiny_run_config, tiny_model_dirs, tmp_path):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "learn", stages=6, prompts_per_stage=4, group_size=4,
                          update={"epochs": 4, "delta": 2.0, "beta": 0.0, "ratio_level": "token",
                                  "monitor_estimator": "k3", "max_backtracks": 3})
    trainer = Trainer(config_from_dict(cfg))
    trainer.task.grader = _letter_share
    result = trainer.run()
    means = [sum(r.batch_mean_returns) / len(r.batch_mean_returns) for r in result.reports]
    print("\nmean team reward per stage:", " ".join(f"{m:.3f}" for m in means))
    assert len(means) == 6
    # the last three stages beat the first two by a clear margin (the reward lies in [0, 1]; measured
    # 0.44 0.46 0.55 0.58 0.63 0.57 with these seeds)
    assert sum(means[-3:]) / 3 > sum(means[:2]) / 2 + 0.08
    kls = [u.kl for r in result.reports for u in r.updates]
    assert max(kls) <= 2.0  # every accepted update inside the trust region
