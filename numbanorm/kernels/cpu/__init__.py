"""Numba CPU kernels, one module per family, on shared primitives.

``moments``      per-slice (count, mean, M2) and Chan's merge: the one statistics primitive.
``sums``         the gradient sums backward passes need (sum dy, sum dy*(x - mean)).
``elementwise``  normalize and dx loops with a float32 hi/lo mean.
``batchnorm``, ``groupnorm`` (also InstanceNorm), ``layernorm`` (also RMSNorm): family drivers.
"""
