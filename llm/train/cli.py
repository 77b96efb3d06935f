"""The command line ``python -m llm.train --config CONFIG.yaml [--set KEY=VALUE ...]``: train an LLM
team (see :mod:`llm.train.trainer`); ``--help`` lists every config key."""

from __future__ import annotations

import json

from llm.config.cli import config_parser, run_main
from llm.train.config import RunConfig, load_config
from llm.train.trainer import train


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("python -m llm.train", "Sequential trust-region training of an LLM team.", RunConfig,
                           "Run config", "docs/llm_training.md")
    parser.add_argument("--output-dir", default=None, help="run directory (default: output_dir of the config)")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if the run directory has a cursor")
    args = parser.parse_args(argv)

    def body() -> int:
        result = train(load_config(args.config, args.overrides), args.output_dir, resume=not args.no_resume)
        last = result.reports[-1].to_dict() if result.reports else {}
        print(json.dumps({"output_dir": str(result.output_dir), "updates_done": result.updates_done,
                          "resumed_from": result.resumed_from,
                          "last_stage": {k: v for k, v in last.items() if k.startswith("stage/")}}, default=str))
        return 0

    return run_main(body)

