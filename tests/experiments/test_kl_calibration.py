"""experiments.kl_calibration --quick: every output file, resumable, the numbers it reports."""

from __future__ import annotations

import json

from experiments.kl_calibration import QUICK, CalibrationConfig, main, run, summarise


def test_quick_study_writes_every_file_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEAMTR_RESULTS", str(tmp_path))
    monkeypatch.setattr("experiments.common.RESULTS_ROOT", tmp_path)
    assert main(["--quick", "--workers", "1"]) == 0
    out = tmp_path / QUICK["out"]
    for name in ("updates.jsonl", "updates.csv", "summary.csv", "summary_by_family.csv", "summary.json",
                 "kl_calibration.png", "config.json", "seeds.json"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "exact/train" in printed and "k1/train" in printed
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert {(r["monitor"], r["delta"]) for r in summary} == {(m, d) for m in QUICK["monitors"] for d in QUICK["deltas"]}
    # the exact monitor on the training batch: every accepted update's monitored KL <= delta
    rows = [json.loads(line) for line in (out / "updates.jsonl").read_text().splitlines()]
    upd = [u for r in rows for u in r["rows"]]
    assert all(u["kl_monitor"] <= u["delta"] for u in upd if u["accepted"] and u["monitor"].startswith("exact"))
    assert all(u["kl_true"] >= 0 for u in upd)
    # resume: a second run finds every job done and appends nothing
    n_lines = len(rows)
    run(CalibrationConfig(**{**QUICK, "workers": 1}), root=tmp_path)
    assert len((out / "updates.jsonl").read_text().splitlines()) == n_lines


def test_summary_shares():
    rows = [dict(monitor="m", delta=0.1, accepted=True, kl_true=x, kl_monitor=0.1) for x in (0.05, 0.12, 0.16, 0.3)]
    rows.append(dict(monitor="m", delta=0.1, accepted=False, kl_true=9.0, kl_monitor=0.0))
    (s,) = summarise(rows, ("monitor", "delta"))
    assert s["accepted"] == 4 and s["updates"] == 5
    assert (s["exceed_1delta"], s["exceed_1.5delta"], s["exceed_2delta"]) == (0.75, 0.5, 0.25)
    assert abs(s["median_true_over_delta"] - 1.4) < 1e-12


def test_update_cost_bench_reports_each_variant():
    from experiments.kl_calibration import COST_VARIANTS, bench_update_cost

    rows = bench_update_cost(family="chain", repeats=2)
    assert [r["variant"] for r in rows] == [name for name, _ in COST_VARIANTS]
    assert rows[0]["ratio_vs_no_tr"] == 1.0 and rows[0]["rejected"] == 0.0
    assert all(r["wall_ms"] > 0 for r in rows)


def test_llm_quick_part_writes_its_files(tmp_path):
    from experiments.kl_calibration import LLM_QUICK, LLMCalibrationConfig, run_llm

    res = run_llm(LLMCalibrationConfig(**LLM_QUICK), root=tmp_path)
    out = tmp_path / LLM_QUICK["out"]
    for name in ("updates.csv", "summary.csv", "summary.json", "kl_calibration_llm.png", "config.json"):
        assert (out / name).stat().st_size > 0, name
    assert {r["monitor"] for r in res["summary"]} == {"exact/train", "k1/train"}
    for r in res["rows"]:
        assert r["kl_true"] >= 0
        if r["monitor"] == "exact/train" and r["accepted"]:
            assert r["kl_monitor"] <= r["delta"] and r["kl_exact_batch"] == r["kl_monitor"]


def test_llm_update_cost_bench_reports_each_variant():
    from experiments.kl_calibration import COST_VARIANTS, LLM_QUICK, LLMCalibrationConfig, bench_llm_update_cost

    rows = bench_llm_update_cost(repeats=1, cfg=LLMCalibrationConfig(**LLM_QUICK))
    assert [r["variant"] for r in rows] == [name for name, _ in COST_VARIANTS]
    assert rows[0]["rejected"] == 0.0 and all(r["wall_ms"] > 0 for r in rows)
    assert rows[2]["kl"] <= 0.01  # the exact monitor's accepted state is inside delta
    assert rows[0]["reference_mib"] == rows[0]["model_mib"]  # full fine-tuning: one frozen copy
