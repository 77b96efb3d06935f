"""Exporting a trained team: ``python -m llm.export --run RUN_DIR --out DIR [--checkpoint N] [--lora adapters]``.

- :mod:`llm.export.run`: read a run directory back (config, chosen checkpoint, the team with its
  trained weights); also what ``llm.evaluate --run`` uses.
- :mod:`llm.export.writer`: one loadable Hugging Face folder per agent (LoRA merged, or adapters
  plus the base reference) and the team config beside them.
"""

from llm.export.run import RunCheckpoint, load_run_team, read_run_config, resolve_checkpoint
from llm.export.writer import LORA_MODES, export_team

__all__ = ["LORA_MODES", "RunCheckpoint", "export_team", "load_run_team", "read_run_config", "resolve_checkpoint"]
