"""InstanceNorm-only behaviour: unbatched input, one position per instance, the rank check.
The checks every family shares run over the table in ``test_families_*.py``."""

import numpy as np
import pytest
from backends import backend_param, both
from checks import DTYPES, check_step, layer_pair, set_mode
from families import INSTANCE_NORM, Case
from helpers import assert_state_unchanged, data, randomize_affine, snapshot

import numbanorm

F = numbanorm.functional


def test_defaults():
    inn = numbanorm.InstanceNorm2d(3)
    assert inn.weight is None and inn.bias is None
    assert inn.running_mean is None and inn.running_var is None
    assert inn.eps == 1e-5 and inn.momentum == 0.1 and inn.training is True
    inn = numbanorm.InstanceNorm1d(4, affine=True, track_running_stats=True, dtype=np.float64)
    assert inn.weight.dtype == np.float64 and np.all(inn.weight == 1) and np.all(inn.bias == 0)
    assert np.all(inn.running_mean == 0) and np.all(inn.running_var == 1)


class _Unbatched:
    """A batched reference seen through unbatched input: adds the batch axis and drops it."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, x):
        return self.inner.forward(x[None])[0]

    def backward(self, dy):
        dx, dw, db = self.inner.backward(dy[None])
        return dx[0], dw, db


@pytest.mark.parametrize("be,shape,dtype", [
    backend_param(name, shape, dtype, id=f"{name}-{'x'.join(map(str, shape))}-{np.dtype(dtype)}")
    for shape in [(3, 5), (3, 2, 3), (2, 2, 1, 3)] for dtype in DTYPES for name in ("cpu", "cuda")
    if name == "cpu" or dtype == np.float32 and len(shape) < 4])
def test_unbatched_input(rng, be, shape, dtype):
    """(C, L), (C, H, W) and (C, D, H, W) input: as the batch of one it is, forward and
    backward, running statistics, training and evaluation, on both backends."""
    case = Case((1,) + shape)
    layer, refl, twin = layer_pair(be, INSTANCE_NORM, case, rng, dtype, affine=True, track_running_stats=True)
    for step in range(3):
        if step == 2:
            set_mode(False, layer, refl, twin)
        x = data(rng, shape, dtype, loc=step)
        dy = rng.standard_normal(shape).astype(dtype)
        y, dx = check_step(be, INSTANCE_NORM, layer, _Unbatched(refl), x, dy, f"step {step}", twin)
        assert tuple(y.shape) == shape and tuple(dx.shape) == shape
    with pytest.raises(ValueError, match="dy must have the shape"):
        layer.backward(be.put(dy[None]))


@pytest.mark.parametrize("be", both())
def test_errors(rng, be):
    inn = numbanorm.InstanceNorm2d(3, affine=True, track_running_stats=True)
    randomize_affine(inn, rng)
    x = data(rng, (2, 3, 4, 4), np.float32)
    inn(x)
    inn = be.layer(inn)
    # training with one position per instance (PyTorch raises ValueError too); fine in evaluation
    before = snapshot(inn)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        inn(be.put(np.ascontiguousarray(x[:, :, :1, :1])))
    assert_state_unchanged(inn, before)
    inn.eval()
    assert tuple(inn(be.put(np.ascontiguousarray(x[:, :, :1, :1]))).shape) == (2, 3, 1, 1)
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        F.instance_norm(be.put(x[0, 0]))
