"""Reading a trained team back from an ``llm.train`` run directory.

A run directory holds ``config.yaml`` (the resolved run config), ``cursor.json`` (the latest weights
file of every agent), ``metrics.jsonl`` (one line per agent update: ``update``, ``agent``) and
``checkpoints/agent{j}/weights-uNNNNNN.safetensors`` (the agent's trainable parameters after update
N: the LoRA adapters, or the whole model).

A *checkpoint* names which weights each agent gets:

- ``"latest"`` (default): the cursor's files (the end of the run, or where it was stopped);
- ``"base"`` or ``0``: no trained weights at all (the team the run started from; "before training");
- ``N`` (an update number): every agent's weights after its last update at or before update N. The
  trainer keeps only the latest weights file of each agent, so N works when those files are the
  ones N needs (N = the last update, or any N after each agent's last update); otherwise it is an
  error that lists the kept updates.

:func:`load_run_team` rebuilds the team from the run config and copies the chosen weights in;
:func:`heldout_task` is the held-out split of the run's task (what ``llm.evaluate --run`` scores),
checked against the run's train split.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm.checkpoint import CURSOR, load_trainable, read_cursor
from llm.config.errors import ConfigError
from llm.data.contamination import ContaminationError, check_contamination, enforce
from llm.data.tasks import Task, load_task
from llm.team import LLMTeam
from llm.train.config import RunConfig, config_from_dict

_WEIGHTS = re.compile(r"weights-u(\d+)\.safetensors$")
#: keys the trainer adds to config.yaml beside the RunConfig fields
_DERIVED_KEYS = ("resolved_stage_config",)


@dataclass(frozen=True)
class RunCheckpoint:
    """The weights chosen for each agent: ``files[j]`` is a path relative to the run directory,
    or None for the untrained (base) weights; ``update`` the update number they correspond to."""

    run_dir: Path
    update: int
    files: dict[int, str | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "update": self.update,
                "files": {str(j): f for j, f in sorted(self.files.items())}}


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The validated RunConfig of a run directory (its ``config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not an llm.train run directory (no config.yaml)", key="run")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping", key="run")
    for key in _DERIVED_KEYS:
        data.pop(key, None)
    return config_from_dict(data)


def _update_agents(run_dir: Path) -> dict[int, int]:
    """update number -> agent index, from metrics.jsonl (the lines of agent updates)."""
    path = run_dir / "metrics.jsonl"
    out: dict[int, int] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "agent" in row and "update" in row:
                out[int(row["update"])] = int(row["agent"])
    return out


def kept_updates(run_dir: str | Path, agent: int) -> list[int]:
    """Update numbers whose weights file of ``agent`` is on disk."""
    d = Path(run_dir) / "checkpoints" / f"agent{agent}"
    tags = [int(m.group(1)) for p in d.glob("weights-u*.safetensors") if (m := _WEIGHTS.search(p.name))]
    return sorted(tags)


def resolve_checkpoint(run_dir: str | Path, checkpoint: str | int = "latest", n_agents: int | None = None) -> RunCheckpoint:
    """The :class:`RunCheckpoint` of ``checkpoint`` ("latest", "base", or an update number)."""
    run_dir = Path(run_dir)
    if not (run_dir / CURSOR).is_file():
        raise ConfigError(f"{run_dir} holds no {CURSOR}: not an llm.train run, or it has not finished an update",
                          key="run")
    cursor = read_cursor(run_dir)
    done = int(cursor["updates_done"])
    if n_agents is None:
        n_agents = len(read_run_config(run_dir).team.agents)
    text = str(checkpoint).strip().lower()
    if text == "latest":
        files = {j: cursor["agents"].get(str(j), {}).get("weights") for j in range(n_agents)}
        return RunCheckpoint(run_dir, done, files)
    if text == "base":
        text = "0"
    if not text.isdigit():
        raise ConfigError(f"checkpoint must be 'latest', 'base' or an update number, got {checkpoint!r}",
                          key="checkpoint")
    n = int(text)
    if n > done:
        raise ConfigError(f"checkpoint {n}: the run has done {done} updates", key="checkpoint")
    agents_of = _update_agents(run_dir)
    files: dict[int, str | None] = {}
    for j in range(n_agents):
        mine = [u for u, a in agents_of.items() if a == j and u <= n]
        if not mine:
            files[j] = None  # not updated yet at update n: base weights
            continue
        last = max(mine)
        rel = f"checkpoints/agent{j}/weights-u{last:06d}.safetensors"
        if not (run_dir / rel).is_file():
            raise ConfigError(f"checkpoint {n}: agent {j}'s weights after update {last} were not kept (kept updates "
                              f"of agent {j}: {kept_updates(run_dir, j)}; the trainer keeps each agent's latest weights "
                              "only)", key="checkpoint")
        files[j] = rel
    return RunCheckpoint(run_dir, n, files)


def load_run_team(run_dir: str | Path, checkpoint: str | int = "latest",
                  config: RunConfig | None = None) -> tuple[RunConfig, LLMTeam, RunCheckpoint]:
    """The run's config, its team (loaded from the config) with the weights of ``checkpoint``, and
    the resolved checkpoint."""
    run_dir = Path(run_dir)
    config = config if config is not None else read_run_config(run_dir)
    chosen = resolve_checkpoint(run_dir, checkpoint, n_agents=len(config.team.agents))
    team = LLMTeam.from_config(config.team, temperature=config.sampling.temperature)
    load_checkpoint_weights(team, chosen)
    return config, team, chosen


def load_checkpoint_weights(team: LLMTeam, chosen: RunCheckpoint) -> dict[int, str]:
    """Copy the checkpoint's trainable parameters into ``team`` (agents whose file is None keep
    their base weights); returns {agent: file loaded}."""
    loaded = {}
    for j, rel in chosen.files.items():
        if rel is not None:
            load_trainable(team[j], chosen.run_dir / rel, f"{chosen.run_dir}: {rel}")
            loaded[j] = rel
    return loaded


def heldout_task(config: RunConfig, limit: int | None = None) -> Task:
    """The held-out split of the run's task (problems + the training grader), first ``limit`` items.

    Only tasks with a held-out split qualify (``task.kind: arithmetic``); the split is checked
    against the run's train split (ids, normalised prompts, n-grams) and any overlap is an error.
    """
    task = config.task
    if task.kind != "arithmetic":
        raise ConfigError(f"the run's task (kind {task.kind!r}) has no held-out split; evaluate it on benchmarks "
                          "with --config EVAL.yaml (the team still comes from the run)", key="task.kind")
    train = load_task(task)
    held = load_task(dataclasses.replace(task, split="heldout", limit=limit))
    overlap = set(p.id for p in train.problems) & set(p.id for p in held.problems)
    try:
        if overlap:
            raise ContaminationError(f"held-out ids found in the train split: {sorted(overlap)[:10]}")
        enforce(check_contamination(train.problems, held.problems), "error", "the held-out split")
    except ContaminationError as err:
        raise ConfigError(f"task: {err}", key="task") from err
    return held
