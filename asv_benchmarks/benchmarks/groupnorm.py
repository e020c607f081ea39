"""GroupNorm with 32 groups: train forward, train step, eval forward; ratios; memory."""

from .common import LAYOUTS, MemoryBenchmark, PassBenchmark, RatioBenchmark

_SHAPES = [(32, 64, 56, 56)]


class GroupNorm(PassBenchmark):
    op = "GroupNorm"
    groups = 32
    shapes = _SHAPES
    layouts = LAYOUTS


class GroupNormRatios(RatioBenchmark):
    op = "GroupNorm"
    groups = 32
    shapes = _SHAPES
    layouts = LAYOUTS


class GroupNormMemory(MemoryBenchmark):
    op = "GroupNorm"
    groups = 32
    shapes = _SHAPES
    layouts = LAYOUTS
