"""BatchNorm1d/2d/3d and functional.batch_norm / batch_norm_backward.

Oracles: tests/reference.py (NumPy float64 formulas), central finite differences,
and PyTorch (skipped when torch is missing).
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
BN_CLASSES = {1: numbanorm.BatchNorm1d, 2: numbanorm.BatchNorm2d, 3: numbanorm.BatchNorm3d}
# Tolerance on the float64 statistics returned for float32 input: the spec
# requires float64 (or compensated) accumulation, so they must be far better
# than float32 rounding (~6e-8 relative).
STATS_TOL32 = 1e-8


def _data(rng, shape, dtype, loc=0.5, scale=2.0):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def _params(rng, c, dtype):
    w = rng.uniform(0.5, 1.5, c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    return w, b, rm, rv


def _bn_for(x, c, **kw):
    """The BatchNorm class for an input of x's ndim."""
    nd = {2: 1, 3: 1, 4: 2, 5: 3}[x.ndim]
    return BN_CLASSES[nd](c, **kw)


def _trained_layer(rng, cls=numbanorm.BatchNorm2d, shape=(3, 4, 2, 3), steps=2, **kw):
    """A layer with random affine params and a few training steps behind it."""
    layer = cls(shape[1], **kw)
    randomize_affine(layer, rng)
    dtype = kw.get("dtype", np.float32)
    for _ in range(steps):
        layer(_data(rng, shape, dtype))
    return layer


# ----------------------------------------------------------------------------
# Construction and attributes
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_defaults(dtype):
    bn = numbanorm.BatchNorm2d(5, dtype=dtype)
    assert bn.training is True
    assert bn.eps == 1e-5 and bn.momentum == 0.1
    for name, val in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)]:
        arr = getattr(bn, name)
        assert isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.shape == (5,), name
        assert np.all(arr == val), name
    nbt = bn.num_batches_tracked
    assert isinstance(nbt, np.ndarray) and nbt.shape == () and nbt.dtype == np.int64
    assert int(nbt) == 0
    assert bn.grad_weight is None and bn.grad_bias is None

    bn = numbanorm.BatchNorm1d(3, affine=False, track_running_stats=False, dtype=dtype)
    assert bn.weight is None and bn.bias is None
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None


# ----------------------------------------------------------------------------
# Functional API against the reference
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 2)])
def test_functional_train_and_backward(rng, dtype, shape):
    tol = tol_for(dtype)
    c = shape[1]
    x = _data(rng, shape, dtype)
    w, b, rm, rv = _params(rng, c, dtype)
    rm_obj, rv_obj = rm, rv
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-4,
                                   return_stats=True)
    ey, emean, einvstd, erm, erv = ref.batch_norm(x, rm0, rv0, w, b, True, 0.2, 1e-4)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, ey, tol, name="y")
    assert mean.dtype == np.float64 and mean.shape == (c,)
    assert invstd.dtype == np.float64 and invstd.shape == (c,)
    stol = 1e-12 if dtype == np.float64 else STATS_TOL32
    assert_close(mean, emean, stol, name="mean")
    assert_close(invstd, einvstd, stol, name="invstd")
    # running stats updated in place, in their own dtype
    assert rm is rm_obj and rv is rv_obj and rm.dtype == dtype and rv.dtype == dtype
    assert_close(rm, erm, tol, name="running_mean")
    assert_close(rv, erv, tol, name="running_var")

    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, w, b, use_input_stats=True)
    edx, edw, edb = ref.batch_norm_backward(dy, x, emean, einvstd, w, b, use_input_stats=True)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, edx, tol, name="dx")
    assert_close(dw, edw, tol, name="dweight")
    assert_close(db, edb, tol, name="dbias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_eval_and_backward(rng, dtype):
    tol = tol_for(dtype)
    x = _data(rng, (3, 4, 2, 3), dtype)
    w, b, rm, rv = _params(rng, 4, dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y = F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3)
    ey, emean, einvstd, _, _ = ref.batch_norm(x, rm0, rv0, w, b, False, 0.1, 1e-3)
    assert y.dtype == dtype
    assert_close(y, ey, tol, name="y")
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0), "eval must not touch running stats"

    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dw, db = F.batch_norm_backward(dy, x, emean, einvstd, w, b, use_input_stats=False)
    edx, edw, edb = ref.batch_norm_backward(dy, x, emean, einvstd, w, b, use_input_stats=False)
    assert_close(dx, edx, tol, name="dx")
    assert_close(dw, edw, tol, name="dweight")
    assert_close(db, edb, tol, name="dbias")


def test_functional_without_running_stats_uses_batch_stats(rng):
    x = _data(rng, (5, 3, 4), np.float64)
    w, b, _, _ = _params(rng, 3, np.float64)
    for training in (False, True):
        y = F.batch_norm(x, None, None, w, b, training=training)
        assert_close(y, ref.batch_norm(x, None, None, w, b, True)[0], 1e-10, name="y")


