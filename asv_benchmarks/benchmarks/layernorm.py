"""LayerNorm over the last axis: train forward, train step, eval forward; ratios; memory."""

from .common import MemoryBenchmark, PassBenchmark, RatioBenchmark

_SHAPES = [(8192, 768), (32, 768)]


class LayerNorm(PassBenchmark):
    op = "LayerNorm"
    shapes = _SHAPES


class LayerNormRatios(RatioBenchmark):
    op = "LayerNorm"
    shapes = _SHAPES


class LayerNormMemory(MemoryBenchmark):
    op = "LayerNorm"
    shapes = _SHAPES
