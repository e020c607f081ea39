"""Array helpers of the CPU backend, twins of :mod:`numbanorm.kernels.cuda.arrays`.

The front end (:mod:`numbanorm.functional`) makes, casts and shapes small arrays
through these, so that one code path serves NumPy and device arrays.
"""

import numpy as np

__all__ = ["asarray", "astype", "full", "empty_like", "repeat_rows", "add_batch_axis", "to_host", "from_host"]


def asarray(x):
    """``x`` as this backend's array type (NumPy arrays are used as they are)."""
    return x


def astype(arr, dtype, copy=True):
    """``arr`` rounded (or widened) to ``dtype``: the one rounding step of results."""
    return arr.astype(dtype, copy=copy)


def full(shape, value, dtype=np.float64):
    """A new array of ``shape`` filled with ``value``."""
    return np.full(shape, value, dtype)


def empty_like(x):
    """A new uninitialized array like ``x`` (same shape, dtype and memory order)."""
    return np.empty_like(x)


def repeat_rows(values, rows):
    """(C,) values repeated into a new C-contiguous (rows, C) float64 array."""
    return np.tile(np.asarray(values, dtype=np.float64), (rows, 1))


def add_batch_axis(a):
    """``a`` with a leading axis of length 1, as a view."""
    return a[None]


def to_host(arr):
    """A NumPy copy."""
    return np.array(arr, copy=True)


def from_host(arr):
    """A NumPy array as this backend's array (itself)."""
    return arr