def test_functional_affine_none(rng):
    x = _data(rng, (4, 3, 5), np.float64)
    w = rng.uniform(0.5, 1.5, 3)
    dy = rng.standard_normal(x.shape)
    y, mean, invstd = F.batch_norm(x, None, None, training=True, return_stats=True)
    ey, emean, einvstd, _, _ = ref.batch_norm(x, None, None, None, None, True)
    assert_close(y, ey, 1e-10)
    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, use_input_stats=True)
    assert dw is None and db is None
    assert_close(dx, ref.batch_norm_backward(dy, x, emean, einvstd)[0], 1e-10, name="dx")
    # weight without bias: dbias is None, dweight computed
    y = F.batch_norm(x, None, None, w, None, training=True)
    assert_close(y, ref.batch_norm(x, None, None, w, None, True)[0], 1e-10)
    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, w, None, use_input_stats=True)
    edx, edw, _ = ref.batch_norm_backward(dy, x, emean, einvstd, w, None)
    assert db is None
    assert_close(dx, edx, 1e-10, name="dx")
    assert_close(dw, edw, 1e-10, name="dweight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_out(rng, dtype):
    x = _data(rng, (3, 2, 5), dtype)
    w, b, rm, rv = _params(rng, 2, dtype)
    out = np.full(x.shape, np.nan, dtype=dtype)
    y = F.batch_norm(x, rm, rv, w, b, training=False, out=out)
    ey = ref.batch_norm(x, rm, rv, w, b, False)[0]
    assert_close(out, ey, tol_for(dtype), name="out")
    assert_close(y, ey, tol_for(dtype), name="returned y")
    assert np.shares_memory(y, out)
    with pytest.raises(ValueError):
        F.batch_norm(x, rm, rv, w, b, out=np.empty((3, 2, 4), dtype=dtype))


# ----------------------------------------------------------------------------
# Finite differences (float64, tiny shapes)
# ----------------------------------------------------------------------------


def _check_fd(f, inputs, analytic, g, tol=1e-6):
    fd = ref.fd_grads(f, inputs, g)
    for name, grad in analytic.items():
        assert_close(grad, fd[name], tol, name=f"d{name} vs finite differences")


def test_fd_functional_training(rng):
    x = rng.standard_normal((3, 2, 2, 2)) * 1.5 + 0.3
    w, b = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    g = rng.standard_normal(x.shape)

    def f(x, weight, bias):
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-3)

    _, mean, invstd = F.batch_norm(x, None, None, w, b, training=True, eps=1e-3,
                                   return_stats=True)
    dx, dw, db = F.batch_norm_backward(g, x, mean, invstd, w, b, use_input_stats=True)
    _check_fd(f, {"x": x, "weight": w, "bias": b}, {"x": dx, "weight": dw, "bias": db}, g)


def test_fd_functional_eval(rng):
    x = rng.standard_normal((3, 2, 3))
    w, b = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    rm, rv = rng.standard_normal(2), rng.uniform(0.5, 2.0, 2)
    g = rng.standard_normal(x.shape)

    def f(x, weight, bias):
        return F.batch_norm(x, rm.copy(), rv.copy(), weight, bias, training=False)

    dx, dw, db = F.batch_norm_backward(g, x, rm, 1.0 / np.sqrt(rv + 1e-5), w, b, use_input_stats=False)
    _check_fd(f, {"x": x, "weight": w, "bias": b}, {"x": dx, "weight": dw, "bias": db}, g)


def test_fd_layer_training(rng):
    bn = numbanorm.BatchNorm1d(3, dtype=np.float64)
    randomize_affine(bn, rng)
    x = rng.standard_normal((4, 3, 2))
    g = rng.standard_normal(x.shape)

    def f(x, weight, bias):
        bn.weight[...] = weight
        bn.bias[...] = bias
        return bn(x)

    w0, b0 = bn.weight.copy(), bn.bias.copy()
    fd = ref.fd_grads(f, {"x": x, "weight": w0, "bias": b0}, g)
    bn.weight[...] = w0
    bn.bias[...] = b0
    bn(x)
    dx = bn.backward(g)
    assert_close(dx, fd["x"], 1e-6, name="dx")
    assert_close(bn.grad_weight, fd["weight"], 1e-6, name="grad_weight")
    assert_close(bn.grad_bias, fd["bias"], 1e-6, name="grad_bias")


# ----------------------------------------------------------------------------
# Layers against the stateful reference
# ----------------------------------------------------------------------------


