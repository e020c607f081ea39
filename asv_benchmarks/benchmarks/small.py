"""Small inputs in cache: a CNN's late stages, a diffusion UNet's lowest resolution, small batches.

There the Python call path and the loops over short planes and rows decide the time,
which the canonical rows (tens of MB, out of cache) do not show. Each call reads the same
input (the state of a layer whose input was just produced), numbanorm alone.
"""

import numpy as np

import numbanorm
from numbanorm import bench

from .common import PASSES, THREADS, Benchmark

#: Case name -> (layer, constructor arguments, float32 input shape).
CASES = {
    "BatchNorm2d 4x16x14x14": ("BatchNorm2d", (16,), (4, 16, 14, 14)),
    "BatchNorm2d 16x64x7x7": ("BatchNorm2d", (64,), (16, 64, 7, 7)),
    "BatchNorm2d 64x16x4x4": ("BatchNorm2d", (16,), (64, 16, 4, 4)),
    "BatchNorm2d 128x32x1x1": ("BatchNorm2d", (32,), (128, 32, 1, 1)),
    "BatchNorm1d 64x256": ("BatchNorm1d", (256,), (64, 256)),
    "GroupNorm G=32 2x1280x8x8": ("GroupNorm", (32, 1280), (2, 1280, 8, 8)),
    "InstanceNorm2d 16x64x7x7": ("InstanceNorm2d", (64,), (16, 64, 7, 7)),
    "LayerNorm 32x768": ("LayerNorm", (768,), (32, 768)),
    "RMSNorm 32x768": ("RMSNorm", (768,), (32, 768)),
}


class SmallShapes(Benchmark):
    """Time of one pass of a numbanorm layer on a small, cache-resident input."""

    param_names = ["case", "pass"]
    params = [list(CASES), PASSES]

    def setup(self, case, pass_):
        op, args, shape = CASES[case]
        bench.set_threads(THREADS)
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal(shape, dtype=np.float32)
        self.dy = rng.standard_normal(shape, dtype=np.float32)
        self.layer = getattr(numbanorm, op)(*args)
        self.layer.train(pass_ != "eval_forward")
        self.step = pass_ == "train_step"
        self.time_pass(case, pass_)  # compile (or load from the cache)

    def time_pass(self, case, pass_):
        self.layer(self.x)
        if self.step:
            self.layer.backward(self.dy)
