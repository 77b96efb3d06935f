"""The config sections that training, evaluation and plug-and-play share: ``team:`` and ``sampling:``.

Every field carries its help text and allowed values (``option``); the builder
(:func:`llm.config.build`) maps YAML onto these classes one to one. Nothing here loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm.config.choices import BACKENDS, DTYPES, ROUTER_KINDS
from llm.config.errors import ConfigError
from llm.config.fields import Section, option
from llm.handoff import HandoffFormat
from llm.rollout.vllm_config import VLLMEngineConfig


@dataclass(frozen=True)
class LoRAConfig(Section):
    """peft LoRA adapters: only the adapters are trained, checkpointed and snapshotted."""

    r: int = option(8, ge=1, help="adapter rank")
    alpha: float = option(16, gt=0, help="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = option(0.0, ge=0, lt=1, help="dropout on the adapter input")
    target_modules: tuple[str, ...] = option(("q_proj", "k_proj", "v_proj", "o_proj"),
                                             help="names of the linear layers that get adapters")

    def validate(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules:
            raise ConfigError("LoRAConfig.target_modules must not be empty", key="target_modules")


@dataclass(frozen=True)
class OptimizerConfig(Section):
    """AdamW of one agent."""

    lr: float = option(1e-6, gt=0, help="learning rate (1e-6 is the papers' full fine-tuning rate)")
    weight_decay: float = option(0.01, ge=0, help="AdamW weight decay")
    betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas, two numbers in [0, 1)")
    eps: float = option(1e-8, gt=0, help="AdamW epsilon")

    def validate(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"OptimizerConfig.betas must be two numbers in [0, 1), got {self.betas}", key="betas")


@dataclass(frozen=True)
class AgentConfig(Section):
    """One agent: a hub id or local path, its own tokenizer, dtype, device, role and limits."""

    name: str = option(help="agent name (unique in the team; used in logs, orders and prompts)")
    model: str = option(help="hub id (org/name), local model directory or builtin:smollm2")
    tokenizer: str | None = option(None, help="tokenizer hub id or directory; null: the model's")
    dtype: str = option("float32", choices=DTYPES, help="weights dtype")
    device: str = option("auto", help="torch device ('cpu', 'cuda', 'cuda:1'); 'auto': cuda if available")
    system_prompt: str | None = option(None, help="the agent's role, sent as the system message")
    lora: LoRAConfig | None = option(None, help="LoRA adapters (null: full fine-tuning)")
    optimizer: OptimizerConfig = option(default_factory=OptimizerConfig, help="the agent's AdamW")
    max_new_tokens: int = option(256, ge=1, help="token limit of one message of this agent")
    micro_batch_size: int = option(8, ge=1, help="rows per forward pass when computing log-probs")
    gradient_checkpointing: bool = option(False, help="trade compute for activation memory in training")
    chat_template_kwargs: dict[str, Any] = option(default_factory=dict, help="extra arguments of the chat "
                                                  "template (e.g. enable_thinking: false for Qwen3)")
    trust_remote_code: bool = option(False, help="run model code shipped with the checkpoint (off: safer)")

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("AgentConfig.name must be a non-empty string", key="name")
        if not self.model:
            raise ConfigError(f"agent {self.name!r}: model must be a hub id or a local path", key="model")


@dataclass(frozen=True)
class RouterConfig(Section):
    """Who speaks when: ``rounds`` rounds of ``n`` turns (every agent once per round)."""

    kind: str = option("fixed", choices=ROUTER_KINDS, help="round_robin: trajectory s of prompt r starts at agent "
                       "(r + s) mod n, then cyclic (TeamTR's chain evaluation); fixed: `order` every round; "
                       "random: a fresh random permutation every round")
    rounds: int = option(1, ge=1, help="rounds per trajectory")
    order: tuple[str, ...] | None = option(None, help="agent names in speaking order (fixed router); null: the "
                                           "team order")


@dataclass(frozen=True)
class TeamConfig(Section):
    """The agents, the router and the text handoff format."""

    agents: tuple[AgentConfig, ...] = option(help="the agents, in team order (at least one)")
    router: RouterConfig = option(default_factory=RouterConfig, help="who speaks when")
    protocol: HandoffFormat = option(default_factory=HandoffFormat, help="text handoff between turns (llm.handoff)")

    def validate(self) -> None:
        object.__setattr__(self, "agents", tuple(self.agents))
        if not self.agents:
            raise ConfigError("team.agents must list at least one agent", key="agents")
        names = self.names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"team.agents: duplicate agent names {dup}", key="agents")
        if self.router.order is not None:
            self.check_order(self.router.order, "team.router.order")

    def check_order(self, order: tuple[str, ...], where: str) -> None:
        """``order`` must list every agent name exactly once."""
        unknown = [n for n in order if n not in self.names]
        if unknown:
            raise ConfigError(f"{where} names unknown agent(s) {unknown}; agents are {self.names}", key=where)
        if sorted(order) != sorted(self.names):
            raise ConfigError(f"{where} must list every agent exactly once, got {list(order)}", key=where)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(f"unknown agent {name!r}; agents are {self.names}") from None


@dataclass(frozen=True)
class SamplingSection(Section):
    """Rollout settings shared by the agents (per-agent token limits live in the agent config)."""

    temperature: float = option(0.8, gt=0, help="sampling temperature; also the policy temperature the "
                                "log-probs are taken at")
    top_p: float = option(1.0, gt=0, le=1, help="nucleus sampling mass (1: the papers' setting)")
    batch_size: int = option(64, ge=1, help="prompts per generate call")
    recompute_logprobs: bool = option(True, help="recompute the sampled messages' log-probs with the training "
                                      "forward (and log the gap)")
    backend: str = option("hf", choices=BACKENDS, help="generation backend: hf (transformers generate) or vllm")
    vllm: VLLMEngineConfig | None = option(None, help="engine settings of the vLLM backend (docs/vllm.md); only "
                                           "with backend: vllm")

    def validate(self) -> None:
        if self.vllm is not None and self.backend != "vllm":
            raise ConfigError("sampling.vllm is only used with sampling.backend: vllm", key="vllm")

    def vllm_engine_config(self) -> VLLMEngineConfig:
        """The engine settings (defaults when ``vllm`` is not given)."""
        return self.vllm if self.vllm is not None else VLLMEngineConfig()
