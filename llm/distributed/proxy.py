"""Driver-side proxies: the core's agent, optimizer and generation interfaces, implemented by
calls to an agent's actor group (:mod:`llm.distributed.worker`).

The unchanged :func:`trust_region.stage.run_stage` sees

- :class:`RemoteAgent` (``AgentPolicy``; ``ExactKLPolicy`` when the remote agent has the exact
  monitor): ``log_probs`` sends the agent's rows of the batch and returns their log-probs; under
  autograd the result is attached to :class:`_RemoteLogProbs`, whose backward sends dL/dlogp to the
  workers (each back-propagates its rows; FSDP sums the shards' gradients);
- :class:`RemoteOptimizer`: ``step``/``zero_grad``/``state_dict``/``load_state_dict``, executed in the
  actor (``state_dict`` is a handle to a snapshot kept there, which is all the core needs to undo a
  rejected step);
- :class:`RemoteBackend` (``GenerationBackend``) for :class:`llm.sampler.TeamSampler`, which runs in
  the driver: prompts are rendered here, each turn's generation runs in the speaking agent's actor;
  ``generate_many`` runs the calls of one turn (different agents, independent prompts) at once.

Gradient clipping: ``trainable_parameters()`` is one 0-d driver-side *carrier* whose gradient the
backward sets to the agent's true total gradient norm; the core's ``clip_grad_norm_`` scales it as it
would scale the real gradients, and ``RemoteOptimizer.step`` sends that factor to the workers, so
the core's own ``max_grad_norm`` applies. Parameters edited in place by the driver do not reach the
actor: the core's ``backtrack="line_search"`` (which interpolates parameters) is refused for the
``ray`` placement (use ``retry``).

Across processes travel only message batches (token ids, masks, log-probs, rewards; no texts) and
scalars; weights stay in the actors.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from llm.distributed.wire import batch_to_wire, from_wire, rank_rows, to_wire
from llm.rollout.base import Generation, SamplingConfig
from trust_region.batch import MessageBatch


class _RemoteLogProbs(torch.autograd.Function):
    """log-probs (m, T) of the agent's rows, computed remotely; backward is remote too."""

    @staticmethod
    def forward(ctx, carrier: Tensor, agent: "RemoteAgent", data: dict[str, Any]) -> Tensor:
        ctx.agent = agent
        return agent._remote_log_probs(data, grad=True)

    @staticmethod
    def backward(ctx, grad: Tensor):
        norm = ctx.agent._remote_backward(grad)
        return torch.tensor(norm, dtype=torch.float32), None, None


class _NoWeights:
    """``agent.model`` of a proxy: the weights live in the actor (``named_parameters`` is empty)."""

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return iter(())


