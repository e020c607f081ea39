"""Shared fixtures for the numbanorm test suite.

The suite runs on 2 cores: Numba and PyTorch are both limited to 2 threads.
PyTorch is optional: tests that compare against it take the ``torch`` fixture,
which skips cleanly when torch is not installed. CUDA variants run under the CUDA
simulator, chosen here (through ``backends``) before anything imports ``numba.cuda``.
"""

import os
import sys

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

# Make tests/reference.py and tests/helpers.py importable as top-level modules
# whatever pytest import mode is used.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import backends  # noqa: E402, F401  (turns the CUDA simulator on first)
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def get_torch():
    """Import torch (skipping the calling test when it is missing), 2 threads."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


@pytest.fixture
def torch():
    return get_torch()


@pytest.fixture
def rng(request):
    """A seeded Generator, different but reproducible for every test."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


def pytest_collection_modifyitems(config, items):
    """Tag every test that uses the ``torch`` fixture with the ``torch`` marker."""
    for item in items:
        if "torch" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)
