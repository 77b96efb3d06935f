"""The certificate-calibration figure reads the tabular study's runs and pools the right records."""

import json

import numpy as np

from paper_figures.fig_certificate import certificate_calibration, collect


def _run(mode: str, family: str) -> dict:
    return {
        "family": family, "N": 2, "mode": mode, "seed": 0,
        "J": [0.0, 0.1, 0.3],
        "stages": {"certificate": [-5.0, -7.0]},
        "updates": {"kl_exact": [0.01, 0.02, 0.0, 0.01], "kl_monitor": [0.009, 0.01, 0.0, 0.005],
                    "surrogate": [1.0, 2.0, 0.5, 0.1], "improvement": [0.05, 0.05, 0.1, 0.1]},
    }


def test_collect_pools_constrained_modes_only(tmp_path):
    runs = [_run("intermediate", "board"), _run("no_tr", "board"), _run("stale", "vote")]
    d = collect(runs)
    assert d["improvement"].size == 8  # no_tr excluded
    np.testing.assert_allclose(d["stage_gain"], [0.1, 0.2, 0.1, 0.2])
    assert list(d["families"]) == ["board", "vote"]
    (tmp_path / "tabular_training").mkdir()
    (tmp_path / "tabular_training" / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs))
    paths = certificate_calibration(tmp_path, tmp_path / "figures")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
