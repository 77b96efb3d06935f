"""Evaluation harness: configs, protocol aggregation, and an end-to-end CPU run with tiny models
(plumbing only: the tiny models are random, so their scores mean nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llm.config import ConfigError
from llm.evaluate import eval_config_from_dict, evaluate, load_eval_config, main, read_traces
from llm.evaluate.harness import best_of_samples, majority_samples
from llm.evaluate.metrics import SampleResult

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["aime2024", "aime2025", "math500", "zebralogic", "autologi"])
def test_shipped_benchmark_configs_carry_the_papers_settings(name: str) -> None:
    cfg = load_eval_config(CONFIGS / f"eval_{name}.yaml")
    assert cfg.sampling.temperature == 0.8 and cfg.sampling.top_p == 1.0
    assert cfg.eval.max_new_tokens == 32768
    (bench,) = cfg.eval.benchmarks
    assert bench.name == name
    assert bench.samples == {"aime2024": 64, "aime2025": 64, "math500": 4, "zebralogic": 64, "autologi": 64}[name]
    assert set(cfg.eval.protocols) == {"single", "chain", "best_of", "majority"}


def _team(qwen: Path, llama: Path) -> dict:
    return {"agents": [
        {"name": "solver", "model": str(qwen), "device": "cpu", "max_new_tokens": 6},
        {"name": "critic", "model": str(llama), "device": "cpu", "max_new_tokens": 6, "system_prompt": "You are a critic."},
    ]}


def test_config_errors_name_the_field() -> None:
    team = {"agents": [{"name": "a", "model": "org/model"}]}
    with pytest.raises(ConfigError, match="eval.benchmarks is required"):
        eval_config_from_dict({"team": team, "eval": {}})
    with pytest.raises(ConfigError, match="unknown benchmark 'gsm8k'"):
        eval_config_from_dict({"team": team, "eval": {"benchmarks": ["gsm8k"]}})
    with pytest.raises(ConfigError, match=r"ks must lie in \[1, k=4\]"):
        eval_config_from_dict({"team": team, "eval": {"benchmarks": [{"name": "math500", "ks": [8]}]}})
    with pytest.raises(ConfigError, match="eval.protocols"):
        eval_config_from_dict({"team": team, "eval": {"benchmarks": ["aime2024"], "protocols": ["debate"]}})
    with pytest.raises(ConfigError, match=r"eval: unknown key\(s\) \['temperature'\]"):
        eval_config_from_dict({"team": team, "eval": {"benchmarks": ["aime2024"], "temperature": 0.7}})
    with pytest.raises(ConfigError, match="policy"):
        eval_config_from_dict({"team": team, "eval": {"benchmarks": ["aime2024"], "contamination": {"policy": "loud"}}})
    with pytest.raises(ValueError, match="temperature"):
        eval_config_from_dict({"team": team, "sampling": {"temperature": 0}, "eval": {"benchmarks": ["aime2024"]}})


# ----------------------------------------------------------------------------- aggregation


def test_best_of_and_majority_aggregation() -> None:
    a = [SampleResult(1.0, True, "5"), SampleResult(0.0, True, "4"), SampleResult(0.0, False, None)]
    b = [SampleResult(0.0, True, "3"), SampleResult(0.0, True, "3"), SampleResult(0.0, True, "3")]
    c = [SampleResult(1.0, True, "5"), SampleResult(0.0, True, "3"), SampleResult(0.0, False, None)]
    best = best_of_samples([a, b, c])
    assert [r.score for r in best] == [1.0, 0.0, 0.0]
    maj, winners = majority_samples([a, b, c])
    assert [r.answer_key for r in maj] == ["5", "3", "3"]
    assert [r.score for r in maj] == [1.0, 0.0, 0.0]
    assert winners == [0, 1, 1]
    none, w = majority_samples([[SampleResult(0.0, False, None)]] * 2)
    assert not none[0].parsed and w == [None]


# ----------------------------------------------------------------------------- end to end


class CountingBackend:
    """Wraps a backend and counts generate calls and prompts (for the resume test)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0
        self.prompts = 0

    def generate(self, agent, prompts, sampling, seed=None):
        self.calls += 1
        self.prompts += len(prompts)
        return self.inner.generate(agent, prompts, sampling, seed=seed)

    def update_weights(self, agent, named_tensors):
        return None


@pytest.fixture(scope="module")
def tiny_team(tiny_qwen3_dir: Path, tiny_llama_dir: Path):  # noqa: F811
    from llm.team import LLMTeam

    cfg = eval_config_from_dict({"team": _team(tiny_qwen3_dir, tiny_llama_dir), "eval": {"benchmarks": ["aime2024"]}})
    return LLMTeam.from_config(cfg.team, temperature=0.8)


def _config(tmp: Path, qwen: Path, llama: Path, limit: int) -> dict:
    return {
        "team": _team(qwen, llama),
        "sampling": {"temperature": 0.8, "top_p": 1.0, "batch_size": 16},
        "eval": {
            "benchmarks": [{"name": "aime2024", "k": 3, "limit": limit, "ks": [1, 2, 3]},
                           {"name": "math500", "k": 2, "limit": limit}],
            "output_dir": str(tmp),
            "n_boot": 50,
            "problems_per_step": 2,
            "progress": False,
        },
    }


