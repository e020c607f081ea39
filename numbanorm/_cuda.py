"""CUDA twins of :mod:`numbanorm.functional`: the same ops, signatures and checks on
Numba CUDA device arrays (``numba.cuda.to_device``), returning device arrays.

:mod:`numbanorm.functional` hands a call here when its input is a CUDA array, so users
call ``numbanorm.functional.batch_norm(x_dev, ...)`` as they would on the CPU. This
module imports ``numba.cuda`` (and compiles kernels on first use); nothing imports it
until a CUDA array shows up.

Conventions (as on the CPU, see :mod:`numbanorm.functional` for the formulas):

- the input's dtype (float32 or float64) sets the compute and output dtype;
  parameters of the other float dtype are cast for the call;
- statistics returned are float64 device arrays; running statistics are updated in
  place on the device (host NumPy running statistics are accepted too and updated
  in place through a copy);
- parameters and statistics may be NumPy arrays (copied to the device for the call);
- inputs of any strides are accepted: non-contiguous ones (channels-last, say) are
  copied to a contiguous array on the device, and channel-wise ops return their output
  in the input's memory order, as on the CPU; LayerNorm/RMSNorm return C order;
- ``out=`` must be a device array of x's shape and dtype; unlike the CPU its overlap
  with the input is not checked.
"""

import math

import numpy as np
from numba import cuda

from . import _device
from . import _validation as v
from .functional import _check_groups, _rms_eps, normalized_shape_tuple
from .kernels.cuda import batchnorm as _bn
from .kernels.cuda import groupnorm as _gn
from .kernels.cuda import layernorm as _ln
from .kernels.cuda import layout as _layout

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "astype",
    "to_host",
    "to_device",
]


# -- device arrays -----------------------------------------------------------------------

def _is_device(a):
    return bool(getattr(type(a), "__cuda_ndarray__", False))


def _as_device(a, name):
    """``a`` as a Numba device array (wrapping ``__cuda_array_interface__`` objects), or TypeError."""
    if _is_device(a):
        return a
    if _device.is_cuda_array(a) and hasattr(cuda, "as_cuda_array"):
        return cuda.as_cuda_array(a)
    raise TypeError(f"{name} must be a CUDA device array (numba.cuda.to_device) like the input, "
                    f"got {type(a).__name__}")


def _check_float(x, name="input"):
    x = _as_device(x, name)
    if np.dtype(x.dtype) not in v.FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    return x


def _check_channels_input(x, min_ndim, name="input"):
    x = _check_float(x, name)
    if x.ndim < min_ndim:
        raise ValueError(f"expected {name} with at least {min_ndim} dimensions (N, C, ...), "
                         f"got shape {tuple(x.shape)}")
    return x, x.shape[1]


def _check_param(p, name, shape):
    """None, or a float NumPy/device array of ``shape``."""
    if p is None or isinstance(p, np.ndarray):
        return v.check_param(p, name, shape)
    if not _device.is_cuda_array(p):
        raise TypeError(f"{name} must be a CUDA device array, a numpy.ndarray or None, got {type(p).__name__}")
    p = _as_device(p, name)
    if np.dtype(p.dtype) not in v.FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {p.dtype}")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(p.shape)}")
    return p


def _param(p, dtype=None):
    """A checked parameter as a C-contiguous device array (of ``dtype`` if given), or None."""
    if p is None:
        return None
    if isinstance(p, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(p, dtype=dtype or p.dtype))
    return _layout.cast(_as_device(p, "parameter"), dtype or p.dtype)


def _stats(arr, name, shape):
    """Saved statistics for a backward call: a float64 C-contiguous device array of ``shape``."""
    if arr is None or isinstance(arr, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(v.check_stats(arr, name, shape)))
    arr = _check_param(arr, name, shape)
    return _layout.cast(arr, np.float64)


def _check_dy(dy, x):
    return _as_device(v.check_dy(dy, x), "dy")


def _check_out(out, x):
    if out is None:
        return None
    if not _device.is_cuda_array(out):
        raise TypeError(f"out must be a CUDA device array like the input, got {type(out).__name__}")
    out = _as_device(out, "out")
    if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype:
        raise ValueError(f"out must have shape {tuple(x.shape)} and dtype {x.dtype}, "
                         f"got {tuple(out.shape)} {out.dtype}")
    return out


