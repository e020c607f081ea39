"""numbanorm inside PyTorch (optional extra ``torch``): custom operators, modules, model conversion.

::

    import numbanorm.torch
    model, report = numbanorm.torch.convert(model)   # its norm layers now run numbanorm's kernels
    print(report)                                     # what was converted, what was left alone and why
    numbanorm.torch.revert(model)                     # back to PyTorch's kernels

- :mod:`numbanorm.torch._ops`: ``torch.ops.numbanorm.{batch_norm, instance_norm, layer_norm,
  rms_norm, group_norm}`` and their ``*_backward`` ops (``torch.library.custom_op`` with
  ``register_fake`` and ``register_autograd``) over :mod:`numbanorm.functional`.
- :mod:`numbanorm.torch._eager`: the same implementation as ``torch.autograd.Function`` classes,
  which plain eager calls take (no operator dispatch); tracing sees the operators.
- :mod:`numbanorm.torch.functional`: drop-ins for ``torch.nn.functional``'s norm functions.
- :mod:`numbanorm.torch.convert`: :func:`convert` and :func:`revert`.
- :mod:`numbanorm.torch.modules`: ``BatchNorm1d/2d/3d``, ``InstanceNorm1d/2d/3d``,
  ``LayerNorm``, ``GroupNorm``, ``RMSNorm``, ``SyncBatchNorm``, subclasses of the ``torch.nn`` modules.
- :mod:`numbanorm.torch.epilogue`: the fused epilogue of the modules (``activation="relu"`` and
  ``forward(input, residual)``; LayerNorm/RMSNorm ``(norm(input + residual), input + residual)``).
- :mod:`numbanorm.torch.distributed`: ``TorchCommunicator`` (torch.distributed, gloo) and the
  SyncBatchNorm function the module runs on CPU tensors.
- :mod:`numbanorm.torch.bench_models`: ``run_models(threads=2)``, stock vs converted
  train-step and inference time of real models (imported on demand, not here).

CPU float32/float64 tensors run numbanorm; CUDA tensors, float16/bfloat16 and anything
else run PyTorch's own kernels (with one warning). ``import numbanorm`` never imports torch.
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("numbanorm.torch needs PyTorch: pip install 'numbanorm[torch]' torch==2.13.0 "
                      "(the CPU wheel on Linux; see the README)") from err

from . import functional
from ._ops import InputError, InputTypeError
from .convert import ConversionReport, convert, revert
from .modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    NumbanormModule,
    RMSNorm,
    SyncBatchNorm,
)

__all__ = [
    "functional",
    "convert",
    "revert",
    "ConversionReport",
    "InputError",
    "InputTypeError",
    "NumbanormModule",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    "SyncBatchNorm",
]
