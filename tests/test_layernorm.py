"""LayerNorm and functional.layer_norm / layer_norm_backward."""

import pickle

import numpy as np
import pytest
import reference as ref
from helpers import (
    assert_close,
    assert_state_unchanged,
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


def _check_layer(ln, x, dy, tol, ns, eps=1e-5):
    """Forward + backward of layer ln against the reference (using ln's own params)."""
    w = None if ln.weight is None else ln.weight.copy()
    b = None if ln.bias is None else ln.bias.copy()
    ey, mean, rstd = ref.layer_norm(x, ns, w, b, eps)
    y = ln(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, ey, tol, name="y")
    edx, edw, edb = ref.layer_norm_backward(dy, x, ns, mean, rstd, w, b)
    dx = ln.backward(dy)
    assert dx.dtype == x.dtype
    # dx is a difference of terms of size rstd * |dy * w|: its float32 rounding
    # error scales with them, which matters where dx itself is ~0 (groups of one)
    term = float(np.max(rstd)) * float(np.max(np.abs(dy))) * (1.0 if w is None else float(np.max(np.abs(w))))
    assert_close(dx, edx, tol, atol=tol * max(1.0, term), name="dx")
    if w is None:
        assert ln.grad_weight is None
    else:
        assert_close(ln.grad_weight, edw, tol, name="grad_weight")
    if b is None:
        assert ln.grad_bias is None
    else:
        assert_close(ln.grad_bias, edb, tol, name="grad_bias")


def test_defaults():
    ln = numbanorm.LayerNorm(6)
    assert ln.weight.shape == (6,) and ln.weight.dtype == np.float32 and np.all(ln.weight == 1)
    assert ln.bias.shape == (6,) and np.all(ln.bias == 0)
    assert ln.eps == 1e-5
    ln = numbanorm.LayerNorm((2, 3), bias=False, dtype=np.float64)
    assert ln.weight.shape == (2, 3) and ln.weight.dtype == np.float64 and ln.bias is None
    ln = numbanorm.LayerNorm([4], elementwise_affine=False)
    assert ln.weight is None and ln.bias is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns", [((5, 6), 6), ((2, 3, 4), (3, 4)), ((2, 3, 7), (7,))])
def test_functional(rng, dtype, shape, ns):
    tol = tol_for(dtype)
    x = _data(rng, shape, dtype)
    nsh = (ns,) if isinstance(ns, int) else ns
    w = rng.uniform(0.5, 1.5, nsh).astype(dtype)
    b = rng.standard_normal(nsh).astype(dtype)
    y, mean, rstd = F.layer_norm(x, ns, w, b, eps=1e-4, return_stats=True)
    ey, emean, erstd = ref.layer_norm(x, ns, w, b, 1e-4)
    lead = shape[:len(shape) - len(nsh)]
    assert y.dtype == dtype
    assert_close(y, ey, tol, name="y")
    assert mean.shape == lead and rstd.shape == lead
    assert mean.dtype == np.float64 and rstd.dtype == np.float64
    stol = 1e-12 if dtype == np.float64 else 1e-8
    assert_close(mean, emean, stol, name="mean")
    assert_close(rstd, erstd, stol, name="rstd")
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = F.layer_norm_backward(dy, x, ns, mean, rstd, w, b)
    edx, edw, edb = ref.layer_norm_backward(dy, x, ns, emean, erstd, w, b)
    assert dx.dtype == dtype
    assert_close(dx, edx, tol, name="dx")
    assert_close(dw, edw, tol, name="dweight")
    assert_close(db, edb, tol, name="dbias")
    # no affine
    y = F.layer_norm(x, ns)
    assert_close(y, ref.layer_norm(x, ns)[0], tol, name="y no affine")
    dx, dw, db = F.layer_norm_backward(dy, x, ns, mean, rstd)
    assert dw is None and db is None
    assert_close(dx, ref.layer_norm_backward(dy, x, ns, emean, erstd)[0], tol, name="dx no affine")


def test_functional_out(rng):
    x = _data(rng, (3, 5), np.float64)
    out = np.full_like(x, np.nan)
    y = F.layer_norm(x, 5, out=out)
    assert np.shares_memory(y, out)
    assert_close(out, ref.layer_norm(x, 5)[0], 1e-10)


def test_fd(rng):
    x = rng.standard_normal((2, 2, 3))
    w, b = rng.uniform(0.5, 1.5, (2, 3)), rng.standard_normal((2, 3))
    g = rng.standard_normal(x.shape)

    def f(x, weight, bias):
        return F.layer_norm(x, (2, 3), weight, bias, eps=1e-3)

    _, mean, rstd = F.layer_norm(x, (2, 3), w, b, eps=1e-3, return_stats=True)
    dx, dw, db = F.layer_norm_backward(g, x, (2, 3), mean, rstd, w, b)
    fd = ref.fd_grads(f, {"x": x, "weight": w, "bias": b}, g)
    assert_close(dx, fd["x"], 1e-6, name="dx")
    assert_close(dw, fd["weight"], 1e-6, name="dweight")
    assert_close(db, fd["bias"], 1e-6, name="dbias")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(), dict(bias=False), dict(elementwise_affine=False),
                                dict(eps=1e-3)])