class _Running:
    """A running-statistics buffer as a contiguous device array, written back on :meth:`commit`
    when it came from the host or from a non-contiguous device view."""

    def __init__(self, arr):
        self.orig = arr
        if isinstance(arr, np.ndarray):
            self.dev = cuda.to_device(np.ascontiguousarray(arr))
        else:
            self.dev = _layout.contiguous(_as_device(arr, "running statistics"))

    def commit(self):
        if isinstance(self.orig, np.ndarray):
            self.orig[...] = self.dev.copy_to_host()
        elif self.dev is not self.orig:
            _layout.copy(self.dev, self.orig)


def _channel_view(x):
    """A C-contiguous (N, C, S) device view of x (a device copy if x is not C-contiguous)."""
    n, c = x.shape[0], x.shape[1]
    return _layout.contiguous(x).reshape(n, c, math.prod(x.shape[2:]))


def _finish(x, out, shape, compute, keep_layout=True):
    """Run ``compute(view)`` on a C-contiguous ``shape`` view of the result and return it:
    ``out`` if given, else a new array in x's memory order (``keep_layout``) or C order."""
    if out is not None:
        target = out
    elif keep_layout:
        target = _layout.empty_like_layout(x)
    else:
        target = cuda.device_array(x.shape, x.dtype)
    if target.is_c_contiguous():
        compute(target.reshape(shape))
        return target
    tmp = cuda.device_array(x.shape, x.dtype)
    compute(tmp.reshape(shape))
    _layout.copy(tmp, target)
    return target


def _nan(shape):
    return cuda.to_device(np.full(shape, np.nan))


def _empty_result(x, out):
    return cuda.device_array(x.shape, x.dtype) if out is None else out


# -- layer helpers -----------------------------------------------------------------------

def astype(arr, dtype, copy=True):
    """A device array of ``dtype`` with arr's values (``arr`` itself when ``copy`` is False
    and it already has that dtype)."""
    dtype = np.dtype(dtype)
    if not copy and arr.dtype == dtype:
        return arr
    return _layout.copy(arr, cuda.device_array(arr.shape, dtype))


def to_host(arr):
    """A NumPy copy of a device array."""
    return _as_device(arr, "array").copy_to_host()


def to_device(arr):
    """A device copy of a NumPy array."""
    return cuda.to_device(np.ascontiguousarray(arr))


# -- BatchNorm ---------------------------------------------------------------------------

def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, out=None, return_stats=False):
    """:func:`numbanorm.functional.batch_norm` on CUDA device arrays."""
    x, c = _check_channels_input(x, 2)
    for name, p in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        _check_param(p, name, (c,))
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None")
    eps = v.check_eps(eps)
    use_batch = bool(training) or running_mean is None
    if training:
        momentum = v.check_momentum(momentum, allow_none=False)
    count = x.size // c if c else 0
    if training and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    out = _check_out(out, x)
    if x.size == 0:
        y = _empty_result(x, out)
        nan = _nan(c)
        return (y, nan, nan) if return_stats else y

    x3 = _channel_view(x)
    w, b = _param(weight), _param(bias)
    update = bool(training) and running_mean is not None
    rm = _Running(running_mean) if running_mean is not None else None
    rv = _Running(running_var) if running_var is not None else None
    stats = {}

    def compute(y3):
        if use_batch:
            _, stats["mean"], stats["invstd"] = _bn.forward_train(
                x3, y3, w, b, eps, momentum, rm.dev if update else None, rv.dev if update else None)
        else:
            stats["mean"], stats["invstd"] = _bn.forward_eval(x3, y3, rm.dev, rv.dev, w, b, eps)

    y = _finish(x, out, x3.shape, compute)
    if update:
        rm.commit()
        rv.commit()
    if return_stats:
        return y, stats["mean"], stats["invstd"]
    return y


def batch_norm_backward(dy, x, mean, invstd, weight=None, bias=None, training=True):
    """:func:`numbanorm.functional.batch_norm_backward` on CUDA device arrays."""
    x, c = _check_channels_input(x, 2, "x")
    dy = _check_dy(dy, x)
    mean = _stats(mean, "mean", (c,))
    invstd = _stats(invstd, "invstd", (c,))
    _check_param(weight, "weight", (c,))
    _check_param(bias, "bias", (c,))
    count = x.size // c if c else 0
    return _channel_backward(dy, x, weight, bias,
                             lambda x3, dy3, dx3, w: _bn.backward(x3, dy3, dx3, mean, invstd, w, bool(training), count))


