"""InstanceNorm1d/2d/3d and functional.instance_norm / instance_norm_backward.

Running statistics follow PyTorch: the per-instance statistics are averaged over
the batch before the momentum update; momentum=None leaves them unchanged.
"""

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


def _pair(cls_name, c, rng, dtype=np.float64, **kw):
    ours = getattr(numbanorm, cls_name)(c, dtype=dtype, **kw)
    w, b = randomize_affine(ours, rng)
    rin = ref.RefInstanceNorm(c, weight=w, bias=b, **kw)
    return ours, rin


def _check_step(ours, rin, x, dy, tol, what=""):
    y = ours(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, rin.forward(x), tol, name=f"y {what}")
    edx, edw, edb = rin.backward(dy)
    dx = ours.backward(dy)
    assert dx.dtype == x.dtype
    assert_close(dx, edx, tol, name=f"dx {what}")
    if edw is None:
        assert ours.grad_weight is None and ours.grad_bias is None
    else:
        assert_close(ours.grad_weight, edw, tol, name=f"grad_weight {what}")
        assert_close(ours.grad_bias, edb, tol, name=f"grad_bias {what}")
    if rin.running_mean is None:
        assert ours.running_mean is None and ours.running_var is None
    else:
        assert_close(ours.running_mean, rin.running_mean, tol, name=f"running_mean {what}")
        assert_close(ours.running_var, rin.running_var, tol, name=f"running_var {what}")
    return y, dx


def test_defaults():
    inn = numbanorm.InstanceNorm2d(3)
    assert inn.weight is None and inn.bias is None
    assert inn.running_mean is None and inn.running_var is None
    assert inn.eps == 1e-5 and inn.momentum == 0.1 and inn.training is True
    inn = numbanorm.InstanceNorm1d(4, affine=True, track_running_stats=True, dtype=np.float64)
    assert inn.weight.dtype == np.float64 and np.all(inn.weight == 1) and np.all(inn.bias == 0)
    assert np.all(inn.running_mean == 0) and np.all(inn.running_var == 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5), (2, 3, 2, 3, 2)])
def test_functional(rng, dtype, shape):
    tol = tol_for(dtype)
    c = shape[1]
    x = _data(rng, shape, dtype)
    w = rng.uniform(0.5, 1.5, c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, rstd = F.instance_norm(x, rm, rv, w, b, use_input_stats=True, momentum=0.3,
                                    eps=1e-4, return_stats=True)
    ey, emean, erstd, erm, erv = ref.instance_norm(x, rm0, rv0, w, b, True, 0.3, 1e-4)
    assert y.dtype == dtype
    assert_close(y, ey, tol, name="y")
    assert mean.shape == shape[:2] and rstd.shape == shape[:2]
    assert mean.dtype == np.float64 and rstd.dtype == np.float64
    stol = 1e-12 if dtype == np.float64 else 1e-8
    assert_close(mean, emean, stol, name="mean")
    assert_close(rstd, erstd, stol, name="rstd")
    assert rm.dtype == dtype
    assert_close(rm, erm, tol, name="running_mean")
    assert_close(rv, erv, tol, name="running_var")
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = F.instance_norm_backward(dy, x, mean, rstd, w, b, use_input_stats=True)
    edx, edw, edb = ref.instance_norm_backward(dy, x, emean, erstd, w, b, True)
    assert dx.dtype == dtype
    assert_close(dx, edx, tol, name="dx")
    assert_close(dw, edw, tol, name="dweight")
    assert_close(db, edb, tol, name="dbias")
    # without running stats or affine
    y, mean, rstd = F.instance_norm(x, return_stats=True)
    ey, emean, erstd, _, _ = ref.instance_norm(x)
    assert_close(y, ey, tol, name="plain y")
    dx, dw, db = F.instance_norm_backward(dy, x, mean, rstd)
    assert dw is None and db is None
    assert_close(dx, ref.instance_norm_backward(dy, x, emean, erstd)[0], tol, name="plain dx")
    out = np.empty_like(x)
    y = F.instance_norm(x, out=out)
    assert np.shares_memory(y, out)
    assert_close(out, ref.instance_norm(x)[0], tol, name="out")


def test_functional_running_stats_eval(rng):
    x = _data(rng, (3, 4, 6), np.float64)
    w, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    rm0, rv0 = rm.copy(), rv.copy()
    y = F.instance_norm(x, rm, rv, w, b, use_input_stats=False)
    ey, emean, erstd, _, _ = ref.instance_norm(x, rm0, rv0, w, b, use_input_stats=False)
    assert_close(y, ey, 1e-10, name="y")
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)
    dy = rng.standard_normal(x.shape)
    dx, dw, db = F.instance_norm_backward(dy, x, emean, erstd, w, b, use_input_stats=False)
    edx, edw, edb = ref.instance_norm_backward(dy, x, emean, erstd, w, b, use_input_stats=False)
    assert_close(dx, edx, 1e-10, name="dx")
    assert_close(dw, edw, 1e-10, name="dweight")
    assert_close(db, edb, 1e-10, name="dbias")