def test_end_to_end_tiny_team_and_resume(tmp_path: Path, tiny_team, tiny_qwen3_dir: Path, tiny_llama_dir: Path) -> None:  # noqa: F811
    from llm.rollout.hf import HFBackend

    data = _config(tmp_path, tiny_qwen3_dir, tiny_llama_dir, limit=2)
    backend = CountingBackend(HFBackend.from_team(tiny_team, batch_size=16))
    summary = evaluate(eval_config_from_dict(data), team=tiny_team, backend=backend)

    # 2 benchmarks x (single: 2 agents + chain: 2 turns, grouped by speaker) -> generate calls
    assert backend.calls > 0
    # single: 2 problems x K x 2 agents; chain: 2 problems x K x 2 turns  (per benchmark)
    assert backend.prompts == (2 * 3 * 2 + 2 * 3 * 2) + (2 * 2 * 2 + 2 * 2 * 2)
    table = summary["benchmarks"]["aime2024"]
    assert set(table) == {"single/solver", "single/critic", "chain", "best_of", "majority"}
    row = table["chain"]
    assert row["problems"] == 2 and row["k"] == 3
    assert {"avg@3", "pass@1", "pass@2", "pass@3", "maj@3", "parse_failure"} <= set(row)
    for m in ("avg@3", "pass@3", "parse_failure"):
        assert 0.0 <= row[m]["low"] <= row[m]["value"] <= row[m]["high"] <= 1.0
    assert row["generated_tokens"] > 0
    assert table["single/solver"]["generated_tokens"] > 0 and table["single/critic"]["generated_tokens"] > 0
    # at most max_new_tokens (6) per message: 2 problems x K=3 per agent
    assert table["single/solver"]["generated_tokens"] <= 2 * 3 * 6
    assert "math500" in summary["benchmarks"]

    # traces: one line per problem, every agent's message, extracted answer, grade
    chain = read_traces(tmp_path / "traces" / "aime2024" / "chain.jsonl")
    assert list(chain) == ["aime2024-I-1", "aime2024-I-2"]
    rec = chain["aime2024-I-1"]
    assert rec["prompt"].startswith("Solve the following math problem") and rec["answer"] == "204"
    assert len(rec["samples"]) == 3
    for s, sample in enumerate(rec["samples"]):
        assert [m["turn"] for m in sample["messages"]] == [0, 1]
        # round robin: trajectory s of problem r starts at agent (r + s) mod n
        assert sample["schedule"][0] == ["solver", "critic"][(0 + s) % 2]
        assert {"extracted", "score", "parsed", "info"} <= set(sample)
    single = read_traces(tmp_path / "traces" / "aime2024" / "single.jsonl")
    assert [a["agent"] for a in single["aime2024-I-2"]["agents"]] == ["solver", "critic"]
    majority = read_traces(tmp_path / "traces" / "aime2024" / "majority.jsonl")
    best = read_traces(tmp_path / "traces" / "aime2024" / "best_of.jsonl")
    assert set(majority) == set(best) == {"aime2024-I-1", "aime2024-I-2"}
    assert all(s["chosen_agent"] in ("solver", "critic", None) for s in best["aime2024-I-1"]["samples"])
    assert (tmp_path / "summary.md").read_text().count("| chain |") == 2
    assert json.loads((tmp_path / "config.json").read_text())["eval"]["benchmarks"][0]["name"] == "aime2024"

    # rerun: everything is resumed from the traces, no generation at all
    again = CountingBackend(HFBackend.from_team(tiny_team, batch_size=16))
    summary2 = evaluate(eval_config_from_dict(data), team=tiny_team, backend=again)
    assert again.calls == 0
    assert summary2["benchmarks"]["aime2024"]["chain"]["avg@3"] == row["avg@3"]

    # a larger limit generates only the new problem
    more = CountingBackend(HFBackend.from_team(tiny_team, batch_size=16))
    evaluate(eval_config_from_dict(_config(tmp_path, tiny_qwen3_dir, tiny_llama_dir, limit=3)), team=tiny_team, backend=more)
    assert more.prompts == (3 * 2 + 3 * 2) + (2 * 2 + 2 * 2)
    assert len(read_traces(tmp_path / "traces" / "aime2024" / "chain.jsonl")) == 3

    # traces of another team are never mixed in
    tiny_team[1].name = "checker"
    try:
        with pytest.raises(ConfigError, match="holds traces of team"):
            evaluate(eval_config_from_dict(data), team=tiny_team, backend=CountingBackend(None))
    finally:
        tiny_team[1].name = "critic"


def test_contamination_check_runs_before_generation(tmp_path: Path, tiny_team, tiny_qwen3_dir: Path,  # noqa: F811
                                                    tiny_llama_dir: Path) -> None:
    from llm.data.contamination import ContaminationError
    from llm.data import load_benchmark

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"problem": load_benchmark("aime2024")[1].meta["question"]}) + "\n")
    data = _config(tmp_path / "out", tiny_qwen3_dir, tiny_llama_dir, limit=2)
    data["eval"]["contamination"] = {"train_files": [str(train)], "policy": "error"}
    backend = CountingBackend(None)
    with pytest.raises(ContaminationError, match="aime2024-I-2"):
        evaluate(eval_config_from_dict(data), team=tiny_team, backend=backend)
    assert backend.calls == 0


def test_cli_runs_from_a_yaml_file(tmp_path: Path, tiny_qwen3_dir: Path, tiny_llama_dir: Path, capsys) -> None:  # noqa: F811
    data = _config(tmp_path / "cli", tiny_qwen3_dir, tiny_llama_dir, limit=1)
    data["eval"]["benchmarks"] = [{"name": "aime2025", "k": 2}]
    data["eval"]["protocols"] = ["single", "majority"]
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path), "--limit", "1", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "### aime2025" in out and "| majority | 1 | 2 |" in out
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert set(summary["benchmarks"]["aime2025"]) == {"single/solver", "single/critic", "majority"}
