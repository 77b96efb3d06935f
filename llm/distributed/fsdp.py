"""FSDP2 (``torch.distributed.fsdp.fully_shard``) inside one agent: its parameters, gradients and
optimizer state are sharded over the ``world_size`` processes of its actor group.

- :func:`init_group`: the agent's process group (gloo on CPU, NCCL on GPU) and 1-D device mesh.
- :func:`shard_model`: ``fully_shard`` on every decoder layer, then on the whole model (embeddings,
  final norm, head; tied weights stay in the root group). Gradients are *summed* over ranks
  (divide factor 1): each rank back-propagates the exact gradient of its own rows of the loss, so
  the sum is the gradient of the whole minibatch, whatever the loss (the driver computes the loss
  and sends each rank dL/dlogp of its rows).
- :func:`full_trainable_state` / :func:`load_full_trainable_state`: the full (unsharded) trainable
  parameters on the CPU (a collective: every rank calls it), used for the rank-0 safetensors
  checkpoint and for the generation replica; the same file format as the local placement.
- :func:`full_optimizer_state` / :func:`load_full_optimizer_state`: the optimizer state in
  ``torch.optim.Optimizer.state_dict()`` form (integer ids in trainable-parameter order), so a
  checkpoint resumes into either placement.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def init_group(rank: int, world_size: int, master_addr: str, master_port: int, device: torch.device,
               timeout_s: float = 600.0) -> DeviceMesh:
    """Join the agent's process group (env:// rendezvous at ``master_addr:master_port``)."""
    os.environ["MASTER_ADDR"] = master_addr
    os.environ["MASTER_PORT"] = str(master_port)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    return init_device_mesh(device.type, (world_size,))


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a transformers causal LM (``model.model.layers``; peft wrappers and
    other layouts: every module named ``...layers.<i>``)."""
    blocks = [m for name, m in model.named_modules()
              if name.split(".")[-1].isdigit() and name.split(".")[-2:-1] == ["layers"]]
    if not blocks:
        raise ValueError(f"shard_model: no decoder layers (modules named '*.layers.<i>') in {type(model).__name__}")
    return blocks


def shard_model(model: torch.nn.Module, mesh: DeviceMesh) -> torch.nn.Module:
    """Apply FSDP2 in place (layers, then root); gradients summed over ranks. Returns ``model``."""
    for block in decoder_layers(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)  # the root too: params are always the shards
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum, not mean: ranks hold disjoint rows
            module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
    return model


def reshard(model: torch.nn.Module) -> None:
    """Make every parameter its sharded DTensor again (FSDP may leave a group unsharded after a
    forward); call before touching parameters directly (snapshot, restore, copy)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextlib.contextmanager
def copy_swapped_parameters(agent: Any, params: dict[str, torch.Tensor]) -> Iterator[None]:
    """``LLMAgent.swapped_parameters`` for a sharded agent: FSDP all-gathers from its own shard
    storage, so pointing ``p.data`` elsewhere would not reach the forward; the reference shards
    are copied in (and the current ones back afterwards, also after an exception)."""
    reshard(agent.model)
    named = dict(agent.named_trainable_parameters())
    if set(named) != set(params):
        raise ValueError(f"agent {agent.name}: the KL reference does not match the trainable parameters")
    saved = {n: p.detach().clone() for n, p in named.items()}
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(params[n])
    try:
        yield
    finally:
        reshard(agent.model)
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(saved[n])


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full trainable parameters (name -> CPU tensor); collective. With ``cpu_offload`` only rank 0
    gets the tensors, the other ranks an empty dict."""
    names = set(trainable_names(model))
    state = get_model_state_dict(model, options=_FULL)
    return {k: v for k, v in state.items() if k in names}


def load_full_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load full trainable parameters (every rank passes the same dict) into the sharded model."""
    missing = set(trainable_names(model)) - set(tensors)
    if missing:
        raise ValueError(f"checkpoint lacks trainable parameters {sorted(missing)[:5]}")
    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state in plain ``Optimizer.state_dict()`` form (ids = positions in the
    trainable-parameter order); collective, full tensors on rank 0."""
    names = trainable_names(model)
    fqn = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if not fqn:  # ranks other than 0 receive nothing with cpu_offload
        return {}
    index = {n: i for i, n in enumerate(names)}
    groups = []
    for g in fqn["param_groups"]:
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in g["params"]]})
    return {"state": {index[n]: s for n, s in fqn["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of :func:`full_optimizer_state` (every rank passes the same dict)."""
    names = trainable_names(model)
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]}
              for g in state["param_groups"]]
    fqn = {"state": {names[int(i)]: s for i, s in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, fqn, options=StateDictOptions(full_state_dict=True))


def free_port() -> int:
    """A TCP port free on this host (for the group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])
