"""experiments.bench_placement and scripts/gpu_check: the parts that run without a cluster or GPU
(stage times from a metrics file, argument checks, the GPU script's dry run and merge with MFU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import bench_placement

REPO = Path(__file__).resolve().parents[2]


def test_stage_times_are_differences_of_stage_rows(tmp_path):
    rows = [{"stage": 0, "update": 1, "agent": 0, "time": 1.0}, {"stage": 0, "update": 1, "time": 2.0},
            {"stage": 1, "update": 2, "agent": 0, "time": 3.0}, {"stage": 1, "update": 2, "time": 4.5},
            {"stage": 2, "update": 3, "time": 7.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench_placement.stage_times(tmp_path) == [2.5, 2.5]


def test_bench_needs_two_stages():
    with pytest.raises(SystemExit):
        bench_placement.main(["--tiny", "--stages", "1"])


def test_gpu_check_dry_run_lists_every_step():
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    for step in ("bench_llm", "stage_local", "stage_ray", "vllm"):
        assert f"[{step}," in out
    assert "--presets 0.6b,1.7b" in out and "bfloat16" in out


def test_gpu_check_merge_adds_mfu(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    (tmp_path / "bench_llm").mkdir()
    rows = [{"preset": "0.6b", "params_m": 600.0, "rollout_tok_s": 1000.0, "update_tok_s": 2000.0,
             "device_name": "NVIDIA H200"},
            {"preset": "x", "params_m": 1.0, "rollout_tok_s": 1.0, "update_tok_s": 1.0, "device_name": "cpu"}]
    (tmp_path / "bench_llm" / "bench.json").write_text(json.dumps({"rows": rows}))
    merged = gpu_check.merge(tmp_path)
    r0, r1 = merged["bench_llm"]
    assert r0["mfu_rollout"] == pytest.approx(2 * 600e6 * 1000 / 989e12)
    assert r0["mfu_update"] == pytest.approx(6 * 600e6 * 2000 / 989e12)
    assert r1["mfu_update"] is None  # unknown peak: no number
    assert (tmp_path / "gpu_check.json").is_file() and merged["stage_ray"] is None
