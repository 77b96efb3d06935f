"""AgentWorker: one process of one agent (a Ray actor in the ``ray`` placement).

An agent is an *actor group* of ``world_size`` workers (1 = an unsharded agent). The group owns
everything of its agent that is big: the model (FSDP2-sharded over the group when world_size > 1),
the AdamW state, the snapshots taken for rejected steps, the KL reference of the exact monitor and
the generation backend. The driver holds only proxies (:mod:`llm.distributed.proxy`) and sends
message batches (token ids, masks, log-probs) and scalars; weights never leave the group except
into checkpoint files.

Methods are called on every rank of the group with the same arguments (collectives inside FSDP
need all ranks), except :meth:`generate`, which runs on rank 0 only. Row split across ranks:
:func:`llm.distributed.wire.rank_rows`.

The class is plain Python (no Ray import): ``ray.remote(AgentWorker)`` makes it an actor, and a
test can run a world_size-1 worker in the driver process itself.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from llm.checkpoint import atomic_save_safetensors, atomic_torch_save, load_trainable
from llm.config.sections import AgentConfig, SamplingSection, TeamConfig
from llm.distributed import fsdp
from llm.distributed.wire import batch_from_wire, from_wire, rank_rows, to_wire
from llm.rollout.base import Generation, SamplingConfig
from llm.team import LLMTeam
from trust_region.interfaces import supports_exact_kl


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker builds (all config, no tensors).

    ``agent_id``: the agent's index j in the team; ``agent``: its config section; ``temperature``:
    the policy temperature; ``sampling``: the run's sampling section (None: this worker generates
    nothing); ``seed``: torch seed before the model is built (the local trainer seeds the same way);
    ``rank``/``world_size``: position in the agent's FSDP group; ``num_threads``: torch CPU threads;
    ``engine_device``: where rank 0 of a sharded agent keeps its unsharded generation replica
    (None: the agent's own device).
    """

    agent_id: int
    agent: AgentConfig
    temperature: float
    sampling: SamplingSection | None
    seed: int
    rank: int = 0
    world_size: int = 1
    num_threads: int | None = None
    engine_device: str | None = None