LAYER_CONFIGS = [
    dict(),
    dict(momentum=None),
    dict(momentum=0.3, eps=1e-3),
    dict(affine=False),
    dict(track_running_stats=False),
    dict(affine=False, track_running_stats=False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_layer_against_reference(rng, dtype, cfg):
    tol = tol_for(dtype)
    shape = (3, 4, 2, 3)
    bn = numbanorm.BatchNorm2d(4, dtype=dtype, **cfg)
    w, b = randomize_affine(bn, rng)
    rbn = ref.RefBatchNorm(4, weight=w, bias=b, **cfg)
    for step in range(4):
        if step == 3:
            assert bn.eval() is bn
            rbn.training = False
        x = _data(rng, shape, dtype, loc=step - 1.0, scale=0.5 + step)
        dy = rng.standard_normal(shape).astype(dtype)
        y = bn(x)
        assert y.dtype == dtype and y.shape == shape
        assert_close(y, rbn.forward(x), tol, name=f"y step {step}")
        dx = bn.backward(dy)
        edx, edw, edb = rbn.backward(dy)
        assert dx.dtype == dtype
        assert_close(dx, edx, tol, name=f"dx step {step}")
        if rbn.weight is None:
            assert bn.grad_weight is None and bn.grad_bias is None
        else:
            assert_close(bn.grad_weight, edw, tol, name=f"grad_weight step {step}")
            assert_close(bn.grad_bias, edb, tol, name=f"grad_bias step {step}")
        if rbn.running_mean is None:
            assert bn.running_mean is None and bn.num_batches_tracked is None
        else:
            assert bn.running_mean.dtype == dtype and bn.running_var.dtype == dtype
            assert_close(bn.running_mean, rbn.running_mean, tol, name=f"running_mean step {step}")
            assert_close(bn.running_var, rbn.running_var, tol, name=f"running_var step {step}")
            assert int(bn.num_batches_tracked) == rbn.num_batches_tracked


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 6), (2, 3, 2, 3, 2)])
def test_layer_1d_3d_against_reference(rng, shape):
    bn = _bn_for(np.empty(shape), 3, dtype=np.float64, momentum=None)
    w, b = randomize_affine(bn, rng)
    rbn = ref.RefBatchNorm(3, weight=w, bias=b, momentum=None)
    for _ in range(2):
        x = _data(rng, shape, np.float64, loc=rng.standard_normal())
        dy = rng.standard_normal(shape)
        assert_close(bn(x), rbn.forward(x), 1e-10, name="y")
        edx, edw, edb = rbn.backward(dy)
        assert_close(bn.backward(dy), edx, 1e-10, name="dx")
        assert_close(bn.grad_weight, edw, 1e-10, name="grad_weight")
        assert_close(bn.grad_bias, edb, 1e-10, name="grad_bias")
    assert_close(bn.running_mean, rbn.running_mean, 1e-12)
    assert_close(bn.running_var, rbn.running_var, 1e-12)


# ----------------------------------------------------------------------------
# PyTorch comparisons
# ----------------------------------------------------------------------------


def _torch_pair(torch, cls_name, c, dtype, rng, **kw):
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tm = getattr(torch.nn, cls_name)(c, dtype=tdtype, **kw)
    ours = getattr(numbanorm, cls_name)(c, dtype=dtype, **kw)
    w, b = randomize_affine(ours, rng)
    if w is not None:
        with torch.no_grad():
            tm.weight.copy_(torch.from_numpy(w))
            tm.bias.copy_(torch.from_numpy(b))
    return tm, ours


def _torch_step(torch, tm, x, dy):
    tm.zero_grad(set_to_none=True)
    xt = t(torch, x, requires_grad=True)
    yt = tm(xt)
    yt.backward(t(torch, dy))
    gw = None if tm.weight is None else n(tm.weight.grad)
    gb = None if tm.bias is None else n(tm.bias.grad)
    return n(yt), n(xt.grad), gw, gb


def _compare_step(torch, tm, ours, x, dy, tol, what):
    ty, tdx, tgw, tgb = _torch_step(torch, tm, x, dy)
    assert_close(ours(x), ty, tol, name=f"y {what}")
    assert_close(ours.backward(dy), tdx, tol, name=f"dx {what}")
    if tgw is None:
        assert ours.grad_weight is None and ours.grad_bias is None
    else:
        assert_close(ours.grad_weight, tgw, tol, name=f"grad_weight {what}")
        assert_close(ours.grad_bias, tgb, tol, name=f"grad_bias {what}")
    if tm.running_mean is None:
        assert ours.running_mean is None and ours.running_var is None
    else:
        assert_close(ours.running_mean, n(tm.running_mean), tol, name=f"running_mean {what}")
        assert_close(ours.running_var, n(tm.running_var), tol, name=f"running_var {what}")
        assert int(ours.num_batches_tracked) == int(tm.num_batches_tracked)


