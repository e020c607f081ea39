"""InstanceNorm2d (PyTorch defaults: no affine, no running stats): passes; ratios; memory."""

from .common import LAYOUTS, MemoryBenchmark, PassBenchmark, RatioBenchmark

_SHAPES = [(32, 64, 56, 56)]


class InstanceNorm2d(PassBenchmark):
    op = "InstanceNorm2d"
    shapes = _SHAPES
    layouts = LAYOUTS


class InstanceNorm2dRatios(RatioBenchmark):
    op = "InstanceNorm2d"
    shapes = _SHAPES
    layouts = LAYOUTS


class InstanceNorm2dMemory(MemoryBenchmark):
    op = "InstanceNorm2d"
    shapes = _SHAPES
    layouts = LAYOUTS