def _channel_backward(dy, x, weight, bias, driver):
    c = x.shape[1]
    if x.size == 0:
        dx = cuda.device_array(x.shape, x.dtype)
        dw = cuda.to_device(np.zeros(c, x.dtype))
        db = cuda.to_device(np.zeros(c, x.dtype))
    else:
        x3 = _channel_view(x)
        dy3 = _layout.contiguous(dy).reshape(x3.shape)
        w = _param(weight)
        grads = {}

        def compute(dx3):
            grads["w"], grads["b"] = driver(x3, dy3, dx3, w)

        dx = _finish(x, None, x3.shape, compute)
        dw, db = grads["w"], grads["b"]
    return dx, None if weight is None else dw, None if bias is None else db


# -- LayerNorm and RMSNorm ---------------------------------------------------------------

def _rows_view(x, normalized_shape, name="input"):
    """Check x against normalized_shape; return (shape, stat_shape, (R, D) contiguous device view)."""
    x = _check_float(x, name)
    shape = normalized_shape_tuple(normalized_shape)
    k = len(shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"expected {name} with trailing dimensions {list(shape)} (normalized_shape), "
                         f"got shape {tuple(x.shape)}")
    stat_shape = tuple(x.shape[:x.ndim - k])
    return x, shape, stat_shape, _layout.contiguous(x).reshape(math.prod(stat_shape), math.prod(shape))


def _rows_forward(x, normalized_shape, weight, bias, eps, out, center):
    x, shape, stat_shape, x2 = _rows_view(x, normalized_shape)
    _check_param(weight, "weight", shape)
    _check_param(bias, "bias", shape)
    eps = v.check_eps(eps)
    out = _check_out(out, x)
    width = x2.shape[1]
    w = _ones(width, x.dtype) if weight is None else _param(weight, x.dtype).reshape(width)
    b = _zeros(width, x.dtype) if bias is None else _param(bias, x.dtype).reshape(width)
    stats = {}

    def compute(y2):
        stats["mean"], stats["rstd"] = _ln.forward(x2, y2, w, b, eps, center)

    y = _finish(x, out, x2.shape, compute, keep_layout=False)
    return y, stats["mean"].reshape(stat_shape), stats["rstd"].reshape(stat_shape)


def _rows_backward(dy, x, normalized_shape, mean, rstd, weight, center):
    x, shape, stat_shape, x2 = _rows_view(x, normalized_shape, "x")
    dy = _check_dy(dy, x)
    _check_param(weight, "weight", shape)
    rows, width = x2.shape
    rstd = _stats(rstd, "rstd", stat_shape).reshape(rows)
    mean = _zeros(rows, np.float64) if mean is None else _stats(mean, "mean", stat_shape).reshape(rows)
    w = _ones(width, x.dtype) if weight is None else _param(weight, x.dtype).reshape(width)
    dy2 = _layout.contiguous(dy).reshape(x2.shape)
    grads = {}

    def compute(dx2):
        grads["w"], grads["b"] = _ln.backward(x2, dy2, dx2, w, mean, rstd, center)

    dx = _finish(x, None, x2.shape, compute, keep_layout=False)
    return dx, grads["w"].reshape(shape), grads["b"].reshape(shape)


def _ones(n, dtype):
    return cuda.to_device(np.ones(n, dtype))


def _zeros(n, dtype):
    return cuda.to_device(np.zeros(n, dtype))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    """:func:`numbanorm.functional.layer_norm` on CUDA device arrays."""
    y, mean, rstd = _rows_forward(x, normalized_shape, weight, bias, eps, out, center=True)
    return (y, mean, rstd) if return_stats else y


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight=None, bias=None):
    """:func:`numbanorm.functional.layer_norm_backward` on CUDA device arrays."""
    dx, dw, db = _rows_backward(dy, x, normalized_shape, mean, rstd, weight, center=True)
    return dx, (None if weight is None else dw), (None if bias is None else db)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False):
    """:func:`numbanorm.functional.rms_norm` on CUDA device arrays."""
    x = _check_float(x, "input")
    y, _, rstd = _rows_forward(x, normalized_shape, weight, None, _rms_eps(eps, x.dtype), out, center=False)
    return (y, rstd) if return_stats else y


