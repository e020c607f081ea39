"""CUDA-only tests (PTX compilation, import laziness, moving layers to the device).

The generic checks of every family run on CUDA from the table-driven modules in
``tests/`` (``test_families_*.py``); the simulator is chosen in ``tests/backends.py``
(imported by ``tests/conftest.py``), and ``NUMBA_ENABLE_CUDASIM=0`` runs the same tests
on a real GPU. Tests here that take the ``cuda`` fixture are skipped without CUDA; those
that need no device (PTX compilation, imports) still run.
"""

import os

import pytest
from backends import REASON, USABLE


def pytest_collection_modifyitems(config, items):
    if USABLE:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    skip = pytest.mark.skip(reason=REASON)
    for item in items:
        if str(item.fspath).startswith(here) and "cuda" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture
def cuda():
    """``numba.cuda`` (the simulator under NUMBA_ENABLE_CUDASIM=1)."""
    from numba import cuda

    return cuda
