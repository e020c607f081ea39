"""The CPU backend: Numba kernels, one module per family, on one statistics primitive.

The same modules, driver signatures and return conventions as :mod:`numbanorm.kernels.cuda`:

``layout``        views that kernels run on (channels-first, channels-last, rows), ``Output``.
``arrays``        small-array helpers of the front end (casts, fills, host copies).
``moments``       the statistics primitive: float64 (count, mean, M2) of slices, blocks and
                  columns (a mean-square mode for RMSNorm) and Chan's merge.
``sums``          the gradient sums of backward passes (sum dy, sum dy*(x - mean)).
``elementwise``   normalize (float32 hi/lo mean) and dx (float64 bracket) loops.
``params``        per-channel/per-element parameters as kernels take them (None -> constants).
``channels``      passes shared by the channel-wise families.
``batchnorm``, ``groupnorm``, ``instancenorm``, ``layernorm`` (also RMSNorm): family drivers.
"""

from . import arrays, batchnorm, channels, groupnorm, instancenorm, layernorm, layout

__all__ = ["arrays", "batchnorm", "channels", "groupnorm", "instancenorm", "layernorm", "layout"]
