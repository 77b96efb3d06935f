"""Parts of scripts/gpu_check.sh that need Python: one training stage of a 2-agent team, and the
merge of every part's results into one JSON (with MFU from the bench_llm numbers).

    python scripts/gpu_check.py stage --device cuda --placement local --out DIR
    python scripts/gpu_check.py merge --out DIR

``stage``: the test suite's tiny Qwen3 models (built locally; the GPU machine has no hub) as a
2-agent team on ``--device``, one stage of intermediate mode with prefix reuse, the trust region
monitored with ``update.monitor_estimator: exact`` (the exact KL when the agents offer it; the
report's ``monitor`` field says which monitor ran). Writes ``stage-<placement>.json``: wall time,
the monitor used, per-update KL / steps / rejections, peak CUDA memory.

``merge``: reads ``bench_llm/bench.json``, ``stage-*.json`` and ``vllm.json`` under ``--out`` and
writes ``gpu_check.json``. MFU = achieved FLOP/s / peak dense bf16 FLOP/s of the device, with
achieved = 2 * params * tokens/s for the rollout and 6 * params * tokens/s for the update (the
usual dense-transformer count; attention FLOPs left out); peak from a small table of devices (null
when the device is not in it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: dense bf16 tensor-core peak FLOP/s (vendor data sheets, SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def _tiny(root: Path):
    spec = importlib.util.spec_from_file_location("tiny_models", REPO / "tests" / "llm" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_tiny_models(root / "models"), mod.make_tiny_run_config, mod.grade_parity


def stage(device: str, placement: str, out: Path) -> dict:
    import torch

    from llm.train import Trainer
    from llm.train.config import config_from_dict

    with tempfile.TemporaryDirectory() as tmp:
        dirs, make_config, grader = _tiny(Path(tmp))
        cfg = make_config(dirs, Path(tmp) / "run", stages=1, prefix_reuse=True)
        cfg["team"]["agents"] = cfg["team"]["agents"][:1] + cfg["team"]["agents"][2:]  # two tiny Qwen3 agents
        for a in cfg["team"]["agents"]:
            a["device"] = device
        cfg["train"]["update"]["monitor_estimator"] = "exact"
        cfg["placement"] = placement
        if placement == "ray":
            gpus = 0.5 if device.startswith("cuda") else 0.0
            cfg["ray"] = {"num_cpus": 2, "object_store_memory_mb": 256, "default": {"num_cpus": 1, "num_gpus": gpus}}
        if device.startswith("cuda") and placement == "local":
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(config_from_dict(cfg))
        trainer.task.grader = grader
        t0 = time.perf_counter()
        result = trainer.run(resume=False)
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    updates = [{k.split("/", 1)[1]: r[k] for k in r if k.startswith(f"agent{r['agent']}/")
                and k.split("/", 1)[1] in ("monitor", "kl", "n_steps", "n_rejected", "kl_exact_mean")}
               for r in rows if "agent" in r]
    info = {"placement": placement, "device": device, "wall_s": wall, "updates_done": result.updates_done,
            "updates": updates,
            "peak_cuda_gib": (torch.cuda.max_memory_allocated() / 2**30
                              if device.startswith("cuda") and placement == "local" else None),
            "torch": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"stage-{placement}.json").write_text(json.dumps(info, indent=1))
    return info


def merge(out: Path) -> dict:
    def read(name: str):
        p = out / name
        return json.loads(p.read_text()) if p.is_file() else None

    bench = read("bench_llm/bench.json")
    rows = bench if isinstance(bench, list) else (bench or {}).get("rows", []) if bench else []
    for r in rows:
        name = str(r.get("device_name", ""))
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        p = r.get("params_m", 0.0) * 1e6
        r["mfu_rollout"] = 2 * p * r["rollout_tok_s"] / peak if peak else None
        r["mfu_update"] = 6 * p * r["update_tok_s"] / peak if peak else None
        r["peak_bf16_flops_assumed"] = peak
    merged = {"bench_llm": rows or bench, "stage_local": read("stage-local.json"), "stage_ray": read("stage-ray.json"),
              "vllm": read("vllm.json"), "status": read("status.json"), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime())}
    (out / "gpu_check.json").write_text(json.dumps(merged, indent=1))
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage")
    s.add_argument("--device", default="cuda")
    s.add_argument("--placement", choices=("local", "ray"), default="local")
    s.add_argument("--out", required=True)
    m = sub.add_parser("merge")
    m.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "stage":
        print(json.dumps(stage(args.device, args.placement, Path(args.out)), indent=1))
    else:
        merged = merge(Path(args.out))
        print(f"wrote {Path(args.out) / 'gpu_check.json'} ({', '.join(k for k, v in merged.items() if v)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
