"""RMSNorm and functional.rms_norm / rms_norm_backward.

y = x / sqrt(mean(x**2) + eps) * weight, eps=None meaning the machine epsilon of
the input dtype (as torch.nn.RMSNorm).
"""

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


def _check_layer(rms, x, dy, tol, ns, eps):
    w = None if rms.weight is None else rms.weight.copy()
    ey, rstd = ref.rms_norm(x, ns, w, eps)
    y = rms(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, ey, tol, name="y")
    edx, edw, _ = ref.rms_norm_backward(dy, x, ns, rstd, w)
    dx = rms.backward(dy)
    assert dx.dtype == x.dtype
    assert_close(dx, edx, tol, name="dx")
    assert rms.grad_bias is None
    if w is None:
        assert rms.grad_weight is None
    else:
        assert_close(rms.grad_weight, edw, tol, name="grad_weight")


def test_defaults():
    r = numbanorm.RMSNorm(5)
    assert r.eps is None and r.weight.shape == (5,) and r.weight.dtype == np.float32
    assert np.all(r.weight == 1) and r.bias is None
    r = numbanorm.RMSNorm((2, 3), eps=1e-6, elementwise_affine=False, dtype=np.float64)
    assert r.weight is None and r.eps == 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns,eps", [((5, 6), 6, None), ((2, 3, 4), (3, 4), 1e-3)])
def test_functional(rng, dtype, shape, ns, eps):
    tol = tol_for(dtype)
    x = _data(rng, shape, dtype)
    nsh = (ns,) if isinstance(ns, int) else ns
    w = rng.uniform(0.5, 1.5, nsh).astype(dtype)
    e = ref.rms_eps(dtype) if eps is None else eps
    y, _, rstd = F.rms_norm(x, ns, w, eps, return_stats=True)
    ey, erstd = ref.rms_norm(x, ns, w, e)
    assert y.dtype == dtype
    assert_close(y, ey, tol, name="y")
    assert rstd.dtype == np.float64 and rstd.shape == shape[:len(shape) - len(nsh)]
    assert_close(rstd, erstd, 1e-12 if dtype == np.float64 else 1e-8, name="rstd")
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = F.rms_norm_backward(dy, x, ns, rstd, w)
    edx, edw, _ = ref.rms_norm_backward(dy, x, ns, erstd, w)
    assert db is None and dx.dtype == dtype
    assert_close(dx, edx, tol, name="dx")
    assert_close(dw, edw, tol, name="dweight")
    dx, dw, _ = F.rms_norm_backward(dy, x, ns, rstd)
    assert dw is None
    assert_close(dx, ref.rms_norm_backward(dy, x, ns, erstd)[0], tol, name="dx no weight")
    out = np.empty_like(x)
    y = F.rms_norm(x, ns, w, eps, out=out)
    assert np.shares_memory(y, out)
    assert_close(out, ey, tol, name="out")


def test_fd(rng):
    x = rng.standard_normal((3, 4))
    w = rng.uniform(0.5, 1.5, 4)
    g = rng.standard_normal(x.shape)

    def f(x, weight):
        return F.rms_norm(x, 4, weight, 1e-3)

    _, _, rstd = F.rms_norm(x, 4, w, 1e-3, return_stats=True)
    dx, dw, _ = F.rms_norm_backward(g, x, 4, rstd, w)
    fd = ref.fd_grads(f, {"x": x, "weight": w}, g)
    assert_close(dx, fd["x"], 1e-6, name="dx")
    assert_close(dw, fd["weight"], 1e-6, name="dweight")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(), dict(eps=1e-4), dict(elementwise_affine=False)])
def test_layer_against_reference(rng, dtype, kw):
    rms = numbanorm.RMSNorm((3, 4), dtype=dtype, **kw)
    randomize_affine(rms, rng)
    x = _data(rng, (2, 5, 3, 4), dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    eps = kw.get("eps") or ref.rms_eps(dtype)
    _check_layer(rms, x, dy, tol_for(dtype), (3, 4), eps)
    assert rms.eval() is rms
    _check_layer(rms, x, dy, tol_for(dtype), (3, 4), eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ns,kw", [((6,), {}), ((3, 4), dict(eps=1e-4)),
                                   ((5,), dict(elementwise_affine=False))])
def test_against_torch(torch, rng, dtype, ns, kw):
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tm = torch.nn.RMSNorm(ns, dtype=tdtype, **kw)
    rms = numbanorm.RMSNorm(ns, dtype=dtype, **kw)
    w, _ = randomize_affine(rms, rng)
    if w is not None:
        with torch.no_grad():
            tm.weight.copy_(torch.from_numpy(w))
    # include a row of zeros: y = 0 there, and the eps=None default matters
    x = _data(rng, (4, 2) + ns, dtype)
    x[1, 0] = 0.0
    dy = rng.standard_normal(x.shape).astype(dtype)
    xt = t(torch, x, True)
    yt = tm(xt)
    yt.backward(t(torch, dy))
    tol = 2 * tol_for(dtype)
    assert_close(rms(x), n(yt), tol, name="y")
    assert_close(rms.backward(dy), n(xt.grad), tol, name="dx")
    if w is not None:
        assert_close(rms.grad_weight, n(tm.weight.grad), tol, name="grad_weight")
    sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    fresh = numbanorm.RMSNorm(ns, dtype=dtype, **kw)
    assert set(fresh.state_dict()) == set(sd)
    fresh.load_state_dict(sd)
    with torch.no_grad():
        assert_close(fresh(x), tm(t(torch, x)).numpy(), tol, name="y after load_state_dict")