TORCH_CASES = [
    ("BatchNorm1d", (8, 5), {}),
    ("BatchNorm1d", (4, 3, 7), dict(momentum=None)),
    ("BatchNorm2d", (3, 4, 5, 5), {}),
    ("BatchNorm2d", (3, 4, 5, 5), dict(momentum=None)),
    ("BatchNorm2d", (2, 3, 3, 4), dict(affine=False)),
    ("BatchNorm2d", (2, 3, 3, 4), dict(track_running_stats=False)),
    ("BatchNorm2d", (2, 3, 3, 4), dict(eps=1e-3, momentum=0.5)),
    ("BatchNorm3d", (2, 3, 2, 3, 2), dict(momentum=None)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls_name,shape,kw", TORCH_CASES)
def test_against_torch(torch, rng, dtype, cls_name, shape, kw):
    tol = 2 * tol_for(dtype)
    tm, ours = _torch_pair(torch, cls_name, shape[1], dtype, rng, **kw)
    for step in range(3):
        x = _data(rng, shape, dtype, loc=2.0 * step - 1.0, scale=1.0 + step)
        dy = rng.standard_normal(shape).astype(dtype)
        _compare_step(torch, tm, ours, x, dy, tol, f"train step {step}")
    tm.eval()
    assert ours.eval() is ours and ours.training is False
    x = _data(rng, shape, dtype, loc=0.3)
    dy = rng.standard_normal(shape).astype(dtype)
    _compare_step(torch, tm, ours, x, dy, tol, "eval")
    assert ours.train() is ours and ours.training is True
    tm.train()
    _compare_step(torch, tm, ours, x, dy, tol, "train again")


@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False), (False, False)])
def test_state_dict_keys_match_torch(torch, affine, track):
    tm = torch.nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
    ours = numbanorm.BatchNorm2d(3, affine=affine, track_running_stats=track)
    sd = ours.state_dict()
    tsd = tm.state_dict()
    assert set(sd) == set(tsd)
    for k, v in tsd.items():
        assert isinstance(sd[k], np.ndarray), k
        assert sd[k].shape == tuple(v.shape), k
        assert np.array_equal(sd[k], v.numpy()), k
    if track:
        assert sd["num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("tdtype_name", ["float32", "float64"])
def test_load_torch_state_dict_gives_torch_eval_output(torch, rng, tdtype_name):
    tdtype = getattr(torch, tdtype_name)
    tm = torch.nn.BatchNorm2d(4, momentum=None, dtype=tdtype)
    with torch.no_grad():
        tm.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, 4)))
        tm.bias.copy_(torch.from_numpy(rng.standard_normal(4)))
        for i in range(3):
            tm(torch.from_numpy(_data(rng, (3, 4, 3, 3), np.float64, loc=i)).to(tdtype))
    # copies: the .numpy() arrays share memory with the torch module
    sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    ours = numbanorm.BatchNorm2d(4)  # float32 layer: values are cast in
    objs = {k: getattr(ours, k) for k in ("weight", "bias", "running_mean", "running_var")}
    ours.load_state_dict(sd)
    for k, obj in objs.items():
        assert getattr(ours, k) is obj, f"{k} must be copied into the existing array"
        assert obj.dtype == np.float32
        assert_close(obj, sd[k], 1e-6, name=k)
    assert int(ours.num_batches_tracked) == 3
    assert ours.num_batches_tracked.dtype == np.int64
    # the loaded state does not alias the dict's arrays
    sd["weight"][...] = 100.0
    assert np.all(ours.weight < 100.0)
    tm.eval()
    ours.eval()
    x = _data(rng, (2, 4, 3, 3), np.float32)
    with torch.no_grad():
        ty = tm(torch.from_numpy(x).to(tdtype)).numpy()
    assert_close(ours(x), ty, 1e-5, name="eval y")


def test_state_dict_roundtrip_and_strict_false(rng):
    src = _trained_layer(rng, momentum=None)
    dst = numbanorm.BatchNorm2d(4)
    dst.load_state_dict(src.state_dict())
    for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert np.array_equal(getattr(dst, k), getattr(src, k)), k
    other = numbanorm.BatchNorm2d(4)
    before = snapshot(other)
    other.load_state_dict({"weight": src.weight.copy()}, strict=False)
    assert np.array_equal(other.weight, src.weight)
    for k in ("bias", "running_mean", "running_var", "num_batches_tracked"):
        assert np.array_equal(getattr(other, k), before[k]), k


# ----------------------------------------------------------------------------
# Layer utilities
# ----------------------------------------------------------------------------


def test_pickle_roundtrip(rng):
    bn = _trained_layer(rng, momentum=None, eps=1e-3)
    bn.eval()
    bn2 = pickle.loads(pickle.dumps(bn))
    assert type(bn2) is numbanorm.BatchNorm2d
    assert bn2 is not bn and bn2.weight is not bn.weight
    assert bn2.training is False and bn2.eps == 1e-3 and bn2.momentum is None
    for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert np.array_equal(getattr(bn2, k), getattr(bn, k)), k
        assert getattr(bn2, k).dtype == getattr(bn, k).dtype, k
    x = _data(rng, (3, 4, 2, 3), np.float32)
    assert np.array_equal(bn2(x), bn(x))
    bn.train()
    bn2.train()
    assert np.array_equal(bn2(x), bn(x))
    assert np.array_equal(bn2.running_var, bn.running_var)
    assert int(bn2.num_batches_tracked) == int(bn.num_batches_tracked) == 3