class RemoteAgent:
    """Agent ``agent_id`` of the team, living in actor group ``group``.

    ``group`` has ``call(method, *args) -> [result per rank]``, ``call_each(method, [args per rank])``,
    ``call_rank0(method, *args)``, ``submit_rank0`` / ``collect`` (start, then wait) and ``world_size`` (see :mod:`llm.distributed.placement`).
    The attributes the sampler reads (``name``, ``tokenizer``, ``system_prompt``,
    ``chat_template_kwargs``, ``max_new_tokens``) are the driver's copies (a tokenizer is no weight).
    """

    def __init__(self, group: Any, agent_id: int, name: str, tokenizer: Any, system_prompt: str | None,
                 temperature: float, max_new_tokens: int, chat_template_kwargs: dict[str, Any] | None = None) -> None:
        self.group = group
        self.agent_id = agent_id
        self.name = name
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.model = _NoWeights()
        self.grad_norm_carrier = torch.nn.Parameter(torch.zeros(()))
        self._zero_pending = False
        self._version = 0
        self._engine_version = 0
        self._last_norm = 0.0
        self._optimizer_snapshot: tuple[int, int] | None = None  # (version when taken, id)
        self.optimizer: "RemoteOptimizer | None" = None  # set by RemoteOptimizer

    # ------------------------------------------------------------------ AgentPolicy
    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The gradient-norm carrier (see the module docstring), not the weights."""
        return [self.grad_norm_carrier]

    def log_probs(self, batch: MessageBatch) -> Tensor:
        """(M, T): this agent's rows computed in the actor, zeros elsewhere; differentiable when
        grad is enabled (one differentiable call per backward)."""
        m, t = batch.tokens.shape
        own = torch.nonzero(batch.agent == self.agent_id).flatten()
        out = torch.zeros((m, t), dtype=torch.float32)
        if own.numel() == 0:
            return out
        data = batch_to_wire(batch.select(own))
        if torch.is_grad_enabled():
            values = _RemoteLogProbs.apply(self.grad_norm_carrier, self, data)
        else:
            values = self._remote_log_probs(data, grad=False)
        return out.index_put((own,), values)

    def snapshot(self) -> int:
        """Parameters snapshot id; the optimizer state is snapshotted in the same call and handed to
        the next ``RemoteOptimizer.state_dict()`` if nothing changed in between (one round trip
        for the core's ``snapshot_state``)."""
        params, optim = self.group.call("snapshot_with_optimizer")[0]
        self._optimizer_snapshot = (self._version, optim)
        return params

    def restore(self, snapshot: int) -> None:
        self.group.call("restore", snapshot)
        self._version += 1

    def version(self) -> tuple[int, ...]:
        """Constant: the actor keeps its own generation engine in sync (the sampler pushes nothing)."""
        return ()

    # ------------------------------------------------------------------ remote calls
    def _remote_log_probs(self, data: dict[str, Any], grad: bool) -> Tensor:
        parts = self.group.call("log_probs", data, grad)
        return torch.cat([from_wire(p) for p in parts], dim=0)

    def _remote_backward(self, grad: Tensor) -> float:
        n, ws = grad.shape[0], self.group.world_size
        args = []
        for r in range(ws):
            rows, n_real = rank_rows(n, ws, r)
            args.append((to_wire(grad[rows[:n_real]]), self._zero_pending))
        norms = self.group.call_each("backward", args)
        self._zero_pending = False
        self._last_norm = float(norms[0])
        return self._last_norm

    def _step(self, lrs: list[float]) -> None:
        g = self.grad_norm_carrier.grad
        scale = 1.0
        if g is not None and self._last_norm > 0:
            scale = float(g) / self._last_norm
        self.group.call("step", lrs, scale)
        self.grad_norm_carrier.grad = None
        self._version += 1

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seed: int | None) -> list[Generation]:
        return self.group.collect(self.generate_submit(prompts, sampling, seed))

    def generate_submit(self, prompts: list[list[int]], sampling: SamplingConfig, seed: int | None) -> Any:
        """Start a generation on rank 0 (after refreshing a sharded agent's engine); returns a
        handle for ``group.collect``."""
        if self.group.world_size > 1 and self._engine_version != self._version:
            self.group.call("sync_engine")
            self._engine_version = self._version
        return self.group.submit_rank0("generate", prompts, sampling, seed)

    # ------------------------------------------------------------------ checkpoints
    def save(self, weights: str, optimizer: str, metadata: dict[str, str] | None = None) -> None:
        """Checkpoint files written by the actor; the optimizer's learning rates are the driver's
        (the core scales them during an update and puts them back without a step)."""
        lrs = [g["lr"] for g in self.optimizer.param_groups] if self.optimizer is not None else None
        self.group.call("save", weights, optimizer, metadata, lrs)

    def load(self, weights: str, optimizer: str) -> None:
        self.group.call("load", weights, optimizer)
        self._version += 1


