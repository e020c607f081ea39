"""Layers moved with ``.to("cuda")`` against the same layers on the CPU, on tiny inputs.

Run as ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda`` (see conftest.py).
"""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_close

import numbanorm as nn
from numbanorm._device import is_cuda_array

LAYERS = {
    "BatchNorm1d-2d": (lambda: nn.BatchNorm1d(3), (5, 3)),
    "BatchNorm1d-cumulative": (lambda: nn.BatchNorm1d(3, momentum=None), (4, 3, 2)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), (2, 3, 2, 3)),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(2), (2, 2, 2, 1, 3)),
    "LayerNorm": (lambda: nn.LayerNorm((2, 5)), (3, 2, 5)),
    "RMSNorm": (lambda: nn.RMSNorm(5), (3, 5)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (2, 4, 3)),
    "InstanceNorm1d": (lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True), (2, 3, 5)),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(3), (2, 3, 2, 2)),
}
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-11}


def _randomize(layer, rng):
    state = {k: (rng.uniform(0.5, 1.5, v.shape) if k in ("weight", "running_var") else rng.normal(size=v.shape))
             for k, v in layer.state_dict().items() if k != "num_batches_tracked"}
    if layer.num_batches_tracked is not None:
        state["num_batches_tracked"] = np.array(3)
    layer.load_state_dict(state)


def _same_state(gpu, cpu, rtol):
    got, expected = gpu.state_dict(), cpu.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert isinstance(got[key], np.ndarray), f"state_dict()[{key!r}] is not a NumPy array"
        assert got[key].dtype == value.dtype, key
        assert_close(got[key], value, rtol, name=key)


@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_to_cuda_matches_cpu(cuda, rng, name, x_dtype):
    make, shape = LAYERS[name]
    cpu = make()
    _randomize(cpu, rng)
    gpu = copy.deepcopy(cpu)
    assert gpu.to("cuda") is gpu
    for p in gpu.parameters():
        assert is_cuda_array(p)
    if gpu.running_mean is not None:
        assert is_cuda_array(gpu.running_mean) and is_cuda_array(gpu.running_var)
    rtol = RTOL[np.dtype(x_dtype)]

    for step in range(2):
        x = rng.normal(1.0, 2.0, shape).astype(x_dtype)
        dy = rng.normal(size=shape).astype(x_dtype)
        y = cpu(x)
        y_d = gpu(cuda.to_device(x))
        assert is_cuda_array(y_d)
        assert_close(y_d.copy_to_host(), y, rtol, name=f"y step {step}")
        dx = cpu.backward(dy)
        dx_d = gpu.backward(cuda.to_device(dy))
        assert_close(dx_d.copy_to_host(), dx, 10 * rtol, name=f"dx step {step}")
        for attr in ("grad_weight", "grad_bias"):
            expected = getattr(cpu, attr)
            got = getattr(gpu, attr)
            if expected is None:
                assert got is None, attr
            else:
                assert is_cuda_array(got), attr
                assert_close(got.copy_to_host(), expected, 10 * rtol, name=attr)
        _same_state(gpu, cpu, 1e-6)

    x = rng.normal(size=shape).astype(x_dtype)
    assert gpu.eval() is gpu
    cpu.eval()
    assert_close(gpu(cuda.to_device(x)).copy_to_host(), cpu(x), rtol, name="y eval")

    assert gpu.to("cpu") is gpu
    for p in list(gpu.parameters()) + [gpu.running_mean, gpu.running_var]:
        assert p is None or isinstance(p, np.ndarray)
    _same_state(gpu, cpu, 1e-6)
    assert_close(gpu(x), cpu(x), rtol, name="y back on the cpu")


def test_state_and_dtype_on_cuda(cuda, rng):
    """load_state_dict, reset_parameters and to(dtype) work on a layer on the device."""
    cpu = nn.BatchNorm2d(3)
    _randomize(cpu, rng)
    gpu = nn.BatchNorm2d(3).to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    _same_state(gpu, cpu, 0)
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


def test_pickle_and_deepcopy_of_a_layer_on_cuda(cuda, rng):
    """A layer moved to CUDA pickles with host copies of its arrays and unpickles onto the
    device (as a PyTorch module with CUDA tensors does), gradients included."""
    import pickle

    gpu = nn.BatchNorm2d(3, momentum=None).to("cuda")
    _randomize(gpu, rng)
    x = cuda.to_device(rng.normal(size=(2, 3, 2, 2)).astype(np.float32))
    gpu(x)
    gpu.backward(x)
    for clone in (pickle.loads(pickle.dumps(gpu)), copy.deepcopy(gpu)):
        for name in ("weight", "bias", "running_mean", "running_var", "grad_weight", "grad_bias"):
            assert is_cuda_array(getattr(clone, name)), name
            assert getattr(clone, name) is not getattr(gpu, name), name
        _same_state(clone, gpu, 0)
        assert_close(clone.grad_weight.copy_to_host(), gpu.grad_weight.copy_to_host(), 0, name="grad_weight")
        assert clone.training and int(clone.num_batches_tracked) == 4
        clone.eval()
        assert_close(clone(x).copy_to_host(), gpu.eval()(x).copy_to_host(), 0, name="y eval")
        gpu.train()
