"""MessageBatch: the one structure both engines hand to the core.

One row per *message* (one agent turn). In the LLM engine a message is a token sequence in the
emitting agent's own tokenizer; in the tabular engine a message is a single action (one "token").

Shapes (M messages, T the longest message, C the longest context):

- ``trajectory`` (M,) int64: team trajectory id, unique inside the batch.
- ``group`` (M,) int64: prompt/group id; the G trajectories of one prompt share it.
- ``agent`` (M,) int64: the agent that emitted the message, in ``[0, n_agents)``.
- ``turn`` (M,) int64: the message's step index inside its trajectory (0, 1, ...).
- ``context`` (M, C) int64 and ``context_mask`` (M, C) bool: what the agent conditioned on. The
  tabular engine stores the state id (C = 1); the LLM engine the prompt token ids of that turn.
- ``tokens`` (M, T) int64 and ``mask`` (M, T) bool: the message's tokens (actions), right padded.
- ``behaviour_logp`` (M, T) float32: log-probs of ``tokens`` under the policy that sampled them.
- ``reward`` (M,) float32: immediate reward received after the message (0 for most turns when the
  team is graded once at the end).
- ``returns`` (M,) float32: the team return of the message's trajectory (discounted from turn 0).
- ``generated`` (M,) bool: True if the message was produced by the sampling call that returned the
  batch, False if it is a reused prefix (prefix reuse); used to count generation cost.
- ``payload``: engine-specific data the core never reads (e.g. the LLM texts); may be None.

Messages are stored sorted by (trajectory, turn).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import torch
from torch import Tensor

_INT_FIELDS = ("trajectory", "group", "agent", "turn")
_PER_MESSAGE = ("trajectory", "group", "agent", "turn", "reward", "returns", "generated")
_PER_TOKEN = ("tokens", "mask", "behaviour_logp")
_PER_CONTEXT = ("context", "context_mask")


@dataclass(frozen=True)
class MessageBatch:
    trajectory: Tensor
    group: Tensor
    agent: Tensor
    turn: Tensor
    context: Tensor
    context_mask: Tensor
    tokens: Tensor
    mask: Tensor
    behaviour_logp: Tensor
    reward: Tensor
    returns: Tensor
    generated: Tensor
    payload: Any = None

    def __post_init__(self) -> None:
        m = self.trajectory.shape[0] if self.trajectory.ndim == 1 else -1
        for name in _PER_MESSAGE:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise TypeError(f"MessageBatch.{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.ndim != 1 or value.shape[0] != m:
                raise ValueError(f"MessageBatch.{name} must have shape (M,) with M={m}, got {tuple(value.shape)}")
        for name in _INT_FIELDS + ("context", "tokens"):
            if getattr(self, name).dtype != torch.int64:
                raise ValueError(f"MessageBatch.{name} must be int64, got {getattr(self, name).dtype}")
        for name in ("mask", "context_mask", "generated"):
            if getattr(self, name).dtype != torch.bool:
                raise ValueError(f"MessageBatch.{name} must be bool, got {getattr(self, name).dtype}")
        for name in ("behaviour_logp", "reward", "returns"):
            if not torch.is_floating_point(getattr(self, name)):
                raise ValueError(f"MessageBatch.{name} must be floating point")
        if self.tokens.ndim != 2 or self.tokens.shape[0] != m:
            raise ValueError(f"MessageBatch.tokens must have shape (M, T) with M={m}, got {tuple(self.tokens.shape)}")
        for name in ("mask", "behaviour_logp"):
            if getattr(self, name).shape != self.tokens.shape:
                raise ValueError(
                    f"MessageBatch.{name} must have the shape of tokens {tuple(self.tokens.shape)}, "
                    f"got {tuple(getattr(self, name).shape)}"
                )
        if self.context.ndim != 2 or self.context.shape[0] != m:
            raise ValueError(f"MessageBatch.context must have shape (M, C) with M={m}, got {tuple(self.context.shape)}")
        if self.context_mask.shape != self.context.shape:
            raise ValueError("MessageBatch.context_mask must have the shape of context")
        if m > 0:
            if bool((self.agent < 0).any()):
                raise ValueError("MessageBatch.agent must be >= 0")
            if bool((self.turn < 0).any()):
                raise ValueError("MessageBatch.turn must be >= 0")
            if bool((self.mask.sum(dim=1) == 0).any()):
                raise ValueError("MessageBatch.mask: every message needs at least one token")
            if not bool(torch.isfinite(self.behaviour_logp[self.mask]).all()):
                raise ValueError("MessageBatch.behaviour_logp must be finite on masked tokens")

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return int(self.trajectory.shape[0])

    @property
    def num_tokens(self) -> int:
        """Number of (unpadded) message tokens in the batch."""
        return int(self.mask.sum())

    @property
    def num_generated_tokens(self) -> int:
        """Tokens that the sampling call producing this batch generated (reused prefixes excluded)."""
        return int(self.mask[self.generated].sum())

    @property
    def num_trajectories(self) -> int:
        return int(torch.unique(self.trajectory).numel())

    def select(self, index: Tensor) -> "MessageBatch":
        """Rows picked by a bool mask (M,) or an index tensor; ``payload`` is kept as is."""
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            kwargs[f.name] = value if f.name == "payload" else value[index]
        return MessageBatch(**kwargs)

    def for_agent(self, agent: int) -> "MessageBatch":
        """The messages that ``agent`` emitted."""
        return self.select(self.agent == agent)

    def with_fields(self, **changes: Any) -> "MessageBatch":
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> "MessageBatch":
        return self.with_fields(
            **{f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "payload"}
        )

    @staticmethod
    def concat(
        batches: list["MessageBatch"], payload_concat: Callable[[list[Any]], Any] | None = None
    ) -> "MessageBatch":
        """Concatenate batches row-wise (pads tokens and contexts to the longest width).

        Ids are kept as they are: the caller keeps trajectory ids unique across the batches (and
        the (trajectory, turn) order, if the result must stay sorted).

        Payloads: all None gives None; otherwise ``payload_concat(list_of_payloads)`` when given,
        else ``type(p).concat(list_of_payloads)`` when every payload has the same type and that type
        has a ``concat`` method; anything else raises ValueError (payloads are never dropped).
        """
        if not batches:
            raise ValueError("MessageBatch.concat needs at least one batch")
        payloads = [b.payload for b in batches]
        if all(p is None for p in payloads):
            payload = None
        elif payload_concat is not None:
            payload = payload_concat(payloads)
        elif len({type(p) for p in payloads}) == 1 and callable(getattr(type(payloads[0]), "concat", None)):
            payload = type(payloads[0]).concat(payloads)
        else:
            raise ValueError(
                "MessageBatch.concat: the batches carry payloads; pass payload_concat=... or give the "
                "payload type a concat(list) method"
            )
        t = max(b.tokens.shape[1] for b in batches)
        c = max(b.context.shape[1] for b in batches)

        def pad(x: Tensor, width: int, value: float | int | bool) -> Tensor:
            if x.shape[1] == width:
                return x
            return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

        kwargs: dict[str, Any] = {}
        for name in _PER_MESSAGE:
            kwargs[name] = torch.cat([getattr(b, name) for b in batches])
        kwargs["tokens"] = torch.cat([pad(b.tokens, t, 0) for b in batches])
        kwargs["mask"] = torch.cat([pad(b.mask, t, False) for b in batches])
        kwargs["behaviour_logp"] = torch.cat([pad(b.behaviour_logp, t, 0.0) for b in batches])
        kwargs["context"] = torch.cat([pad(b.context, c, 0) for b in batches])
        kwargs["context_mask"] = torch.cat([pad(b.context_mask, c, False) for b in batches])
        kwargs["payload"] = payload
        return MessageBatch(**kwargs)