class RemoteExactAgent(RemoteAgent):
    """A :class:`RemoteAgent` whose actor offers the exact KL monitor (``ExactKLPolicy``)."""

    def kl_reference(self, batch: MessageBatch) -> tuple[int, Tensor, MessageBatch]:
        """(reference id in the actor, this agent's rows, the batch): the actor keeps the rows with
        the reference, so :meth:`exact_kl` on the same batch object sends no batch."""
        own = torch.nonzero(batch.agent == self.agent_id).flatten()
        return self.group.call("kl_reference", batch_to_wire(batch.select(own)))[0], own, batch

    def exact_kl(self, batch: MessageBatch, reference: tuple[int, Tensor, MessageBatch],
                 direction: str = "reverse") -> Tensor:
        ref_id, own, captured_on = reference
        data = None  # the actor has the rows of the batch the reference was captured on
        if batch is not captured_on:
            own = torch.nonzero(batch.agent == self.agent_id).flatten()
            data = batch_to_wire(batch.select(own))
        m, t = batch.tokens.shape
        parts = self.group.call("exact_kl", data, ref_id, direction)
        out = torch.zeros((m, t), dtype=torch.float64)
        out[own] = torch.cat([from_wire(p) for p in parts], dim=0).to(torch.float64)
        return out


class RemoteOptimizer:
    """The optimizer of a :class:`RemoteAgent`, stepping in its actor (see the module docstring).

    ``param_groups``: one group holding the carrier and the learning rate the core may scale
    (``lr_backoff``); ``step`` sends the current learning rates."""

    def __init__(self, agent: RemoteAgent, lr: float) -> None:
        self.agent = agent
        agent.optimizer = self
        self.param_groups = [{"params": [agent.grad_norm_carrier], "lr": float(lr)}]
        self._post_hooks: OrderedDict[int, Callable[..., None]] = OrderedDict()  # weak-referenceable

    def register_step_post_hook(self, hook: Callable[..., None]) -> RemovableHandle:
        """As ``torch.optim.Optimizer``'s: ``hook(optimizer, args, kwargs)`` after every step."""
        handle = RemovableHandle(self._post_hooks)
        self._post_hooks[handle.id] = hook
        return handle

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.agent.grad_norm_carrier.grad = None
        self.agent._zero_pending = True

    def step(self) -> None:
        self.agent._step([g["lr"] for g in self.param_groups])
        for hook in list(self._post_hooks.values()):
            hook(self, (), {})

    def state_dict(self) -> dict[str, int]:
        """A handle to a copy of the optimizer state kept in the actor (only the latest is kept)."""
        cached = self.agent._optimizer_snapshot
        self.agent._optimizer_snapshot = None
        if cached is not None and cached[0] == self.agent._version:  # taken with the parameters, unchanged since
            return {"remote_optimizer_snapshot": cached[1]}
        return {"remote_optimizer_snapshot": self.agent.group.call("optimizer_snapshot")[0]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.agent.group.call("optimizer_restore", state["remote_optimizer_snapshot"])


class RemoteBackend:
    """``GenerationBackend`` over the team's proxies: agent j's turn runs in agent j's actor."""

    def __init__(self, agents: list[RemoteAgent]) -> None:
        self.agents = agents

    def generate(self, agent: int, prompts: list[list[int]], sampling: SamplingConfig,
                 seed: int | None = None) -> list[Generation]:
        return self.agents[agent].generate(prompts, sampling, seed)

    def generate_many(self, requests: list[tuple[int, list[list[int]], SamplingConfig, int | None]]
                      ) -> list[list[Generation]]:
        """The independent generate calls of one turn ``(agent, prompts, sampling, seed)``: every
        agent's actor works at the same time; results in request order."""
        pending = [self.agents[a].generate_submit(p, s, seed) for a, p, s, seed in requests]
        return [self.agents[a].group.collect(ref) for (a, *_), ref in zip(requests, pending)]

    def update_weights(self, agent: int, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """No-op: each actor refreshes its own engine after its weights change."""
        return None