def test_utilities(rng):
    rms = numbanorm.RMSNorm(4, eps=1e-6)
    w, _ = randomize_affine(rms, rng)
    r = repr(rms)
    assert r.startswith("RMSNorm((4,), eps=1e-06, elementwise_affine=True"), r
    assert repr(numbanorm.RMSNorm(3)).startswith("RMSNorm((3,), eps=None"), repr(numbanorm.RMSNorm(3))
    assert rms.eval() is rms and rms.train() is rms and rms.training is True
    rms2 = pickle.loads(pickle.dumps(rms))
    assert rms2.eps == 1e-6 and np.array_equal(rms2.weight, w)
    x = _data(rng, (3, 4), np.float32)
    assert np.array_equal(rms2(x), rms(x))
    assert rms.to(np.float64) is rms and rms.weight.dtype == np.float64
    x64 = x.astype(np.float64)
    assert_close(rms(x64), ref.rms_norm(x64, 4, w, 1e-6)[0], 1e-10)
    assert list(rms.parameters())[0] is rms.weight
    rms.reset_parameters()
    assert np.all(rms.weight == 1)


# ----------------------------------------------------------------------------
# Hard inputs
# ----------------------------------------------------------------------------


def test_large_values_float32(rng):
    x = (1e4 + 1e-2 * rng.standard_normal((4, 300))).astype(np.float32)
    rms = numbanorm.RMSNorm(300)
    w, _ = randomize_affine(rms, rng)
    eps = ref.rms_eps(np.float32)
    ey, rstd = ref.rms_norm(x, 300, w, eps)
    assert_close(rms(x), ey, 1e-5, name="y")
    dy = rng.standard_normal(x.shape).astype(np.float32)
    edx, edw, _ = ref.rms_norm_backward(dy, x, 300, rstd, w)
    assert_close(rms.backward(dy), edx, 1e-4, atol=0.0, name="dx")
    assert_close(rms.grad_weight, edw, 1e-5, name="grad_weight")


@pytest.mark.parametrize("d", [1, 3, 7, 1023])
def test_odd_sizes(rng, d):
    for dtype in DTYPES:
        rms = numbanorm.RMSNorm(d, dtype=dtype)
        randomize_affine(rms, rng)
        x = _data(rng, (3, d), dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        _check_layer(rms, x, dy, tol_for(dtype), d, ref.rms_eps(dtype))


def test_zero_rows_and_noncontiguous(rng):
    big = _data(rng, (6, 4, 20), np.float64)
    big[1] = 0.0
    rms = numbanorm.RMSNorm(9, eps=1e-5, dtype=np.float64)
    randomize_affine(rms, rng)
    x = big[::2, 1:, 3:12][:, :, ::-1]
    assert not x.flags.c_contiguous
    y = rms(x)
    assert_close(y, ref.rms_norm(x, 9, rms.weight, 1e-5)[0], 1e-10)
    z = big[1, :, :9]  # all zero rows
    assert np.array_equal(rms(z), np.zeros_like(z))
    _check_layer(rms, x, rng.standard_normal(x.shape)[:, ::-1], 1e-10, 9, 1e-5)


def test_nan_stays_in_its_row(rng):
    x = _data(rng, (3, 5), np.float64)
    x[1, 4] = np.nan
    rms = numbanorm.RMSNorm(5, dtype=np.float64)
    y = rms(x)
    assert np.all(np.isnan(y[1]))
    keep = [0, 2]
    assert_close(y[keep], ref.rms_norm(x[keep], 5, None, ref.rms_eps(np.float64))[0], 1e-10)


def test_mixed_dtype(rng):
    rms = numbanorm.RMSNorm(5, eps=1e-5)
    w, _ = randomize_affine(rms, rng)
    x = _data(rng, (3, 5), np.float64)
    dy = rng.standard_normal(x.shape)
    y = rms(x)
    assert y.dtype == np.float64 and rms.weight.dtype == np.float32
    ey, rstd = ref.rms_norm(x, 5, w, 1e-5)
    assert_close(y, ey, 1e-10)
    assert_close(rms.backward(dy), ref.rms_norm_backward(dy, x, 5, rstd, w)[0], 1e-10)


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def _raises_unchanged(layer, exc, fn):
    before = snapshot(layer)
    with pytest.raises(exc):
        fn()
    assert_state_unchanged(layer, before)


def test_errors(rng):
    rms = numbanorm.RMSNorm(4)
    randomize_affine(rms, rng)
    x = _data(rng, (2, 4), np.float32)
    _raises_unchanged(rms, RuntimeError, lambda: rms.backward(x))
    _raises_unchanged(rms, ValueError, lambda: rms(x[:, :3]))
    _raises_unchanged(rms, ValueError, lambda: rms(np.zeros((), np.float32)))
    for bad in (x.astype(np.int32), x.astype(np.complex128), x > 0):
        _raises_unchanged(rms, TypeError, lambda bad=bad: rms(bad))
    rms(x)
    _raises_unchanged(rms, ValueError, lambda: rms.backward(x[:1]))
    _raises_unchanged(rms, TypeError, lambda: rms.backward(x.astype(np.float64)))
    _raises_unchanged(rms, RuntimeError, lambda: rms.load_state_dict({}))
    _raises_unchanged(rms, RuntimeError,
                      lambda: rms.load_state_dict({"weight": np.ones(5, np.float32)}))
    _raises_unchanged(rms, RuntimeError,
                      lambda: rms.load_state_dict({"weight": np.ones(4, np.float32),
                                                   "bias": np.ones(4, np.float32)}))
