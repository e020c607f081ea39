"""The CUDA tests: run the CUDA kernels under the Numba CUDA simulator and compare
them with the CPU kernels.

Run them as their own pytest process so that the simulator is chosen before
``numba.cuda`` is first imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda

This conftest also turns the simulator on when ``numba.cuda`` has not been imported
yet (so ``pytest tests/cuda`` alone works too); ``NUMBA_ENABLE_CUDASIM=0`` runs the
same tests on a real GPU. Every test here is skipped when numba-cuda is not
installed, or when ``numba.cuda`` was already initialised without the simulator on a
machine without a GPU.
"""

import importlib.util
import os
import sys

import numpy as np
import pytest

if "numba.cuda" not in sys.modules:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None


def _cuda_state():
    """(usable, simulator, reason)."""
    if not HAVE_NUMBA_CUDA:
        return False, False, "numba-cuda is not installed (pip install numba-cuda)"
    from numba import cuda

    simulator = getattr(cuda.to_device, "__module__", "").startswith("numba.cuda.simulator")
    if simulator:
        return True, True, ""
    try:
        available = cuda.is_available()
    except Exception:  # a broken driver install counts as no GPU
        available = False
    if not available:
        return False, False, ("numba.cuda was initialised without NUMBA_ENABLE_CUDASIM=1 and there is no GPU: "
                              "run `NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda` as its own process")
    return True, False, ""


USABLE, SIMULATOR, REASON = _cuda_state()

if SIMULATOR and "numbanorm.kernels.cuda._jit" not in sys.modules:
    # The simulator runs every thread as a Python thread: small blocks keep it fast, and
    # few items per thread make BatchNorm split channels over several blocks, so the
    # Chan merge of block partials is exercised on tiny inputs too.
    # Few blocks per element-wise launch make grid-stride loops take several steps.
    import numbanorm

    numbanorm.config.CUDA_THREADS_PER_BLOCK = 8
    numbanorm.config.CUDA_ITEMS_PER_THREAD = 1
    numbanorm.config.CUDA_MAX_PARTIALS = 4
    numbanorm.config.CUDA_MAX_BLOCKS = 2

def _lock_simulator_shared_arrays():
    """Make the simulator's ``cuda.shared.array`` lookup atomic.

    numba-cuda's simulator finds a block's shared array by the calling line with a
    check-then-set on a dict, without a lock: two threads of a block that get there
    together can each allocate their own array, and the block's reduction then mixes
    arrays (wrong results in a few percent of runs, more with a short switch
    interval). Same lookup, under a lock.
    """
    import threading

    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = np.empty(shape, dtype)
                self._allocations[caller] = res
        return res

    kernelapi.FakeCUDAShared.array = array


if SIMULATOR:
    _lock_simulator_shared_arrays()
    # The simulator's block manager polls its threads in a busy loop; with Python's
    # default 5 ms GIL switch interval every hand-over between them waits that long.
    # A short interval makes the simulated kernels about 8x faster.
    sys.setswitchinterval(5e-5)


def pytest_collection_modifyitems(config, items):
    if USABLE:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    skip = pytest.mark.skip(reason=REASON)
    for item in items:  # tests that need no device (PTX compilation, imports) still run
        if str(item.fspath).startswith(here) and "cuda" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture
def cuda():
    """``numba.cuda`` (the simulator under NUMBA_ENABLE_CUDASIM=1)."""
    from numba import cuda

    return cuda