def test_layer_against_reference(rng, dtype, kw):
    ln = numbanorm.LayerNorm((3, 4), dtype=dtype, **kw)
    randomize_affine(ln, rng)
    x = _data(rng, (2, 5, 3, 4), dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    _check_layer(ln, x, dy, tol_for(dtype), (3, 4), eps=kw.get("eps", 1e-5))
    # eval mode changes nothing for LayerNorm
    assert ln.eval() is ln and ln.training is False
    _check_layer(ln, x, dy, tol_for(dtype), (3, 4), eps=kw.get("eps", 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ns,kw", [((6,), {}), ((3, 4), dict(bias=False)),
                                   ((4,), dict(elementwise_affine=False, eps=1e-3))])
def test_against_torch(torch, rng, dtype, ns, kw):
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tm = torch.nn.LayerNorm(ns, dtype=tdtype, **kw)
    ln = numbanorm.LayerNorm(ns, dtype=dtype, **kw)
    w, b = randomize_affine(ln, rng)
    with torch.no_grad():
        if w is not None:
            tm.weight.copy_(torch.from_numpy(w))
        if b is not None:
            tm.bias.copy_(torch.from_numpy(b))
    x = _data(rng, (3, 2) + ns, dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    xt = t(torch, x, True)
    yt = tm(xt)
    yt.backward(t(torch, dy))
    tol = 2 * tol_for(dtype)
    assert_close(ln(x), n(yt), tol, name="y")
    assert_close(ln.backward(dy), n(xt.grad), tol, name="dx")
    if w is not None:
        assert_close(ln.grad_weight, n(tm.weight.grad), tol, name="grad_weight")
    if b is not None:
        assert_close(ln.grad_bias, n(tm.bias.grad), tol, name="grad_bias")
    else:
        assert ln.grad_bias is None
    # state dict from torch
    sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    fresh = numbanorm.LayerNorm(ns, dtype=dtype, **kw)
    assert set(fresh.state_dict()) == set(sd)
    fresh.load_state_dict(sd)
    tm.eval()
    with torch.no_grad():
        ty = tm(t(torch, x)).numpy()
    assert_close(fresh.eval()(x), ty, tol, name="y after load_state_dict")


def test_utilities(rng):
    ln = numbanorm.LayerNorm((2, 3), eps=1e-3)
    w, b = randomize_affine(ln, rng)
    r = repr(ln)
    assert r.startswith("LayerNorm((2, 3), eps=0.001, elementwise_affine=True"), r
    assert ln.train() is ln and ln.eval() is ln and ln.training is False
    ln2 = pickle.loads(pickle.dumps(ln))
    assert ln2.training is False and ln2.eps == 1e-3
    assert np.array_equal(ln2.weight, w) and np.array_equal(ln2.bias, b)
    x = _data(rng, (4, 2, 3), np.float32)
    assert np.array_equal(ln2(x), ln(x))
    assert ln.to(np.float64) is ln and ln.weight.dtype == np.float64 and ln.bias.dtype == np.float64
    assert np.array_equal(ln.weight, w.astype(np.float64))
    x64 = x.astype(np.float64)
    y = ln(x64)
    assert y.dtype == np.float64
    assert_close(y, ref.layer_norm(x64, (2, 3), w, b, 1e-3)[0], 1e-10)
    params = list(ln.parameters())
    assert len(params) == 2 and params[0] is ln.weight and params[1] is ln.bias
    ln.reset_parameters()
    assert np.all(ln.weight == 1) and np.all(ln.bias == 0)


# ----------------------------------------------------------------------------
# Hard inputs
# ----------------------------------------------------------------------------


def test_large_mean_small_std_float32(rng):
    x = (1e4 + 1e-2 * rng.standard_normal((6, 257))).astype(np.float32)
    ln = numbanorm.LayerNorm(257)
    w, b = randomize_affine(ln, rng)
    ey, mean, rstd = ref.layer_norm(x, 257, w, b)
    y = ln(x)
    assert y.dtype == np.float32
    assert_close(y, ey, 0.0, atol=1e-3, name="y (float32, mean 1e4, std 1e-2)")
    dy = rng.standard_normal(x.shape).astype(np.float32)
    edx, edw, _ = ref.layer_norm_backward(dy, x, 257, mean, rstd, w, b)
    assert_close(ln.backward(dy), edx, 1e-3, atol=0.0, name="dx")
    assert_close(ln.grad_weight, edw, 1e-3, atol=0.0, name="grad_weight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_rows(rng, dtype):
    x = _data(rng, (4, 9), dtype)
    x[1] = np.float32(0.1)
    x[3] = np.float32(10000.1)
    ln = numbanorm.LayerNorm(9, dtype=dtype)
    w, b = randomize_affine(ln, rng)
    y = ln(x)
    assert_close(y[1], b, 1e-6, name="constant row -> bias")
    assert_close(y[3], b, 1e-6, name="constant large row -> bias")
    dy = rng.standard_normal(x.shape).astype(dtype)
    _check_layer(ln, x, dy, tol_for(dtype), 9)


@pytest.mark.parametrize("d", [1, 3, 7, 1023])
def test_odd_sizes(rng, d):
    for dtype in DTYPES:
        ln = numbanorm.LayerNorm(d, dtype=dtype)
        randomize_affine(ln, rng)
        x = _data(rng, (3, d), dtype, loc=5.0)
        dy = rng.standard_normal(x.shape).astype(dtype)
        _check_layer(ln, x, dy, tol_for(dtype), d)
    # a single row
    x = _data(rng, (1, d), np.float64)
    _check_layer(ln, x, rng.standard_normal(x.shape), 1e-10, d)


def test_noncontiguous_views(rng):
    big = _data(rng, (6, 5, 16), np.float64)
    ln = numbanorm.LayerNorm(7, dtype=np.float64)
    randomize_affine(ln, rng)
    for x in (big[::2, 1:4, 3:10], big[:, :, ::-1][:, :, 2:9], big[:, 1, ::2][:, :7]):
        assert not x.flags.c_contiguous
        dy = rng.standard_normal(x.shape + (2,))[..., 0]  # non-contiguous dy
        _check_layer(ln, x, dy, 1e-10, 7)
    # transposed view: the normalized axis has a large stride
    ln5 = numbanorm.LayerNorm(5, dtype=np.float64)
    x = big[:, :, :5].transpose(0, 2, 1).copy().transpose(0, 2, 1)
    assert not x.flags.c_contiguous
    _check_layer(ln5, x, rng.standard_normal(x.shape), 1e-10, 5)


def test_nan_stays_in_its_row(rng):
    x = _data(rng, (4, 6), np.float64)
    x[2, 3] = np.nan
    ln = numbanorm.LayerNorm(6, dtype=np.float64)
    w, b = randomize_affine(ln, rng)
    y = ln(x)
    assert np.all(np.isnan(y[2]))
    keep = [0, 1, 3]
    ey, mean, rstd = ref.layer_norm(x[keep], 6, w, b)
    assert_close(y[keep], ey, 1e-10, name="other rows")
    dy = rng.standard_normal(x.shape)
    dx = ln.backward(dy)
    edx, _, _ = ref.layer_norm_backward(dy[keep], x[keep], 6, mean, rstd, w, b)
    assert_close(dx[keep], edx, 1e-10, name="dx other rows")


def test_mixed_dtype(rng):
    ln = numbanorm.LayerNorm(5)
    randomize_affine(ln, rng)
    x = _data(rng, (3, 5), np.float64)
    dy = rng.standard_normal(x.shape)
    y = ln(x)
    assert y.dtype == np.float64 and ln.weight.dtype == np.float32
    ey, mean, rstd = ref.layer_norm(x, 5, ln.weight, ln.bias)
    assert_close(y, ey, 1e-10, name="y")
    dx = ln.backward(dy)
    assert dx.dtype == np.float64
    assert_close(dx, ref.layer_norm_backward(dy, x, 5, mean, rstd, ln.weight, ln.bias)[0], 1e-10)


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def _raises_unchanged(layer, exc, fn, match=None):
    before = snapshot(layer)
    with pytest.raises(exc, match=match):
        fn()
    assert_state_unchanged(layer, before)


def test_errors(rng):
    ln = numbanorm.LayerNorm((3, 4))
    randomize_affine(ln, rng)
    x = _data(rng, (2, 3, 4), np.float32)
    _raises_unchanged(ln, RuntimeError, lambda: ln.backward(x))
    _raises_unchanged(ln, ValueError, lambda: ln(x[:, :, :3]))          # wrong trailing shape
    _raises_unchanged(ln, ValueError, lambda: ln(x[:, :2]))
    _raises_unchanged(ln, ValueError, lambda: ln(np.zeros(4, np.float32)))  # too few dims
    for bad in (x.astype(np.int64), x.astype(np.complex64), x > 0):
        _raises_unchanged(ln, TypeError, lambda bad=bad: ln(bad))
    ln(x)
    _raises_unchanged(ln, ValueError, lambda: ln.backward(x[:1]))
    _raises_unchanged(ln, TypeError, lambda: ln.backward(x.astype(np.float64)))
    with pytest.raises(ValueError):
        F.layer_norm(x, (3, 4), np.ones(4, np.float32))
    _, mean, rstd = F.layer_norm(x, (3, 4), return_stats=True)
    with pytest.raises(ValueError):
        F.layer_norm_backward(x, x, (3, 4), mean[:1], rstd)
    sd = ln.state_dict()
    _raises_unchanged(ln, RuntimeError, lambda: ln.load_state_dict({"weight": sd["weight"] + 1}))
    _raises_unchanged(ln, RuntimeError,
                      lambda: ln.load_state_dict(dict(sd, weight=np.ones(12, np.float32))))
    _raises_unchanged(ln, RuntimeError,
                      lambda: ln.load_state_dict(dict(sd, running_mean=np.ones(3, np.float32))))
