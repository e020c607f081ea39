"""Aligned allocation for arrays that kernels stream through or read in inner loops.

NumPy aligns array data to 16 bytes (in practice large arrays often start 16 bytes
into a cache line). A 64-byte vector load or store from such an address straddles
two cache lines, so every vector access costs two (the README's performance history
has the measurement). Outputs, packed
params and column accumulators therefore come from :func:`empty` (or :func:`full`)
when the pass that uses them is large; below ``config.ALIGN_MIN_ELEMENTS`` of work
the extra microsecond of the aligned allocation costs more than it saves.

Input arrays are the caller's and are used where they are.

Large buffers are recycled. glibc hands an allocation above its mmap threshold (at most
32 MiB) back to the kernel when it is freed, so a fresh output of that size is fresh
pages: the kernel zero-fills every page on first write (one more pass over the output)
and, with NumPy's transparent-huge-page advice, may stop to compact memory first. A call
that allocates a 50 MB output ran 1.4-1.7x slower than one writing into an existing
array, and at times 15x. Buffers of at least ``config.RECYCLE_MIN_BYTES`` are therefore
kept in a pool of at most ``config.RECYCLE_BYTES`` and handed out again once nothing
outside the pool refers to them: every array :func:`empty` returns is a view whose
``base`` is the pool's buffer (NumPy points every view of a view at the owner), so the
buffer's reference count says whether any array, view or tensor built on it is alive.
"""

import math
import numbers
import sys
import threading

import numpy as np

from . import config

__all__ = ["address", "empty", "full", "aligned", "release"]


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
    nbytes = size * dtype.itemsize
    if nbytes >= config.RECYCLE_MIN_BYTES:
        with _LOCK:  # the view is made before another thread can find the buffer unused
            return _aligned_view(_recycled(nbytes + config.ALIGN_BYTES), nbytes, dtype, shape)
    return _aligned_view(np.empty(nbytes + config.ALIGN_BYTES, np.uint8), nbytes, dtype, shape)


def _aligned_view(buf, nbytes, dtype, shape):
    """The ``nbytes`` of uint8 ``buf`` from its first ``config.ALIGN_BYTES`` boundary, as ``dtype``."""
    start = -address(buf) % config.ALIGN_BYTES
    return buf[start:start + nbytes].view(dtype).reshape(shape)


#: Pooled buffers (1-D uint8 arrays), most recently handed out last.
_POOL = []
_LOCK = threading.Lock()


def _refs(pool, i):
    return sys.getrefcount(pool[i])


def _unused_refs():
    """What :func:`_refs` reads for a buffer nothing but its pool refers to (the same call
    path as every check, so it holds whatever the interpreter's count of temporaries is)."""
    pool = [np.empty(1, np.uint8)]
    return _refs(pool, 0)


_UNUSED = _unused_refs()


def _recycled(nbytes):
    """A pooled buffer of ``nbytes`` that nothing else refers to, else a new one (pooled
    while the pool stays within ``config.RECYCLE_BYTES``, evicting unused buffers of other
    sizes, least recently used first)."""
    pool = _POOL
    for i in range(len(pool) - 1, -1, -1):
        if pool[i].nbytes == nbytes and _refs(pool, i) == _UNUSED:
            buf = pool.pop(i)
            pool.append(buf)
            return buf
    held = sum(b.nbytes for b in pool)
    held -= _drop_unused(pool, held + nbytes - config.RECYCLE_BYTES)
    buf = np.empty(nbytes, np.uint8)
    if held + nbytes <= config.RECYCLE_BYTES:
        pool.append(buf)
    return buf


def release():
    """Free the recycled output buffers that no array refers to any more.

    numbanorm keeps outputs of at least ``config.RECYCLE_MIN_BYTES`` for reuse (at most
    ``config.RECYCLE_BYTES`` in all): a fresh allocation of that size is fresh pages, which
    the kernel zero-fills on first write. Call this to give that memory back, e.g. after
    the last call with a large input.

    Returns
    -------
    int
        The bytes freed.
    """
    with _LOCK:
        return _drop_unused(_POOL, math.inf)


def _drop_unused(pool, excess):
    """Drop unused buffers from ``pool``, least recently used first, until ``excess`` bytes
    are gone (or none is left unused); return the bytes dropped."""
    dropped = 0
    i = 0
    while dropped < excess and i < len(pool):
        if _refs(pool, i) == _UNUSED:
            dropped += pool.pop(i).nbytes
        else:
            i += 1
    return dropped


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
