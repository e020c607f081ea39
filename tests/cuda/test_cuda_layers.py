"""CUDA-only layer behaviour: ``layer.to("cuda")`` / ``.to("cpu")``, state and dtype changes
on the device, and ``import numbanorm`` not importing ``numba.cuda``.

What every layer computes on CUDA (against the reference and the CPU) runs in the
table-driven ``tests/test_families_*.py``, pickling a layer on CUDA included.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from checks import check_same_state
from families import FAMILIES
from helpers import assert_close

import numbanorm as nn
from numbanorm._device import is_cuda_array


def _randomize(layer, rng):
    state = {k: (rng.uniform(0.5, 1.5, v.shape) if k in ("weight", "running_var") else rng.normal(size=v.shape))
             for k, v in layer.state_dict().items() if k != "num_batches_tracked"}
    if layer.num_batches_tracked is not None:
        state["num_batches_tracked"] = np.array(3)
    layer.load_state_dict(state)


@pytest.mark.parametrize("fam", FAMILIES, ids=str)
def test_to_cuda_and_back_to_cpu(cuda, rng, fam):
    """Parameters and running statistics become device arrays and come back as NumPy
    arrays; the state trained on the device is the state the CPU would have."""
    case, cfg = fam.cuda_layer_cases[0]
    cpu = fam.make(case, **cfg)
    _randomize(cpu, rng)
    gpu = fam.make(case, **cfg)
    gpu.load_state_dict(cpu.state_dict())
    assert gpu.to("cuda") is gpu
    for p in gpu.parameters():
        assert is_cuda_array(p)
    if gpu.running_mean is not None:
        assert is_cuda_array(gpu.running_mean) and is_cuda_array(gpu.running_var)
    x = rng.normal(1.0, 2.0, case.shape).astype(np.float32)
    y = gpu(cuda.to_device(x))
    assert is_cuda_array(y)
    cpu(x)
    assert gpu.to("cpu") is gpu
    for p in list(gpu.parameters()) + [gpu.running_mean, gpu.running_var]:
        assert p is None or isinstance(p, np.ndarray)
    check_same_state(gpu, cpu, 1e-6)
    gpu.eval()
    cpu.eval()
    assert_close(gpu(x), cpu(x), 1e-5, name="y back on the cpu")


def test_state_and_dtype_on_cuda(cuda, rng):
    """load_state_dict, reset_parameters and to(dtype) work on a layer on the device."""
    cpu = nn.BatchNorm2d(3)
    _randomize(cpu, rng)
    gpu = nn.BatchNorm2d(3).to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    check_same_state(gpu, cpu, 0)
    assert gpu.to(np.float64) is gpu and gpu.dtype is np.float64
    assert is_cuda_array(gpu.weight) and gpu.weight.dtype == np.float64
    assert_close(gpu.running_var.copy_to_host(), cpu.running_var, 1e-7, name="running_var")
    gpu.reset_parameters()
    assert np.array_equal(gpu.weight.copy_to_host(), np.ones(3))
    assert np.array_equal(gpu.running_mean.copy_to_host(), np.zeros(3))
    gpu(cuda.to_device(rng.normal(size=(2, 3, 2, 2))))
    with pytest.raises(TypeError, match="dy must be a CUDA device array"):
        gpu.backward(np.ones((2, 3, 2, 2)))


def test_import_does_not_load_numba_cuda():
    """``import numbanorm`` (and CPU use) must not import numba.cuda: it costs ~0.5 s."""
    code = ("import sys, numpy as np, numbanorm\n"
            "numbanorm.functional.layer_norm(np.ones((2, 3)), 3)\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'numbanorm._cuda')))\n"
            "assert not bad, bad\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=120)
