"""Which device(s) each agent's generation engine runs on (pure; no vLLM, no CUDA calls).

An agent trains on ``agent.device`` (``"cuda:1"``, ``"cpu"``, ``"auto"``); its vLLM engine runs on
the same device unless the agent's engine config names others (``VLLMEngineConfig.devices``, several
for tensor parallelism). vLLM has no ``device=`` argument: an engine uses the first
``tensor_parallel_size`` devices its process can see, and its engine-core process inherits the
environment of the moment it starts. So each engine is started with the device-control variable
(``CUDA_VISIBLE_DEVICES`` on CUDA/ROCm, vLLM's ``Platform.device_control_env_var``) set to its own
devices, expressed in *physical* ids: when this process already sees a subset (a Ray actor, or a
user's ``CUDA_VISIBLE_DEVICES=4,5,6``), ``cuda:1`` is the second entry of that list.

On CPU there is nothing to select: every engine runs on the host and only the mapping is validated
(an agent that trains on a GPU while vLLM here is CPU-only is an error, not a silent host copy).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence


class PlacementError(ValueError):
    """An agent's devices cannot be served by this machine's vLLM platform."""


@dataclass(frozen=True)
class EnginePlacement:
    """Where agent ``agent``'s engine runs.

    ``devices``: the torch devices as this process names them (``("cuda:1",)`` or ``("cpu",)``);
    ``visible``: the device-control value for the engine's process (``"5"``, ``"0,1"``; ``None`` = leave the
    environment as it is); ``tensor_parallel_size``: number of devices.
    """

    agent: str
    devices: tuple[str, ...]
    visible: str | None
    tensor_parallel_size: int


def _index(agent: str, spec: str, device_type: str, device_count: int) -> int:
    kind, _, idx = spec.partition(":")
    if kind != device_type:
        raise PlacementError(
            f"agent {agent!r}: device {spec!r} but vLLM here runs on {device_type!r} "
            f"({device_count} device(s)); place the agent on {device_type}:<index> or install the matching vLLM"
        )
    if idx and not idx.isdigit():
        raise PlacementError(f"agent {agent!r}: device {spec!r} is not <type>:<index>")
    i = int(idx) if idx else 0
    if i >= device_count:
        raise PlacementError(f"agent {agent!r}: device {spec!r} requested but only {device_count} {device_type} "
                             "device(s) are visible")
    return i


def place_engines(agents: Sequence[str], devices: Sequence[Sequence[str]], device_type: str, device_count: int,
                  parent_visible: str | None = None) -> list[EnginePlacement]:
    """One :class:`EnginePlacement` per agent.

    ``devices[j]``: agent j's engine devices (``["auto"]``, ``["cuda:1"]``, ``["cuda:0", "cuda:1"]``,
    ``["cpu"]``). ``device_type``: vLLM's platform here (``"cuda"``, ``"xpu"``, ``"cpu"``; ROCm
    reports ``"cuda"``). ``device_count``: devices this process sees. ``parent_visible``: this
    process's own device-control value (``None``/empty = all physical devices, ids 0..count-1).
    """
    if len(agents) != len(devices):
        raise PlacementError(f"place_engines: {len(agents)} agents but {len(devices)} device lists")
    physical = [d.strip() for d in parent_visible.split(",")] if parent_visible else None
    if physical is not None and len(physical) < device_count:
        raise PlacementError(f"place_engines: {device_count} devices visible but the device list is {parent_visible!r}")
    out = []
    for name, specs in zip(agents, devices):
        specs = [s.strip() for s in specs] or ["auto"]
        if device_type == "cpu":
            bad = [s for s in specs if s not in ("cpu", "auto")]
            if bad:
                raise PlacementError(
                    f"agent {name!r}: device {bad[0]!r} but vLLM here is CPU-only; train on cpu or install "
                    "vLLM for the GPU (VLLM_PACKAGE=vllm bash scripts/setup_vllm_env.sh)"
                )
            if len(specs) > 1:
                raise PlacementError(f"agent {name!r}: several engine devices {specs} on CPU (one host)")
            out.append(EnginePlacement(name, ("cpu",), None, 1))
            continue
        resolved = [f"{device_type}:0" if s == "auto" else s for s in specs]
        idx = [_index(name, s, device_type, device_count) for s in resolved]
        if len(set(idx)) != len(idx):
            raise PlacementError(f"agent {name!r}: engine devices {specs} repeat a device")
        ids = [physical[i] if physical is not None else str(i) for i in idx]
        out.append(EnginePlacement(name, tuple(f"{device_type}:{i}" for i in idx), ",".join(ids), len(idx)))
    return out


def engines_per_device(placements: Sequence[EnginePlacement]) -> dict[str, list[str]]:
    """Agent names by device (``{"cuda:0": ["solver", "critic"], ...}``)."""
    out: dict[str, list[str]] = {}
    for p in placements:
        for d in p.devices:
            out.setdefault(d, []).append(p.agent)
    return out


@contextmanager
def engine_environment(placement: EnginePlacement, env_var: str) -> Iterator[None]:
    """Set ``env_var`` to the placement's devices while an engine starts, then put it back."""
    if placement.visible is None:
        yield
        return
    old = os.environ.get(env_var)
    os.environ[env_var] = placement.visible
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(env_var, None)
        else:
            os.environ[env_var] = old
