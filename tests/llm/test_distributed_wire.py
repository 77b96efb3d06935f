"""What crosses the Ray boundary: the wire format keeps every tensor bit for bit (numpy arrays for
the dtypes numpy has, the tensor itself for bfloat16; decoded arrays are writable copies), and the
actors of a local cluster run at the driver's priority (Ray's default niceness 15 starves them
whenever anything else runs on the node)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from llm.distributed.wire import batch_from_wire, batch_to_wire, from_wire, to_wire
from trust_region.batch import MessageBatch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.bool, torch.bfloat16])
def test_tensor_survives_the_wire_bitwise(dtype):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(5, 7, generator=g) * 100).to(dtype)
    sent = t[:, 1:].clone()
    x = to_wire(t[:, 1:])  # a non-contiguous view
    assert isinstance(x, torch.Tensor if dtype == torch.bfloat16 else np.ndarray)
    if isinstance(x, np.ndarray):
        x.setflags(write=False)  # as Ray hands it out
    back = from_wire(x)
    assert back.dtype == dtype and torch.equal(back, t[:, 1:])
    back.add_(1) if dtype != torch.bool else back.logical_not_()  # writable, and not the sender's memory
    assert torch.equal(t[:, 1:], sent)


def test_message_batch_survives_the_wire():
    m, t, c = 4, 3, 6
    batch = MessageBatch(
        trajectory=torch.arange(m), group=torch.tensor([0, 0, 1, 1]), agent=torch.tensor([0, 1, 0, 1]),
        turn=torch.tensor([0, 1, 0, 1]), context=torch.randint(0, 50, (m, c)), context_mask=torch.rand(m, c) > 0.3,
        tokens=torch.randint(0, 50, (m, t)), mask=torch.ones(m, t, dtype=torch.bool),
        behaviour_logp=-torch.rand(m, t, dtype=torch.float64), reward=torch.rand(m), returns=torch.rand(m),
        generated=torch.tensor([True, False, True, True]), payload={"texts": "stay in the driver"})
    back = batch_from_wire(batch_to_wire(batch))
    assert back.payload is None
    for name in ("trajectory", "group", "agent", "turn", "context", "context_mask", "tokens", "mask",
                 "behaviour_logp", "reward", "returns", "generated"):
        a, b = getattr(batch, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_local_cluster_actors_run_at_the_drivers_priority(ray_cluster):
    ray = ray_cluster

    def niceness() -> int:  # defined here: shipped by value to the worker
        import os

        return os.nice(0)

    task = ray.remote(num_cpus=0)(niceness)
    assert ray.get(task.remote()) == os.nice(0) == 0
