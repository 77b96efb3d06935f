"""Writing a team as loadable Hugging Face folders: one per agent, and the team config beside them.

``OUT/<agent name>/`` for every agent, then ``OUT/team.yaml`` and ``OUT/export.json``:

- ``lora: merged`` (default): the adapters are merged into the base weights
  (``merge_and_unload``) and the full model is saved (``save_pretrained``, safetensors) with its
  tokenizer; ``AutoModelForCausalLM.from_pretrained(OUT/<name>)`` loads it, no peft needed.
- ``lora: adapters``: only the adapters are saved (``adapter_config.json`` +
  ``adapter_model.safetensors``, peft's format) with the tokenizer; ``adapter_config.json`` names
  the base model (``base_model_name_or_path``: the resolved path or hub id of the run's model).
  ``AutoModelForCausalLM.from_pretrained(OUT/<name>)`` (transformers with peft installed) or
  ``peft.AutoPeftModelForCausalLM.from_pretrained`` loads base + adapters.
- An agent trained without LoRA is saved whole in both cases.
- ``team.yaml``: the ``team:`` and ``sampling:`` sections of the run. Every full-model folder
  (merged, or trained without LoRA) replaces the agent's ``model`` (absolute path; no ``lora``
  section), so the file is the head of an ``llm.evaluate`` config (add an ``eval:`` section) or of
  a new training run. With ``lora: adapters`` an agent keeps its base ``model`` and ``lora``
  section (a team config loads models, not adapter folders); export.json names its adapter folder.
- ``export.json``: the run directory, the checkpoint (update number and files), the LoRA mode and,
  per agent, the folder, the base model and whether adapters were merged.

The model of a merged export is modified in place (merging unloads the adapters): export last, or
load the team again for further use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llm.checkpoint import atomic_write_text, save_model_dir
from llm.config.build import to_plain
from llm.config.errors import ConfigError
from llm.team import LLMTeam

LORA_MODES = ("merged", "adapters")


def _is_peft(model: Any) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def export_team(team: LLMTeam, out_dir: str | Path, lora: str = "merged", sampling: Any = None,
                info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``team`` into ``out_dir`` (see the module docstring); returns the export.json dict.

    ``sampling``: the run's SamplingSection (written into team.yaml); ``info``: extra provenance
    (run directory, checkpoint) for export.json.
    """
    if lora not in LORA_MODES:
        raise ConfigError(f"lora must be one of {list(LORA_MODES)}, got {lora!r}", key="lora")
    if team.config is None:
        raise ConfigError("export_team needs a team built from a config (team.config is None)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    team_data = to_plain(team.config)
    agents_info = []
    for j, agent in enumerate(team):
        folder = (out / agent.name).resolve()
        spec = team_data["agents"][j]
        base = spec["model"]
        model = agent.model
        merged = False
        if _is_peft(model) and lora == "merged":
            model = model.merge_and_unload()
            agent.model = model
            merged = True
        save_model_dir(model, agent.tokenizer, folder)
        adapters = _is_peft(model)
        if not adapters:  # a full model folder: the team loads it directly
            spec["model"] = str(folder)
            spec.pop("tokenizer", None)  # the folder carries the agent's tokenizer
            spec["lora"] = None
        agents_info.append({"agent": j, "name": agent.name, "folder": str(folder), "base_model": base,
                            "lora_merged": merged, "adapters_only": adapters})
    head: dict[str, Any] = {"team": team_data}
    if sampling is not None:
        head["sampling"] = to_plain(sampling)
    atomic_write_text(out / "team.yaml", yaml.safe_dump(head, sort_keys=False))
    record = {"lora": lora, "agents": agents_info, **(info or {})}
    atomic_write_text(out / "export.json", json.dumps(record, indent=2))
    return record
