"""The two backends every generic check runs on: NumPy arrays on the CPU, and Numba CUDA
device arrays, by default under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

Imported by ``tests/conftest.py`` before anything imports ``numba.cuda``, so that the
simulator is chosen in time; ``NUMBA_ENABLE_CUDASIM=0`` runs the CUDA variants on a real
GPU. CUDA variants are skipped when numba-cuda is not installed, or when ``numba.cuda``
was initialised without the simulator on a machine without a GPU.

A test takes host (NumPy) arrays, hands them to ``be.put`` (a device array with the same
shape, dtype *and strides* on CUDA: channels-last and strided views stay views) and reads
results back with ``be.get``.
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
        return False, False, ("no GPU and the CUDA simulator is off (NUMBA_ENABLE_CUDASIM is not 1, or numba.cuda "
                              "was imported before tests/conftest.py could turn the simulator on)")
    return True, False, ""


USABLE, SIMULATOR, REASON = _cuda_state()


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
    if "numbanorm.kernels.cuda._jit" not in sys.modules:
        # The simulator runs every thread as a Python thread: small blocks keep it fast, and
        # few items per thread make BatchNorm split channels over several blocks, so the
        # Chan merge of block partials is exercised on tiny inputs too.
        # Few blocks per element-wise launch make grid-stride loops take several steps.
        from numbanorm import config

        config.CUDA_THREADS_PER_BLOCK = 8
        config.CUDA_ITEMS_PER_THREAD = 1
        config.CUDA_MAX_PARTIALS = 4
        config.CUDA_MAX_BLOCKS = 2
    _lock_simulator_shared_arrays()
    # The simulator's block manager polls its threads in a busy loop; with Python's
    # default 5 ms GIL switch interval every hand-over between them waits that long.
    # A short interval makes the simulated kernels about 8x faster.
    sys.setswitchinterval(5e-5)


class Cpu:
    """NumPy arrays as they are."""

    name = "cpu"

    def put(self, a):
        return a

    def get(self, a):
        return a

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def layer(self, layer):
        return layer


class Cuda:
    """Numba CUDA device arrays: ``put`` copies a host array (keeping its strides), ``get``
    copies a result back, ``layer`` moves a layer with ``.to("cuda")``."""

    name = "cuda"

    def put(self, a):
        if not isinstance(a, np.ndarray):
            return a
        from numba import cuda

        if a.flags.c_contiguous:
            return cuda.to_device(a)
        return _device_view(a)

    def get(self, a):
        if a is None or isinstance(a, np.ndarray):
            return a
        return a.copy_to_host()

    def empty(self, shape, dtype):
        from numba import cuda

        return cuda.device_array(shape, dtype)

    def layer(self, layer):
        return layer.to("cuda")


def _device_view(a):
    """A device array with a's shape, dtype and strides (negative ones too), over device
    memory that holds a's values where a's strides put them."""
    from numba import cuda

    item = a.itemsize
    lo = sum(s * (d - 1) for s, d in zip(a.strides, a.shape, strict=True) if s < 0) // item
    hi = sum(s * (d - 1) for s, d in zip(a.strides, a.shape, strict=True) if s > 0) // item + 1
    buf = np.zeros(hi - lo, a.dtype)
    np.lib.stride_tricks.as_strided(buf[-lo:], a.shape, a.strides)[...] = a
    mem = cuda.to_device(buf)
    if SIMULATOR:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(np.lib.stride_tricks.as_strided(mem._ary[-lo:], a.shape, a.strides))
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(a.shape, a.strides, a.dtype, gpu_data=mem.gpu_data.view(-lo * item))


CPU, CUDA = Cpu(), Cuda()
BACKENDS = {"cpu": CPU, "cuda": CUDA}

#: Marks of every CUDA variant: selectable with ``-m cuda`` / ``-m "not cuda"``, skipped without CUDA.
CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not USABLE, reason=REASON or "no CUDA"))


def backend_param(name, *values, id=None):
    """``pytest.param(backend, *values)`` with the CUDA marks on CUDA variants."""
    marks = CUDA_MARKS if name == "cuda" else ()
    return pytest.param(BACKENDS[name], *values, marks=marks, id=id)


def both(*values, id=None):
    """The same values on both backends."""
    return [backend_param(name, *values, id=f"{name}-{id}" if id else name) for name in BACKENDS]
