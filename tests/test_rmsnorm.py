"""RMSNorm-only behaviour (``eps=None`` is the machine epsilon of the input's dtype, as in
torch.nn.RMSNorm; rows of zeros). The checks every family shares run over the table in
``test_families_*.py``."""

import numpy as np
import pytest

import numbanorm

F = numbanorm.functional


def test_defaults():
    r = numbanorm.RMSNorm(5)
    assert r.eps is None and r.weight.shape == (5,) and r.weight.dtype == np.float32
    assert np.all(r.weight == 1) and r.bias is None
    r = numbanorm.RMSNorm((2, 3), eps=1e-6, elementwise_affine=False, dtype=np.float64)
    assert r.weight is None and r.eps == 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eps_none_is_the_input_dtypes_machine_epsilon(dtype):
    x = (np.random.default_rng(0).standard_normal((4, 6, 5)) * 2 + 3).astype(dtype)
    _, mean, rstd = F.rms_norm(x, (6, 5), return_stats=True)
    assert mean is None and rstd.shape == (4,) and rstd.dtype == np.float64
    mean_square = (x.astype(np.float64) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(rstd, 1 / np.sqrt(mean_square + np.finfo(dtype).eps), rtol=1e-12)


def test_rows_of_zeros_give_zeros():
    rms = numbanorm.RMSNorm(9, eps=1e-5, dtype=np.float64)
    rms.weight[...] = np.random.default_rng(1).uniform(0.5, 1.5, 9)
    z = np.zeros((6, 4, 20))[1, :, :9]
    assert np.array_equal(rms(z), np.zeros_like(z))
