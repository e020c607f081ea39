"""numbanorm: Numba-accelerated CPU normalization layers.

BatchNorm1d/2d/3d, LayerNorm, RMSNorm, GroupNorm and InstanceNorm1d/2d/3d with forward,
backward, running statistics, and BatchNorm folding for inference (:mod:`numbanorm.fuse`);
SyncBatchNorm across processes (:mod:`numbanorm.distributed`, MPI or torch.distributed).
Semantics match PyTorch; statistics are numerically stable (float64 shifted sums
checked for cancellation, with a two-pass or lane-wise Welford fallback, merged with
Chan's formula) and the kernels are compiled with Numba.
"""

from . import config, functional
from ._memory import release as release_memory
from .layers import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
    SyncBatchNorm,
)

__version__ = "0.1.0"

__all__ = [
    "config",
    "functional",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "RMSNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "SyncBatchNorm",
    "release_memory",
    "__version__",
]


def __getattr__(name):
    # fuse imports lazily so that `import numbanorm` stays light.
    if name == "fuse":
        import importlib

        return importlib.import_module(".fuse", __name__)
    raise AttributeError(f"module 'numbanorm' has no attribute {name!r}")
