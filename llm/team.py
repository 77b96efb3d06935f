"""A team of language models: agents (hub id or local path, own tokenizer, dtype, device, role,
optional LoRA), a router deciding who speaks at each turn, and the text handoff format.

Building a team from a config::

    from llm.train.config import load_config
    from llm.team import LLMTeam
    cfg = load_config("configs/cpu_demo.yaml")
    team = LLMTeam.from_config(cfg.team, temperature=cfg.sampling.temperature)
    optimizers = team.make_optimizers()

:func:`llm.models.preflight` checks every agent (model path exists, tokenizer loads and has a chat
template, vocabulary fits the model) before any model weights are loaded, so bad input fails fast
with a message naming the agent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from llm.agent import LLMAgent
from llm.config.errors import ConfigError
from llm.config.sections import AgentConfig, RouterConfig, TeamConfig
from llm.handoff import HandoffFormat
from llm.models import load_model, preflight


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

    def with_agent(self, j: int, model: torch.nn.Module, tokenizer: Any, spec: AgentConfig | None = None) -> "LLMTeam":
        """A new team sharing every agent except agent j, which runs ``model`` with the incumbent's
        role, temperature and limits; ``spec`` (the new model's AgentConfig) replaces agent j's entry
        of the team config, so a backend built for the new team loads the right model."""
        old = self.agents[j]
        agents = list(self.agents)
        agents[j] = LLMAgent(agent_id=j, name=old.name, model=model, tokenizer=tokenizer,
                             system_prompt=old.system_prompt, temperature=old.temperature,
                             micro_batch_size=old.micro_batch_size, max_new_tokens=old.max_new_tokens,
                             chat_template_kwargs=old.chat_template_kwargs)
        config = self.config
        if config is not None and spec is not None:
            specs = list(config.agents)
            specs[j] = spec
            config = dataclasses.replace(config, agents=tuple(specs))
        return LLMTeam(agents, self.router, self.protocol, config)

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
