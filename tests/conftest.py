"""Shared pytest configuration. Each test folder keeps its own fixtures in its conftest.py
(tests/llm/conftest.py: the tiny language models and run configs; tests/trust_region/conftest.py: the
toy team). ``single_thread`` is defined once here; folders of tiny-tensor tests make it autouse."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """torch on one intra-op thread during the test: tiny tensors only lose time to threads (badly so
    on a loaded 2-core machine), and one thread is deterministic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
