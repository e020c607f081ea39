"""The CUDA backend: Numba CUDA kernels, the twins of :mod:`numbanorm.kernels.cpu`.

The same modules, driver signatures and return conventions as the CPU backend.
Imported only when a CUDA array reaches :mod:`numbanorm.functional`, so
``import numbanorm`` never imports ``numba.cuda``.

``_jit``          the one place kernels are compiled: flags and block size from :mod:`numbanorm.config`.
``layout``        contiguous kernel views, strided <-> contiguous copies and casts, ``Output``.
``arrays``        small-array helpers of the front end (casts, fills, host copies).
``moments``       the statistics primitive: per-thread Welford, block-level Chan merge
                  (shared-memory trees, no warp shuffles: the simulator runs the same code),
                  partial merges; a mean-square mode for RMSNorm.
``params``        parameters as kernels take them (None -> cached device constants).
``channels``      passes shared by BatchNorm, GroupNorm and InstanceNorm over (N, C, S) arrays.
``batchnorm``, ``groupnorm``, ``instancenorm``, ``layernorm`` (also RMSNorm): family drivers.

Every array a kernel sees is a C-contiguous device array; statistics are float64;
the mean is subtracted as an x-dtype hi/lo pair, ``((x - hi) - lo) * scale + shift``,
and dx's bracket is formed in float64.
"""

from . import arrays, batchnorm, channels, groupnorm, instancenorm, layernorm, layout

__all__ = ["arrays", "batchnorm", "channels", "groupnorm", "instancenorm", "layernorm", "layout"]
