"""The interfaces that make the core shared by the tabular and the LLM engine.

(Formerly ``trust_region.protocols``; that name still imports, as an alias. "Protocol" here is
Python's ``typing.Protocol``, not the text handoff of the LLM team.)

An engine plugs into :func:`trust_region.stage.run_stage` by providing
- agents that satisfy :class:`AgentPolicy` (a softmax table, or a language model), and
- a sampler that satisfies :class:`Sampler` (vectorised tabular rollouts, or team generation).

Both are plain objects without global state so that they can live in separate processes
(Ray actors, torch.distributed ranks) later: the core only calls the methods below.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from trust_region.batch import MessageBatch

__all__ = ["AgentPolicy", "Sampler"]


@runtime_checkable
class AgentPolicy(Protocol):
    """One trainable agent of the team."""

    agent_id: int

    def log_probs(self, batch: MessageBatch) -> Tensor:
        """Log-probs (M, T) of ``batch.tokens`` given ``batch.context`` under the current parameters.

        Padded positions (``~batch.mask``) may hold any finite value. Gradients flow into this
        agent's parameters only.
        """

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The parameters an optimizer of this agent updates."""

    def snapshot(self) -> Any:
        """A cheap copy of just the trainable parameters (for undoing a rejected step)."""

    def restore(self, snapshot: Any) -> None:
        """Put back the parameters saved by :meth:`snapshot`, in place."""


@runtime_checkable
class Sampler(Protocol):
    """Team rollouts: who speaks is decided by the engine's router."""

    def sample(self, team: Sequence[AgentPolicy], prompts: Sequence[Any], group_size: int) -> MessageBatch:
        """Fresh rollouts of ``team``: ``group_size`` trajectories for every prompt."""

    def resample_from(self, team: Sequence[AgentPolicy], batch: MessageBatch, agent: int) -> MessageBatch:
        """Prefix reuse: keep every trajectory of ``batch`` up to (excluding) the first turn of
        ``agent`` and regenerate the rest with ``team``. Trajectories in which ``agent`` never
        speaks are kept whole. Reused messages have ``generated=False``."""
