"""GroupNorm and functional.group_norm / group_norm_backward."""

import pickle

import numpy as np
import pytest
import reference as ref
from helpers import (
    assert_close,
    assert_state_unchanged,
    channels_last,
    is_channels_last,
    n,
    randomize_affine,
    snapshot,
    t,
    tol_for,
)

import numbanorm

F = numbanorm.functional
DTYPES = [np.float32, np.float64]


def _data(rng, shape, dtype, loc=0.5, scale=2.0):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def _check_layer(gn, x, dy, tol, groups, eps=1e-5):
    w = None if gn.weight is None else gn.weight.copy()
    b = None if gn.bias is None else gn.bias.copy()
    ey, mean, rstd = ref.group_norm(x, groups, w, b, eps)
    y = gn(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, ey, tol, name="y")
    edx, edw, edb = ref.group_norm_backward(dy, x, groups, mean, rstd, w, b)
    dx = gn.backward(dy)
    assert dx.dtype == x.dtype
    # dx is a difference of terms of size rstd * |dy * w|: its float32 rounding
    # error scales with them, which matters where dx itself is ~0 (groups of one)
    term = float(np.max(rstd)) * float(np.max(np.abs(dy))) * (1.0 if w is None else float(np.max(np.abs(w))))
    assert_close(dx, edx, tol, atol=tol * max(1.0, term), name="dx")
    if w is None:
        assert gn.grad_weight is None and gn.grad_bias is None
    else:
        assert_close(gn.grad_weight, edw, tol, name="grad_weight")
        assert_close(gn.grad_bias, edb, tol, name="grad_bias")
    return y, dx


def test_defaults():
    gn = numbanorm.GroupNorm(2, 6)
    assert gn.weight.shape == (6,) and gn.weight.dtype == np.float32 and np.all(gn.weight == 1)
    assert np.all(gn.bias == 0) and gn.eps == 1e-5
    gn = numbanorm.GroupNorm(3, 3, affine=False, dtype=np.float64)
    assert gn.weight is None and gn.bias is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups", [((3, 6, 5), 2), ((2, 4, 3, 3), 4), ((2, 6, 2, 2, 3), 1),
                                          ((5, 6), 3)])
