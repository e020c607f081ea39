"""Sub-arrays without reference counting: ``sub(a, i)`` is ``a[i]``, ``sub2(a, i, j)`` is ``a[i, j]``.

Numba gives every array view a reference to its parent's memory and counts it: making
``x2[r]`` adds one with an atomic ``lock`` instruction and dropping it subtracts one.
A pass over rows or planes makes several views per slice, and those atomics are
serializing: they took 28% of a LayerNorm (256, 768) forward in cache, and in a parallel
pass both threads update the one counter of x, whose cache line then moves between the
cores at every row. The views made here carry no reference (a null ``meminfo``, which
Numba's counting skips): they borrow the parent, so they are only valid while it is, and
a kernel may pass them to helpers but never return or keep one. Indices are not wrapped
or bounds-checked: callers pass ``0 <= i < a.shape[0]`` (and ``0 <= j < a.shape[1]``).
"""

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["sub", "sub2"]


def _borrowed(context, builder, array_type, value, indices, result_type):
    """The sub-array of ``value`` at the leading ``indices``, with no meminfo."""
    arr = context.make_array(array_type)(context, builder, value)
    shape = cgutils.unpack_tuple(builder, arr.shape)
    strides = cgutils.unpack_tuple(builder, arr.strides)
    zero = context.get_constant(types.intp, 0)
    full = list(indices) + [zero] * (array_type.ndim - len(indices))
    ptr = cgutils.get_item_pointer2(context, builder, arr.data, shape, strides, array_type.layout, full,
                                    wraparound=False, boundscheck=False)
    out = context.make_array(result_type)(context, builder)
    rest = len(indices)
    context.populate_array(out, data=ptr, shape=cgutils.pack_array(builder, shape[rest:]),
                           strides=cgutils.pack_array(builder, strides[rest:]), itemsize=arr.itemsize,
                           meminfo=None)
    return out._getvalue()


def _result_type(array_type, drop):
    # Dropping leading axes of a C-contiguous array leaves a C-contiguous one.
    return types.Array(array_type.dtype, array_type.ndim - drop, "C" if array_type.layout == "C" else "A",
                       readonly=not array_type.mutable, aligned=array_type.aligned)


@intrinsic
def sub(typingctx, arr, i):
    """``arr[i]`` (arr of at least 2 dimensions) as a view that holds no reference to arr."""
    if not isinstance(arr, types.Array) or arr.ndim < 2 or not isinstance(i, types.Integer):
        return None
    result = _result_type(arr, 1)

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        return _borrowed(context, builder, signature.args[0], args[0], [index], signature.return_type)

    return result(arr, i), codegen


@intrinsic
def sub2(typingctx, arr, i, j):
    """``arr[i, j]`` (arr of at least 3 dimensions) as a view that holds no reference to arr."""
    if not isinstance(arr, types.Array) or arr.ndim < 3 or not (isinstance(i, types.Integer)
                                                                and isinstance(j, types.Integer)):
        return None
    result = _result_type(arr, 2)

    def codegen(context, builder, signature, args):
        first = context.cast(builder, args[1], signature.args[1], types.intp)
        second = context.cast(builder, args[2], signature.args[2], types.intp)
        return _borrowed(context, builder, signature.args[0], args[0], [first, second], signature.return_type)

    return result(arr, i, j), codegen
