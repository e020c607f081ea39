"""Where an array lives — NumPy (the CPU) or a CUDA device — and the backend that runs it.

Told apart without importing ``numba.cuda``, so that ``import numbanorm`` stays fast
for users who never use CUDA: :mod:`numbanorm.kernels.cuda` is imported the first time
a CUDA array reaches numbanorm.
"""

import importlib

import numpy as np

__all__ = ["is_cuda_array", "backend", "astype", "to_host", "move"]


def is_cuda_array(x):
    """True for a Numba CUDA device array (real or simulated) or any object exposing
    ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors)."""
    if isinstance(x, np.ndarray):
        return False
    return bool(getattr(type(x), "__cuda_ndarray__", False)) or hasattr(x, "__cuda_array_interface__")


_BACKENDS = {}


def _load(name):
    module = _BACKENDS.get(name)
    if module is None:
        module = _BACKENDS[name] = importlib.import_module(f"numbanorm.kernels.{name}")
    return module


def backend(x):
    """The kernel package that runs ``x``: :mod:`numbanorm.kernels.cpu` for a NumPy array,
    :mod:`numbanorm.kernels.cuda` for a CUDA array, None for anything else."""
    if isinstance(x, np.ndarray):
        return _load("cpu")
    if is_cuda_array(x):
        return _load("cuda")
    return None


def astype(arr, dtype, copy=True):
    """``arr.astype(dtype, copy=copy)`` for NumPy and CUDA device arrays alike."""
    return backend(arr).arrays.astype(arr, dtype, copy=copy)


def to_host(arr):
    """A NumPy copy of a NumPy or CUDA device array."""
    if is_cuda_array(arr):
        return backend(arr).arrays.to_host(arr)
    return np.array(arr, copy=True)


def move(arr, target):
    """``arr`` on ``target`` (``"cuda"`` or ``"cpu"``): the array itself if it is there already."""
    if target == "cuda":
        return arr if is_cuda_array(arr) else _load("cuda").arrays.to_device(arr)
    return to_host(arr) if is_cuda_array(arr) else arr