def test_functional(rng, dtype, shape, groups):
    tol = tol_for(dtype)
    c = shape[1]
    x = _data(rng, shape, dtype)
    w = rng.uniform(0.5, 1.5, c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    y, mean, rstd = F.group_norm(x, groups, w, b, eps=1e-4, return_stats=True)
    ey, emean, erstd = ref.group_norm(x, groups, w, b, 1e-4)
    assert y.dtype == dtype
    assert_close(y, ey, tol, name="y")
    assert mean.shape == (shape[0], groups) and rstd.shape == (shape[0], groups)
    assert mean.dtype == np.float64 and rstd.dtype == np.float64
    stol = 1e-12 if dtype == np.float64 else 1e-8
    assert_close(mean, emean, stol, name="mean")
    assert_close(rstd, erstd, stol, name="rstd")
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = F.group_norm_backward(dy, x, groups, mean, rstd, w, b)
    edx, edw, edb = ref.group_norm_backward(dy, x, groups, emean, erstd, w, b)
    assert dx.dtype == dtype
    assert_close(dx, edx, tol, name="dx")
    assert_close(dw, edw, tol, name="dweight")
    assert_close(db, edb, tol, name="dbias")
    dx, dw, db = F.group_norm_backward(dy, x, groups, mean, rstd)
    assert dw is None and db is None
    assert_close(dx, ref.group_norm_backward(dy, x, groups, emean, erstd)[0], tol, name="dx plain")
    out = np.empty_like(x)
    y = F.group_norm(x, groups, w, b, eps=1e-4, out=out)
    assert np.shares_memory(y, out)
    assert_close(out, ey, tol, name="out")


def test_fd(rng):
    x = rng.standard_normal((2, 4, 3))
    w, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    g = rng.standard_normal(x.shape)

    def f(x, weight, bias):
        return F.group_norm(x, 2, weight, bias, eps=1e-3)

    _, mean, rstd = F.group_norm(x, 2, w, b, eps=1e-3, return_stats=True)
    dx, dw, db = F.group_norm_backward(g, x, 2, mean, rstd, w, b)
    fd = ref.fd_grads(f, {"x": x, "weight": w, "bias": b}, g)
    assert_close(dx, fd["x"], 1e-6, name="dx")
    assert_close(dw, fd["weight"], 1e-6, name="dweight")
    assert_close(db, fd["bias"], 1e-6, name="dbias")


GN_CASES = [(2, {}), (1, dict(eps=1e-3)), (6, dict(affine=False))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups,kw", GN_CASES)
def test_layer_against_reference(rng, dtype, groups, kw):
    gn = numbanorm.GroupNorm(groups, 6, dtype=dtype, **kw)
    randomize_affine(gn, rng)
    x = _data(rng, (3, 6, 4, 5), dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    _check_layer(gn, x, dy, tol_for(dtype), groups, kw.get("eps", 1e-5))
    assert gn.eval() is gn and gn.training is False
    _check_layer(gn, x, dy, tol_for(dtype), groups, kw.get("eps", 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups,kw", GN_CASES)
def test_against_torch(torch, rng, dtype, groups, kw):
    shape = (3, 6, 4, 5)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tm = torch.nn.GroupNorm(groups, 6, dtype=tdtype, **kw)
    gn = numbanorm.GroupNorm(groups, 6, dtype=dtype, **kw)
    w, b = randomize_affine(gn, rng)
    if w is not None:
        with torch.no_grad():
            tm.weight.copy_(torch.from_numpy(w))
            tm.bias.copy_(torch.from_numpy(b))
    x = _data(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    tol = 2 * tol_for(dtype)
    y = gn(x)
    dx = gn.backward(dy)
    xt = t(torch, x, True)
    yt = tm(xt)
    yt.backward(t(torch, dy))
    assert_close(y, n(yt), tol, name="y vs torch")
    assert_close(dx, n(xt.grad), tol, name="dx vs torch")
    if w is not None:
        assert_close(gn.grad_weight, n(tm.weight.grad), tol, name="grad_weight vs torch")
        assert_close(gn.grad_bias, n(tm.bias.grad), tol, name="grad_bias vs torch")
    assert gn.eval() is gn
    assert_close(gn(x), n(yt), tol, name="eval y vs torch")
    sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    fresh = numbanorm.GroupNorm(groups, 6, dtype=dtype, **kw)
    assert set(fresh.state_dict()) == set(sd)
    fresh.load_state_dict(sd)
    assert_close(fresh(x), n(yt), tol, name="y after load_state_dict")


def test_utilities(rng):
    gn = numbanorm.GroupNorm(2, 4, eps=1e-3)
    w, b = randomize_affine(gn, rng)
    r = repr(gn)
    assert r.startswith("GroupNorm(2, 4, eps=0.001, affine=True"), r
    assert gn.eval() is gn and gn.train() is gn and gn.training is True
    gn2 = pickle.loads(pickle.dumps(gn))
    assert gn2.eps == 1e-3 and np.array_equal(gn2.weight, w) and np.array_equal(gn2.bias, b)
    x = _data(rng, (2, 4, 3), np.float32)
    assert np.array_equal(gn2(x), gn(x))
    assert gn.to(np.float64) is gn and gn.weight.dtype == np.float64 and gn.bias.dtype == np.float64
    x64 = x.astype(np.float64)
    assert_close(gn(x64), ref.group_norm(x64, 2, w, b, 1e-3)[0], 1e-10)
    params = list(gn.parameters())
    assert len(params) == 2 and params[0] is gn.weight and params[1] is gn.bias
    gn.reset_parameters()
    assert np.all(gn.weight == 1) and np.all(gn.bias == 0)


# ----------------------------------------------------------------------------
# Hard inputs
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_large_mean_small_std_float32(rng, layout):
    shape = (3, 8, 5, 7)
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    gn = numbanorm.GroupNorm(4, 8)
    w, b = randomize_affine(gn, rng)
    ey, mean, rstd = ref.group_norm(x, 4, w, b)
    assert_close(gn(x), ey, 0.0, atol=1e-3, name="y (float32, mean 1e4, std 1e-2)")
    dy = rng.standard_normal(shape).astype(np.float32)
    edx, edw, _ = ref.group_norm_backward(dy, x, 4, mean, rstd, w, b)
    assert_close(gn.backward(dy), edx, 1e-3, atol=0.0, name="dx")
    assert_close(gn.grad_weight, edw, 1e-3, atol=0.0, name="grad_weight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_group(rng, dtype):
    x = _data(rng, (3, 6, 4), dtype)
    x[1, 2:4] = np.float32(0.1)      # sample 1, group 1 (channels 2, 3)
    x[2, 4:6] = np.float32(10000.1)  # sample 2, group 2
    gn = numbanorm.GroupNorm(3, 6, dtype=dtype)
    w, b = randomize_affine(gn, rng)
    y = gn(x)
    assert_close(y[1, 2:4], np.broadcast_to(b[2:4, None], (2, 4)), 1e-6, name="constant group")
    assert_close(y[2, 4:6], np.broadcast_to(b[4:6, None], (2, 4)), 1e-6, name="constant group 2")
    _check_layer(gn, x, rng.standard_normal(x.shape).astype(dtype), tol_for(dtype), 3)


@pytest.mark.parametrize("shape,groups", [((1, 3, 7), 3), ((3, 7, 1), 7), ((2, 2, 1023), 1),
                                          ((1, 4, 1, 1), 2), ((1, 6, 3, 1), 3)])
def test_odd_sizes(rng, shape, groups):
    for dtype in DTYPES:
        gn = numbanorm.GroupNorm(groups, shape[1], dtype=dtype)
        randomize_affine(gn, rng)
        x = _data(rng, shape, dtype, loc=3.0)
        _check_layer(gn, x, rng.standard_normal(shape).astype(dtype), tol_for(dtype), groups)


@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_last(rng, dtype):
    shape = (2, 6, 3, 5)
    x = channels_last(_data(rng, shape, dtype))
    gn = numbanorm.GroupNorm(3, 6, dtype=dtype)
    randomize_affine(gn, rng)
    dy = channels_last(rng.standard_normal(shape).astype(dtype))
    y, _ = _check_layer(gn, x, dy, tol_for(dtype), 3)
    assert is_channels_last(y), f"output strides {y.strides}"
    y = F.group_norm(x, 2)
    assert is_channels_last(y)
    assert_close(y, ref.group_norm(x, 2)[0], tol_for(dtype), name="functional y")
    x5 = channels_last(_data(rng, (2, 4, 2, 3, 2), dtype))
    y5 = F.group_norm(x5, 2)
    assert is_channels_last(y5)
    assert_close(y5, ref.group_norm(x5, 2)[0], tol_for(dtype), name="3-D spatial y")


def test_noncontiguous_views(rng):
    big = _data(rng, (5, 12, 6, 7), np.float64)
    gn = numbanorm.GroupNorm(2, 6, dtype=np.float64)
    randomize_affine(gn, rng)
    for x in (big[::2, ::2, 1:5, ::3], big[:, 3:9, ::-1], big[:2, :6].transpose(0, 1, 3, 2)):
        assert not x.flags.c_contiguous
        dy = rng.standard_normal(x.shape)[..., ::-1]
        _check_layer(gn, x, dy, 1e-10, 2)


def test_nan_stays_in_its_group(rng):
    x = _data(rng, (3, 6, 4), np.float64)
    x[1, 3, 2] = np.nan  # sample 1, group 1 (channels 2..3)
    gn = numbanorm.GroupNorm(3, 6, dtype=np.float64)
    w, b = randomize_affine(gn, rng)
    y = gn(x)
    assert np.all(np.isnan(y[1, 2:4]))
    ey = ref.group_norm(x, 3, w, b)[0]
    mask = np.ones(x.shape, bool)
    mask[1, 2:4] = False
    assert not np.any(np.isnan(y[mask]))
    assert_close(y[mask], ey[mask], 1e-10, name="other groups")


def test_mixed_dtype(rng):
    gn = numbanorm.GroupNorm(2, 4)
    w, b = randomize_affine(gn, rng)
    x = _data(rng, (3, 4, 5), np.float64)
    dy = rng.standard_normal(x.shape)
    y = gn(x)
    assert y.dtype == np.float64 and gn.weight.dtype == np.float32
    ey, mean, rstd = ref.group_norm(x, 2, w, b)
    assert_close(y, ey, 1e-10)
    dx = gn.backward(dy)
    assert dx.dtype == np.float64
    assert_close(dx, ref.group_norm_backward(dy, x, 2, mean, rstd, w, b)[0], 1e-10)


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def _raises_unchanged(layer, exc, fn):
    before = snapshot(layer)
    with pytest.raises(exc):
        fn()
    assert_state_unchanged(layer, before)


def test_groups_must_divide_channels(rng):
    with pytest.raises(ValueError):
        numbanorm.GroupNorm(4, 6)
    with pytest.raises(ValueError):
        numbanorm.GroupNorm(0, 6)
    x = _data(rng, (2, 6, 3), np.float64)
    with pytest.raises(ValueError):
        F.group_norm(x, 4)
    _, mean, rstd = F.group_norm(x, 3, return_stats=True)
    with pytest.raises(ValueError):
        F.group_norm_backward(x, x, 4, mean, rstd)


def test_errors(rng):
    gn = numbanorm.GroupNorm(2, 4)
    randomize_affine(gn, rng)
    x = _data(rng, (2, 4, 3), np.float32)
    _raises_unchanged(gn, RuntimeError, lambda: gn.backward(x))
    _raises_unchanged(gn, ValueError, lambda: gn(x[:, :2]))            # wrong channel count
    _raises_unchanged(gn, ValueError, lambda: gn(np.zeros((2, 6, 3), np.float32)))
    _raises_unchanged(gn, ValueError, lambda: gn(np.zeros(4, np.float32)))  # wrong ndim
    for bad in (x.astype(np.int64), x.astype(np.complex64), x > 0):
        _raises_unchanged(gn, TypeError, lambda bad=bad: gn(bad))
    gn(x)
    _raises_unchanged(gn, ValueError, lambda: gn.backward(x[:, :, :2]))
    _raises_unchanged(gn, TypeError, lambda: gn.backward(x.astype(np.float64)))
    with pytest.raises(ValueError):
        F.group_norm(x, 2, np.ones(3, np.float32))
    sd = gn.state_dict()
    _raises_unchanged(gn, RuntimeError, lambda: gn.load_state_dict({"weight": sd["weight"] + 1}))
    _raises_unchanged(gn, RuntimeError,
                      lambda: gn.load_state_dict(dict(sd, bias=np.ones(3, np.float32))))
