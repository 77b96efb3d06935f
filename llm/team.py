"""A team of language models: agents (hub id or local path, own tokenizer, dtype, device, role,
optional LoRA), a router deciding who speaks at each turn, and the text handoff format.

Building a team from a config::

    from llm.config import load_config
    from llm.team import LLMTeam
    cfg = load_config("configs/cpu_demo.yaml")
    team = LLMTeam.from_config(cfg.team, temperature=cfg.sampling.temperature)
    optimizers = team.make_optimizers()

:func:`preflight` checks every agent (model path exists, tokenizer loads and has a chat template)
before any model weights are loaded, so bad input fails fast with a message naming the agent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from llm.agent import LLMAgent
from llm.config import AgentConfig, ConfigError, RouterConfig, TeamConfig
from llm.protocol import HandoffFormat

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------- router
class Router:
    """Speaker schedule of a trajectory: a list of agent indices, ``rounds * n`` turns long.

    Independent of the policies (so a reused prefix keeps its schedule). ``order`` holds agent
    indices for the ``fixed`` router.
    """

    def __init__(self, kind: str, n_agents: int, rounds: int = 1, order: Sequence[int] | None = None) -> None:
        if n_agents < 1:
            raise ValueError(f"Router.n_agents must be >= 1, got {n_agents}")
        self.kind = kind
        self.n_agents = n_agents
        self.rounds = rounds
        self.order = list(order) if order is not None else list(range(n_agents))
        if sorted(self.order) != list(range(n_agents)):
            raise ValueError(f"Router.order must be a permutation of range({n_agents}), got {self.order}")
        RouterConfig(kind=kind, rounds=rounds)  # validates kind and rounds

    @classmethod
    def from_config(cls, config: TeamConfig) -> "Router":
        r = config.router
        order = [config.index(n) for n in r.order] if r.order is not None else None
        return cls(r.kind, len(config.agents), r.rounds, order)

    @property
    def turns(self) -> int:
        return self.rounds * self.n_agents

    def schedule(self, prompt_index: int, sample_index: int, rng: np.random.Generator) -> list[int]:
        n = self.n_agents
        if self.kind == "round_robin":
            start = (prompt_index + sample_index) % n
            return [(start + t) % n for t in range(self.turns)]
        if self.kind == "fixed":
            return self.order * self.rounds
        return [int(a) for _ in range(self.rounds) for a in rng.permutation(n)]


# ---------------------------------------------------------------------------- preflight
def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or os.path.exists(spec) or spec.count("/") != 1


def resolve_model_path(agent: AgentConfig, spec: str | None = None) -> str:
    """A local directory (checked), a hub id (returned as is) or ``builtin:smollm2`` (converted
    once, see :mod:`llm.models`). ConfigError for a missing path."""
    spec = spec or agent.model
    if spec.startswith("builtin:"):
        from llm.models import resolve_builtin

        try:
            return resolve_builtin(spec)
        except (ValueError, FileNotFoundError, ImportError) as err:
            raise ConfigError(f"agent {agent.name!r}: {err}") from err
    if _looks_local(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ConfigError(f"agent {agent.name!r}: model path does not exist: {path}")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError(f"agent {agent.name!r}: {path} is not a model directory (no config.json)")
        return str(path)
    return spec


def load_tokenizer(agent: AgentConfig) -> Any:
    """The agent's tokenizer, checked for a chat template and an EOS token."""
    from transformers import AutoTokenizer

    spec = resolve_model_path(agent, agent.tokenizer or agent.model)
    try:
        tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=agent.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"agent {agent.name!r}: cannot load a tokenizer from {spec!r}: {err}") from err
    if not getattr(tok, "chat_template", None):
        raise ConfigError(
            f"agent {agent.name!r}: the tokenizer of {spec!r} has no chat template; use an instruct/chat "
            "model or set one (tokenizer.chat_template) and save it with the model"
        )
    if tok.eos_token_id is None:
        raise ConfigError(f"agent {agent.name!r}: the tokenizer of {spec!r} has no EOS token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def preflight(config: TeamConfig) -> list[Any]:
    """Check every agent before loading weights; returns the tokenizers (one per agent)."""
    for agent in config.agents:
        resolve_model_path(agent)
    return [load_tokenizer(agent) for agent in config.agents]


def resolve_device(spec: str) -> torch.device:
    """``spec`` ("auto": cuda if available, else cpu) as a torch device; a CUDA device must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA devices exist")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _DTYPES[spec]


def load_model(agent: AgentConfig) -> torch.nn.Module:
    """The agent's causal LM on its device and dtype, with LoRA adapters when configured."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(agent.device)
    dtype = resolve_dtype(agent.dtype, device)
    spec = resolve_model_path(agent)
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, trust_remote_code=agent.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"agent {agent.name!r}: cannot load model {spec!r}: {err}") from err
    model.to(device)
    if agent.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=agent.lora.r, lora_alpha=agent.lora.alpha, lora_dropout=agent.lora.dropout,
                          target_modules=list(agent.lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


# ---------------------------------------------------------------------------- team
@dataclass
class LLMTeam(Sequence[LLMAgent]):
    """The agents (``team[j]`` is agent j, an AgentPolicy), the router and the handoff format."""

    agents: list[LLMAgent]
    router: Router
    protocol: HandoffFormat
    config: TeamConfig | None = None

    def __len__(self) -> int:
        return len(self.agents)

    def __getitem__(self, j):  # type: ignore[override]
        return self.agents[j]

    def __iter__(self) -> Iterator[LLMAgent]:
        return iter(self.agents)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ConfigError(f"unknown agent {name!r}; agents are {self.names}")
        return self.names.index(name)

    @classmethod
    def from_config(cls, config: TeamConfig, temperature: float = 1.0, tokenizers: list[Any] | None = None) -> "LLMTeam":
        """Preflight every agent, then load the models (one per agent, each on its own device)."""
        tokenizers = tokenizers if tokenizers is not None else preflight(config)
        agents = []
        for j, (spec, tok) in enumerate(zip(config.agents, tokenizers)):
            model = load_model(spec)
            agents.append(
                LLMAgent(
                    agent_id=j,
                    name=spec.name,
                    model=model,
                    tokenizer=tok,
                    system_prompt=spec.system_prompt,
                    temperature=temperature,
                    micro_batch_size=spec.micro_batch_size,
                    gradient_checkpointing=spec.gradient_checkpointing,
                    max_new_tokens=spec.max_new_tokens,
                    chat_template_kwargs=spec.chat_template_kwargs,
                )
            )
        return cls(agents, Router.from_config(config), config.protocol, config)

    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        """One AdamW per agent over its trainable parameters (settings from the agent config)."""
        if self.config is None:
            raise ValueError("LLMTeam.make_optimizers needs the team config")
        out = []
        for agent, spec in zip(self.agents, self.config.agents):
            o = spec.optimizer
            out.append(torch.optim.AdamW(agent.trainable_parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                         betas=o.betas, eps=o.eps))
        return out
