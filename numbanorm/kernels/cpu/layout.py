"""Memory layouts on the CPU: map an input to the C-contiguous view a kernel runs on.

Contiguous NCHW becomes ``("cf", (N, C, S))`` and channels-last memory (an NCHW-shaped
view of NHWC data, ``x_nhwc.transpose(0, 3, 1, 2)``) becomes ``("cl", (N, S, C))``,
both without a copy. Any other strides are copied once, into the layout whose
channel stride they resemble. Rows (LayerNorm, RMSNorm) are ``("cf", (R, D))``.
Outputs are allocated in the input's layout (:class:`Output`).
"""

import functools
import math

import numpy as np

from ... import _memory, config

__all__ = ["channel_view", "rows_view", "like_view", "new_output", "match_layout", "Output"]


@functools.cache
def _last_order(ndim):
    return (0,) + tuple(range(2, ndim)) + (1,)


@functools.cache
def _first_order(ndim):
    return (0, ndim - 1) + tuple(range(1, ndim - 1))


def _channels_last(x):
    """``x`` (N, C, *spatial) with the channel axis moved last, as a view.

    ``np.moveaxis`` would do, but its argument normalization costs microseconds on
    every layer call (more when a large pass has just flushed the caches); a
    transpose with a cached axis order does not.
    """
    return x.transpose(_last_order(x.ndim))


def _channels_first(x):
    """The inverse of :func:`_channels_last`: (N, *spatial, C) back to (N, C, *spatial)."""
    return x.transpose(_first_order(x.ndim))


def channel_view(x, rows_2d=False):
    """Return ``(layout, x3)`` for an (N, C, *spatial) array, copying only odd strides.

    (N, C) input, and contiguous input with S = 1, is a channels-last problem (channels
    are the fast axis), unless ``rows_2d``: then it is ``("cf", (N, C, 1))``, for
    statistics per sample.
    """
    if x.ndim == 2:
        n, c = x.shape
        x2 = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        return ("cf", x2.reshape(n, c, 1)) if rows_2d else ("cl", x2.reshape(n, 1, c))
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    if x.flags.c_contiguous:
        if s == 1 and not rows_2d:  # (N, C, 1, ...) is the (N, C) matrix: channels are its fast axis
            return "cl", x.reshape(n, 1, c)
        return "cf", x.reshape(n, c, s)
    last = _channels_last(x)
    if last.flags.c_contiguous:
        return "cl", last.reshape(n, s, c)
    spatial_strides = [abs(st) for st, dim in zip(x.strides[2:], x.shape[2:], strict=True) if dim > 1]
    if c > 1 and spatial_strides and abs(x.strides[1]) < min(spatial_strides):
        return "cl", np.ascontiguousarray(last).reshape(n, s, c)
    return "cf", np.ascontiguousarray(x).reshape(n, c, s)


def rows_view(x, width):
    """``("cf", (R, width))``: x's trailing ``width`` values as rows, copied only when x is not C-contiguous."""
    if x.ndim == 2 and x.shape[1] == width and x.flags.c_contiguous:
        return "cf", x  # already the rows: no view to make
    return "cf", np.ascontiguousarray(x).reshape(-1, width)


def like_view(layout, x3, arr):
    """Bring ``arr`` (shaped like the original input) into the same 3-D view as ``x3``."""
    if layout == "cl" and arr.ndim > 2:
        arr = _channels_last(arr)
    return np.ascontiguousarray(arr).reshape(x3.shape)


def new_output(layout, x3, shape, dtype=None):
    """Allocate ``(out3, out)``: a kernel view and the array of ``shape`` in the same layout."""
    if x3.size < config.ALIGN_MIN_ELEMENTS and (layout == "cf" or len(shape) == 2):
        out = np.empty(shape, dtype or x3.dtype)  # small calls: a plain array, no alignment to make
        return (out if out.shape == x3.shape else out.reshape(x3.shape)), out
    out3 = _memory.empty(x3.shape, dtype or x3.dtype, x3.size)
    return out3, _unview(layout, out3, shape)


def _unview(layout, out3, shape):
    if layout == "cf" or len(shape) == 2:
        return out3 if out3.shape == shape else out3.reshape(shape)
    n, c = shape[:2]
    return _channels_first(out3.reshape((n,) + tuple(shape[2:]) + (c,)))


def match_layout(layout, x3, out):
    """A kernel view that writes straight into ``out``, or None if its layout differs."""
    if layout == "cl" and out.ndim > 2:
        out = _channels_last(out)
    return out.reshape(x3.shape) if out.flags.c_contiguous else None


class Output:
    """Where a pass writes its result: ``view`` is the kernel's view, :meth:`result` the array returned.

    The kernel writes straight into ``out`` when its layout matches ``x3``'s; otherwise
    into a new array in x's layout, copied into ``out`` (when given) by :meth:`result`.
    """

    __slots__ = ("view", "_array", "_out")

    def __init__(self, layout, x3, x, out=None):
        self._out = out
        view = None if out is None else match_layout(layout, x3, out)
        if view is not None:
            self.view, self._array = view, out
        else:
            self.view, self._array = new_output(layout, x3, x.shape)

    def result(self):
        if self._out is not None and self._array is not self._out:
            self._out[...] = self._array
        return self._array if self._out is None else self._out
