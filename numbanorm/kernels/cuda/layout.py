"""Memory layouts on a CUDA device: the twin of :mod:`numbanorm.kernels.cpu.layout`.

The kernels run on C-contiguous views: ``("cf", (N, C, S))`` for the channel-wise
families and ``("cf", (R, D))`` rows for LayerNorm and RMSNorm. Other strides (a
channels-last view, a slice) are copied into a contiguous array first, and the result
is copied back into an array of the input's memory order (:class:`Output`), so the
output keeps the input's layout as on the CPU. Device-side copies and dtype casts
serve 1- to 5-D arrays.
"""

import math

import numpy as np
from numba import cuda

from ._jit import THREADS, elementwise_blocks, kernel

__all__ = ["copy", "contiguous", "cast", "empty_like_layout", "channel_view", "rows_view", "like_view", "Output",
           "MAX_NDIM"]

MAX_NDIM = 5


@kernel
def _copy1(src, dst):
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        dst[i] = src[i]


@kernel
def _copy2(src, dst):
    d1 = src.shape[1]
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        i0 = i // d1
        i1 = i - i0 * d1
        dst[i0, i1] = src[i0, i1]


@kernel
def _copy3(src, dst):
    d1 = src.shape[1]
    d2 = src.shape[2]
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        r = i // d2
        i2 = i - r * d2
        i0 = r // d1
        i1 = r - i0 * d1
        dst[i0, i1, i2] = src[i0, i1, i2]


@kernel
def _copy4(src, dst):
    d1 = src.shape[1]
    d2 = src.shape[2]
    d3 = src.shape[3]
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        r = i // d3
        i3 = i - r * d3
        i2 = r % d2
        r = r // d2
        i0 = r // d1
        i1 = r - i0 * d1
        dst[i0, i1, i2, i3] = src[i0, i1, i2, i3]


@kernel
def _copy5(src, dst):
    d1 = src.shape[1]
    d2 = src.shape[2]
    d3 = src.shape[3]
    d4 = src.shape[4]
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        r = i // d4
        i4 = i - r * d4
        i3 = r % d3
        r = r // d3
        i2 = r % d2
        r = r // d2
        i0 = r // d1
        i1 = r - i0 * d1
        dst[i0, i1, i2, i3, i4] = src[i0, i1, i2, i3, i4]


_COPIES = {1: _copy1, 2: _copy2, 3: _copy3, 4: _copy4, 5: _copy5}


def copy(src, dst):
    """``dst[...] = src`` for device arrays of one shape, any strides and float dtypes."""
    if src.size == 0:
        return dst
    if src.ndim not in _COPIES:
        raise ValueError(f"non-contiguous CUDA arrays with {src.ndim} dimensions are not supported "
                         f"(at most {MAX_NDIM}); pass a C-contiguous device array")
    _COPIES[src.ndim][elementwise_blocks(src.size), THREADS](src, dst)
    return dst


def contiguous(x):
    """``x`` itself when C-contiguous, else a C-contiguous device copy."""
    if x.is_c_contiguous():
        return x
    return copy(x, cuda.device_array(x.shape, x.dtype))


def cast(x, dtype):
    """A C-contiguous device array of ``dtype`` with x's values (``x`` itself if it is one)."""
    if x.dtype == np.dtype(dtype) and x.is_c_contiguous():
        return x
    return copy(x, cuda.device_array(x.shape, dtype))


def _dense_strides(shape, strides, itemsize):
    """Strides of a dense array whose axes are ordered in memory as those of ``strides``."""
    order = sorted(range(len(shape)), key=lambda axis: (abs(strides[axis]), -axis))
    out = [0] * len(shape)
    step = itemsize
    for axis in order:
        out[axis] = step
        step *= shape[axis]
    return tuple(out)


def empty_like_layout(x, dtype=None):
    """A new device array of x's shape with x's memory order (C order when x is contiguous)."""
    dtype = np.dtype(dtype or x.dtype)
    if x.is_c_contiguous() or x.ndim < 2:
        return cuda.device_array(x.shape, dtype)
    return cuda.device_array(x.shape, dtype, strides=_dense_strides(x.shape, x.strides, dtype.itemsize))


def channel_view(x, rows_2d=False):
    """``("cf", (N, C, S))``: a C-contiguous view of x (a device copy when x is not C-contiguous).

    ``rows_2d`` is accepted for the CPU's signature: on the device (N, C) input is
    always (N, C, 1).
    """
    n, c = x.shape[0], x.shape[1]
    return "cf", contiguous(x).reshape(n, c, math.prod(x.shape[2:]))


def rows_view(x, width):
    """``("cf", (R, width))``: x's trailing ``width`` values as C-contiguous rows."""
    return "cf", contiguous(x).reshape(x.size // width if width else 0, width)


def like_view(layout, x3, arr):
    """``arr`` (shaped like the original input) as a C-contiguous view of x3's shape."""
    return contiguous(arr).reshape(*x3.shape)


class Output:
    """Where a pass writes: ``view`` is the kernel's C-contiguous view, :meth:`result` the array returned.

    The result is ``out`` when given, else a new array in x's memory order; when that
    array is not C-contiguous the kernel writes a contiguous buffer that
    :meth:`result` copies into it.
    """

    __slots__ = ("view", "_array", "_target")

    def __init__(self, layout, x3, x, out=None):
        self._array = empty_like_layout(x) if out is None else out
        target = self._array if self._array.is_c_contiguous() else cuda.device_array(x.shape, x.dtype)
        self.view = target.reshape(*x3.shape)
        self._target = target

    def result(self):
        if self._target is not self._array:
            copy(self._target, self._array)
        return self._array
