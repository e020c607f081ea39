"""Compilation flags and size thresholds, read by every kernel from this one place.

Change a value here (or through the matching ``NUMBANORM_*`` environment variable
before import) and every kernel follows. Kernels never hard-code flags or sizes.

Fast-math flags
---------------
LLVM's fast-math flags are set per instruction, so each compiled function keeps
its own. Two sets are used:

``FASTMATH_REDUCE``
    For reductions (sums, sums of squared deviations). ``reassoc`` is what lets a
    floating-point reduction vectorize (it may reorder the additions). These
    reductions accumulate in float64, so reordering costs nothing measurable.
``FASTMATH_ELEMENTWISE``
    For element-wise loops (normalize, dx). No ``reassoc``: it would let LLVM
    rewrite the compensated subtraction ``(x - mean_hi) - mean_lo`` as
    ``x - (mean_hi + mean_lo)`` and lose the extra precision of the hi/lo pair.
    Element-wise loops vectorize without it.

``FASTMATH_DX``
    For the dx loops: no ``reassoc`` and no ``contract``. dx is
    ``s * ((a * dy - b) - (x - m) * c)`` with ``b`` the mean of ``a * dy``; a fused
    multiply-add would keep the rounding error of ``a * dy`` that ``b`` does not have,
    and a group of one element would get a tiny non-zero dx instead of exactly 0.

``nnan`` and ``ninf`` are never used: NaN and inf must propagate as in PyTorch.
"""

import os


def _env_int(name, default):
    value = os.environ.get(name)
    return default if value is None else int(value)


