"""The command line ``python -m llm.plug_and_play --config CONFIG.yaml [--set KEY=VALUE ...]`` (see
:mod:`llm.plug_and_play.pipeline`); ``--help`` lists every config key."""

from __future__ import annotations

import dataclasses

from llm.config.cli import config_parser, run_main
from llm.plug_and_play.config import PnPConfig, load_pnp_config
from llm.plug_and_play.pipeline import run, summary_lines


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("python -m llm.plug_and_play", "Replace one agent of an LLM team by a new model, "
                           "aligned to the incumbent's trust region first.", PnPConfig, "Plug-and-play config",
                           "docs/plug_and_play.md")
    parser.add_argument("--output-dir", default=None, help="override output_dir")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    def body() -> int:
        cfg = load_pnp_config(args.config, args.overrides)
        if args.output_dir is not None:
            cfg = dataclasses.replace(cfg, output_dir=args.output_dir)
        report = run(cfg, progress=not args.no_progress)
        print("\n".join(summary_lines(report)))
        return 0

    return run_main(body)
