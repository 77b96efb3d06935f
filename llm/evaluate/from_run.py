"""Evaluating a trained team straight from its run: ``python -m llm.evaluate --run RUN_DIR
[--checkpoint latest|base|N] [--config EVAL.yaml] [--k K] [--limit N]``.

The team is the run's (its config, with the weights of the chosen checkpoint: see
:mod:`llm.export.run`); sampling is the run's (the training temperature) unless an eval config
gives its own ``sampling:``.

- Without ``--config``: the benchmark is the held-out split of the run's task
  (:data:`llm.evaluate.config.TASK_BENCHMARK`, checked against the train split), graded by the
  training grader, protocol ``chain`` with the run's router (kind and rounds), K = ``--k`` (default
  1) samples per item, ``sampling.batch_size`` items per step, into ``RUN_DIR/eval/<checkpoint>/``
  (``base``, ``latest`` or ``uN``).
- With ``--config``: that file's ``eval:`` section (benchmarks, protocols, ...) on the run's team;
  a ``team:`` section in it is an error (the team is the run's).

``checkpoint.json`` in the output folder records the run and the weights files evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm.config.build import to_plain
from llm.config.errors import ConfigError
from llm.evaluate.config import TASK_BENCHMARK, eval_config_from_dict
from llm.evaluate.harness import evaluate
from llm.export.run import load_run_team, read_run_config, resolve_checkpoint


def checkpoint_tag(run_dir: str | Path, checkpoint: str | int) -> str:
    """Folder name of an evaluation of ``checkpoint``: base, latest or uN."""
    text = str(checkpoint).strip().lower()
    if text in ("latest", "base"):
        return text
    return f"u{resolve_checkpoint(run_dir, checkpoint).update}"


def run_eval_data(run_dir: str | Path, checkpoint: str | int = "latest", eval_data: dict[str, Any] | None = None,
                  k: int | None = None, limit: int | None = None, output_dir: str | None = None) -> dict[str, Any]:
    """The plain eval config (team and sampling of the run, eval section as in the module docstring)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    data = dict(eval_data or {})
    if "team" in data:
        raise ConfigError("--run: the team comes from the run; remove the team section of the eval config", key="team")
    data["team"] = to_plain(config.team)
    data.setdefault("sampling", to_plain(config.sampling))
    ev = dict(data.get("eval") or {})
    if not ev.get("benchmarks"):
        router = config.team.router
        ev["benchmarks"] = [{"name": TASK_BENCHMARK, "k": k or 1, "limit": limit}]
        ev.setdefault("protocols", ["chain"])
        ev.setdefault("chain_router", {"kind": router.kind, "rounds": router.rounds})
        ev.setdefault("problems_per_step", config.sampling.batch_size)  # one generate batch per step
    elif k is not None or limit is not None:
        benches = []
        for b in ev["benchmarks"]:
            b = {"name": b} if isinstance(b, str) else dict(b)
            if k is not None:
                b["k"] = k
                b.pop("ks", None)
            if limit is not None:
                b["limit"] = limit
            benches.append(b)
        ev["benchmarks"] = benches
    ev["task_run"] = str(run_dir)
    if output_dir is not None:
        ev["output_dir"] = output_dir
    elif "output_dir" not in ev:
        ev["output_dir"] = str(run_dir / "eval" / checkpoint_tag(run_dir, checkpoint))
    data["eval"] = ev
    return data


def evaluate_run(run_dir: str | Path, checkpoint: str | int = "latest", eval_data: dict[str, Any] | None = None,
                 k: int | None = None, limit: int | None = None, output_dir: str | None = None) -> dict[str, Any]:
    """Evaluate the run's team at ``checkpoint``; returns the summary (also written to disk)."""
    config = eval_config_from_dict(run_eval_data(run_dir, checkpoint, eval_data, k, limit, output_dir))
    run_config, team, chosen = load_run_team(run_dir, checkpoint)
    out = Path(config.eval.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint.json").write_text(json.dumps(chosen.as_dict(), indent=2), encoding="utf-8")
    summary = evaluate(config, team=team)
    summary["checkpoint"] = chosen.as_dict()
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
