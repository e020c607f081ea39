"""BatchNorm1d and BatchNorm2d: train forward, train step, eval forward; ratios; memory."""

from .common import LAYOUTS, MemoryBenchmark, PassBenchmark, RatioBenchmark

_BN2D_SHAPES = [(32, 64, 56, 56), (64, 128, 56, 56)]
_BN1D_SHAPES = [(4096, 1024), (64, 256)]


class BatchNorm2d(PassBenchmark):
    op = "BatchNorm2d"
    shapes = _BN2D_SHAPES
    layouts = LAYOUTS


class BatchNorm2dRatios(RatioBenchmark):
    op = "BatchNorm2d"
    shapes = _BN2D_SHAPES
    layouts = LAYOUTS


class BatchNorm2dMemory(MemoryBenchmark):
    op = "BatchNorm2d"
    shapes = _BN2D_SHAPES
    layouts = LAYOUTS


class BatchNorm1d(PassBenchmark):
    op = "BatchNorm1d"
    shapes = _BN1D_SHAPES


class BatchNorm1dRatios(RatioBenchmark):
    op = "BatchNorm1d"
    shapes = _BN1D_SHAPES


class BatchNorm1dMemory(MemoryBenchmark):
    op = "BatchNorm1d"
    shapes = _BN1D_SHAPES
