"""Numba CUDA kernels, the twins of :mod:`numbanorm.kernels.cpu`.

Imported only when a CUDA device array reaches :mod:`numbanorm.functional` (through
:mod:`numbanorm._cuda`), so ``import numbanorm`` never imports ``numba.cuda``.

``_jit``         the one place kernels are compiled: flags and block size from :mod:`numbanorm.config`.
``moments``      per-thread Welford over a strided slice and the block-level Chan merge
                 (shared-memory trees, no warp shuffles: the simulator runs the same code).
``layout``       strided <-> contiguous copies and dtype casts on the device.
``channels``     passes shared by BatchNorm, GroupNorm and InstanceNorm over (N, C, S) arrays.
``batchnorm``, ``groupnorm`` (also InstanceNorm), ``layernorm`` (also RMSNorm): family drivers.

Every array a kernel sees is a C-contiguous device array; statistics are float64;
the mean is subtracted as an x-dtype hi/lo pair, ``((x - hi) - lo) * scale + shift``.
"""
