"""The training run config (``python -m llm.train --config CONFIG.yaml``); YAML maps onto it one to one.

Top level (:class:`RunConfig`)::

    team:      agents (name, model, dtype, device, system_prompt, lora, optimizer, ...), router, protocol
    task:      llm.data.tasks.TaskConfig
    sampling:  temperature, top_p, batch_size, recompute_logprobs, backend, vllm
    train:     stages, seed, order, and every field of the core's trust_region.stage.StageConfig
               directly: mode, prefix_reuse, resample_every, prompts_per_stage, group_size,
               advantage.*, update.*, certificate.*, is_log_ratio_clip, ...
    output_dir, tensorboard, progress
    placement (local | ray), ray: address, per-agent num_cpus / num_gpus / world_size (llm.distributed)

The ``train`` keys of the core are read from its dataclasses (:func:`llm.config.build`), so a field
added to StageConfig / UpdateConfig / AdvantageConfig appears here, in ``--set`` and in ``--help``
with no edit in ``llm/``. Nothing here loads a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from llm.config.build import build
from llm.config.choices import ORDERS
from llm.config.errors import ConfigError
from llm.config.fields import Section, option
from llm.config.sections import SamplingSection, TeamConfig
from llm.config.yamlio import load_config_file
from llm.data.tasks import TaskConfig
from llm.distributed.config import PLACEMENTS, RaySection
from trust_region.stage import StageConfig


@dataclass(frozen=True)
class TrainSection(Section):
    """The stage loop: the LLM-side keys, and the core's StageConfig fields flat beside them."""

    RENAMED: ClassVar[dict[str, str]] = {
        "stage": "the StageConfig settings sit directly under train (e.g. train.prefix_reuse, train.advantage.a_clip)",
        "fixed_order": "use train.order: [agent names]",
    }

    stages: int = option(1, ge=1, help="stages to run (each updates every agent once); may grow when resuming")
    seed: int = option(0, help="seed of the stage order, the sampler, the prompt draws and torch")
    order: str | tuple[str, ...] = option("fixed", help=f"agent order within a stage: one of {list(ORDERS)} or a "
                                          "list of every agent name")
    stage: StageConfig = option(default_factory=StageConfig, flatten=True, exclude=("order", "fixed_order"),
                                help="the core's StageConfig (its keys sit directly under train)")

    def validate(self) -> None:
        if isinstance(self.order, str) and self.order not in ORDERS:
            raise ConfigError(f"train.order must be one of {list(ORDERS)} or a list of agent names, "
                              f"got {self.order!r}", key="order")


@dataclass(frozen=True)
class RunConfig(Section):
    """A training run: the team, the task, sampling, the stage loop and where results go."""

    team: TeamConfig = option(help="the agents, the router and the handoff format")
    task: TaskConfig = option(help="the training problems and their grader")
    sampling: SamplingSection = option(default_factory=SamplingSection, help="rollout settings and backend")
    train: TrainSection = option(default_factory=TrainSection, help="the stage loop and the core's stage/update "
                                 "settings")
    output_dir: str = option("runs/default", help="run directory (checkpoints, metrics.jsonl, cursor.json)")
    tensorboard: bool = option(False, help="also write TensorBoard scalars to output_dir/tb")
    progress: bool = option(True, help="tqdm bars (updates, rollout messages, update steps)")
    placement: str = option("local", choices=PLACEMENTS, help="where the agents run: local (this process) or ray "
                            "(one Ray actor group per agent, FSDP2 inside an agent; docs/distributed.md)")
    ray: RaySection = option(default_factory=RaySection, help="the Ray cluster and per-agent resources "
                             "(placement: ray)")

    def validate(self) -> None:
        if isinstance(self.train.order, tuple):
            self.team.check_order(self.train.order, "train.order")
        if self.placement == "ray":
            self.ray.check_names(self.team.names)
            if self.train.stage.update.backtrack == "line_search":
                raise ConfigError("placement: ray needs train.update.backtrack: retry (the line search edits "
                                  "parameters in the driver, which holds none)", key="train.update.backtrack")

    def stage_config(self) -> StageConfig:
        """The core's StageConfig of ``train`` (agent names of ``train.order`` as indices)."""
        order = self.train.order
        if isinstance(order, tuple):
            return dataclasses.replace(self.train.stage, order="fixed",
                                       fixed_order=tuple(self.team.index(n) for n in order))
        return dataclasses.replace(self.train.stage, order=order)


def config_from_dict(data: Any) -> RunConfig:
    """A validated :class:`RunConfig` from plain data (e.g. parsed YAML); keys are named from the
    top level (``team.agents[0].lora.r``)."""
    return build(RunConfig, data, "")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML file (plus ``--set`` overrides) into a validated :class:`RunConfig`."""
    return load_config_file(path, config_from_dict, overrides)
