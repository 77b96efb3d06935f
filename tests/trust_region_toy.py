"""``single_thread`` for test modules outside tests/trust_region/ that import it by name.

Kept until their owners switch to a conftest fixture; the trust-region tests get it (and the toy
team) from tests/trust_region/conftest.py.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: intra-op threads only cost time (badly so on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