def test_repr():
    r = repr(numbanorm.BatchNorm2d(3))
    assert r.startswith("BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True"), r
    assert "track_running_stats=True" in r and r.endswith(")"), r
    r = repr(numbanorm.BatchNorm1d(7, eps=1e-3, momentum=None, affine=False,
                                   track_running_stats=False))
    assert r.startswith("BatchNorm1d(7, eps=0.001, momentum=None, affine=False"), r
    assert "track_running_stats=False" in r, r
    assert repr(numbanorm.BatchNorm3d(2)).startswith("BatchNorm3d(2, ")


def test_train_eval_return_self():
    bn = numbanorm.BatchNorm1d(2)
    assert bn.eval() is bn and bn.training is False
    assert bn.train() is bn and bn.training is True
    assert bn.train(False) is bn and bn.training is False
    assert bn.train(True) is bn and bn.training is True


def test_to_dtype(rng):
    bn = _trained_layer(rng)
    before = snapshot(bn)
    assert bn.to(np.float64) is bn
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert getattr(bn, k).dtype == np.float64, k
        assert np.array_equal(getattr(bn, k), before[k].astype(np.float64)), k
    assert bn.num_batches_tracked.dtype == np.int64 and int(bn.num_batches_tracked) == 2
    bn.eval()
    x = _data(rng, (2, 4, 3, 3), np.float64)
    y = bn(x)
    assert y.dtype == np.float64
    ey = ref.batch_norm(x, before["running_mean"], before["running_var"], before["weight"],
                        before["bias"], False)[0]
    assert_close(y, ey, 1e-10)
    assert bn.to("float32") is bn
    assert bn.weight.dtype == np.float32 and bn.running_var.dtype == np.float32
    assert np.array_equal(bn.running_var, before["running_var"])


def test_reset_running_stats_and_parameters(rng):
    bn = _trained_layer(rng)
    assert int(bn.num_batches_tracked) == 2
    w = bn.weight.copy()
    bn.reset_running_stats()
    assert np.all(bn.running_mean == 0) and np.all(bn.running_var == 1)
    assert int(bn.num_batches_tracked) == 0
    assert np.array_equal(bn.weight, w)
    bn(_data(rng, (3, 4, 2, 3), np.float32))
    bn.reset_parameters()
    assert np.all(bn.weight == 1) and np.all(bn.bias == 0)
    assert np.all(bn.running_mean == 0) and np.all(bn.running_var == 1)
    assert int(bn.num_batches_tracked) == 0


def test_parameters():
    bn = numbanorm.BatchNorm2d(3)
    params = list(bn.parameters())
    assert len(params) == 2 and params[0] is bn.weight and params[1] is bn.bias
    assert list(numbanorm.BatchNorm2d(3, affine=False).parameters()) == []


# ----------------------------------------------------------------------------
# Hard inputs
# ----------------------------------------------------------------------------


def test_large_mean_small_std_float32_functional(rng):
    shape = (4, 3, 6, 5)
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 3).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    y, mean, invstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True)
    ey, emean, einvstd, _, _ = ref.batch_norm(x, None, None, w, b, True)
    assert y.dtype == np.float32
    assert_close(y, ey, 0.0, atol=1e-3, name="y (float32, mean 1e4, std 1e-2)")
    assert_close(invstd, einvstd, 1e-6, name="invstd")
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, w, b, use_input_stats=True)
    edx, edw, edb = ref.batch_norm_backward(dy, x, emean, einvstd, w, b)
    assert_close(dx, edx, 1e-3, atol=0.0, name="dx")
    assert_close(dw, edw, 1e-3, atol=0.0, name="dweight")
    assert_close(db, edb, 1e-5, name="dbias")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_large_mean_small_std_float32_layer(rng, layout):
    shape = (4, 3, 5, 6)
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    bn = numbanorm.BatchNorm2d(3, momentum=None)
    w, b = randomize_affine(bn, rng)
    rbn = ref.RefBatchNorm(3, momentum=None, weight=w, bias=b)
    y = bn(x)
    assert_close(y, rbn.forward(x), 0.0, atol=1e-3, name="train y")
    dy = rng.standard_normal(shape).astype(np.float32)
    edx, edw, _ = rbn.backward(dy)
    assert_close(bn.backward(dy), edx, 1e-3, atol=0.0, name="dx")
    assert_close(bn.grad_weight, edw, 1e-3, atol=0.0, name="grad_weight")
    # momentum=None, first batch: running stats are the batch mean / unbiased variance
    assert_close(bn.running_mean, rbn.running_mean, 1e-6, atol=0.0, name="running_mean")
    assert_close(bn.running_var, rbn.running_var, 1e-3, atol=0.0, name="running_var")
    # eval with running mean 1e4 and running var 1e-4 on new data from the same law
    # eval with running mean 1e4 and running var 1e-4 on new data from the same law,
    # against the float64 computation on the same float32 values (the stored stats)
    bn.eval()
    x2 = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    ey = ref.batch_norm(x2, bn.running_mean, bn.running_var, w, b, False)[0]
    assert_close(bn(x2), ey, 0.0, atol=1e-3, name="eval y")


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_channel(rng, dtype):
    x = _data(rng, (5, 3, 2, 3), dtype)
    # float32-representable constants, so that float64 sums of them are exact
    x[:, 1] = np.float32(0.1)
    x[:, 2] = np.float32(10000.1)
    bn = numbanorm.BatchNorm2d(3, dtype=dtype)
    w, b = randomize_affine(bn, rng)
    rbn = ref.RefBatchNorm(3, weight=w, bias=b)
    y = bn(x)
    for ch in (1, 2):
        assert_close(y[:, ch], np.broadcast_to(b[ch], y[:, ch].shape), 1e-6,
                     name=f"constant channel {ch} -> bias")
    assert_close(y, rbn.forward(x), tol_for(dtype), name="y")
    assert_close(bn.running_var[1:], [0.9, 0.9], 1e-6, name="running_var of constant channels")
    dy = rng.standard_normal(x.shape).astype(dtype)
    edx, edw, edb = rbn.backward(dy)
    assert_close(bn.backward(dy), edx, tol_for(dtype), name="dx")
    assert_close(bn.grad_weight, edw, tol_for(dtype), name="grad_weight")
    assert_close(bn.grad_bias, edb, tol_for(dtype), name="grad_bias")