def _env_bool(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


#: Flags for reductions: ``reassoc`` lets them vectorize; never ``nnan``/``ninf``.
FASTMATH_REDUCE = frozenset({"reassoc", "contract", "nsz", "arcp"})
#: Flags for element-wise loops: no ``reassoc`` (keeps the hi/lo mean subtraction exact).
FASTMATH_ELEMENTWISE = frozenset({"contract", "nsz", "arcp"})
#: Flags for the dx loops: no ``contract`` either (the bracket ``a*dy - mean(a*dy)`` cancels exactly).
FASTMATH_DX = frozenset({"nsz", "arcp"})

#: Numba's error model for every kernel and helper. ``"numpy"``: a float division by zero
#: gives inf or NaN as in NumPy, with no test before each division; Numba's default
#: ``"python"`` raises ZeroDivisionError instead, and that branch keeps a loop with a
#: division (``rstd = 1 / sqrt(m2 / count + eps)`` per channel) from vectorizing.
ERROR_MODEL = os.environ.get("NUMBANORM_ERROR_MODEL", "numpy")

#: Cache compiled kernels on disk (first call after a warm cache is fast).
CACHE = _env_bool("NUMBANORM_CACHE", True)
#: Use multi-threaded kernels for large inputs.
PARALLEL = _env_bool("NUMBANORM_PARALLEL", True)
#: Inputs with fewer elements than this run the single-threaded kernel: starting
#: the thread pool costs more than it saves below this size.
PARALLEL_MIN_ELEMENTS = _env_int("NUMBANORM_PARALLEL_MIN_ELEMENTS", 1 << 16)
#: ... except for row passes (LayerNorm, RMSNorm forward rows; GroupNorm and InstanceNorm
#: blocks of contiguous input), which go parallel from this size: their rows are split between
#: threads with nothing to merge afterwards, so the thread pool pays for itself on smaller
#: inputs than a channel pass's chunk partials and merge do. (LayerNorm's backward sums its
#: per-thread weight-gradient rows afterwards: it takes ``PARALLEL_MIN_ELEMENTS``.)
ROWS_PARALLEL_MIN_ELEMENTS = _env_int("NUMBANORM_ROWS_PARALLEL_MIN_ELEMENTS", 1 << 14)
#: Elements per block of contiguous-slice moments: the block size bounds the shifted
#: sums' cancellation (see ``SHIFT_RATIO_MAX``), and a block that falls back to two
#: passes is read twice, so it should stay in L1/L2 (4096 float64 = 32 KiB).
BLOCK_ELEMENTS = _env_int("NUMBANORM_BLOCK_ELEMENTS", 4096)
#: Block moments are shifted sums about a block's first value, which lose about
#: ``log2(1 + 2 r)`` bits to cancellation, ``r = n (mean - x[0])**2 / M2 <= n``; a block with
#: ``r`` above this (an outlier first) is recomputed two-pass. 1024 bounds the loss at 11 of
#: float64's 53 bits; typical data has ``r`` of order 1.
SHIFT_RATIO_MAX = float(_env_int("NUMBANORM_SHIFT_RATIO_MAX", 1024))
#: Column reductions (channels-last and (N, C) inputs) split rows into parallel chunks
#: of at least this many elements: each chunk ends in a C-wide Chan merge or partial
#: sum, which a chunk of a few rows would not amortize.
COLUMN_BLOCK_ELEMENTS = _env_int("NUMBANORM_COLUMN_BLOCK_ELEMENTS", 32768)
#: ... and of at least this many rows, however wide the rows are.
COLUMN_MIN_ROWS = _env_int("NUMBANORM_COLUMN_MIN_ROWS", 64)
#: BatchNorm on contiguous (N, C, S) input runs statistics and normalize (gradient sums
#: and dx) in one pass per channel when a channel has at most this many bytes: it is read
#: a second time from L2 instead of memory. Half of a 1 MiB L2: the channel's output
#: streams through the same cache, and a larger channel evicts itself before its second
#: read (the two-pass path is then faster).
FUSED_CHANNEL_BYTES = _env_int("NUMBANORM_FUSED_CHANNEL_BYTES", 512 << 10)
#: Planes (the S of an (N, C, S) view) shorter than this are reduced as one block per
#: channel, not one block per plane: a merge per plane would cost as much as its values.
SMALL_PLANE = _env_int("NUMBANORM_SMALL_PLANE", 256)
#: A serial BatchNorm pass over planes shorter than this (4x4, 3x3) reads the (N, C*S) rows
#: whole, one lane per (channel, position) column: rows of S values would be too short to
#: vectorize. From 7x7 up a serial pass ran 1.1-1.8x faster per plane than that wide view
#: (whose per-column parameters and three dispatches cost more than it saves).
WIDE_PLANE = _env_int("NUMBANORM_WIDE_PLANE", 32)
#: Outputs, packed per-channel params and column accumulators start on this byte
#: boundary (a cache line, and one AVX-512 vector): NumPy only guarantees 16.
ALIGN_BYTES = _env_int("NUMBANORM_ALIGN_BYTES", 64)
#: Passes over fewer elements than this use plain NumPy allocations: the aligned one
#: costs about a microsecond more, which a small call would notice.
ALIGN_MIN_ELEMENTS = _env_int("NUMBANORM_ALIGN_MIN_ELEMENTS", 1 << 16)
#: Outputs and work arrays of at least this many bytes come from a pool of recycled
#: buffers (see :mod:`numbanorm._memory`): glibc returns allocations above 32 MiB to the
#: kernel on free, and a fresh one costs a page-zeroing pass over it on first write.
RECYCLE_MIN_BYTES = _env_int("NUMBANORM_RECYCLE_MIN_BYTES", 16 << 20)
#: Most bytes the pool holds, in use or not (0 turns recycling off); buffers beyond it
#: are plain allocations. ``numbanorm.release_memory()`` frees the unused ones.
RECYCLE_BYTES = _env_int("NUMBANORM_RECYCLE_BYTES", 1 << 30)
#: Row and plane passes ask the CPU to fetch the next slice (llvm.prefetch of each cache
#: line) as they start on one: a hardware prefetcher does not follow a stream across a 4 KiB
#: page, and waits to see a new stream before it starts, so each page of a LayerNorm row
#: or a new BatchNorm plane otherwise starts with a wait on memory.
PREFETCH = _env_bool("NUMBANORM_PREFETCH", True)
#: Bytes of a cache line: the stride of those prefetches.
CACHE_LINE_BYTES = _env_int("NUMBANORM_CACHE_LINE_BYTES", 64)
#: ... for inputs of at least this many bytes (0: all). A small input may already be in a
#: core's cache, where the prefetches cost 1-2% of a LayerNorm (32, 768) forward; when it is
#: not, they save 8-15% of that forward and 20% of a GroupNorm (8, 64, 14, 14) one.
PREFETCH_MIN_BYTES = _env_int("NUMBANORM_PREFETCH_MIN_BYTES", 0)
#: Work items per thread in parallel column reductions (load balance vs merge cost).
CHUNKS_PER_THREAD = _env_int("NUMBANORM_CHUNKS_PER_THREAD", 4)

# -- CUDA (numbanorm.kernels.cuda; read when the CUDA kernels are first imported) --------

#: Threads per CUDA block, a power of two: block reductions are shared-memory trees
#: (no warp shuffles, so the same code runs under ``NUMBA_ENABLE_CUDASIM``).
CUDA_THREADS_PER_BLOCK = _env_int("NUMBANORM_CUDA_THREADS_PER_BLOCK", 256)
#: Elements each thread reduces in a statistics pass before partial moments are merged:
#: a channel of ``m`` values is shared by ``m / (threads * items)`` blocks (at most
#: ``CUDA_MAX_PARTIALS``), whose (count, mean, M2) are Chan-merged by a second kernel.
CUDA_ITEMS_PER_THREAD = _env_int("NUMBANORM_CUDA_ITEMS_PER_THREAD", 16)
#: Most partial results per statistic (blocks per channel, row chunks in column sums).
CUDA_MAX_PARTIALS = _env_int("NUMBANORM_CUDA_MAX_PARTIALS", 64)
#: Most blocks of an element-wise (grid-stride) CUDA launch.
CUDA_MAX_BLOCKS = _env_int("NUMBANORM_CUDA_MAX_BLOCKS", 4096)
#: CUDA fast-math stays off: numba-cuda's fast-math option means flush-to-zero and
#: approximate float32 division and sqrt, which the accuracy target does not survive.
CUDA_FASTMATH = False
