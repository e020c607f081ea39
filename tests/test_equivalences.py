"""Identities between the normalization families (each side computed by numbanorm).

- GroupNorm(1, C) == LayerNorm over (C, *S) without affine,
- GroupNorm(C, C) == InstanceNorm (no running stats),
- RMSNorm on zero-mean rows == LayerNorm without bias,
- BatchNorm2d on (N, C, H, W) == BatchNorm1d on the (N*H*W, C) view.

Forward and backward; both sides are also checked against the reference so
an identity cannot hold by being wrong twice.
"""

import numpy as np
import pytest
import reference as ref
from helpers import assert_close, channels_last, data, tol_for

import numbanorm

DTYPES = [np.float32, np.float64]


def _inputs(rng, shape, dtype):
    """x (mean 0.5, std 2) and dy for ``shape``, and the tolerance of ``dtype``."""
    return data(rng, shape, dtype), rng.standard_normal(shape).astype(dtype), tol_for(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_groupnorm_one_group_is_layernorm(rng, dtype):
    x, dy, tol = _inputs(rng, (3, 4, 3, 5), dtype)
    gn = numbanorm.GroupNorm(1, 4, affine=False, dtype=dtype)
    ln = numbanorm.LayerNorm((4, 3, 5), elementwise_affine=False, dtype=dtype)
    yg, yl = gn(x), ln(x)
    assert_close(yg, yl, tol, name="y")
    assert_close(yg, ref.layer_norm(x, (4, 3, 5))[0], tol, name="y vs reference")
    assert_close(gn.backward(dy), ln.backward(dy), tol, name="dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_groupnorm_c_groups_is_instancenorm(rng, dtype):
    x, dy, tol = _inputs(rng, (3, 4, 3, 5), dtype)
    x = channels_last(x)
    gn = numbanorm.GroupNorm(4, 4, dtype=dtype)
    inn = numbanorm.InstanceNorm2d(4, affine=True, dtype=dtype)
    w = rng.uniform(0.5, 1.5, 4).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    for layer in (gn, inn):
        layer.weight[...] = w
        layer.bias[...] = b
    yg, yi = gn(x), inn(x)
    assert_close(yg, yi, tol, name="y")
    assert_close(yg, ref.instance_norm(x, weight=w, bias=b)[0], tol, name="y vs reference")
    assert_close(gn.backward(dy), inn.backward(dy), tol, name="dx")
    assert_close(gn.grad_weight, inn.grad_weight, tol, name="grad_weight")
    assert_close(gn.grad_bias, inn.grad_bias, tol, name="grad_bias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_on_zero_mean_rows_is_layernorm(rng, dtype):
    tol = tol_for(dtype)
    x = rng.standard_normal((5, 16))
    x -= x.mean(axis=1, keepdims=True)  # zero-mean rows (in float64)
    x = x.astype(dtype)  # float32 rounding leaves a residual mean ~1e-8, far below tol
    dy = rng.standard_normal(x.shape).astype(dtype)
    w = rng.uniform(0.5, 1.5, 16).astype(dtype)
    eps = 1e-5
    rms = numbanorm.RMSNorm(16, eps=eps, dtype=dtype)
    ln = numbanorm.LayerNorm(16, eps=eps, bias=False, dtype=dtype)
    rms.weight[...] = w
    ln.weight[...] = w
    yr, yl = rms(x), ln(x)
    assert_close(yr, yl, tol, name="y")
    assert_close(yr, ref.rms_norm(x, 16, w, eps)[0], tol, name="y vs reference")
    # the gradients differ in general (LayerNorm also projects out the mean
    # direction); on zero-mean rows they differ exactly by the row mean of the
    # RMSNorm input gradient.
    dxr, dxl = rms.backward(dy), ln.backward(dy)
    assert_close(dxl, dxr - dxr.astype(np.float64).mean(axis=1, keepdims=True), tol, name="dx")
    assert_close(rms.grad_weight, ln.grad_weight, tol, name="grad_weight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm2d_is_batchnorm1d_on_flattened_view(rng, dtype):
    x, dy, tol = _inputs(rng, (3, 4, 2, 5), dtype)
    bn2 = numbanorm.BatchNorm2d(4, dtype=dtype)
    bn1 = numbanorm.BatchNorm1d(4, dtype=dtype)
    w = rng.uniform(0.5, 1.5, 4).astype(dtype)
    for layer in (bn1, bn2):
        layer.weight[...] = w
    x1 = np.moveaxis(x, 1, -1).reshape(-1, 4)
    dy1 = np.moveaxis(dy, 1, -1).reshape(-1, 4)
    y2, y1 = bn2(x), bn1(x1)
    assert_close(np.moveaxis(y2, 1, -1).reshape(-1, 4), y1, tol, name="y")
    dx2, dx1 = bn2.backward(dy), bn1.backward(dy1)
    assert_close(np.moveaxis(dx2, 1, -1).reshape(-1, 4), dx1, tol, name="dx")
    assert_close(bn2.grad_weight, bn1.grad_weight, tol, name="grad_weight")
    assert_close(bn2.running_var, bn1.running_var, tol, name="running_var")
    assert_close(y1, ref.batch_norm(x1, None, None, w, None, True)[0], tol, name="y vs reference")
