"""The command line ``python -m llm.evaluate --config configs/eval_aime2024.yaml [--set KEY=VALUE ...]``
(see :mod:`llm.evaluate.harness`); ``--help`` lists every config key. ``--run RUN_DIR
[--checkpoint latest|base|N]`` evaluates a trained team from its run directory
(:mod:`llm.evaluate.from_run`; ``--config`` is then optional)."""

from __future__ import annotations

import logging
from typing import Sequence

from llm.config.cli import config_parser, run_main
from llm.config.yamlio import load_config_file
from llm.evaluate.config import PROTOCOLS, EvalConfig, eval_config_from_dict
from llm.evaluate.from_run import evaluate_run
from llm.evaluate.harness import evaluate


def _with_flags(data: dict, output_dir: str | None, protocols: list[str] | None, limit: int | None,
                k: int | None) -> EvalConfig:
    """The config with the shortcut flags applied (they override the file and --set)."""
    if isinstance(data, dict):
        ev = dict(data.get("eval") or {})
        if output_dir:
            ev["output_dir"] = output_dir
        if protocols:
            ev["protocols"] = protocols
        if limit is not None or k is not None:
            benches = []
            for b in ev.get("benchmarks") or []:
                b = {"name": b} if isinstance(b, str) else dict(b)
                if limit is not None:
                    b["limit"] = limit
                if k is not None:
                    b["k"] = k
                    b.pop("ks", None)
                benches.append(b)
            ev["benchmarks"] = benches
        data = {**data, "eval": ev}
    return eval_config_from_dict(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = config_parser("python -m llm.evaluate", "Evaluate an LLM team on benchmarks.", EvalConfig,
                           "Eval config", "docs/evaluation.md", config_required=False)
    parser.add_argument("--output-dir", default=None, help="override eval.output_dir")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--k", type=int, default=None, help="override the samples per problem of every benchmark")
    parser.add_argument("--protocols", nargs="+", default=None, choices=PROTOCOLS)
    parser.add_argument("--run", default=None, help="an llm.train run directory: evaluate its trained team (without "
                        "--config: on the held-out split of its task)")
    parser.add_argument("--checkpoint", default="latest", help="with --run: latest (default), base (untrained) or an "
                        "update number")
    args = parser.parse_args(argv)
    if args.config is None and args.run is None:
        parser.error("one of --config or --run is required")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        if args.run is not None:
            data = load_config_file(args.config, lambda d: d, args.overrides) if args.config else {}
            if args.protocols:
                data = {**data, "eval": {**(data.get("eval") or {}), "protocols": args.protocols}}
            evaluate_run(args.run, args.checkpoint, data, k=args.k, limit=args.limit, output_dir=args.output_dir)
            return 0
        config = load_config_file(args.config, _with_flags, args.overrides, output_dir=args.output_dir,
                                  protocols=args.protocols, limit=args.limit, k=args.k)
        evaluate(config)
        return 0

    return run_main(body)
