"""RMSNorm over the last axis: train forward, train step, eval forward; ratios; memory."""

from .common import MemoryBenchmark, PassBenchmark, RatioBenchmark

_SHAPES = [(8192, 768), (32, 768)]


class RMSNorm(PassBenchmark):
    op = "RMSNorm"
    shapes = _SHAPES


class RMSNormRatios(RatioBenchmark):
    op = "RMSNorm"
    shapes = _SHAPES


class RMSNormMemory(MemoryBenchmark):
    op = "RMSNorm"
    shapes = _SHAPES
