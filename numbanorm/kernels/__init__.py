"""Private compute kernels: ``cpu`` (Numba ``@njit``) and ``cuda`` (``@cuda.jit``) twins."""
