"""Per-channel and per-element parameters as the kernels take them.

A missing weight or bias (``None``) is spelled one way in every driver: this module
turns it into a constant array of ones or zeros, cached per (size, fill, dtype), so
the compiled kernels always receive arrays and small calls do not pay an allocation.
"""

import functools
import math

import numpy as np

from ... import _memory, config

__all__ = ["param"]


@functools.lru_cache(maxsize=64)
def _constant(size, fill, dtype):
    # Aligned whatever the size: LayerNorm reads it in every inner loop. Kernels only read it.
    return _memory.full(size, fill, dtype, work=math.inf)


def param(p, size, fill, dtype=np.float64, work=None):
    """``p`` as a C-contiguous ``(size,)`` array of ``dtype``, or ``fill`` everywhere for None.

    ``work`` is the number of elements of the pass that reads it: a large pass gets a
    ``config.ALIGN_BYTES``-aligned array (a copy only when ``p`` is not already one).
    """
    if p is not None and p.dtype == dtype and p.ndim == 1 and p.flags.c_contiguous and (
            work is None or work < config.ALIGN_MIN_ELEMENTS):
        return p  # the common case, checked cheaply
    dtype = np.dtype(dtype)
    if p is None:
        return _constant(int(size), float(fill), dtype)
    if p.dtype != dtype:
        p = p.astype(dtype)
    p = np.ascontiguousarray(p).reshape(size)
    return p if work is None else _memory.aligned(p, work)
