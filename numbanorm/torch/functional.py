"""Drop-ins for ``torch.nn.functional``'s normalization functions, on numbanorm's kernels.

Same signatures and results as ``torch.nn.functional.batch_norm``, ``instance_norm``,
``layer_norm``, ``group_norm`` and ``rms_norm``. CPU float32/float64 tensors run the
``torch.ops.numbanorm`` operators (zero-copy NumPy views, autograd through numbanorm's
backward); anything else (CUDA tensors, float16/bfloat16, sparse tensors) runs
PyTorch's own function, with one warning per function and reason.

Plain eager calls run :mod:`numbanorm.torch._eager` (the same implementation through
``torch.autograd.Function``, without the operator dispatch overhead); anything that
traces (``torch.compile``, fake or meta tensors, ``torch.jit.trace``) runs the operators.

Running statistics given with ``training=True`` (``use_input_stats=True``) are updated
in place, only once numbanorm has accepted the input: an input it rejects leaves them
unchanged.
"""

import warnings

import torch
import torch.nn.functional as TF

from . import _eager
from ._ops import SUPPORTED_DTYPES

__all__ = ["batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm", "unsupported_reason"]

_WARNED = set()
_DEVICES = ("cpu", "meta")


def unsupported_reason(input, *tensors):
    """Why numbanorm cannot run on these tensors (a short phrase), or None if it can."""
    if not isinstance(input, torch.Tensor):
        return f"a {type(input).__name__} input"
    if input.device.type not in _DEVICES:
        return f"{input.device.type} tensors"
    if input.dtype not in SUPPORTED_DTYPES and input.is_floating_point():
        return f"{input.dtype} input"  # integer and complex input: numbanorm's TypeError
    if input.layout != torch.strided:
        return f"{input.layout} tensors"
    for t in tensors:
        if t is None:
            continue
        if t.device.type != input.device.type:
            return f"parameters on {t.device.type} with {input.device.type} input"
        if t.dtype not in SUPPORTED_DTYPES and t.is_floating_point():
            return f"{t.dtype} parameters"
    return None


def warn_fallback(name, reason):
    """Say once per (function, reason) that PyTorch's own kernel runs instead."""
    if torch.compiler.is_compiling() or (name, reason) in _WARNED:
        return
    _WARNED.add((name, reason))
    warnings.warn(f"numbanorm.torch: {name} on {reason} runs PyTorch's own kernel "
                  "(numbanorm runs CPU float32/float64 tensors); this warning is shown once", stacklevel=3)


def _store_running(running_mean, running_var, new_mean, new_var):
    with torch.no_grad():
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)


def _shape_list(normalized_shape):
    if isinstance(normalized_shape, int):
        return [normalized_shape]
    return [int(d) for d in normalized_shape]


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """``torch.nn.functional.batch_norm`` on numbanorm's kernels: batch statistics when
    ``training`` (updating the running ones if given), else the running statistics."""
    reason = unsupported_reason(input, running_mean, running_var, weight, bias)
    if reason is not None:
        warn_fallback("batch_norm", reason)
        return TF.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    training = bool(training)
    if _eager.applies(input):
        return _eager.BatchNorm.apply(input, weight, bias, running_mean, running_var, training, float(momentum),
                                      float(eps))
    y, _, _, new_mean, new_var = torch.ops.numbanorm.batch_norm(
        input, weight, bias, running_mean, running_var, training, float(momentum), float(eps))
    if training and running_mean is not None:
        _store_running(running_mean, running_var, new_mean, new_var)
    return y


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5):
    """``torch.nn.functional.instance_norm`` on numbanorm's kernels."""
    reason = unsupported_reason(input, running_mean, running_var, weight, bias)
    if reason is not None:
        warn_fallback("instance_norm", reason)
        return TF.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    use_input_stats = bool(use_input_stats)
    if _eager.applies(input):
        return _eager.InstanceNorm.apply(input, weight, bias, running_mean, running_var, use_input_stats,
                                         float(momentum), float(eps))
    y, _, _, new_mean, new_var = torch.ops.numbanorm.instance_norm(
        input, weight, bias, running_mean, running_var, use_input_stats, float(momentum), float(eps))
    if use_input_stats and running_mean is not None:
        _store_running(running_mean, running_var, new_mean, new_var)
    return y


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.layer_norm`` on numbanorm's kernels."""
    reason = unsupported_reason(input, weight, bias)
    if reason is not None:
        warn_fallback("layer_norm", reason)
        return TF.layer_norm(input, normalized_shape, weight, bias, eps)
    if _eager.applies(input):
        return _eager.LayerNorm.apply(input, _shape_list(normalized_shape), weight, bias, float(eps))
    return torch.ops.numbanorm.layer_norm(input, _shape_list(normalized_shape), weight, bias, float(eps))[0]


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """``torch.nn.functional.rms_norm`` on numbanorm's kernels (``eps=None``: the
    input dtype's machine epsilon)."""
    reason = unsupported_reason(input, weight)
    if reason is not None:
        warn_fallback("rms_norm", reason)
        return TF.rms_norm(input, normalized_shape, weight, eps)
    eps = None if eps is None else float(eps)
    if _eager.applies(input):
        return _eager.RMSNorm.apply(input, _shape_list(normalized_shape), weight, eps)
    return torch.ops.numbanorm.rms_norm(input, _shape_list(normalized_shape), weight, eps)[0]


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.group_norm`` on numbanorm's kernels."""
    reason = unsupported_reason(input, weight, bias)
    if reason is not None:
        warn_fallback("group_norm", reason)
        return TF.group_norm(input, num_groups, weight, bias, eps)
    if _eager.applies(input):
        return _eager.GroupNorm.apply(input, int(num_groups), weight, bias, float(eps))
    return torch.ops.numbanorm.group_norm(input, int(num_groups), weight, bias, float(eps))[0]
