"""Contamination check: exact, normalised and n-gram overlap, policies, command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm.data.contamination import (
    ContaminationError,
    ContaminationWarning,
    check_against_benchmarks,
    check_contamination,
    enforce,
    main,
    normalize_text,
)
from llm.data import load_benchmark
from llm.rewards.base import Problem


@pytest.fixture(scope="module")
def aime24() -> list[Problem]:
    return load_benchmark("aime2024")


def _train(texts: list[str]) -> list[Problem]:
    return [Problem(f"t{i}", t, "0", "integer") for i, t in enumerate(texts)]


def test_normalize_text() -> None:
    assert normalize_text("Find  $x+y$,\nif  \\(x=1\\).") == normalize_text("find x + y if x = 1")
    assert normalize_text("Ｆｉｎｄ") == "find"  # NFKC


def test_clean_training_data_passes(aime24: list[Problem]) -> None:
    train = _train(["What is 2 + 3?", "A train leaves the station at noon and travels for three hours at sixty miles per hour."])
    report = check_contamination(train, aime24)
    assert report.matches == [] and report.n_eval == 30
    assert enforce(report, "error") is report


def test_three_levels(aime24: list[Problem]) -> None:
    a, b, c, d = (p.meta["question"] for p in aime24[:4])
    reformatted = b.replace("$", "").replace("  ", " ").upper()
    templated = "Solve the following problem step by step.\n\n" + c + "\n\nRemember to put your answer after Answer:"
    edited = d.replace("Find", "Compute", 1)
    train = _train([a, reformatted, templated, edited, "unrelated text about apples"])
    report = check_contamination(train, aime24)
    levels = {m.eval_id: m.level for m in report.matches}
    assert levels[aime24[0].id] == "exact"
    assert levels[aime24[1].id] == "normalized"
    assert levels[aime24[2].id] == "ngram"
    assert levels[aime24[3].id] in ("ngram", "normalized")
    assert set(report.flagged_ids) == {p.id for p in aime24[:4]}
    assert "4 of 30 items" in report.summary("aime2024")


def test_policies(aime24: list[Problem]) -> None:
    report = check_contamination(_train([aime24[5].meta["question"]]), aime24)
    with pytest.raises(ContaminationError, match="aime2024-I-6"):
        enforce(report, "error", "aime2024")
    with pytest.warns(ContaminationWarning, match="1 of 30"):
        enforce(report, "warn", "aime2024")
    enforce(report, "off")
    with pytest.raises(ValueError, match="policy"):
        enforce(report, "maybe")


def test_check_against_benchmarks_finds_math500_items() -> None:
    math500 = load_benchmark("math500", limit=5)
    train = _train([p.meta["question"] for p in math500[:2]] + ["clean item about nothing in particular at all"])
    with pytest.warns(ContaminationWarning):
        reports = check_against_benchmarks(train, ("aime2024", "math500", "autologi"), policy="warn")
    assert "autologi" not in reports  # not available: skipped
    assert reports["aime2024"].matches == []
    assert set(reports["math500"].flagged_ids) == {p.id for p in math500[:2]}


def test_command_line(tmp_path: Path, aime24: list[Problem], capsys) -> None:
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps({"problem": "What is 1 + 1?"}) + "\n")
    assert main(["--train", str(clean), "--eval", "aime2024", "aime2025"]) == 0
    dirty = tmp_path / "dirty.jsonl"
    dirty.write_text(json.dumps({"q": aime24[0].meta["question"]}) + "\n")
    assert main(["--train", str(dirty), "--field", "q", "--eval", "aime2024"]) == 1
    assert "1 of 30 items of aime2024" in capsys.readouterr().out
