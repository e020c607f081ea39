"""The one place CUDA kernels are compiled: flags and sizes come from :mod:`numbanorm.config`.

``THREADS`` (``config.CUDA_THREADS_PER_BLOCK``) is fixed when this module is first
imported: it sizes the shared-memory arrays of the block reductions, which CUDA needs
as compile-time constants, and every reduction kernel is launched with exactly that
many threads per block.
"""

from numba import cuda

from ... import config

__all__ = ["THREADS", "kernel", "device", "all_kernels", "elementwise_blocks", "partials"]

THREADS = int(config.CUDA_THREADS_PER_BLOCK)
if THREADS < 1 or THREADS & (THREADS - 1) or THREADS > 1024:
    raise ValueError(f"config.CUDA_THREADS_PER_BLOCK must be a power of two in [1, 1024], got {THREADS}")


#: Every kernel compiled through this module (``tests/cuda/ptx_check.py`` compiles each for a real GPU).
_KERNELS = []


def kernel(func):
    """Compile ``func`` as a ``@cuda.jit`` kernel with ``config.CUDA_FASTMATH``."""
    compiled = cuda.jit(fastmath=config.CUDA_FASTMATH)(func)
    _KERNELS.append(compiled)
    return compiled


def device(func):
    """Compile ``func`` as a CUDA device function with ``config.CUDA_FASTMATH``."""
    return cuda.jit(device=True, fastmath=config.CUDA_FASTMATH)(func)


def all_kernels():
    """Every CUDA kernel numbanorm has compiled (imported) so far."""
    return list(_KERNELS)


def elementwise_blocks(size):
    """Blocks for a grid-stride launch over ``size`` elements."""
    return max(1, min(-(-size // THREADS), config.CUDA_MAX_BLOCKS))


def partials(span):
    """``(chunks, chunk)``: how many blocks share a reduction over ``span`` values, and
    how many values each takes (about ``THREADS * CUDA_ITEMS_PER_THREAD``)."""
    per_block = THREADS * max(1, config.CUDA_ITEMS_PER_THREAD)
    chunks = max(1, min(-(-span // per_block), config.CUDA_MAX_PARTIALS))
    chunk = max(1, -(-span // chunks))
    return -(-span // chunk) if span else 1, chunk
