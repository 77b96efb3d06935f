"""Fixtures of the experiment tests: every test runs on one torch intra-op thread."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Every test of this folder runs on one torch thread (``single_thread`` of tests/conftest.py)."""
    yield