@pytest.mark.parametrize("shape", [(1, 3, 2, 3), (1, 2, 7), (1, 3, 1, 2)])
def test_batch_of_one_with_spatial(torch, rng, shape):
    tm, ours = _torch_pair(torch, "BatchNorm2d" if len(shape) == 4 else "BatchNorm1d",
                           shape[1], np.float64, rng)
    for step in range(2):
        x = _data(rng, shape, np.float64, loc=step)
        dy = rng.standard_normal(shape)
        _compare_step(torch, tm, ours, x, dy, 1e-10, f"N=1 step {step}")


@pytest.mark.parametrize("shape", [(3, 1), (7, 3), (1023, 2), (2, 1, 1023), (3, 7, 1), (7, 3, 1, 7),
                                   (2, 3, 1, 1)])
def test_odd_sizes(rng, shape):
    for dtype in DTYPES:
        x = _data(rng, shape, dtype, loc=3.0)
        bn = _bn_for(x, shape[1], dtype=dtype)
        w, b = randomize_affine(bn, rng)
        rbn = ref.RefBatchNorm(shape[1], weight=w, bias=b)
        tol = tol_for(dtype)
        assert_close(bn(x), rbn.forward(x), tol, name=f"y {dtype.__name__}")
        dy = rng.standard_normal(shape).astype(dtype)
        edx, edw, edb = rbn.backward(dy)
        assert_close(bn.backward(dy), edx, tol, name=f"dx {dtype.__name__}")
        assert_close(bn.grad_weight, edw, tol, name="grad_weight")
        assert_close(bn.grad_bias, edb, tol, name="grad_bias")
        assert_close(bn.running_mean, rbn.running_mean, tol, name="running_mean")
        assert_close(bn.running_var, rbn.running_var, tol, name="running_var")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (2, 3, 2, 3, 2)])
def test_channels_last(rng, dtype, shape):
    tol = tol_for(dtype)
    x = channels_last(_data(rng, shape, dtype))
    assert is_channels_last(x) and not x.flags.c_contiguous
    bn = _bn_for(x, shape[1], dtype=dtype)
    w, b = randomize_affine(bn, rng)
    rbn = ref.RefBatchNorm(shape[1], weight=w, bias=b)
    y = bn(x)
    assert y.shape == x.shape and is_channels_last(y), f"output strides {y.strides}"
    assert_close(y, rbn.forward(x), tol, name="train y")
    dy = channels_last(rng.standard_normal(shape).astype(dtype))
    edx, edw, edb = rbn.backward(dy)
    dx = bn.backward(dy)
    assert_close(dx, edx, tol, name="dx")
    assert_close(bn.grad_weight, edw, tol, name="grad_weight")
    assert_close(bn.grad_bias, edb, tol, name="grad_bias")
    assert_close(bn.running_var, rbn.running_var, tol, name="running_var")
    bn.eval()
    rbn.training = False
    y = bn(x)
    assert is_channels_last(y), f"eval output strides {y.strides}"
    assert_close(y, rbn.forward(x), tol, name="eval y")
    # functional, with return_stats
    y, mean, invstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True)
    ey, emean, einvstd, _, _ = ref.batch_norm(x, None, None, w, b, True)
    assert is_channels_last(y)
    assert_close(y, ey, tol, name="functional y")
    assert_close(invstd, einvstd, 1e-12 if dtype == np.float64 else STATS_TOL32, name="invstd")