def test_fd(rng):
    x = rng.standard_normal((2, 2, 3))
    w, b = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    g = rng.standard_normal(x.shape)

    def f(x, weight, bias):
        return F.instance_norm(x, weight=weight, bias=bias, eps=1e-3)

    _, mean, rstd = F.instance_norm(x, weight=w, bias=b, eps=1e-3, return_stats=True)
    dx, dw, db = F.instance_norm_backward(g, x, mean, rstd, w, b)
    fd = ref.fd_grads(f, {"x": x, "weight": w, "bias": b}, g)
    assert_close(dx, fd["x"], 1e-6, name="dx")
    assert_close(dw, fd["weight"], 1e-6, name="dweight")
    assert_close(db, fd["bias"], 1e-6, name="dbias")


CONFIGS = [
    dict(),
    dict(affine=True),
    dict(affine=True, track_running_stats=True),
    dict(track_running_stats=True, momentum=None),
    dict(track_running_stats=True, momentum=0.4, eps=1e-3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_layer_against_reference(rng, dtype, cfg):
    ours, rin = _pair("InstanceNorm2d", 3, rng, dtype, **cfg)
    shape = (4, 3, 3, 4)
    for step in range(4):
        if step == 3:
            assert ours.eval() is ours
            rin.training = False
        x = _data(rng, shape, dtype, loc=step - 1.0, scale=0.5 + step)
        dy = rng.standard_normal(shape).astype(dtype)
        _check_step(ours, rin, x, dy, tol_for(dtype), f"step {step}")


TORCH_CASES = [
    ("InstanceNorm1d", (3, 4, 7), dict(affine=True)),
    ("InstanceNorm2d", (2, 3, 4, 5), dict(affine=True, track_running_stats=True)),
    ("InstanceNorm2d", (2, 3, 4, 5), dict(track_running_stats=True, momentum=None)),
    ("InstanceNorm3d", (2, 3, 2, 3, 2), dict(track_running_stats=True, momentum=0.5)),
    ("InstanceNorm2d", (2, 3, 3, 3), dict()),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls_name,shape,kw", TORCH_CASES)
def test_against_torch(torch, rng, dtype, cls_name, shape, kw):
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tm = getattr(torch.nn, cls_name)(shape[1], dtype=tdtype, **kw)
    ours = getattr(numbanorm, cls_name)(shape[1], dtype=dtype, **kw)
    w, b = randomize_affine(ours, rng)
    if w is not None:
        with torch.no_grad():
            tm.weight.copy_(torch.from_numpy(w))
            tm.bias.copy_(torch.from_numpy(b))
    tol = 2 * tol_for(dtype)
    for step in range(4):
        if step == 3:
            tm.eval()
            ours.eval()
        x = _data(rng, shape, dtype, loc=step - 1.0, scale=1.0 + step)
        dy = rng.standard_normal(shape).astype(dtype)
        tm.zero_grad(set_to_none=True)
        xt = t(torch, x, True)
        yt = tm(xt)
        yt.backward(t(torch, dy))
        assert_close(ours(x), n(yt), tol, name=f"y step {step}")
        assert_close(ours.backward(dy), n(xt.grad), tol, name=f"dx step {step}")
        if w is not None:
            assert_close(ours.grad_weight, n(tm.weight.grad), tol, name="grad_weight")
            assert_close(ours.grad_bias, n(tm.bias.grad), tol, name="grad_bias")
        if tm.running_mean is not None:
            assert_close(ours.running_mean, n(tm.running_mean), tol, name=f"running_mean {step}")
            assert_close(ours.running_var, n(tm.running_var), tol, name=f"running_var {step}")
    sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    fresh = getattr(numbanorm, cls_name)(shape[1], dtype=dtype, **kw)
    assert set(fresh.state_dict()) == set(sd)
    fresh.load_state_dict(sd)
    fresh.eval()
    x = _data(rng, shape, dtype)
    with torch.no_grad():
        assert_close(fresh(x), tm(t(torch, x)).numpy(), tol, name="eval y after load_state_dict")


def test_utilities(rng):
    inn = numbanorm.InstanceNorm2d(3, eps=1e-3, affine=True, track_running_stats=True)
    randomize_affine(inn, rng)
    r = repr(inn)
    assert r.startswith("InstanceNorm2d(3, eps=0.001, momentum=0.1, affine=True"), r
    assert "track_running_stats=True" in r, r
    r = repr(numbanorm.InstanceNorm1d(2))
    assert r.startswith("InstanceNorm1d(2, eps=1e-05, momentum=0.1, affine=False"), r
    assert "track_running_stats=False" in r, r
    assert inn.train() is inn and inn.eval() is inn and inn.training is False
    inn.train()
    x = _data(rng, (2, 3, 4, 4), np.float32, loc=2.0)
    inn(x)
    inn2 = pickle.loads(pickle.dumps(inn))
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert np.array_equal(getattr(inn2, k), getattr(inn, k)), k
    assert inn2.eps == 1e-3 and inn2.training is True
    inn.eval()
    inn2.eval()
    assert np.array_equal(inn2(x), inn(x))
    before = snapshot(inn)
    assert inn.to(np.float64) is inn
    assert inn.running_var.dtype == np.float64 and inn.weight.dtype == np.float64
    assert np.array_equal(inn.running_var, before["running_var"].astype(np.float64))
    x64 = x.astype(np.float64)
    ey = ref.instance_norm(x64, before["running_mean"], before["running_var"], before["weight"],
                           before["bias"], use_input_stats=False, eps=1e-3)[0]
    assert_close(inn(x64), ey, 1e-10)
    inn.reset_running_stats()
    assert np.all(inn.running_mean == 0) and np.all(inn.running_var == 1)
    inn.reset_parameters()
    assert np.all(inn.weight == 1) and np.all(inn.bias == 0)
    params = list(inn.parameters())
    assert len(params) == 2 and params[0] is inn.weight and params[1] is inn.bias


# ----------------------------------------------------------------------------
# Hard inputs
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_large_mean_small_std_float32(rng, layout):
    shape = (2, 3, 9, 11)
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    inn = numbanorm.InstanceNorm2d(3, affine=True)
    w, b = randomize_affine(inn, rng)
    ey, mean, rstd, _, _ = ref.instance_norm(x, weight=w, bias=b)
    assert_close(inn(x), ey, 0.0, atol=1e-3, name="y (float32, mean 1e4, std 1e-2)")
    dy = rng.standard_normal(shape).astype(np.float32)
    edx, edw, _ = ref.instance_norm_backward(dy, x, mean, rstd, w, b)
    assert_close(inn.backward(dy), edx, 1e-3, atol=0.0, name="dx")
    assert_close(inn.grad_weight, edw, 1e-3, atol=0.0, name="grad_weight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_instance(rng, dtype):
    x = _data(rng, (3, 2, 5), dtype)
    x[1, 0] = np.float32(0.1)
    x[2, 1] = np.float32(10000.1)
    ours, rin = _pair("InstanceNorm1d", 2, rng, dtype, affine=True, track_running_stats=True)
    y, _ = _check_step(ours, rin, x, rng.standard_normal(x.shape).astype(dtype), tol_for(dtype))
    assert_close(y[1, 0], np.full(5, ours.bias[0]), 1e-6, name="constant instance -> bias")
    assert_close(y[2, 1], np.full(5, ours.bias[1]), 1e-6, name="constant instance -> bias")


@pytest.mark.parametrize("shape", [(1, 3, 7), (3, 1, 2), (2, 2, 1023), (1, 2, 1, 3), (3, 7, 1, 2)])
def test_odd_sizes(rng, shape):
    name = "InstanceNorm1d" if len(shape) == 3 else "InstanceNorm2d"
    for dtype in DTYPES:
        ours, rin = _pair(name, shape[1], rng, dtype, affine=True, track_running_stats=True)
        x = _data(rng, shape, dtype, loc=3.0)
        _check_step(ours, rin, x, rng.standard_normal(shape).astype(dtype), tol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_last(rng, dtype):
    shape = (2, 5, 3, 4)
    x = channels_last(_data(rng, shape, dtype))
    ours, rin = _pair("InstanceNorm2d", 5, rng, dtype, affine=True, track_running_stats=True)
    dy = channels_last(rng.standard_normal(shape).astype(dtype))
    y, _ = _check_step(ours, rin, x, dy, tol_for(dtype))
    assert is_channels_last(y), f"output strides {y.strides}"
    ours.eval()
    rin.training = False
    y, _ = _check_step(ours, rin, x, dy, tol_for(dtype), "eval")
    assert is_channels_last(y), f"eval output strides {y.strides}"
    x5 = channels_last(_data(rng, (2, 3, 2, 3, 2), dtype))
    y5 = F.instance_norm(x5)
    assert is_channels_last(y5)
    assert_close(y5, ref.instance_norm(x5)[0], tol_for(dtype), name="3-D spatial y")


def test_noncontiguous_views(rng):
    big = _data(rng, (5, 8, 6, 7), np.float64)
    for x in (big[::2, ::2, 1:5, ::3], big[:, 2:6, ::-1], big[:2, :4].transpose(0, 1, 3, 2)):
        assert not x.flags.c_contiguous
        ours, rin = _pair("InstanceNorm2d", 4, rng, affine=True, track_running_stats=True)
        _check_step(ours, rin, x, rng.standard_normal(x.shape)[..., ::-1], 1e-10)


def test_nan_stays_in_its_instance(rng):
    x = _data(rng, (3, 2, 4), np.float64)
    x[1, 0, 2] = np.nan
    inn = numbanorm.InstanceNorm1d(2, affine=True, dtype=np.float64)
    w, b = randomize_affine(inn, rng)
    y = inn(x)
    assert np.all(np.isnan(y[1, 0]))
    mask = np.ones(x.shape, bool)
    mask[1, 0] = False
    assert not np.any(np.isnan(y[mask]))
    assert_close(y[mask], ref.instance_norm(x, weight=w, bias=b)[0][mask], 1e-10)


def test_mixed_dtype(rng):
    ours, rin = _pair("InstanceNorm1d", 3, rng, np.float32, affine=True, track_running_stats=True)
    x = _data(rng, (2, 3, 6), np.float64)
    dy = rng.standard_normal(x.shape)
    y = ours(x)
    assert y.dtype == np.float64 and ours.running_mean.dtype == np.float32
    assert_close(y, rin.forward(x), 1e-10, name="y")
    assert_close(ours.running_var, rin.running_var, 1e-6, name="running_var")
    dx = ours.backward(dy)
    assert dx.dtype == np.float64
    assert_close(dx, rin.backward(dy)[0], 1e-10, name="dx")


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def _raises_unchanged(layer, exc, fn):
    before = snapshot(layer)
    with pytest.raises(exc):
        fn()
    assert_state_unchanged(layer, before)


def test_errors(rng):
    inn = numbanorm.InstanceNorm2d(3, affine=True, track_running_stats=True)
    randomize_affine(inn, rng)
    x = _data(rng, (2, 3, 4, 4), np.float32)
    inn(x)
    fresh = numbanorm.InstanceNorm2d(3, affine=True)
    _raises_unchanged(fresh, RuntimeError, lambda: fresh.backward(x))
    _raises_unchanged(inn, ValueError, lambda: inn(x[:, :2]))                  # channels
    _raises_unchanged(inn, ValueError, lambda: inn(x[..., None]))              # 5-D to 2d
    _raises_unchanged(inn, ValueError, lambda: inn(np.zeros((2, 3), np.float32)))
    for bad in (x.astype(np.int64), x.astype(np.complex128), x > 0):
        _raises_unchanged(inn, TypeError, lambda bad=bad: inn(bad))
    # training with one spatial element per instance (PyTorch raises ValueError too)
    _raises_unchanged(inn, ValueError, lambda: inn(x[:, :, :1, :1]))
    inn(x)
    _raises_unchanged(inn, ValueError, lambda: inn.backward(x[:1]))
    _raises_unchanged(inn, TypeError, lambda: inn.backward(x.astype(np.float64)))
    in1 = numbanorm.InstanceNorm1d(3, affine=True)
    _raises_unchanged(in1, ValueError, lambda: in1(x))                          # 4-D to 1d
    sd = inn.state_dict()
    missing = {k: v for k, v in sd.items() if k != "running_var"}
    _raises_unchanged(inn, RuntimeError, lambda: inn.load_state_dict(missing))
    _raises_unchanged(inn, RuntimeError,
                      lambda: inn.load_state_dict(dict(sd, running_var=np.ones(4, np.float32))))
    _raises_unchanged(inn, RuntimeError,
                      lambda: inn.load_state_dict(dict(sd, extra=np.ones(3, np.float32))))


def test_empty_batch_is_normalized_like_group_norm():
    # N = 0 has positions per instance: an empty result with (0, C) statistics, as GroupNorm(C, C)
    x = np.zeros((0, 3, 4), np.float32)
    y, mean, rstd = F.instance_norm(x, return_stats=True)
    assert y.shape == x.shape and mean.shape == rstd.shape == (0, 3)
    inn = numbanorm.InstanceNorm1d(3, affine=True, track_running_stats=True)
    before = snapshot(inn)
    assert inn(x).shape == x.shape
    assert_state_unchanged(inn, before)
    assert inn.backward(x).shape == x.shape and np.array_equal(inn.grad_weight, np.zeros(3))
