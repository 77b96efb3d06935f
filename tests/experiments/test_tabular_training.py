"""experiments.tabular_training: metric helpers on hand-built sequences, and a tiny study end to end
(files, exact bookkeeping, resume, figure)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import common
from experiments import tabular_training as tt


def test_regressions_counted_on_hand_built_sequence():
    J = [0.0, 0.1, 0.05, 0.05, 0.2, 0.2 - 1e-14, 0.3, 0.25]
    # drops: 0.1 -> 0.05 and 0.3 -> 0.25; equal values and a 1e-14 float wobble are not regressions
    assert tt.count_regressions(J) == 2
    assert tt.count_regressions(J, tol=0.0) == 3
    assert tt.count_regressions([1.0]) == 0
    assert tt.count_regressions(np.arange(5.0)) == 0
    assert tt.count_regressions(-np.arange(5.0)) == 4


def test_kl_exceed_share_on_hand_built_sequence():
    kl = [0.005, 0.01, 0.0100001, 0.02, 0.0]
    assert tt.kl_exceed_share(kl, 0.01) == pytest.approx(2 / 5)  # strictly above delta only
    assert tt.kl_exceed_share(kl, 1.0) == 0.0
    assert math.isnan(tt.kl_exceed_share([], 0.01))


def test_interval_rank_and_token_helpers():
    m, lo, hi = tt.t_interval([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0) and hi - m == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert lo < m < hi
    assert tt.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert tt.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert tt.violation_share([0.0, 1.0, 2.0, np.nan], [0.5, 0.5, 3.0, 1.0]) == pytest.approx(1 / 3)
    # J 0 -> 1 over 10 tokens, then 1 -> 3 over 30 tokens
    got = tt.interp_on_tokens([10, 30], [0.0, 1.0, 3.0], np.array([0.0, 5.0, 10.0, 25.0, 40.0, 41.0]))
    np.testing.assert_allclose(got[:5], [0.0, 0.5, 1.0, 2.0, 3.0])
    assert math.isnan(got[5])


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="modes"):
        tt.StudyConfig(modes=("nope",))
    with pytest.raises(ValueError, match="group_size"):
        tt.StudyConfig(group_size=1)
    with pytest.raises(ValueError, match="families"):
        tt.StudyConfig(families=("moon",))


def test_tiny_study_runs_writes_files_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path)
    argv = ["--families", "chain", "--n-agents", "2", "3", "--modes", "intermediate", "stale", "joint", "no_tr",
            "--seeds", "2", "--stages", "3", "--prompts", "4", "--group-size", "2", "--workers", "1",
            "--out", "tabular_training"]
    assert tt.main(argv) == 0
    out = tmp_path / "tabular_training"
    for name in ("runs.jsonl", "summary.csv", "summary.json", "curves.json", "stages.csv", "config.json", "seeds.json"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 4 * 2
    rows = common.read_csv(out / "summary.csv")
    assert len(rows) == 2 * 4
    assert "final J" in capsys.readouterr().out

    by = {(r["N"], r["mode"], r["seed"]): r for r in records}
    for r in records:
        assert len(r["J"]) == 4 and len(r["stages"]["tokens"]) == 3
        u = r["updates"]
        assert len(u["improvement"]) == 3 * r["N"]
        if r["mode"] != "joint":  # sequential modes: per-update exact improvements telescope to the stage change
            per_stage = np.bincount(u["stage"], weights=u["improvement"], minlength=3)
            np.testing.assert_allclose(per_stage, np.diff(r["J"]), atol=1e-12)
        assert min(u["kl_exact"]) >= 0.0
        # agent weighting divides by the agent's occupancy mass (< 1): never below the team weighting
        assert all(a >= t - 1e-15 for a, t in zip(u["kl_exact"], u["kl_exact_team"]))
        if r["mode"] == "intermediate":
            assert r["stages"]["sample_calls"] == [r["N"]] * 3
        if r["mode"] in ("stale", "joint"):
            assert r["stages"]["sample_calls"] == [1] * 3
    for n in (2, 3):
        for seed in (0, 1):
            # stale and joint make the same parameter updates on the same batch (trust_region.stage)
            np.testing.assert_allclose(by[(n, "stale", seed)]["J"], by[(n, "joint", seed)]["J"], atol=1e-12)
            assert by[(n, "stale", seed)]["stages"]["tokens"][0] * n == pytest.approx(
                by[(n, "intermediate", seed)]["stages"]["tokens"][0], rel=0.5)

    # the summary's regression count and KL share agree with the records
    row = next(r for r in rows if r["N"] == "2" and r["mode"] == "intermediate")
    runs = [by[(2, "intermediate", s)] for s in (0, 1)]
    assert float(row["regressions_mean"]) == pytest.approx(np.mean([tt.count_regressions(x["J"]) for x in runs]))
    kls = np.concatenate([x["updates"]["kl_exact"] for x in runs])
    assert float(row["kl_exceed_share"]) == pytest.approx(tt.kl_exceed_share(kls, 0.01))

    # resume: nothing is rerun
    assert tt.main(argv) == 0
    assert len((out / "runs.jsonl").read_text().splitlines()) == len(records)
    assert "0 runs in" in capsys.readouterr().out

    # the figure draws from these results
    from paper_figures import load_all

    fig = load_all()["tabular_training"]
    assert fig.missing(tmp_path) == []
    paths = fig.fn(tmp_path, tmp_path / "figures")
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