class AgentWorker:
    """One rank of agent ``spec.agent_id``; see the module docstring. Build with :meth:`setup`."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.agent: Any = None
        self._graph: tuple[Tensor, int] | None = None  # the last differentiable forward (output, n_real)
        self._snapshots: dict[str, tuple[int, Any]] = {}  # kind -> (id, state): only the latest is kept
        self._next_id = 0
        self._kl_refs: tuple[int, Any] | None = None
        self._replica: Any = None  # rank 0 of a sharded agent: an unsharded copy that generates
        self._backend: Any = None
        self._version = 0
        self._engine_version = 0

    # ------------------------------------------------------------------ set-up
    def rendezvous(self) -> tuple[str, int]:
        """(host address, free port) for the group's process group (called on rank 0)."""
        import socket

        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
        return host, fsdp.free_port()

    def setup(self, master_addr: str | None = None, master_port: int | None = None) -> dict[str, Any]:
        """Load the model, shard it (world_size > 1), build the optimizer and the backend."""
        s = self.spec
        if s.num_threads is not None:
            torch.set_num_threads(s.num_threads)
        torch.manual_seed(s.seed)
        team = LLMTeam.from_config(TeamConfig(agents=(s.agent,)), temperature=s.temperature)
        self.agent = team[0]
        self.agent.agent_id = s.agent_id
        if s.world_size > 1:
            mesh = fsdp.init_group(s.rank, s.world_size, master_addr, master_port, self.agent.device)
            fsdp.shard_model(self.agent.model, mesh)
            if callable(getattr(self.agent, "swapped_parameters", None)):  # the exact KL's reference swap
                self.agent.swapped_parameters = lambda params: fsdp.copy_swapped_parameters(self.agent, params)
        self.optimizer = team.make_optimizers()[0]  # over the (sharded) parameters
        if s.sampling is not None and s.rank == 0:
            from llm.rollout.factory import make_backend

            engine_team = team
            if s.world_size > 1:  # the generation engine is an unsharded replica on rank 0
                torch.manual_seed(s.seed)
                engine_spec = s.agent if s.engine_device is None else replace(s.agent, device=s.engine_device)
                engine_team = LLMTeam.from_config(TeamConfig(agents=(engine_spec,)), temperature=s.temperature)
                self._replica = engine_team[0]
            self._backend = make_backend(s.sampling, engine_team)
        return {"name": self.agent.name, "pid": os.getpid(), "exact_kl": supports_exact_kl(self.agent),
                "threads": torch.get_num_threads()}

    # ------------------------------------------------------------------ log-probs and gradients
    def _rows(self, data: dict[str, Any]):
        batch = batch_from_wire(data)
        rows, n_real = rank_rows(len(batch), self.spec.world_size, self.spec.rank)
        return batch.select(torch.tensor(rows, dtype=torch.long)), n_real

    def log_probs(self, data: dict[str, Any], grad: bool) -> Any:
        """(n_real, T) log-probs of this rank's rows of the batch (as :func:`~llm.distributed.wire.to_wire`).
        With ``grad`` the graph is kept for :meth:`backward` (only the latest one)."""
        sub, n_real = self._rows(data)
        self._graph = None
        if grad:
            with torch.enable_grad():
                out = self.agent.log_probs(sub)
            self._graph = (out, n_real)
            return to_wire(out[:n_real])
        with torch.no_grad():
            return to_wire(self.agent.log_probs(sub)[:n_real])

    def backward(self, grad_rows: Any, zero_first: bool) -> float:
        """Back-propagate dL/dlogp of this rank's rows through the kept graph; returns the total
        gradient norm of the agent's trainable parameters (all ranks together)."""
        if self._graph is None:
            raise RuntimeError(f"agent {self.agent.name!r}: backward without a differentiable log_probs call")
        out, n_real = self._graph
        self._graph = None
        if zero_first:
            self.optimizer.zero_grad(set_to_none=True)
        g = torch.zeros_like(out)
        g[:n_real] = from_wire(grad_rows).to(g.device, g.dtype)
        out.backward(g)
        return float(self._grad_norm())

    def _grad_norm(self) -> Tensor:
        grads = [p.grad for p in self.agent.trainable_parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def step(self, lrs: list[float], grad_scale: float) -> None:
        """Scale the gradients by ``grad_scale`` (the driver's clipping coefficient; 1: none), one
        optimizer step with the learning rates ``lrs`` (one per param group), then zero the grads."""
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        if grad_scale != 1.0:
            grads = [p.grad for p in self.agent.trainable_parameters() if p.grad is not None]
            torch._foreach_mul_(grads, torch.tensor(grad_scale, dtype=torch.float32))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._version += 1

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ snapshots (rejected steps)
    def _keep(self, kind: str, state: Any) -> int:
        self._next_id += 1
        self._snapshots[kind] = (self._next_id, state)
        return self._next_id

    def _get(self, kind: str, snap_id: int) -> Any:
        got = self._snapshots.get(kind)
        if got is None or got[0] != snap_id:
            raise RuntimeError(f"agent {self.agent.name!r}: {kind} snapshot {snap_id} is gone (only the latest is kept)")
        return got[1]

    def _sharded(self) -> None:
        if self.spec.world_size > 1:
            fsdp.reshard(self.agent.model)

    def snapshot(self) -> int:
        """Keep a copy of the trainable parameters (this rank's shards) here; return its id."""
        self._sharded()
        return self._keep("params", self.agent.snapshot())

    def snapshot_with_optimizer(self) -> tuple[int, int]:
        """:meth:`snapshot` and :meth:`optimizer_snapshot` in one call (the core takes both before
        every trust-region step)."""
        return self.snapshot(), self.optimizer_snapshot()

    def restore(self, snap_id: int) -> None:
        self._sharded()
        self.agent.restore(self._get("params", snap_id))
        self._version += 1

    def optimizer_snapshot(self) -> int:
        return self._keep("optimizer", copy.deepcopy(self.optimizer.state_dict()))

    def optimizer_restore(self, snap_id: int) -> None:
        self.optimizer.load_state_dict(copy.deepcopy(self._get("optimizer", snap_id)))

    # ------------------------------------------------------------------ exact KL monitor
    def kl_reference(self, data: dict[str, Any]) -> int:
        """Capture the exact monitor's reference on this rank's rows of ``data`` (kept with the rows:
        :meth:`exact_kl` on the same batch needs no batch sent again); returns its id."""
        self._sharded()
        sub, n_real = self._rows(data)
        self._next_id += 1
        self._kl_refs = (self._next_id, self.agent.kl_reference(sub), sub, n_real)
        return self._next_id

    def exact_kl(self, data: dict[str, Any] | None, ref_id: int, direction: str) -> Any:
        """(n_real, T) exact per-position KL against reference ``ref_id`` on ``data`` (None: the
        batch the reference was captured on)."""
        if self._kl_refs is None or self._kl_refs[0] != ref_id:
            raise RuntimeError(f"agent {self.agent.name!r}: KL reference {ref_id} is gone (only the latest is kept)")
        _, reference, sub, n_real = self._kl_refs
        if data is not None:
            sub, n_real = self._rows(data)
        with torch.no_grad():
            return to_wire(self.agent.exact_kl(sub, reference, direction)[:n_real])

    # ------------------------------------------------------------------ generation
    def sync_engine(self) -> None:
        """Refresh the generation engine from the training weights if they changed. Collective
        for a sharded agent (every rank calls it): the full weights are gathered onto rank 0."""
        if self._engine_version == self._version:
            return
        if self.spec.world_size > 1:
            full = fsdp.full_trainable_state(self.agent.model)
            if self._replica is not None:
                params = dict(self._replica.named_trainable_parameters())
                with torch.no_grad():
                    for n, t in full.items():
                        params[n].copy_(t.to(params[n].device, params[n].dtype))
                self._backend.update_weights(0, self._replica.model.named_parameters())
        elif self._backend is not None:
            self._backend.update_weights(0, self.agent.model.named_parameters())
        self._engine_version = self._version

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seed: int | None) -> list[Generation]:
        """Sample one message per prompt (rank 0; call :meth:`sync_engine` on all ranks first)."""
        if self._backend is None:
            raise RuntimeError(f"agent {self.agent.name!r}: this worker has no generation backend")
        if self.spec.world_size == 1:
            self.sync_engine()
        return self._backend.generate(0, prompts, sampling, seed=seed)

    # ------------------------------------------------------------------ checkpoints
    def save(self, weights: str, optimizer: str, metadata: dict[str, str] | None = None,
             lrs: list[float] | None = None) -> None:
        """Full trainable weights (safetensors) and optimizer state (torch) written by rank 0, in the
        local placement's format (collective for a sharded agent); ``lrs``: the learning rates to
        record (the driver's; None: the optimizer's own)."""
        for g, lr in zip(self.optimizer.param_groups, lrs or []):
            g["lr"] = lr
        if self.spec.world_size > 1:
            tensors = fsdp.full_trainable_state(self.agent.model)
            optim = fsdp.full_optimizer_state(self.agent.model, self.optimizer)
        else:
            tensors = dict(self.agent.named_trainable_parameters())
            optim = self.optimizer.state_dict()
        if self.spec.rank == 0:
            atomic_save_safetensors(Path(weights), tensors, metadata=metadata)
            atomic_torch_save(Path(optimizer), optim)

    def load(self, weights: str, optimizer: str) -> None:
        """Load a checkpoint written by either placement (every rank reads the files)."""
        state = torch.load(optimizer, weights_only=True, map_location="cpu")
        if self.spec.world_size > 1:
            fsdp.load_full_trainable_state(self.agent.model, load_file(weights))
            fsdp.load_full_optimizer_state(self.agent.model, self.optimizer, state)
        else:
            load_trainable(self.agent, Path(weights), weights)
            self.optimizer.load_state_dict(state)
        self._version += 1

    def ping(self) -> None:
        """Nothing (round-trip latency of a call, for benchmarks)."""
        return None

    def close(self) -> None:
        """Release the backend and the process group."""
        if self._backend is not None and callable(getattr(self._backend, "close", None)):
            self._backend.close()
        if self.spec.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def with_rank(spec: WorkerSpec, rank: int) -> WorkerSpec:
    return replace(spec, rank=rank)
