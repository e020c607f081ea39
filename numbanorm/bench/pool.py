"""The cache state of a measurement: the last-level cache size and pools of inputs.

A pass over a tensor that has just been read runs from cache as far as the tensor
fits, and a copy of 2 x 25.7 MB partly stays in a 32 MiB L3 between repeats. Ratios
of two callables are only comparable when both run in the same cache state, so by
default every timed callable (numbanorm, PyTorch, ONNX Runtime, the copy) reads its
input from a :class:`Pool`: distinct copies of the same input whose total is at least
:data:`POOL_FACTOR` times the L3 size, walked with one cursor shared by every
callable of the row. Between two reads of one entry, every other entry (at least
``POOL_FACTOR - 1`` L3 sizes) has been read, so each call starts from memory. With
``hot=True`` the pool is the single input, read again by every call: what a layer
sees when its input was just produced and fits in cache.

Memory: a pool holds ``max(2, ceil(POOL_FACTOR * L3 / x.nbytes))`` entries of each
array it pools (x; dy for a train step; the residual, and ``dsum`` for a step, of a
fused-epilogue row; ONNX Runtime's NCHW copies of a channels-last x), capped at :data:`POOL_CAP_BYTES` per array and
:data:`POOL_MAX_ENTRIES` entries. With a 32 MiB L3 that is 128 MiB per array (six
entries of 25.7 MB), and for the largest canonical input (64, 128, 56, 56) float32
two entries of 103 MB, about 410 MB for x and dy together. Outputs are not pooled:
every timed callable allocates its own, as a user's call does (the copy too, see
:func:`~numbanorm.bench.peers.copy_runner`).
Inputs under ``POOL_FACTOR * L3 / POOL_MAX_ENTRIES`` bytes (32 KiB here; no
canonical row is that small) get a pool below the target; a row says the pool it
used (``pool_entries``, ``pool_bytes``).
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass

import numpy as np

__all__ = [
    "L3_FALLBACK_BYTES",
    "POOL_CAP_BYTES",
    "POOL_FACTOR",
    "POOL_MAX_ENTRIES",
    "SYSFS_CACHE_DIR",
    "CacheInfo",
    "Pool",
    "last_level_cache",
    "make_pool",
    "parse_cache_size",
    "pool_entries",
]

#: Where Linux describes CPU 0's caches, one ``index*`` directory per cache.
SYSFS_CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"
#: Assumed L3 size where sysfs does not give one: the size of this project's
#: reference machine, and larger than most laptop L3s, so a pool sized from it
#: still leaves the cache on those.
L3_FALLBACK_BYTES = 32 * 2**20
#: A pool's inputs total at least this many L3 sizes.
POOL_FACTOR = 4
#: The most bytes one pooled array may take (x, dy, ORT's inputs).
POOL_CAP_BYTES = 2**30
#: The most entries of a pool: each entry is one Python object and one allocation.
POOL_MAX_ENTRIES = 4096


@dataclass(frozen=True)
class CacheInfo:
    """The L3 size that pools are sized against, and where it came from.

    Attributes
    ----------
    l3_bytes : int
    source : str
        The sysfs directory it was read from, or why the fallback was used.
    from_sysfs : bool
    """

    l3_bytes: int
    source: str
    from_sysfs: bool

    @property
    def note(self):
        """One line for a table header."""
        mib = self.l3_bytes / 2**20
        if self.from_sysfs:
            return f"L3 {mib:g} MiB (from {self.source})"
        return f"L3 assumed {mib:g} MiB ({self.source})"


def parse_cache_size(text):
    """Bytes of a sysfs cache ``size`` such as ``"32768K"``, ``"1M"`` or ``"512"``.

    Raises
    ------
    ValueError
        When the text is not a size.
    """
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    if not digits.isdigit():
        raise ValueError(f"not a cache size: {text!r}")
    return int(digits) * scale


def last_level_cache(root=SYSFS_CACHE_DIR):
    """The level-3 cache of CPU 0, read from sysfs (``index*/level`` and ``index*/size``).

    Parameters
    ----------
    root : str
        The ``cache`` directory of one CPU; a parameter so that tests can pass a fake.

    Returns
    -------
    CacheInfo
        The L3 size, or :data:`L3_FALLBACK_BYTES` with the reason when sysfs has no
        readable level-3 entry (not Linux, a container without sysfs, a CPU without L3).
        CPU 0's L3 is the one its threads share; on parts with several L3 slices
        (one per core complex) it is one slice, the cache a pass on those cores fills.
    """
    sizes = []
    for index in sorted(glob.glob(os.path.join(root, "index*"))):
        try:
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            if level != 3:
                continue
            with open(os.path.join(index, "size")) as f:
                sizes.append(parse_cache_size(f.read()))
        except (OSError, ValueError):
            continue
    if sizes:
        return CacheInfo(max(sizes), root, True)
    mib = L3_FALLBACK_BYTES / 2**20
    return CacheInfo(L3_FALLBACK_BYTES, f"no level-3 size in {root}; fallback {mib:g} MiB",
                     False)


def pool_entries(nbytes, l3_bytes, factor=None, cap_bytes=None, max_entries=None):
    """How many copies of an ``nbytes`` array make a pool of ``factor`` L3 sizes.

    At least 2 (two consecutive calls never read the same memory), at most what
    fits in ``cap_bytes`` and ``max_entries``; module constants by default.
    """
    factor = POOL_FACTOR if factor is None else factor
    cap_bytes = POOL_CAP_BYTES if cap_bytes is None else cap_bytes
    max_entries = POOL_MAX_ENTRIES if max_entries is None else max_entries
    nbytes = max(int(nbytes), 1)
    wanted = math.ceil(factor * l3_bytes / nbytes)
    limit = min(max_entries, cap_bytes // nbytes)
    return max(2, min(wanted, limit))


class Pool:
    """Inputs of one row, read in turn by every callable timed on it.

    Parameters
    ----------
    xs : list of ndarray
        The entries of x: distinct memory, equal values, same shape, strides and dtype.
    dys : list of ndarray, optional
        The matching entries of dy (train step only).
    residuals, dsums : list of ndarray, optional
        The matching entries of a fused row's residual, and of ``dsum`` (the gradient of
        the skip form's sum, train step only): each entry of x comes with its own, so a
        call reads every one of its inputs from memory.
    cache : CacheInfo, optional
        The L3 the pool was sized against (None for a hot pool).
    target_bytes : int, optional
        The total the pool aims at (``POOL_FACTOR * L3``; None for a hot pool).

    Notes
    -----
    :meth:`take` is the one cursor of the row: numbanorm, PyTorch, ONNX Runtime and
    the copy each take the next entry, so an entry is read again only after every
    other entry has been.
    """

    def __init__(self, xs, dys=None, cache=None, target_bytes=None, *, residuals=None, dsums=None):
        if not xs:
            raise ValueError("a pool needs at least one entry")
        for name, entries in (("dy", dys), ("residual", residuals), ("dsum", dsums)):
            if entries is not None and len(entries) != len(xs):
                raise ValueError(f"{len(entries)} {name} entries for {len(xs)} x entries")
        self.xs = list(xs)
        self.dys = None if dys is None else list(dys)
        self.residuals = None if residuals is None else list(residuals)
        self.dsums = None if dsums is None else list(dsums)
        self.cache = cache
        self.target_bytes = target_bytes
        self._next = 0

    def __len__(self):
        return len(self.xs)

    @property
    def hot(self):
        """True when every call reads the same single input."""
        return len(self.xs) == 1

    @property
    def nbytes(self):
        """Bytes of all entries of x."""
        return sum(x.nbytes for x in self.xs)

    @property
    def below_target(self):
        """True for a cold pool that the caps kept under its target size."""
        return self.target_bytes is not None and self.nbytes < self.target_bytes

    def take(self):
        """The index of the next entry (the cursor moves on, wrapping around)."""
        i = self._next
        self._next = i + 1 if i + 1 < len(self.xs) else 0
        return i


def _copies(a, n):
    # empty_like keeps a's memory order (a channels-last view gets channels-last
    # memory); the entries are separate allocations, placed by the allocator as a
    # user's arrays are, and written here so their pages exist before timing.
    out = [a]
    for _ in range(n - 1):
        b = np.empty_like(a)
        np.copyto(b, a)
        out.append(b)
    return out


def make_pool(x, dy=None, *, residual=None, dsum=None, hot=False, cache=None):
    """A :class:`Pool` of ``x`` (and ``dy``, ``residual``, ``dsum``) sized to leave the
    cache between reads.

    Parameters
    ----------
    x : ndarray
        The input; it is the pool's first entry, the others are copies of it.
    dy : ndarray, optional
        The output gradient of a train step, pooled alongside x.
    residual, dsum : ndarray, optional
        A fused row's residual and the gradient of its sum (skip form, train step),
        pooled alongside x: one copy per entry, like dy.
    hot : bool, default False
        One entry (x itself): every call reads the same, cache-resident input.
    cache : CacheInfo, optional
        Default :func:`last_level_cache`.

    Returns
    -------
    Pool
    """
    if hot:
        def one(a):
            return None if a is None else [a]

        return Pool([x], one(dy), residuals=one(residual), dsums=one(dsum))
    cache = last_level_cache() if cache is None else cache
    n = pool_entries(x.nbytes, cache.l3_bytes)

    def copies(a):
        return None if a is None else _copies(a, n)

    return Pool(copies(x), copies(dy), cache=cache, target_bytes=POOL_FACTOR * cache.l3_bytes,
                residuals=copies(residual), dsums=copies(dsum))
