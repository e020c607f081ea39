"""Input checks of the functional API (and the layers' constructors).

Everything is validated before any state changes, and every error names what was
wrong and what was expected. The checks read only ``shape``, ``dtype``, ``ndim`` and
memory extents, so they serve NumPy and CUDA device arrays alike; an array must live
where the input lives (a NumPy weight with a CUDA input is an error, not a copy).
"""

import math
import numbers

import numpy as np

from ._device import is_cuda_array

__all__ = [
    "FLOAT_DTYPES",
    "check_float_array",
    "check_param",
    "check_eps",
    "check_momentum",
    "check_dy",
    "check_out",
    "check_activation",
    "check_residual",
    "check_dtype",
    "check_stats",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype, name="dtype"):
    """Return ``dtype`` as np.float32 or np.float64, or raise TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt.type


def _where(x):
    return "a CUDA device array" if is_cuda_array(x) else "a numpy.ndarray"


def check_float_array(x, name="input"):
    """Return ``x`` if it is a float32/float64 ndarray (or CUDA device array), else raise TypeError."""
    if type(x) is np.ndarray and x.dtype.char in "fd":  # the common case, checked cheaply
        return x
    if not isinstance(x, np.ndarray) and not is_cuda_array(x):
        raise TypeError(f"{name} must be a numpy.ndarray (or a CUDA device array) of float32 or float64, "
                        f"got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    return x


def _check_same_device(a, name, x):
    if type(a) is np.ndarray and type(x) is np.ndarray:  # the common case, checked cheaply
        return
    if is_cuda_array(a) != is_cuda_array(x) or not (isinstance(a, np.ndarray) or is_cuda_array(a)):
        raise TypeError(f"{name} must be {_where(x)} like the input, got {type(a).__name__}"
                        + (" (move parameters with layer.to('cuda') or numba.cuda.to_device)"
                           if is_cuda_array(x) else ""))


def check_param(p, name, shape, x):
    """Check an optional per-channel/per-element parameter or buffer: None, or ``shape``
    floats on the device of ``x``."""
    if p is None:
        return None
    if type(p) is np.ndarray and type(x) is np.ndarray and p.shape == shape and p.dtype.char in "fd":
        return p  # the common case, checked cheaply
    _check_same_device(p, name, x)
    if p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {p.dtype}")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(p.shape)}")
    return p


def check_stats(arr, name, shape, x):
    """Check saved statistics passed to a backward function: float array of ``shape`` on x's device."""
    if arr is None:
        raise ValueError(f"{name} is required (the statistics returned by the forward call)")
    if type(arr) is np.ndarray and type(x) is np.ndarray and arr.shape == shape and arr.dtype.char in "fd":
        return arr  # the common case, checked cheaply
    if not is_cuda_array(x) and not is_cuda_array(arr):
        arr = np.asarray(arr)
    _check_same_device(arr, name, x)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
    return arr


def check_eps(eps):
    """Return eps as a float, or raise for a non-number, negative or non-finite value."""
    if type(eps) is float and 0.0 <= eps < math.inf:  # the common case, checked cheaply
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite non-negative number, got {eps!r}")
    return float(eps)


def check_momentum(momentum, allow_none=True):
    """Return momentum as a float (or None where allowed); it must lie in [0, 1]."""
    if momentum is None and allow_none:
        return None
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        return momentum
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
        expected = "a number in [0, 1] or None" if allow_none else "a number in [0, 1]"
        raise ValueError(f"momentum must be {expected}, got {momentum!r}")
    return float(momentum)


def check_dy(dy, x, name="dy"):
    """dy (or the forward's output ``y``, by ``name``) must be an array of x's shape and dtype,
    on x's device."""
    _check_same_device(dy, name, x)
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"{name} must have the shape of the forward input {tuple(x.shape)}, got {tuple(dy.shape)}")
    if dy.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of the forward input ({x.dtype}), got {dy.dtype}")
    return dy


#: The activations of the fused epilogue (``act(norm(x) + residual)``).
ACTIVATIONS = (None, "relu")


def check_activation(activation):
    """True for ``"relu"``, False for None; ValueError for anything else."""
    if activation is None:
        return False
    if isinstance(activation, str) and activation == "relu":
        return True
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_residual(r, x, name="residual"):
    """A residual (or another array added to a result) must be a float32/float64 array of
    x's shape on x's device; any layout, and either float dtype (it is cast to x's)."""
    _check_same_device(r, name, x)
    if r.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {r.dtype}")
    if tuple(r.shape) != tuple(x.shape):
        raise ValueError(f"{name} must have the shape of the input {tuple(x.shape)}, got {tuple(r.shape)}")
    return r


def _byte_range(a):
    """[first, last) byte addresses spanned by an array exposing an array interface."""
    if not is_cuda_array(a):
        info = a.__array_interface__
    elif hasattr(a, "__cuda_array_interface__"):
        info = a.__cuda_array_interface__
    else:  # numba-cuda's simulator wraps a NumPy array and exposes no CUDA interface
        info = a._ary.__array_interface__
    start = info["data"][0]
    itemsize = np.dtype(info["typestr"]).itemsize
    shape = info["shape"]
    strides = info.get("strides")
    if strides is None:
        strides = tuple(itemsize * math.prod(shape[i + 1:]) for i in range(len(shape)))
    lo = start + sum(st * (d - 1) for st, d in zip(strides, shape, strict=True) if st < 0)
    hi = start + sum(st * (d - 1) for st, d in zip(strides, shape, strict=True) if st > 0) + itemsize
    return lo, hi


def _may_overlap(a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.may_share_memory(a, b)
    if a.size == 0 or b.size == 0:
        return False
    a_lo, a_hi = _byte_range(a)
    b_lo, b_hi = _byte_range(b)
    return a_lo < b_hi and b_lo < a_hi


def check_out(out, x, residual=None):
    """An ``out=`` array must be a writable array of x's shape and dtype on x's device, apart
    from x (and from the residual, when one is given)."""
    if out is None:
        return None
    if is_cuda_array(x) != is_cuda_array(out) or not (isinstance(out, np.ndarray) or is_cuda_array(out)):
        raise TypeError(f"out must be {_where(x)} like the input, got {type(out).__name__}")
    if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype:
        raise ValueError(f"out must have shape {tuple(x.shape)} and dtype {x.dtype}, "
                         f"got {tuple(out.shape)} {out.dtype}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError("out must be writeable")
    if _may_overlap(out, x):
        raise ValueError("out must not overlap the input")
    if residual is not None and _may_overlap(out, residual):
        raise ValueError("out must not overlap the residual")
    return out
