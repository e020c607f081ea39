"""Private compute kernels: ``cpu`` (Numba, CPU) and ``cuda`` (Numba, CUDA) twins."""
