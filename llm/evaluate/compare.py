"""Before/after comparison of two evaluations of the same items:
``python -m llm.evaluate.compare BEFORE_DIR AFTER_DIR [--protocol chain] [--benchmark task]``.

Each folder is an ``llm.evaluate`` output (``traces/<benchmark>/<protocol>.jsonl``). Per item the
score is the mean over its K samples (avg@K); the items of both folders must be the same ids.
Reported, each with a 95% percentile bootstrap interval over items (:func:`bootstrap_interval`):
the mean before, the mean after, and the **paired** difference (the mean over items of
after - before, resampling items, so the item-to-item spread that both evaluations share cancels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm.config.errors import ConfigError
from llm.evaluate.harness import read_traces
from llm.evaluate.metrics import bootstrap_interval


def item_scores(eval_dir: str | Path, benchmark: str = "task", protocol: str = "chain") -> dict[str, float]:
    """item id -> mean score over its samples, from ``traces/<benchmark>/<protocol>.jsonl``."""
    path = Path(eval_dir) / "traces" / benchmark / f"{protocol}.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} not found (run llm.evaluate into {eval_dir} first)")
    out = {}
    for pid, rec in read_traces(path).items():
        if "samples" not in rec:
            raise ConfigError(f"{path}: per-agent traces (protocol single); compare chain, best_of or majority")
        out[pid] = float(np.mean([s["score"] for s in rec["samples"]]))
    return out


def compare(before: dict[str, float], after: dict[str, float], n_boot: int = 2000, level: float = 0.95,
            seed: int = 0) -> dict[str, Any]:
    """Before, after and paired-difference means with bootstrap intervals over the shared items."""
    if set(before) != set(after):
        missing = sorted(set(before) ^ set(after))[:5]
        raise ConfigError(f"the two evaluations cover different items (e.g. {missing})")
    ids = sorted(before)
    b = np.array([before[i] for i in ids])
    a = np.array([after[i] for i in ids])
    kw = dict(n_boot=n_boot, level=level, seed=seed)
    return {"items": len(ids), "before": bootstrap_interval(b, **kw).as_dict(),
            "after": bootstrap_interval(a, **kw).as_dict(), "difference": bootstrap_interval(a - b, **kw).as_dict()}


def _fmt(m: dict[str, float]) -> str:
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def comparison_row(name: str, result: dict[str, Any]) -> str:
    """One markdown table row: name | items | before | after | after - before."""
    return (f"| {name} | {result['items']} | {_fmt(result['before'])} | {_fmt(result['after'])} | "
            f"{_fmt(result['difference'])} |")


TABLE_HEAD = "| method | items | before [95% CI] | after [95% CI] | paired after - before [95% CI] |\n|---|---|---|---|---|"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.evaluate.compare", description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--benchmark", default="task")
    parser.add_argument("--protocol", default="chain")
    parser.add_argument("--name", default="team")
    args = parser.parse_args(argv)
    try:
        result = compare(item_scores(args.before, args.benchmark, args.protocol),
                         item_scores(args.after, args.benchmark, args.protocol))
    except ConfigError as err:
        print(f"error: {err}")
        return 2
    print(TABLE_HEAD)
    print(comparison_row(args.name, result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
