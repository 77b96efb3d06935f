"""The one place a generation backend is built from a ``sampling:`` section.

Training, evaluation and plug-and-play all call :func:`make_backend(sampling, team)`, so the same
section gives the same backend (``backend: hf`` -> :class:`llm.rollout.hf.HFBackend`,
``backend: vllm`` -> :class:`llm.rollout.vllm.VLLMBackend` with the ``sampling.vllm`` engine
settings). A new backend is one entry of :data:`BUILDERS` (and its name in
:data:`llm.config.choices.BACKENDS`, the values the config accepts).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from llm.config.choices import BACKENDS
from llm.config.errors import ConfigError
from llm.config.sections import SamplingSection
from llm.rollout.base import GenerationBackend
from llm.rollout.hf import HFBackend
from llm.rollout.vllm import VLLMBackend, VLLMNotInstalledError, require_vllm
from llm.rollout.vllm_memory import check_memory_budget, cuda_device_bytes, plan_from_config


def _hf(sampling: SamplingSection, team: Any) -> GenerationBackend:
    return HFBackend.from_team(team, batch_size=sampling.batch_size)


def _vllm(sampling: SamplingSection, team: Any) -> GenerationBackend:
    return VLLMBackend.from_team(team, batch_size=sampling.batch_size, config=sampling.vllm_engine_config())


#: backend name -> builder(sampling, team)
BUILDERS: dict[str, Callable[[SamplingSection, Any], GenerationBackend]] = {"hf": _hf, "vllm": _vllm}
if set(BUILDERS) != set(BACKENDS):  # the config's allowed values (llm.config.choices) name these builders
    raise ImportError(f"llm.rollout.factory.BUILDERS {sorted(BUILDERS)} != llm.config.choices.BACKENDS {list(BACKENDS)}")


def check_backend(sampling: SamplingSection, agents: Sequence[Any] | None = None, trust_region: bool = True) -> None:
    """Fail before any model loads when the backend cannot be built here (unknown, vLLM missing) or,
    given the team's ``agents`` (AgentConfig), when vLLM engines and training would not fit the GPUs
    (:mod:`llm.rollout.vllm_memory`; ``trust_region``: a finite delta keeps a snapshot per update)."""
    if sampling.backend not in BUILDERS:
        raise ConfigError(f"sampling.backend must be one of {sorted(BUILDERS)}, got {sampling.backend!r}",
                          key="sampling.backend")
    if sampling.backend == "vllm":
        try:
            require_vllm()
        except VLLMNotInstalledError as err:
            raise ConfigError(f"sampling.backend: {err}", key="sampling.backend") from err
        devices = cuda_device_bytes()
        if agents is not None and devices:
            check_memory_budget(plan_from_config(agents, sampling.vllm_engine_config(), trust_region), devices)


def make_backend(sampling: SamplingSection, team: Any) -> GenerationBackend:
    """The generation backend of ``sampling`` over ``team`` (an :class:`llm.team.LLMTeam`)."""
    check_backend(sampling)
    return BUILDERS[sampling.backend](sampling, team)
