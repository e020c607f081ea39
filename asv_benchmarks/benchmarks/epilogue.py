"""The fused epilogue: BatchNorm2d + add + ReLU (a ResNet block's tail), add + LayerNorm and
add + RMSNorm (a transformer block's pre-norm residual); fused time, ratios to the same ops
unfused in numbanorm and in PyTorch."""

from .common import LAYOUTS, EpilogueRatioBenchmark, PassBenchmark

_BN2D_SHAPES = [(32, 64, 56, 56)]
_ROWS_SHAPES = [(8192, 768)]


class BatchNorm2dAddReLU(PassBenchmark):
    op = "BatchNorm2d+add+relu"
    shapes = _BN2D_SHAPES
    layouts = LAYOUTS
    dtypes = ("float32",)


class BatchNorm2dAddReLURatios(EpilogueRatioBenchmark):
    op = "BatchNorm2d+add+relu"
    shapes = _BN2D_SHAPES
    layouts = LAYOUTS


class AddLayerNorm(PassBenchmark):
    op = "add+LayerNorm"
    shapes = _ROWS_SHAPES
    dtypes = ("float32",)


class AddLayerNormRatios(EpilogueRatioBenchmark):
    op = "add+LayerNorm"
    shapes = _ROWS_SHAPES


class AddRMSNorm(PassBenchmark):
    op = "add+RMSNorm"
    shapes = _ROWS_SHAPES
    dtypes = ("float32",)


class AddRMSNormRatios(EpilogueRatioBenchmark):
    op = "add+RMSNorm"
    shapes = _ROWS_SHAPES
