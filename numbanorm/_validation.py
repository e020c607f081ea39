"""Input checks shared by the functional API and the layers.

Everything is validated before any state changes, and every error names what was
wrong and what was expected.
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


def check_float_array(x, name="input"):
    """Return ``x`` if it is a float32/float64 ndarray (or CUDA device array), else raise TypeError."""
    if not isinstance(x, np.ndarray) and not is_cuda_array(x):
        raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    return x


def check_param(p, name, shape):
    """Check an optional per-channel/per-element parameter or buffer: None or ``shape`` floats."""
    if p is None:
        return None
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or None, got {type(p).__name__}")
    if p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {p.dtype}")
    if p.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {p.shape}")
    return p


def check_stats(arr, name, shape):
    """Check saved statistics passed to a backward function: float array of ``shape``."""
    if arr is None:
        raise ValueError(f"{name} is required (the statistics returned by the forward call)")
    arr = np.asarray(arr)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    return arr.astype(np.float64)


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


def check_dy(dy, x):
    """dy must be an array of x's shape and dtype, on x's device."""
    if is_cuda_array(x):
        if not is_cuda_array(dy):
            raise TypeError(f"dy must be a CUDA device array like the forward input, got {type(dy).__name__}")
    elif not isinstance(dy, np.ndarray):
        raise TypeError(f"dy must be a numpy.ndarray, got {type(dy).__name__}")
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have the shape of the forward input {x.shape}, got {dy.shape}")
    if dy.dtype != x.dtype:
        raise TypeError(f"dy must have the dtype of the forward input ({x.dtype}), got {dy.dtype}")
    return dy


def check_out(out, x):
    """An ``out=`` array must be a writable ndarray of x's shape and dtype."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"out must have shape {x.shape} and dtype {x.dtype}, got {out.shape} {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    if np.may_share_memory(out, x):
        raise ValueError("out must not overlap the input")
    return out