def test_noncontiguous_views(rng):
    big = _data(rng, (5, 8, 7, 9), np.float64)
    views = [big[::2, 1::2, 1:6, ::3], big[:, :4, ::-1, 2:5], big[1:4, 2:6].transpose(0, 1, 3, 2)]
    for x in views:
        assert not x.flags.c_contiguous
        bn = numbanorm.BatchNorm2d(4, dtype=np.float64)
        w, b = randomize_affine(bn, rng)
        rbn = ref.RefBatchNorm(4, weight=w, bias=b)
        assert_close(bn(x), rbn.forward(x), 1e-10, name="y")
        dy = rng.standard_normal(x.shape)[:, :, ::-1]  # non-contiguous dy as well
        edx, edw, edb = rbn.backward(dy)
        assert_close(bn.backward(dy), edx, 1e-10, name="dx")
        assert_close(bn.grad_weight, edw, 1e-10, name="grad_weight")
        assert_close(bn.running_var, rbn.running_var, 1e-12, name="running_var")
    # a sliced (N, C) view with a channel stride > 1
    x = big[:, :, 0, 0][:, ::2]
    y = F.batch_norm(x, None, None, training=True)
    assert_close(y, ref.batch_norm(x, training=True)[0], 1e-10, name="sliced (N, C)")


def test_nan_stays_in_its_channel(rng):
    x = _data(rng, (4, 3, 3, 3), np.float64)
    x[2, 1, 1, 1] = np.nan
    bn = numbanorm.BatchNorm2d(3, dtype=np.float64)
    w, b = randomize_affine(bn, rng)
    y = bn(x)
    assert np.all(np.isnan(y[:, 1])), "NaN must spread over its channel as in PyTorch"
    keep = [0, 2]
    rbn = ref.RefBatchNorm(2, weight=w[keep], bias=b[keep])
    assert_close(y[:, keep], rbn.forward(x[:, keep]), 1e-10, name="other channels")
    assert np.isnan(bn.running_mean[1]) and np.isnan(bn.running_var[1])
    assert_close(bn.running_mean[keep], rbn.running_mean, 1e-12)
    assert_close(bn.running_var[keep], rbn.running_var, 1e-12)
    dy = rng.standard_normal(x.shape)
    dx = bn.backward(dy)
    edx, edw, edb = rbn.backward(dy[:, keep])
    assert_close(dx[:, keep], edx, 1e-10, name="dx other channels")
    assert_close(bn.grad_weight[keep], edw, 1e-10, name="grad_weight other channels")
    assert_close(bn.grad_bias[keep], edb, 1e-10, name="grad_bias other channels")


def test_mixed_dtype(rng):
    # float64 input to a float32 layer: float64 compute and output, float32 state
    bn = numbanorm.BatchNorm2d(3)
    w, b = randomize_affine(bn, rng)
    rbn = ref.RefBatchNorm(3, weight=w, bias=b)
    x = _data(rng, (3, 3, 2, 4), np.float64)
    y = bn(x)
    assert y.dtype == np.float64
    assert_close(y, rbn.forward(x), 1e-10, name="y")
    assert bn.running_mean.dtype == np.float32 and bn.running_var.dtype == np.float32
    assert bn.weight.dtype == np.float32
    assert_close(bn.running_mean, rbn.running_mean, 1e-6, name="running_mean")
    assert_close(bn.running_var, rbn.running_var, 1e-6, name="running_var")
    dy = rng.standard_normal(x.shape)
    dx = bn.backward(dy)
    edx, edw, edb = rbn.backward(dy)
    assert dx.dtype == np.float64
    assert_close(dx, edx, 1e-10, name="dx")
    assert_close(bn.grad_weight, edw, 1e-6, name="grad_weight")
    assert_close(bn.grad_bias, edb, 1e-6, name="grad_bias")
    # float32 input to a float64 layer: float32 output
    bn64 = numbanorm.BatchNorm1d(3, dtype=np.float64)
    x32 = _data(rng, (6, 3), np.float32)
    y32 = bn64(x32)
    assert y32.dtype == np.float32 and bn64.running_mean.dtype == np.float64
    assert_close(y32, ref.batch_norm(x32, training=True)[0], 1e-5)


# ----------------------------------------------------------------------------
# Errors: right exception, state unchanged
# ----------------------------------------------------------------------------


def _raises_unchanged(layer, exc, fn, match=None):
    before = snapshot(layer)
    with pytest.raises(exc, match=match):
        fn()
    assert_state_unchanged(layer, before)


@pytest.mark.parametrize("training", [True, False])
def test_errors_bad_input(rng, training):
    bn = _trained_layer(rng, momentum=None)
    bn.train(training)
    good = _data(rng, (3, 4, 2, 3), np.float32)
    _raises_unchanged(bn, ValueError, lambda: bn(good[0]))                    # 3-D to BN2d
    _raises_unchanged(bn, ValueError, lambda: bn(good[..., None]))            # 5-D to BN2d
    _raises_unchanged(bn, ValueError, lambda: bn(good[:, :3]))                # 3 channels, not 4
    _raises_unchanged(bn, ValueError, lambda: bn(np.zeros((3, 5, 2, 3), np.float32)))
    for bad in (good.astype(np.int64), good.astype(np.int32), good.astype(np.complex128),
                good > 0):
        _raises_unchanged(bn, TypeError, lambda bad=bad: bn(bad))
    _raises_unchanged(bn, TypeError, lambda: bn(good.tolist()))
    bn1 = _trained_layer(rng, numbanorm.BatchNorm1d, shape=(4, 3))
    bn1.train(training)
    _raises_unchanged(bn1, ValueError, lambda: bn1(np.zeros((2, 3, 2, 2), np.float32)))
    _raises_unchanged(bn1, ValueError, lambda: bn1(np.zeros(3, np.float32)))
    bn3 = _trained_layer(rng, numbanorm.BatchNorm3d, shape=(2, 2, 2, 2, 2))
    bn3.train(training)
    _raises_unchanged(bn3, ValueError, lambda: bn3(np.zeros((2, 2, 2, 2), np.float32)))


