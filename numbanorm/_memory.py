"""Aligned allocation for arrays that kernels stream through or read in inner loops.

NumPy aligns array data to 16 bytes (in practice large arrays often start 16 bytes
into a cache line). A 64-byte vector load or store from such an address straddles
two cache lines, so every vector access costs two (the README's performance history
has the measurement). Outputs, packed
params and column accumulators therefore come from :func:`empty` (or :func:`full`)
when the pass that uses them is large; below ``config.ALIGN_MIN_ELEMENTS`` of work
the extra microsecond of the aligned allocation costs more than it saves.

Input arrays are the caller's and are used where they are.
"""

import math
import numbers

import numpy as np

from . import config

__all__ = ["address", "empty", "full", "aligned"]


def address(arr):
    """The address of ``arr``'s first byte."""
    return arr.__array_interface__["data"][0]


def empty(shape, dtype=np.float64, work=None):
    """``np.empty(shape, dtype)`` whose data starts on a ``config.ALIGN_BYTES`` boundary.

    ``work`` is the number of elements of the pass that will use the array (default: its
    own size); below ``config.ALIGN_MIN_ELEMENTS`` this is plain ``np.empty``.
    """
    if work is not None and work < config.ALIGN_MIN_ELEMENTS:
        return np.empty(shape, dtype)  # small calls: no shape arithmetic either
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, numbers.Integral) else tuple(shape)
    size = math.prod(shape)
    if work is None and size < config.ALIGN_MIN_ELEMENTS:
        return np.empty(shape, dtype)
    align = config.ALIGN_BYTES
    nbytes = size * dtype.itemsize
    buf = np.empty(nbytes + align, np.uint8)
    start = -address(buf) % align
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def full(shape, fill_value, dtype=np.float64, work=None):
    """:func:`empty` filled with ``fill_value``."""
    out = empty(shape, dtype, work)
    out[...] = fill_value
    return out


def aligned(arr, work=None):
    """``arr`` if it is C-contiguous and aligned (or the work is small), else an aligned copy."""
    if (arr.size if work is None else work) < config.ALIGN_MIN_ELEMENTS:
        return arr
    if arr.flags.c_contiguous and address(arr) % config.ALIGN_BYTES == 0:
        return arr
    out = empty(arr.shape, arr.dtype, work)
    out[...] = arr
    return out
