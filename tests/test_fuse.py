"""numbanorm.fuse: BatchNorm folding against PyTorch's fusion and against the eval layer."""

import numpy as np
import pytest

import numbanorm
from numbanorm.fuse import bn_scale_shift, fold_batchnorm

# (weight shape, BatchNorm class): Linear, Conv1d, Conv2d, Conv3d
CASES = {
    "linear": ((6, 5), numbanorm.BatchNorm1d),
    "conv1d": ((6, 3, 5), numbanorm.BatchNorm1d),
    "conv2d": ((6, 3, 3, 3), numbanorm.BatchNorm2d),
    "conv3d": ((6, 2, 3, 3, 3), numbanorm.BatchNorm3d),
}


def _bn(cls, num_features, dtype, rng, affine=True, mean_offset=0.0):
    """A BatchNorm in eval mode with random running stats (and parameters when affine)."""
    bn = cls(num_features, eps=1e-3, affine=affine, dtype=dtype)
    bn.running_mean[...] = rng.standard_normal(num_features) + mean_offset
    bn.running_var[...] = rng.uniform(0.2, 3.0, num_features)
    if affine:
        bn.weight[...] = rng.standard_normal(num_features)
        bn.bias[...] = rng.standard_normal(num_features)
    return bn.eval()


def _torch_fold(torch, weight, bias, bn, *, transpose=False):
    """PyTorch's fusion of the same arrays, in the arrays' dtype."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

    n = bn.running_mean.shape[0]
    t = torch.from_numpy
    w = t(weight.copy())
    b = None if bias is None else t(bias.copy())
    args = (
        t(bn.running_mean.astype(weight.dtype)),
        t(bn.running_var.astype(weight.dtype)),
        bn.eps,
        t((bn.weight if bn.weight is not None else np.ones(n)).astype(weight.dtype)),
        t((bn.bias if bn.bias is not None else np.zeros(n)).astype(weight.dtype)),
    )
    if weight.ndim == 2:
        new_w, new_b = fuse_linear_bn_weights(w, b, *args)
    else:
        new_w, new_b = fuse_conv_bn_weights(w, b, *args, transpose=transpose)
    return new_w.detach().numpy(), new_b.detach().numpy()


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("kind", list(CASES))
def test_fold_matches_torch(kind, with_bias, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shape, cls = CASES[kind]
    weight = rng.standard_normal(shape).astype(dtype)
    bias = rng.standard_normal(shape[0]).astype(dtype) if with_bias else None
    bn = _bn(cls, shape[0], dtype, rng)

    new_w, new_b = fold_batchnorm(weight, bias, bn)
    ref_w, ref_b = _torch_fold(torch, weight, bias, bn)
    assert new_w.dtype == weight.dtype and new_w.shape == weight.shape
    assert new_b.dtype == dtype and new_b.shape == (shape[0],)
    # torch computes in the arrays' dtype, we in float64: a rounding or two apart in float32
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(new_w, ref_w, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(new_b, ref_b, rtol=rtol, atol=rtol)
    if dtype == np.float64:
        return
    # float32: torch's float64 result rounded once (no float32 error from the fold itself)
    w64 = weight.astype(np.float64)
    b64 = None if bias is None else bias.astype(np.float64)
    ref64_w, ref64_b = _torch_fold(torch, w64, b64, bn)
    np.testing.assert_array_max_ulp(new_w, ref64_w.astype(dtype), maxulp=1)
    np.testing.assert_array_max_ulp(new_b, ref64_b.astype(dtype), maxulp=1)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_fold_without_affine_matches_torch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    shape, cls = CASES[kind]
    weight = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    bn = _bn(cls, shape[0], np.float32, rng, affine=False)
    assert bn.weight is None and bn.bias is None
    new_w, new_b = fold_batchnorm(weight, bias, bn)
    ref_w, ref_b = _torch_fold(torch, weight, bias, bn)
    np.testing.assert_allclose(new_w, ref_w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_b, ref_b, rtol=1e-6, atol=1e-6)


@pytest.mark.torch
def test_fold_conv_transpose_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((3, 6, 3, 3))  # ConvTranspose2d(3 -> 6)
    bias = rng.standard_normal(6)
    bn = _bn(numbanorm.BatchNorm2d, 6, np.float64, rng)
    new_w, new_b = fold_batchnorm(weight, bias, bn, transpose=True)
    ref_w, ref_b = _torch_fold(torch, weight, bias, bn, transpose=True)
    np.testing.assert_allclose(new_w, ref_w, rtol=1e-13)
    np.testing.assert_allclose(new_b, ref_b, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_folded_linear_equals_linear_then_eval_batchnorm(dtype):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 5)).astype(dtype)
    bias = rng.standard_normal(8).astype(dtype)
    # running mean far from zero, as after a Linear with a large bias
    bn = _bn(numbanorm.BatchNorm1d, 8, dtype, rng, mean_offset=50.0)
    x = rng.standard_normal((16, 5)).astype(dtype)
    expected = bn(x.astype(np.float64) @ weight.T.astype(np.float64) + bias)
    new_w, new_b = fold_batchnorm(weight, bias, bn)
    folded = x.astype(np.float64) @ new_w.T.astype(np.float64) + new_b
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(folded, expected, rtol=tol, atol=tol)


def test_scale_shift_is_the_eval_map():
    rng = np.random.default_rng(4)
    bn = _bn(numbanorm.BatchNorm2d, 4, np.float64, rng)
    scale, shift = bn_scale_shift(bn)
    assert scale.dtype == shift.dtype == np.float64 and scale.shape == (4,)
    x = rng.standard_normal((3, 4, 5, 5))
    expected = bn(x)
    np.testing.assert_allclose(x * scale[:, None, None] + shift[:, None, None], expected,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        scale, bn.weight / np.sqrt(bn.running_var + bn.eps), rtol=1e-15)


def test_fold_leaves_inputs_unchanged():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((4, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    bn = _bn(numbanorm.BatchNorm1d, 4, np.float32, rng)
    copies = [a.copy() for a in (weight, bias, bn.running_mean, bn.running_var, bn.weight)]
    fold_batchnorm(weight, bias, bn)
    for before, after in zip(copies, (weight, bias, bn.running_mean, bn.running_var, bn.weight), strict=True):
        np.testing.assert_array_equal(before, after)


def test_fold_needs_running_stats():
    bn = numbanorm.BatchNorm1d(4, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(np.ones((4, 3), np.float32), None, bn)
    with pytest.raises(ValueError, match="track_running_stats"):
        bn_scale_shift(bn)


def test_fold_channel_mismatch():
    bn = numbanorm.BatchNorm2d(4).eval()
    with pytest.raises(ValueError, match="num_features=4.*5"):
        fold_batchnorm(np.ones((5, 3, 3, 3), np.float32), None, bn)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        fold_batchnorm(np.ones((4, 3, 3, 3), np.float32), np.ones(5, np.float32), bn)


@pytest.mark.parametrize("shape", [(4,), (4, 1, 1, 1, 1, 1), ()])
def test_fold_wrong_weight_ndim(shape):
    bn = numbanorm.BatchNorm1d(4).eval()
    with pytest.raises(ValueError, match="ndim"):
        fold_batchnorm(np.ones(shape, np.float32), None, bn)


@pytest.mark.parametrize("bad", ["weight", "bias"])
@pytest.mark.parametrize("dtype", [np.int64, np.complex128, np.bool_])
def test_fold_rejects_non_float(bad, dtype):
    bn = numbanorm.BatchNorm1d(4).eval()
    weight = np.ones((4, 3), np.float32)
    bias = np.ones(4, np.float32)
    if bad == "weight":
        weight = weight.astype(dtype)
    else:
        bias = bias.astype(dtype)
    with pytest.raises(TypeError, match=f"{bad} must have a real floating dtype"):
        fold_batchnorm(weight, bias, bn)