def test_errors_backward(rng):
    bn = _trained_layer(rng)
    fresh = numbanorm.BatchNorm2d(4)
    dy = rng.standard_normal((3, 4, 2, 3)).astype(np.float32)
    _raises_unchanged(fresh, RuntimeError, lambda: fresh.backward(dy))
    x = _data(rng, (3, 4, 2, 3), np.float32)
    bn(x)
    _raises_unchanged(bn, ValueError, lambda: bn.backward(dy[:, :, :1]))
    _raises_unchanged(bn, ValueError, lambda: bn.backward(dy[:2]))
    _raises_unchanged(bn, TypeError, lambda: bn.backward(dy.astype(np.float64)))
    _raises_unchanged(bn, TypeError, lambda: bn.backward(dy.astype(np.int64)))
    # the layer still works after the failed calls and matches the reference
    rbn = ref.RefBatchNorm(4, weight=bn.weight, bias=bn.bias)
    rbn.forward(x)
    assert_close(bn.backward(dy), rbn.backward(dy)[0], 1e-5, name="dx after errors")


def test_errors_one_value_per_channel(rng):
    bn1 = _trained_layer(rng, numbanorm.BatchNorm1d, shape=(4, 3))
    msg = "Expected more than 1 value per channel"
    _raises_unchanged(bn1, ValueError, lambda: bn1(np.ones((1, 3), np.float32)), match=msg)
    _raises_unchanged(bn1, ValueError, lambda: bn1(np.ones((1, 3, 1), np.float32)), match=msg)
    bn2 = _trained_layer(rng)
    _raises_unchanged(bn2, ValueError, lambda: bn2(np.ones((1, 4, 1, 1), np.float32)), match=msg)
    # no running stats: batch stats are needed even in eval mode
    bn_nt = numbanorm.BatchNorm1d(3, track_running_stats=False).eval()
    _raises_unchanged(bn_nt, ValueError, lambda: bn_nt(np.ones((1, 3), np.float32)), match=msg)
    with pytest.raises(ValueError, match=msg):
        F.batch_norm(np.ones((1, 3)), None, None, training=True)
    # eval with running stats: one sample is fine
    bn1.eval()
    x = _data(rng, (1, 3), np.float32)
    ey = ref.batch_norm(x, bn1.running_mean, bn1.running_var, bn1.weight, bn1.bias, False)[0]
    assert_close(bn1(x), ey, 1e-5)


def test_errors_load_state_dict(rng):
    bn = _trained_layer(rng)
    good = {k: np.array(v, copy=True) for k, v in bn.state_dict().items()}
    new_w = good["weight"] + 1.0

    missing = dict(good, weight=new_w)
    del missing["running_var"]
    extra = dict(good, weight=new_w, foo=np.zeros(4, np.float32))
    bad_shape = dict(good, weight=new_w, running_mean=np.zeros(5, np.float32))
    for d in (missing, extra, bad_shape):
        # nothing is loaded, not even the valid new weight
        _raises_unchanged(bn, RuntimeError, lambda d=d: bn.load_state_dict(d))  # as PyTorch
    _raises_unchanged(bn, RuntimeError,
                      lambda: bn.load_state_dict(bad_shape, strict=False))


def test_errors_functional_leave_running_stats(rng):
    x = _data(rng, (3, 4, 5), np.float64)
    w, b, rm, rv = _params(rng, 4, np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    with pytest.raises(ValueError):
        F.batch_norm(x, rm, rv, w[:3], b, training=True)
    with pytest.raises(ValueError):
        F.batch_norm(x, rm[:3], rv[:3], w, b, training=True)
    with pytest.raises(ValueError):
        F.batch_norm(x, rm, rv[:3], w, b, training=True)
    with pytest.raises(TypeError):
        F.batch_norm(x.astype(np.int64), rm, rv, w, b, training=True)
    with pytest.raises(ValueError):
        F.batch_norm(x[:1, :, :1], rm, rv, w, b, training=True)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)
    _, mean, invstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True)
    with pytest.raises(ValueError):
        F.batch_norm_backward(x[:, :, :2], x, mean, invstd, w, b)
    with pytest.raises(TypeError):
        F.batch_norm_backward(x.astype(np.float32), x, mean, invstd, w, b)
    with pytest.raises(ValueError):
        F.batch_norm_backward(x, x, mean[:3], invstd, w, b)
