"""Stage wall time of ``placement: local`` against ``placement: ray`` on the same run config.

``python -m experiments.bench_placement --config CONFIG.yaml`` (or ``--tiny``: the test suite's tiny
3-agent team, built locally, with a parity grader so that advantages are not all zero) trains the
run twice with ``llm.train``'s Trainer, once per placement, ``--stages`` stages each, same seeds,
and measures every stage's wall time from the trainer's own ``metrics.jsonl`` (the stage rows'
timestamps: rollouts, updates, trust-region checks and checkpoint writes included). The first stage
is a warm-up (actor start-up and lazy initialisation) and is not timed; the overhead ratio is
median(ray stage time) / median(local stage time) over the remaining stages. The placements run
alternately ``--repeats`` times in the same process, each on one torch thread per agent
(``--threads``), so both see the same machine.

It also times one driver-actor call carrying a message batch, as torch tensors and in the wire
format (numpy arrays, :mod:`llm.distributed.wire`), next to a no-op call (the ping).

Writes ``<out>/bench.json`` and ``bench.csv`` (+ ``config.json`` / ``seeds.json``; ``<out>``
defaults to ``results/bench_placement``) and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from experiments.common import results_dir, save_run_metadata, write_csv, write_json
from llm.train import Trainer
from llm.train.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]


def tiny_setup(root: Path) -> tuple[dict[str, Any], Callable]:
    """The tests' tiny team (tests/llm/conftest.py builds it: two tiny Qwen3, one tiny Llama) and
    their parity grader."""
    spec = importlib.util.spec_from_file_location("tiny_models", REPO / "tests" / "llm" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dirs = mod.build_tiny_models(root / "models")
    return mod.make_tiny_run_config(dirs, root / "run", prefix_reuse=True), mod.grade_parity


def stage_times(run_dir: Path) -> list[float]:
    """Wall seconds of each stage after the first, from the stage rows of ``metrics.jsonl``."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ends = [r["time"] for r in rows if "agent" not in r]
    return [b - a for a, b in zip(ends, ends[1:])]


def ping_ms(n: int = 30) -> float:
    """Median round trip (ms) of a no-op call to an idle actor of the running Ray cluster."""
    import ray

    from llm.config.sections import AgentConfig
    from llm.distributed.worker import AgentWorker, WorkerSpec

    actor = ray.remote(AgentWorker).options(num_cpus=0).remote(
        WorkerSpec(agent_id=0, agent=AgentConfig(name="ping", model="none"), temperature=1.0, sampling=None, seed=0))
    ray.get(actor.ping.remote())
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ray.get(actor.ping.remote())
        times.append(1e3 * (time.perf_counter() - t0))
    ray.kill(actor)
    return statistics.median(times)


class _Echo:
    """Receives a message batch and returns its log-prob rows (the shape of a log_probs call)."""

    def call(self, data: Any) -> Any:
        return data["behaviour_logp"]


def wire_ms(messages: int = 32, tokens: int = 24, context: int = 96, n: int = 100) -> dict[str, float]:
    """Median round trip (ms) of one call carrying a message batch of ``messages`` x ``tokens``
    (context ``context``) to an actor that sends back its (messages, tokens) log-probs: as torch
    tensors and as the wire format's numpy arrays (:mod:`llm.distributed.wire`); the no-op call is
    :func:`ping_ms`."""
    import ray

    from llm.distributed.wire import TENSOR_FIELDS, batch_to_wire, from_wire
    from trust_region.batch import MessageBatch

    g = torch.Generator().manual_seed(0)
    m = messages
    batch = MessageBatch(
        trajectory=torch.arange(m), group=torch.arange(m) // 4, agent=torch.zeros(m, dtype=torch.long),
        turn=torch.zeros(m, dtype=torch.long), context=torch.randint(0, 1000, (m, context), generator=g),
        context_mask=torch.ones(m, context, dtype=torch.bool), tokens=torch.randint(0, 1000, (m, tokens), generator=g),
        mask=torch.ones(m, tokens, dtype=torch.bool), behaviour_logp=-torch.rand(m, tokens, generator=g),
        reward=torch.rand(m, generator=g), returns=torch.rand(m, generator=g), generated=torch.ones(m, dtype=torch.bool))
    as_torch = {k: getattr(batch, k) for k in TENSOR_FIELDS}
    as_wire = batch_to_wire(batch)
    actor = ray.remote(_Echo).options(num_cpus=0).remote()
    out: dict[str, float] = {}
    for name, payload, decode in (("torch", as_torch, None), ("wire", as_wire, from_wire)):
        ray.get(actor.call.remote(payload))
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            got = ray.get(actor.call.remote(payload))
            if decode is not None:
                got = decode(got)
            times.append(1e3 * (time.perf_counter() - t0))
        out[name] = statistics.median(times)
    ray.kill(actor)
    return out


