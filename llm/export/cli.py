"""The command line ``python -m llm.export --run RUN_DIR --out DIR [--checkpoint latest|base|N]
[--lora merged|adapters]``: write a trained team as loadable Hugging Face folders (see
:mod:`llm.export.writer`)."""

from __future__ import annotations

import argparse
import json

from llm.config.cli import run_main
from llm.export.run import load_run_team
from llm.export.writer import LORA_MODES, export_team


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.export", description="Export a trained team: one Hugging "
                                     "Face folder per agent and the team config beside them.")
    parser.add_argument("--run", required=True, help="an llm.train run directory")
    parser.add_argument("--out", required=True, help="output folder (one subfolder per agent, team.yaml, export.json)")
    parser.add_argument("--checkpoint", default="latest", help="latest (default), base (untrained) or an update "
                        "number")
    parser.add_argument("--lora", default="merged", choices=LORA_MODES, help="merged: full models with the adapters "
                        "merged in (default); adapters: peft adapter folders that name the base model")
    args = parser.parse_args(argv)

    def body() -> int:
        config, team, chosen = load_run_team(args.run, args.checkpoint)
        record = export_team(team, args.out, lora=args.lora, sampling=config.sampling,
                             info={"checkpoint": chosen.as_dict()})
        print(json.dumps({"out": args.out, "update": chosen.update,
                          "agents": [a["folder"] for a in record["agents"]]}))
        return 0

    return run_main(body)
