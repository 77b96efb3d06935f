"""Fixtures of the experiment tests: ``single_thread`` (autouse: one torch intra-op thread)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: intra-op threads only cost time (badly so on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
