"""Settings of the vLLM engines (``sampling.vllm:`` in every config), importable without vLLM.

This module imports nothing from ``llm`` but the config layer, so the config sections can use it
without pulling in the backend (and without an import circle).
"""

from __future__ import annotations

from dataclasses import dataclass

from llm.config.choices import DTYPES
from llm.config.errors import ConfigError
from llm.config.fields import Section, option


@dataclass(frozen=True)
class VLLMEngineConfig(Section):
    """Settings of each agent's engine (the same for every agent of a backend); see docs/vllm.md.

    :meth:`llm.rollout.vllm.VLLMBackend.from_team` uses the training model's dtype when ``dtype``
    is ``auto``, which keeps the sampled-vs-recomputed log-prob gap small.
    """

    dtype: str = option("auto", choices=DTYPES, help="engine dtype; 'auto': the training model's dtype")
    gpu_memory_utilization: float = option(0.3, gt=0, lt=1, help="on a GPU, the fraction of device memory per "
                                           "engine (weights, activations, KV cache); the engines share the "
                                           "device with training")
    kv_cache_gib: float | None = option(None, gt=0, help="explicit KV-cache size per engine in GiB; null: vLLM's "
                                        "choice on a GPU, 1 GiB on CPU")
    enable_prefix_caching: bool = option(True, help="automatic prefix caching (shared prompts, handoff contexts)")
    enforce_eager: bool = option(True, help="no CUDA graphs / torch.compile (fast start-up; false for long GPU runs)")
    max_model_len: int | None = option(None, ge=1, help="context limit (prompt + message); null: the model's")
    max_num_seqs: int | None = option(None, ge=1, help="sequences per engine step; null: sampling.batch_size")
    push_via: str = option("shm", choices=("shm", "rpc"), help="weight pushes: 'shm' safetensors files in /dev/shm "
                           "(same host, fast) or 'rpc' bytes through collective_rpc")
    enable_sleep_mode: bool = option(False, help="let an engine free its memory while training runs (GPU only)")
    sleep_level: int = option(1, choices=(1, 2), help="1: weights offloaded to host; 2: weights dropped too")
    sleep_between_calls: bool = option(False, help="sleep after every generate call (needs enable_sleep_mode)")
    seed: int = option(0, help="engine seed (requests carry their own seeds)")
    devices: tuple[str, ...] | None = option(None, help="the engine's devices (e.g. [cuda:1], or [cuda:0, cuda:1] "
                                             "for tensor parallelism); null: the agent's training device")

    def validate(self) -> None:
        if self.devices is not None:
            object.__setattr__(self, "devices", tuple(str(d) for d in self.devices))
            if not self.devices:
                raise ConfigError("VLLMEngineConfig.devices must name at least one device or be null", key="devices")
        if self.sleep_between_calls and not self.enable_sleep_mode:
            raise ConfigError("VLLMEngineConfig.sleep_between_calls needs enable_sleep_mode=True",
                              key="sleep_between_calls")
