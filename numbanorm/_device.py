"""Where an array lives: NumPy (CPU) or a CUDA device, told apart without importing
``numba.cuda``, so that ``import numbanorm`` stays fast for users who never use CUDA.

:data:`cuda_ops` is :mod:`numbanorm._cuda` (the device-array twins of every
functional op), imported on first use.
"""

import importlib

import numpy as np

__all__ = ["is_cuda_array", "cuda_ops", "astype", "to_host", "move"]


def is_cuda_array(x):
    """True for a Numba CUDA device array (real or simulated) or any object exposing
    ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors)."""
    if isinstance(x, np.ndarray):
        return False
    return bool(getattr(type(x), "__cuda_ndarray__", False)) or hasattr(x, "__cuda_array_interface__")


class _LazyModule:
    """A module imported on first attribute access."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self):
        return f"<lazy module {self._name}>"


#: :mod:`numbanorm._cuda`, imported when a CUDA array first reaches numbanorm.
cuda_ops = _LazyModule("numbanorm._cuda")


def astype(arr, dtype, copy=True):
    """``arr.astype(dtype, copy=copy)`` for NumPy and CUDA device arrays alike."""
    if is_cuda_array(arr):
        return cuda_ops.astype(arr, dtype, copy=copy)
    return arr.astype(dtype, copy=copy)


def to_host(arr):
    """A NumPy copy of a NumPy or CUDA device array."""
    if is_cuda_array(arr):
        return cuda_ops.to_host(arr)
    return np.array(arr, copy=True)


def move(arr, target):
    """``arr`` on ``target`` (``"cuda"`` or ``"cpu"``): the array itself if it is there already."""
    if target == "cuda":
        return arr if is_cuda_array(arr) else cuda_ops.to_device(arr)
    return cuda_ops.to_host(arr) if is_cuda_array(arr) else arr