def run_once(cfg: dict[str, Any], placement: str, out: Path, grader: Callable | None, threads: int,
             counts: dict[str, list[float]]) -> list[float]:
    cfg = copy.deepcopy(cfg)
    cfg["placement"] = placement
    cfg["output_dir"] = str(out)
    cfg["progress"] = False
    if placement == "ray":
        ray_cfg = cfg.setdefault("ray", {})
        ray_cfg.setdefault("default", {})["num_cpus"] = threads
        if not ray_cfg.get("address"):  # logical CPUs of the local cluster: one reservation per agent
            ray_cfg.setdefault("num_cpus", threads * len(cfg["team"]["agents"]))
    trainer = Trainer(config_from_dict(cfg))
    if grader is not None:
        trainer.task.grader = grader
    trainer.run(resume=False)
    if trainer.remote is not None:
        counts["round_trips_per_stage"].append(sum(g.round_trips for g in trainer.remote.groups)
                                               / cfg["train"]["stages"])
    return stage_times(out)


def bench(cfg: dict[str, Any], grader: Callable | None, stages: int, repeats: int, threads: int,
          work: Path) -> dict[str, Any]:
    """Time both placements; returns per-placement stage times and the overhead ratio."""
    cfg = copy.deepcopy(cfg)
    cfg["train"]["stages"] = stages
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {"local": [], "ray": []}
    counts: dict[str, list[float]] = {"round_trips_per_stage": []}
    for r in range(repeats):
        for placement in ("local", "ray"):
            times[placement] += run_once(cfg, placement, work / f"{placement}-{r}", grader, threads, counts)
    med = {p: statistics.median(t) for p, t in times.items()}
    trips = statistics.fmean(counts["round_trips_per_stage"])
    ping = ping_ms()
    wire = wire_ms()
    return {"wire_call_ms": wire, "stage_seconds": times, "median_stage_seconds": med, "overhead_ratio": med["ray"] / med["local"],
            "stages_timed_per_placement": len(times["local"]), "threads_per_agent": threads,
            "round_trips_per_stage": trips, "ping_ms": ping,
            "round_trip_seconds_per_stage": trips * ping / 1e3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a run config YAML (llm.train)")
    src.add_argument("--tiny", action="store_true", help="the test suite's tiny 3-agent team (CPU, seconds)")
    p.add_argument("--stages", type=int, default=4, help="stages per run (the first is not timed)")
    p.add_argument("--repeats", type=int, default=1, help="runs per placement, alternating")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the driver and of each agent actor")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local one)")
    p.add_argument("--out", default=None, help="results directory (default results/bench_placement)")
    args = p.parse_args(argv)
    if args.stages < 2:
        p.error("--stages must be >= 2 (the first stage is a warm-up)")
    out = Path(args.out) if args.out else results_dir("bench_placement")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.tiny:
            cfg, grader = tiny_setup(work)
        else:
            cfg, grader = yaml.safe_load(Path(args.config).read_text()), None
        if args.ray_address:
            cfg.setdefault("ray", {})["address"] = args.ray_address
        result = bench(cfg, grader, args.stages, args.repeats, args.threads, work)
    result["source"] = "tiny" if args.tiny else args.config
    write_json(out / "bench.json", result)
    rows = [{"placement": pl, "stages_timed": len(t), "median_stage_s": result["median_stage_seconds"][pl],
             "mean_stage_s": statistics.fmean(t), "ratio_vs_local": result["median_stage_seconds"][pl]
             / result["median_stage_seconds"]["local"]} for pl, t in result["stage_seconds"].items()]
    write_csv(out / "bench.csv", rows)
    save_run_metadata(out, vars(args), seeds=[cfg["train"].get("seed", 0)])
    print(f"{'placement':>9} {'stages':>6} {'median s':>9} {'mean s':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['placement']:>9} {r['stages_timed']:>6} {r['median_stage_s']:>9.3f} {r['mean_stage_s']:>8.3f} "
              f"{r['ratio_vs_local']:>6.3f}")
    print(f"overhead ratio ray/local (median stage wall time): {result['overhead_ratio']:.3f}  (goal <= 1.1)")
    w = result["wire_call_ms"]
    print(f"one call with a 32 x 24 message batch: torch tensors {w['torch']:.2f} ms, wire arrays {w['wire']:.2f} ms, "
          f"no payload (ping) {result['ping_ms']:.2f} ms")
    print(f"driver-actor round trips per stage: {result['round_trips_per_stage']:.0f}; idle-actor ping "
          f"{result['ping_ms']:.2f} ms; their product {result['round_trip_seconds_per_stage']:.3f} s per stage")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
