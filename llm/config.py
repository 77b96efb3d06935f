"""Typed, validated configuration of an LLM team run; YAML maps onto it one to one.

Top level (``RunConfig``)::

    team:      agents (name, model, dtype, device, system_prompt, lora, optimizer, ...), router, protocol
    task:      llm.tasks.TaskConfig
    sampling:  temperature, top_p, generation batch size, recompute_logprobs
    train:     stages, prompts_per_stage, group_size, mode, order, seed, stage (core StageConfig
               fields), update (core UpdateConfig fields)
    output_dir, tensorboard, progress

Every dataclass validates itself in ``__post_init__`` and raises :class:`ConfigError` naming the
field. Unknown keys in the YAML are errors too. Nothing here loads a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm.protocol import HandoffFormat
from llm.tasks import TaskConfig, TaskError

DTYPES = ("float32", "bfloat16", "float16", "auto")
ROUTERS = ("round_robin", "fixed", "random")
ORDERS = ("fixed", "reversed", "random")
BACKENDS = ("hf", "vllm")


class ConfigError(ValueError):
    """An invalid configuration (raised before any model is loaded)."""


@dataclass(frozen=True)
class LoRAConfig:
    """peft LoRA adapters: only the adapters are trained, checkpointed and snapshotted."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must not be empty")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW of one agent."""

    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if not self.lr > 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"optimizer.eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class AgentConfig:
    """One agent: a hub id or local path, its own tokenizer, dtype, device, role and limits."""

    name: str
    model: str
    tokenizer: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    system_prompt: str | None = None
    lora: LoRAConfig | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    max_new_tokens: int = 256
    micro_batch_size: int = 8
    gradient_checkpointing: bool = False
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("agent.name must be a non-empty string")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"agents[{self.name}].model must be a hub id or a local path")
        if self.dtype not in DTYPES:
            raise ConfigError(f"agents[{self.name}].dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"agents[{self.name}].max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.micro_batch_size < 1:
            raise ConfigError(f"agents[{self.name}].micro_batch_size must be >= 1, got {self.micro_batch_size}")


@dataclass(frozen=True)
class RouterConfig:
    """Who speaks when. ``rounds`` rounds of ``n`` turns (every agent once per round).

    - ``round_robin``: trajectory s of prompt r starts at agent (r + s) mod n, then cyclic
      (TeamTR's chain evaluation); ``order`` is ignored.
    - ``fixed``: ``order`` (agent names; default the team order) in every round.
    - ``random``: a fresh uniformly random permutation of the agents in every round.
    """

    kind: str = "fixed"
    rounds: int = 1
    order: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ROUTERS:
            raise ConfigError(f"team.router.kind must be one of {ROUTERS}, got {self.kind!r}")
        if self.rounds < 1:
            raise ConfigError(f"team.router.rounds must be >= 1, got {self.rounds}")
        if self.order is not None:
            object.__setattr__(self, "order", tuple(self.order))


@dataclass(frozen=True)
class TeamConfig:
    agents: tuple[AgentConfig, ...]
    router: RouterConfig = field(default_factory=RouterConfig)
    protocol: HandoffFormat = field(default_factory=HandoffFormat)

    def __post_init__(self) -> None:
        object.__setattr__(self, "agents", tuple(self.agents))
        if not self.agents:
            raise ConfigError("team.agents must list at least one agent")
        names = [a.name for a in self.agents]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"team.agents: duplicate agent names {dup}")
        if self.router.order is not None:
            unknown = [n for n in self.router.order if n not in names]
            if unknown:
                raise ConfigError(f"team.router.order names unknown agent(s) {unknown}; agents are {names}")
            if sorted(self.router.order) != sorted(names):
                raise ConfigError(f"team.router.order must list every agent exactly once, got {list(self.router.order)}")

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(f"unknown agent {name!r}; agents are {self.names}") from None


@dataclass(frozen=True)
class SamplingSection:
    """Rollout settings shared by the agents (per-agent token limits live in the agent config)."""

    temperature: float = 0.8
    top_p: float = 1.0
    batch_size: int = 64
    recompute_logprobs: bool = True
    backend: str = "hf"
    #: engine settings of the vLLM backend, the fields of llm.rollout.vllm.VLLMEngineConfig
    #: (memory fraction per engine, KV cache size, prefix caching, sleep mode, ...); see docs/vllm.md
    vllm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"sampling.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.vllm:
            if self.backend != "vllm":
                raise ConfigError("sampling.vllm is only used with sampling.backend: vllm")
            self.vllm_engine_config()  # validate now, before any model is loaded
        if not self.temperature > 0:
            raise ConfigError(f"sampling.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ConfigError(f"sampling.batch_size must be >= 1, got {self.batch_size}")

    def vllm_engine_config(self) -> Any:
        """The validated ``VLLMEngineConfig`` of ``sampling.vllm`` (needs no vLLM installed)."""
        from llm.rollout.vllm import VLLMEngineConfig

        if not isinstance(self.vllm, dict):
            raise ConfigError(f"sampling.vllm must be a mapping, got {type(self.vllm).__name__}")
        try:
            return VLLMEngineConfig(**self.vllm)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"sampling.vllm: {err}") from err


@dataclass(frozen=True)
class TrainSection:
    """The stage loop. ``order``: 'fixed' | 'reversed' | 'random' or an explicit list of agent names.

    ``stage`` and ``update`` are passed through to the core's StageConfig and UpdateConfig
    (validated there); ``mode`` and ``order`` and ``group_size`` here take precedence.
    """

    stages: int = 1
    prompts_per_stage: int = 8
    group_size: int = 4
    mode: str = "intermediate"
    order: str | tuple[str, ...] = "fixed"
    seed: int = 0
    stage: dict[str, Any] = field(default_factory=dict)
    update: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stages < 1:
            raise ConfigError(f"train.stages must be >= 1, got {self.stages}")
        if self.prompts_per_stage < 1:
            raise ConfigError(f"train.prompts_per_stage must be >= 1, got {self.prompts_per_stage}")
        if self.group_size < 1:
            raise ConfigError(f"train.group_size must be >= 1, got {self.group_size}")
        if isinstance(self.order, (list, tuple)):
            object.__setattr__(self, "order", tuple(self.order))
        elif self.order not in ORDERS:
            raise ConfigError(f"train.order must be one of {ORDERS} or a list of agent names, got {self.order!r}")


@dataclass(frozen=True)
class RunConfig:
    team: TeamConfig
    task: TaskConfig
    sampling: SamplingSection = field(default_factory=SamplingSection)
    train: TrainSection = field(default_factory=TrainSection)
    output_dir: str = "runs/default"
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.train.order, tuple):
            unknown = [n for n in self.train.order if n not in self.team.names]
            if unknown:
                raise ConfigError(f"train.order names unknown agent(s) {unknown}; agents are {self.team.names}")
            if sorted(self.train.order) != sorted(self.team.names):
                raise ConfigError(f"train.order must list every agent exactly once, got {list(self.train.order)}")


# ---------------------------------------------------------------------------- YAML mapping
def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys (naming ``where``)."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except ConfigError:
        raise
    except TaskError as err:
        raise ConfigError(str(err)) from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _agent(data: Any, k: int) -> AgentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"team.agents[{k}] must be a mapping")
    data = dict(data)
    if data.get("lora") is not None:
        data["lora"] = _build(LoRAConfig, data["lora"], f"team.agents[{k}].lora")
    if "optimizer" in data:
        data["optimizer"] = _build(OptimizerConfig, data["optimizer"], f"team.agents[{k}].optimizer")
    return _build(AgentConfig, data, f"team.agents[{k}]")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig` from plain data (e.g. parsed YAML)."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping at the top level")
    data = dict(data)
    team = data.get("team")
    if not isinstance(team, dict) or "agents" not in team:
        raise ConfigError("team.agents is required")
    team = dict(team)
    agents = team.get("agents")
    if not isinstance(agents, list):
        raise ConfigError("team.agents must be a list")
    team["agents"] = tuple(_agent(a, k) for k, a in enumerate(agents))
    team["router"] = _build(RouterConfig, team.get("router"), "team.router")
    team["protocol"] = _build(HandoffFormat, team.get("protocol"), "team.protocol")
    data["team"] = _build(TeamConfig, team, "team")
    if "task" not in data:
        raise ConfigError("task is required")
    data["task"] = _build(TaskConfig, data["task"], "task")
    data["sampling"] = _build(SamplingSection, data.get("sampling"), "sampling")
    data["train"] = _build(TrainSection, data.get("train"), "train")
    return _build(RunConfig, data, "config")


def team_config_from_dict(data: dict[str, Any]) -> TeamConfig:
    """A validated :class:`TeamConfig` from the ``team:`` section alone (used by evaluation)."""
    return config_from_dict({"team": data, "task": {"kind": "jsonl", "path": "-"}}).team


def sampling_from_dict(data: dict[str, Any] | None) -> SamplingSection:
    """A validated :class:`SamplingSection` from the ``sampling:`` section alone."""
    return _build(SamplingSection, data, "sampling")


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML file into a validated :class:`RunConfig`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return config_from_dict(data)


def config_to_dict(config: Any) -> Any:
    """Plain data (lists, dicts, scalars) of a config, for saving the resolved config."""
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: config_to_dict(v) for k, v in config.items()}
    return config