def rms_norm_backward(dy, x, normalized_shape, rstd, weight=None):
    """:func:`numbanorm.functional.rms_norm_backward` on CUDA device arrays."""
    dx, dw, _ = _rows_backward(dy, x, normalized_shape, None, rstd, weight, center=False)
    return dx, (None if weight is None else dw), None


# -- GroupNorm and InstanceNorm ----------------------------------------------------------

def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    """:func:`numbanorm.functional.group_norm` on CUDA device arrays."""
    x, c = _check_channels_input(x, 2)
    groups = _check_groups(num_groups, c)
    _check_param(weight, "weight", (c,))
    _check_param(bias, "bias", (c,))
    eps = v.check_eps(eps)
    out = _check_out(out, x)
    n = x.shape[0]
    if x.size == 0:
        y = _empty_result(x, out)
        return (y, _nan((n, groups)), _nan((n, groups))) if return_stats else y
    x3 = _channel_view(x)
    w, b = _param(weight), _param(bias)
    stats = {}

    def compute(y3):
        _, stats["mean"], _, stats["rstd"] = _gn.forward(x3, y3, groups, w, b, eps)

    y = _finish(x, out, x3.shape, compute)
    return (y, stats["mean"], stats["rstd"]) if return_stats else y


def group_norm_backward(dy, x, num_groups, mean, rstd, weight=None, bias=None):
    """:func:`numbanorm.functional.group_norm_backward` on CUDA device arrays."""
    x, c = _check_channels_input(x, 2, "x")
    groups = _check_groups(num_groups, c)
    dy = _check_dy(dy, x)
    mean = _stats(mean, "mean", (x.shape[0], groups))
    rstd = _stats(rstd, "rstd", (x.shape[0], groups))
    _check_param(weight, "weight", (c,))
    _check_param(bias, "bias", (c,))
    return _channel_backward(dy, x, weight, bias,
                             lambda x3, dy3, dx3, w: _gn.backward(x3, dy3, dx3, groups, mean, rstd, w, True))


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, out=None, return_stats=False):
    """:func:`numbanorm.functional.instance_norm` on CUDA device arrays."""
    x, c = _check_channels_input(x, 3)
    for name, p in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        _check_param(p, name, (c,))
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None")
    if not use_input_stats and running_mean is None:
        raise ValueError("Expected running_mean and running_var to be defined when use_input_stats is False")
    eps = v.check_eps(eps)
    if use_input_stats:
        momentum = v.check_momentum(momentum, allow_none=False)
        spatial = x.size // (x.shape[0] * c) if x.shape[0] * c else 0
        if spatial <= 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(x.shape)}")
    out = _check_out(out, x)
    if x.size == 0:
        y = _empty_result(x, out)
        shape = (x.shape[0], c)
        return (y, _nan(shape), _nan(shape)) if return_stats else y
    x3 = _channel_view(x)
    w, b = _param(weight), _param(bias)
    rm = _Running(running_mean) if running_mean is not None else None
    rv = _Running(running_var) if running_var is not None else None
    stats = {}

    def compute(y3):
        if use_input_stats:
            stats["mean"], stats["rstd"] = _gn.instance_forward_train(
                x3, y3, w, b, eps, momentum, rm.dev if rm else None, rv.dev if rv else None)
        else:
            stats["mean"], stats["rstd"] = _gn.instance_forward_eval(x3, y3, rm.dev, rv.dev, w, b, eps)

    y = _finish(x, out, x3.shape, compute)
    if use_input_stats and rm is not None:
        rm.commit()
        rv.commit()
    return (y, stats["mean"], stats["rstd"]) if return_stats else y


def instance_norm_backward(dy, x, mean, rstd, weight=None, bias=None, use_input_stats=True):
    """:func:`numbanorm.functional.instance_norm_backward` on CUDA device arrays."""
    x, c = _check_channels_input(x, 3, "x")
    dy = _check_dy(dy, x)
    mean = _stats(mean, "mean", (x.shape[0], c))
    rstd = _stats(rstd, "rstd", (x.shape[0], c))
    _check_param(weight, "weight", (c,))
    _check_param(bias, "bias", (c,))
    return _channel_backward(
        dy, x, weight, bias,
        lambda x3, dy3, dx3, w: _gn.instance_backward(x3, dy3, dx3, mean, rstd, w, bool(use_input_stats)))
