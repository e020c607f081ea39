"""Array helpers of the CUDA backend, twins of :mod:`numbanorm.kernels.cpu.arrays`.

Small device arrays (statistics of an empty batch, per-sample copies of running
statistics) are made by kernels on the device, not copied from the host.
"""

import numpy as np
from numba import cuda

from ._jit import THREADS, elementwise_blocks, kernel
from .layout import contiguous, empty_like_layout
from .layout import copy as copy_into

__all__ = ["asarray", "astype", "full", "empty_like", "repeat_rows", "add_batch_axis", "to_host", "to_device",
           "from_host"]


def asarray(x):
    """``x`` as a Numba device array: itself, or a view of a CuPy array / PyTorch CUDA tensor
    (anything with ``__cuda_array_interface__``) sharing its memory."""
    if getattr(type(x), "__cuda_ndarray__", False):
        return x
    return cuda.as_cuda_array(x)


def astype(arr, dtype, copy=True):
    """A device array of ``dtype`` with arr's values (``arr`` itself when ``copy`` is False and
    it already has that dtype): the one rounding step of results."""
    dtype = np.dtype(dtype)
    if not copy and arr.dtype == dtype:
        return arr
    return copy_into(arr, cuda.device_array(arr.shape, dtype))


@kernel
def _fill(out, value):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


@kernel
def _repeat_rows(values, out):
    rows, cols = out.shape
    for i in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        r = i // cols
        out[r, i - r * cols] = values[i - r * cols]


def full(shape, value, dtype=np.float64):
    """A new device array of ``shape`` filled with ``value`` (by a kernel)."""
    out = cuda.device_array(shape, dtype)
    if out.size:
        _fill[elementwise_blocks(out.size), THREADS](out.reshape(out.size), value)
    return out


def empty_like(x):
    """A new uninitialized device array like ``x`` (same shape, dtype and memory order)."""
    return empty_like_layout(x)


def repeat_rows(values, rows):
    """(C,) values repeated into a new C-contiguous (rows, C) float64 device array."""
    out = cuda.device_array((rows, values.shape[0]), np.float64)
    if out.size:
        _repeat_rows[elementwise_blocks(out.size), THREADS](values, out)
    return out


def add_batch_axis(a):
    """``a`` with a leading axis of length 1 (a view when ``a`` is C-contiguous, else a copy)."""
    return contiguous(a).reshape(1, *a.shape)


def to_host(arr):
    """A NumPy copy of a device array."""
    return asarray(arr).copy_to_host()


def to_device(arr):
    """A device copy of a NumPy array (moving a layer's state: once, not per call)."""
    return cuda.to_device(np.ascontiguousarray(arr))



def from_host(arr):
    """A NumPy array (merged statistics of SyncBatchNorm) as a device array."""
    return to_device(arr)
