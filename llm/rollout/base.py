"""Generation backends behind one interface (transformers in ``hf.py``, vLLM in ``vllm.py``).

A backend serves every agent of the team (one model/engine per agent, heterogeneous models).
Prompts and outputs are token ids in the agent's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings; the papers evaluate with temperature 0.8 and top-p 1.0."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"SamplingConfig.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Generation:
    """One sampled message: its token ids (EOS included when emitted), the sampler's log-prob of
    each token, and whether it stopped on EOS ("stop") or on the length limit ("length")."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


class GenerationBackend(Protocol):
    def generate(
        self, agent: int, prompts: list[list[int]], sampling: SamplingConfig, seed: int | None = None
    ) -> list[Generation]:
        """Sample one message per prompt from agent ``agent``."""

    def update_weights(self, agent: int, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push agent ``agent``'s new weights to the backend (no reload of the other agents)."""
