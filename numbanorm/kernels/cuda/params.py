"""Per-channel and per-element parameters as the CUDA kernels take them.

The twin of :mod:`numbanorm.kernels.cpu.params`: a missing weight or bias (``None``)
becomes a constant device array of ones or zeros, made once on the device and cached
per (size, fill, dtype), so no call copies parameters from the host.
"""

import functools

import numpy as np

from .arrays import full
from .layout import cast

__all__ = ["param"]


@functools.lru_cache(maxsize=64)
def _constant(size, fill, dtype):
    return full(size, fill, dtype)


def param(p, size, fill, dtype=np.float64):
    """``p`` as a C-contiguous ``(size,)`` device array of ``dtype``, or ``fill`` everywhere for None."""
    dtype = np.dtype(dtype)
    if p is None:
        return _constant(int(size), float(fill), dtype)
    return cast(p, dtype).reshape(size)
