"""Device-memory budget of a team whose agents train next to their vLLM engines (no vLLM needed).

The check runs before any model or engine is loaded and covers every configuration: engines with
their own memory fraction each (``gpu_memory_utilization``) or an explicit KV cache, engines that
sleep between calls, several agents and engines on one device, engines spread over several
devices (tensor parallel), and the training side of each agent (its weights, gradients, AdamW
state, the backtracking snapshot of the trust region and a KL reference model when one is kept).

Memory model, per device ``d`` of total ``T`` bytes (``G = 2**30``):

- **engine** ``e`` on ``d``: awake it uses ``u_e = f_e T`` (vLLM's fraction covers its weights,
  activations, KV cache and its process's CUDA context); with ``kv_cache_gib`` set vLLM ignores
  the fraction for the cache, so ``u_e = weights_e / tp_e + kv_e + overhead``. Asleep (level 1
  or 2) only its process overhead stays (``engine_overhead_gib``, the CUDA context). vLLM also
  refuses to start an engine unless ``f_e T`` is free at that moment, whatever the KV setting.
- **training** agent ``a`` on ``d``: resident ``R_a`` = weights + AdamW moments (2 per trainable
  parameter, in the parameter dtype as torch keeps them) + a KL reference model if kept;
  during its update also ``U_a`` = gradients + the trust-region snapshot (trainable parameters and
  optimizer state cloned) + ``activation_gib``. Agents update one at a time (sequential scheme).
- plus ``reserve_gib`` per device for the trainer process's own CUDA context and fragmentation.

Three moments must fit (``R_d = sum of R_a on d``, ``A_d`` = engines on ``d`` that never sleep,
``S_d`` = engines on ``d`` that sleep between calls):

1. start of engine ``e`` (engines start in agent order after the team is loaded):
   ``R_d + sum_{e' before e} (u_e' or overhead if it sleeps) + f_e T <= T - reserve``;
2. generation by engine ``e``: ``R_d + sum_{A_d} u + sum_{S_d, not e} overhead + u_e <= T - reserve``;
3. update of agent ``a``: ``R_d + U_a + sum_{A_d} u + sum_{S_d} overhead <= T - reserve``.

:func:`check_memory_budget` raises :class:`MemoryBudgetError` at the first moment that does not
fit, naming the device, the agents, their fractions and the numbers in GiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from llm.config.errors import ConfigError
from llm.models import resolve_model_path

GIB = 1 << 30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
REFERENCES = ("none", "model")


class MemoryBudgetError(ConfigError):
    """The engines and training models planned on a device do not fit in its memory."""


@dataclass(frozen=True)
class TrainingMemory:
    """What one agent's training keeps on its device (counts, not bytes)."""

    params: int = field(metadata={"help": "parameters of the model (all, frozen included)"})
    trainable: int = field(metadata={"help": "trainable parameters (LoRA: the adapters only)"})
    dtype: str = field(default="float32", metadata={"help": "training dtype (float32, bfloat16, float16)"})
    trust_region: bool = field(default=True, metadata={
        "help": "finite delta: a snapshot of the trainable parameters and optimizer state is taken"})
    reference: str = field(default="none", metadata={
        "help": "KL reference kept on the device: none (update-start log-probs) or model (a frozen copy)"})
    activation_gib: float = field(default=0.0, metadata={
        "help": "activations of one micro-batch's backward pass (GiB)"})

    def __post_init__(self) -> None:
        if self.params < 1 or not 0 <= self.trainable <= self.params:
            raise ValueError(f"TrainingMemory: need params >= 1 and 0 <= trainable <= params, got {self.params}, "
                             f"{self.trainable}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"TrainingMemory.dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"TrainingMemory.reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.activation_gib < 0:
            raise ValueError(f"TrainingMemory.activation_gib must be >= 0, got {self.activation_gib}")

    def resident_bytes(self) -> dict[str, int]:
        """Bytes held through the whole run: weights, AdamW moments, reference model."""
        b = DTYPE_BYTES[self.dtype]
        parts = {"weights": self.params * b, "adamw": 2 * self.trainable * b}
        if self.reference == "model":
            parts["reference"] = self.params * b
        return parts

    def update_bytes(self) -> dict[str, int]:
        """Extra bytes while this agent updates: gradients, trust-region snapshot, activations."""
        b = DTYPE_BYTES[self.dtype]
        parts = {"grads": self.trainable * b, "activations": int(self.activation_gib * GIB)}
        if self.trust_region:
            parts["snapshot"] = 3 * self.trainable * b  # parameters + both AdamW moments
        return parts


@dataclass(frozen=True)
class EngineMemory:
    """One agent's vLLM engine as the budget sees it."""

    gpu_memory_utilization: float = field(metadata={"help": "vLLM's fraction of each of its devices"})
    kv_cache_gib: float | None = field(default=None, metadata={
        "help": "explicit KV cache (vLLM then ignores the fraction for it)"})
    weight_bytes: int = field(default=0, metadata={"help": "engine weights in the engine dtype (used with kv_cache_gib)"})
    sleeps_between_calls: bool = field(default=False, metadata={"help": "asleep except while it generates"})
    overhead_gib: float = field(default=1.0, metadata={
        "help": "what an engine process keeps even asleep (CUDA context)"})

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization < 1:
            raise ValueError(f"EngineMemory.gpu_memory_utilization must be in (0, 1), got "
                             f"{self.gpu_memory_utilization}")

    def awake_bytes(self, total: int, tp: int) -> int:
        if self.kv_cache_gib is None:
            return int(self.gpu_memory_utilization * total)
        return int(self.weight_bytes / tp + (self.kv_cache_gib + self.overhead_gib) * GIB)

    def asleep_bytes(self) -> int:
        return int(self.overhead_gib * GIB)


@dataclass(frozen=True)
class AgentMemory:
    """One agent: where it trains, where its engine runs, and what each needs."""

    name: str
    training_device: str | None = None  # None: not trained here (evaluation) or on another process
    training: TrainingMemory | None = None
    engine_devices: tuple[str, ...] = ()
    engine: EngineMemory | None = None


@dataclass
class DeviceUse:
    """The worst moment found on one device (bytes) and what made it up."""

    device: str
    total: int
    peak: int = 0
    moment: str = ""
    parts: dict[str, int] = field(default_factory=dict)


def _gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB"


def check_memory_budget(agents: Sequence[AgentMemory], device_bytes: Mapping[str, int],
                        reserve_gib: float = 1.0) -> dict[str, DeviceUse]:
    """Raise :class:`MemoryBudgetError` when a moment of the run does not fit a device (see the module doc).

    ``device_bytes``: total memory of each device by name (``"cuda:0"``); devices not listed are
    not checked (CPU). Returns the worst moment of every checked device.
    """
    usage: dict[str, DeviceUse] = {}
    for dev, total in device_bytes.items():
        resident = {f"{a.name} {k}": v for a in agents if a.training is not None and a.training_device == dev
                    for k, v in a.training.resident_bytes().items()}
        engines = [a for a in agents if a.engine is not None and dev in a.engine_devices]
        budget = total - int(reserve_gib * GIB)
        use = usage[dev] = DeviceUse(dev, total)

        def awake(a: AgentMemory) -> int:
            return a.engine.awake_bytes(total, len(a.engine_devices))

        def idle(a: AgentMemory) -> int:
            return a.engine.asleep_bytes() if a.engine.sleeps_between_calls else awake(a)

        def fits(moment: str, parts: dict[str, int], hint: str) -> None:
            need = sum(parts.values())
            if need > use.peak:
                use.peak, use.moment, use.parts = need, moment, dict(parts)
            if need > budget:
                fractions = ", ".join(f"{a.name!r} {a.engine.gpu_memory_utilization:g}" for a in engines) or "none"
                detail = "; ".join(f"{k} {_gib(v)}" for k, v in parts.items() if v)
                raise MemoryBudgetError(
                    f"memory budget of {dev} ({_gib(total)}, {reserve_gib:g} GiB reserved) exceeded {moment}: "
                    f"needs {_gib(need)} = {detail}. Engine fractions (gpu_memory_utilization) on {dev}: {fractions} "
                    f"(sum {sum(a.engine.gpu_memory_utilization for a in engines):.2f}). {hint}"
                )

        hint = ("Lower gpu_memory_utilization, set kv_cache_gib, use sleep_between_calls, LoRA, or place agents "
                "on other devices.")
        started: dict[str, int] = {}
        for a in engines:  # 1. engine start-up: vLLM wants its fraction free
            fits(f"when the engine of agent {a.name!r} starts", {
                **resident, **started, f"{a.name} engine start ({a.engine.gpu_memory_utilization:g} x device)":
                int(a.engine.gpu_memory_utilization * total)}, hint)
            started[f"{a.name} engine" + (" (asleep)" if a.engine.sleeps_between_calls else "")] = idle(a)
        for a in engines:  # 2. generation
            others = {f"{b.name} engine" + (" (asleep)" if b.engine.sleeps_between_calls else ""): idle(b)
                      for b in engines if b is not a}
            fits(f"while agent {a.name!r} generates", {**resident, **others, f"{a.name} engine": awake(a)}, hint)
        idle_engines = {f"{b.name} engine" + (" (asleep)" if b.engine.sleeps_between_calls else ""): idle(b)
                        for b in engines}
        for a in agents:  # 3. updates
            if a.training is None or a.training_device != dev:
                continue
            update = {f"{a.name} {k}": v for k, v in a.training.update_bytes().items()}
            fits(f"while agent {a.name!r} updates", {**resident, **update, **idle_engines}, hint)
    return usage



def training_memory_of(model: torch.nn.Module, trust_region: bool = True, reference: str = "none",
                       activation_gib: float = 0.0) -> TrainingMemory:
    """The :class:`TrainingMemory` of a loaded (or meta-device) model: its parameter counts and dtype."""
    params = {id(p): p for p in model.parameters()}  # a tied tensor once
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    dtype = str(next(iter(params.values())).dtype).replace("torch.", "")
    return TrainingMemory(params=total, trainable=trainable, dtype=dtype if dtype in DTYPE_BYTES else "float32",
                          trust_region=trust_region, reference=reference, activation_gib=activation_gib)


def count_parameters(model_dir: str, lora_r: int | None = None, lora_targets: Sequence[str] = ()) -> tuple[int, int]:
    """``(parameters, trainable)`` of a model directory without loading its weights (built on the
    meta device from its config.json; LoRA: ``r * (in + out)`` per targeted linear layer)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if lora_r is None:
        return total, total
    adapters = sum(lora_r * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.rpartition(".")[2] in set(lora_targets))
    return total + adapters, adapters


def _training_device(spec: str) -> str:
    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return "cuda:0" if spec == "cuda" else spec


def cuda_device_bytes() -> dict[str, int]:
    """Total memory of every visible CUDA device (empty without CUDA: nothing to check)."""
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())}


def plan_from_config(agents: Sequence, engine: object, trust_region: bool = True) -> list[AgentMemory]:
    """:class:`AgentMemory` of every agent of a team config (``llm.config.sections.AgentConfig``) with
    the engine settings ``engine`` (a ``VLLMEngineConfig``), from the models' config.json only."""
    out = []
    for agent in agents:
        path = resolve_model_path(agent)
        lora = agent.lora
        params, trainable = count_parameters(path, lora.r if lora else None, lora.target_modules if lora else ())
        device = _training_device(agent.device)
        dtype = agent.dtype if agent.dtype in DTYPE_BYTES else "float32"
        train = TrainingMemory(params=params, trainable=trainable, dtype=dtype, trust_region=trust_region)
        engine_dtype = engine.dtype if engine.dtype in DTYPE_BYTES else dtype
        weight_bytes = (params - (trainable if lora else 0)) * DTYPE_BYTES[engine_dtype]
        memory = EngineMemory(engine.gpu_memory_utilization, engine.kv_cache_gib, weight_bytes,
                              engine.enable_sleep_mode and engine.sleep_between_calls)
        devices = tuple(engine.devices) if engine.devices else (device,)
        out.append(AgentMemory(agent.name, device, train, tuple(_training_device(d) for d in devices), memory))
    return out
