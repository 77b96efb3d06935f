"""llm.evaluate --run: a trained tiny run evaluated on the held-out split of its arithmetic task."""

from __future__ import annotations

import json

import pytest

from llm.config.errors import ConfigError
from llm.data.arithmetic import ArithmeticConfig, all_items, arithmetic_split
from llm.evaluate.cli import main as evaluate_main
from llm.evaluate.compare import compare, item_scores
from llm.train.config import config_from_dict
from llm.train.trainer import Trainer


def _arith_run(tmp_path, dirs, tiny_run_config, grader):
    cfg = tiny_run_config(dirs, tmp_path / "run", stages=1)
    cfg["team"]["agents"] = cfg["team"]["agents"][:2]
    cfg["task"] = {"kind": "arithmetic", "arithmetic": {"a": [0, 9], "b": [0, 9], "heldout_size": 30}, "size": 16,
                   "grader": {"fallback_last_number": True}, "contamination_policy": "off"}
    trainer = Trainer(config_from_dict(cfg))
    trainer.task.grader = grader  # reward variance for the random tiny models
    return trainer.run(resume=False)


def test_evaluate_run_latest_and_base(tmp_path, tiny_model_dirs, tiny_run_config, parity_grader):
    result = _arith_run(tmp_path, tiny_model_dirs, tiny_run_config, parity_grader)
    run = str(result.output_dir)
    assert evaluate_main(["--run", run, "--limit", "6", "--k", "2"]) == 0
    assert evaluate_main(["--run", run, "--checkpoint", "base", "--limit", "6", "--k", "2"]) == 0
    latest, base = result.output_dir / "eval" / "latest", result.output_dir / "eval" / "base"
    for d, update in ((latest, result.updates_done), (base, 0)):
        summary = json.loads((d / "summary.json").read_text())
        assert summary["checkpoint"]["update"] == update
        traces = (d / "traces" / "task" / "chain.jsonl").read_text().splitlines()
        assert len(traces) == 6
        rec = json.loads(traces[0])
        assert len(rec["samples"]) == 2 and [m["agent"] for m in rec["samples"][0]["messages"]] == ["solver", "critic"]
        assert rec["problem_id"].startswith("arith/")
    # the held-out items are never trained on
    heldout = {json.loads(line)["problem_id"] for line in (latest / "traces" / "task" / "chain.jsonl").open()}
    train_ids = {p.id for p in arithmetic_split(ArithmeticConfig(a=(0, 9), b=(0, 9), heldout_size=30), 0, "train", 16)}
    assert not heldout & train_ids
    # paired comparison of the two evaluations (same items)
    res = compare(item_scores(base), item_scores(latest), n_boot=200)
    assert res["items"] == 6
    d = res["difference"]
    assert d["low"] <= d["value"] <= d["high"]
    assert d["value"] == pytest.approx(res["after"]["value"] - res["before"]["value"])


def test_evaluate_run_errors(tmp_path, tiny_model_dirs, tiny_run_config, parity_grader):
    cfg = tiny_run_config(tiny_model_dirs, tmp_path / "rg", stages=1)
    cfg["team"]["agents"] = cfg["team"]["agents"][:1]
    trainer = Trainer(config_from_dict(cfg))
    trainer.task.grader = parity_grader
    trainer.run(resume=False)
    # a reasoning-gym task has no held-out split: one-line error, exit status 2
    assert evaluate_main(["--run", str(tmp_path / "rg"), "--limit", "2"]) == 2
    assert evaluate_main(["--run", str(tmp_path / "missing")]) == 2


def test_arithmetic_splits_are_disjoint_and_seeded():
    cfg = ArithmeticConfig(a=(0, 29), b=(0, 29), heldout_size=200)
    assert len(all_items(cfg)) == 900
    train, held = arithmetic_split(cfg, 0, "train"), arithmetic_split(cfg, 0, "heldout")
    assert len(held) == 200 and len(train) == 700
    assert not {p.id for p in train} & {p.id for p in held}
    assert [p.id for p in arithmetic_split(cfg, 0, "heldout")] == [p.id for p in held]
    assert [p.id for p in arithmetic_split(cfg, 1, "heldout")] != [p.id for p in held]
    assert all(p.answer == p.meta["a"] + p.meta["b"] for p in held)
    minus = ArithmeticConfig(a=(0, 3), b=(0, 3), ops=("-", "/"), heldout_size=2)
    assert all(p.answer >= 0 for p in arithmetic_split(minus, 0, "train"))
    with pytest.raises(ConfigError, match="heldout_size"):
        arithmetic_split(ArithmeticConfig(a=(0, 1), b=(0, 1), heldout_size=4), 0, "train")
    with pytest.raises(ConfigError, match="ops"):
        ArithmeticConfig(ops=("^",))
