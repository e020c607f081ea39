"""Software prefetch: ask the CPU to bring a slice into cache before a pass reads it.

A pass over rows or planes reads one slice, computes, and moves to the next; the
hardware prefetchers follow a sequential stream, but not across a 4 KiB page, and a
slice that starts a new stream (the next BatchNorm plane of a channel, N*S values
away) is only recognized after its first misses. :func:`prefetch_slice` issues one
``llvm.prefetch`` per cache line of the next slice when a pass starts on the current one,
so that its reads overlap the current slice's arithmetic instead of following it.
A prefetch never faults and changes no value: it is a hint, and x86 drops it when
the memory system is busy.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ... import config
from ._jit import elementwise_helper

__all__ = ["prefetch_slice", "prefetch_lines"]


@intrinsic
def _prefetch(typingctx, arr, index):
    """``llvm.prefetch`` (read, keep in all cache levels) of the line holding ``arr[index]``."""
    sig = types.void(arr, index)

    def codegen(context, builder, signature, args):
        arr_type = signature.args[0]
        array = context.make_array(arr_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arr_type, array, [args[1]], wraparound=False,
                                       boundscheck=False)
        i8p = ir.PointerType(ir.IntType(8))
        i32 = ir.IntType(32)
        # declare_intrinsic names it for the pointer type of this LLVM (".p0", or ".p0i8" before opaque pointers)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@elementwise_helper
def prefetch_slice(x, line_bytes):
    """Prefetch every ``line_bytes`` line of the contiguous 1-D slice ``x``."""
    step = max(1, line_bytes // x.itemsize)
    for i in range(0, x.size, step):
        _prefetch(x, i)


def prefetch_lines(nbytes):
    """A kernel's ``prefetch`` argument for a pass over ``nbytes`` of input: ``config.CACHE_LINE_BYTES``
    when ``config.PREFETCH`` is on and the input has at least ``config.PREFETCH_MIN_BYTES``, else 0."""
    return config.CACHE_LINE_BYTES if config.PREFETCH and nbytes >= config.PREFETCH_MIN_BYTES else 0
