"""Every CUDA kernel compiles for a real GPU (PTX through NVVM), checked without a GPU.

The simulator runs kernels as Python and accepts code that the CUDA compiler would
reject; ``ptx_check.py`` types and lowers every kernel for float32 and float64. It
runs in a subprocess without NUMBA_ENABLE_CUDASIM, and is skipped where NVVM is not
installed (``pip install "numba-cuda[cu13]"`` brings it).
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NO_NVVM = 77


def test_every_kernel_compiles_to_ptx():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "ptx_check.py")], env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode == NO_NVVM:
        pytest.skip(f"cannot compile PTX here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
