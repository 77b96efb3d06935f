"""The interfaces that make the core shared by the tabular and the LLM engine.

(Formerly ``trust_region.protocols``; that name still imports, as an alias. "Protocol" here is
Python's ``typing.Protocol``, not the text handoff of the LLM team.)

An engine plugs into :func:`trust_region.stage.run_stage` by providing
- agents that satisfy :class:`AgentPolicy` (a softmax table, or a language model), and
- a sampler that satisfies :class:`Sampler` (vectorised tabular rollouts, or team generation).
Agents that can give their full next-token distributions also satisfy :class:`ExactKLPolicy`;
the trust region is then enforced on the exact per-context KL (the default monitor).

Both are plain objects without global state so that they can live in separate processes
(Ray actors, torch.distributed ranks) later: the core only calls the methods below.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from trust_region.batch import MessageBatch

__all__ = ["AgentPolicy", "ExactKLPolicy", "Sampler", "supports_exact_kl"]


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
class ExactKLPolicy(Protocol):
    """An agent that gives the exact per-context KL between pi_cur and its current parameters.

    The core calls :meth:`kl_reference` once at the start of an update, before any step, with all
    the agent's messages the update will monitor (training and held-out); then, after parameter
    changes, :meth:`exact_kl` with the *same* batch and that reference. How pi_cur is kept is the
    agent's business, as long as the KL is exact (or a provable upper bound): a copy of a table,
    a LoRA adapter snapshot swapped in (or disabled) for the reference forward, a frozen copy of
    the trainable weights, or reference log-probabilities stored in chunks at update start.
    """

    def kl_reference(self, batch: MessageBatch) -> Any:
        """Capture pi_cur (the current parameters) for later :meth:`exact_kl` calls on ``batch``."""

    def exact_kl(self, batch: MessageBatch, reference: Any, direction: str = "reverse") -> Tensor:
        """(M, T) float64: at every token position u of every message, the exact KL over the whole
        next-token distribution given the message's context and tokens before u, between the
        reference pi_cur and the current parameters (``"reverse"`` = KL(pi_cur || pi), ``"forward"``
        = KL(pi || pi_cur)); >= 0, any finite value on padding. No gradient. Implementations
        chunk over positions so that (M, T, V) never exists at once (V = 150k for an LLM)."""


def supports_exact_kl(agent: Any) -> bool:
    """Whether ``agent`` offers the exact per-context KL (:class:`ExactKLPolicy`)."""
    return callable(getattr(agent, "kl_reference", None)) and callable(getattr(agent, "exact_kl", None))


@runtime_checkable
class Sampler(Protocol):
    """Team rollouts: who speaks is decided by the engine's router."""

    def sample(self, team: Sequence[AgentPolicy], prompts: Sequence[Any], group_size: int) -> MessageBatch:
        """Fresh rollouts of ``team``: ``group_size`` trajectories for every prompt."""

    def resample_from(self, team: Sequence[AgentPolicy], batch: MessageBatch, agent: int) -> MessageBatch:
        """Prefix reuse: keep every trajectory of ``batch`` up to (excluding) the first turn of
        ``agent`` and regenerate the rest with ``team``. Trajectories in which ``agent`` never
        speaks are kept whole. Reused messages have ``generated=False``."""
