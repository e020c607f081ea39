"""The fused epilogue: ``act(norm(x) + residual)`` for the channel-wise families and the skip
form ``norm(x + residual)`` of LayerNorm and RMSNorm, against the unfused composition.

Every channel-wise family is described once in ``CHANNEL_FAMILIES``; every check (reference,
the library's own composition, finite differences, PyTorch, layouts, dtypes, paths) runs over it.
"""

from dataclasses import dataclass

import numpy as np
import pytest
import reference as ref
from helpers import assert_close, assert_state_unchanged, channels_last, is_channels_last, n, snapshot, t, tol_for

import numbanorm as nn
from numbanorm import config
from numbanorm import functional as F

DTYPES = [np.float32, np.float64]
EPILOGUES = [("relu", True), ("relu", False), (None, True)]  # (activation, with a residual)


def relu(a):
    return np.where(a < 0, 0.0, a)


# -- the channel-wise families ------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """``forward(x, w, b, **epilogue) -> (y, mean, rstd)`` and ``backward(dy, x, mean, rstd, w, b,
    **epilogue)`` through numbanorm; ``ref_forward(x, w, b) -> (y, mean, rstd)`` and
    ``ref_backward(dy, x, mean, rstd, w, b) -> (dx, dw, db)`` from tests/reference.py; ``torch(tch,
    x, w, b)`` the PyTorch op (None: no PyTorch comparison); ``min_ndim``."""

    name: str
    forward: object
    backward: object
    ref_forward: object
    ref_backward: object
    torch: object = None
    min_ndim: int = 2


RM_SEED = 7


def _running(c):
    rng = np.random.default_rng(RM_SEED)
    return rng.normal(0.5, 1.0, c), rng.uniform(0.5, 2.0, c)


def _groups(x):
    return 2 if x.shape[1] % 2 == 0 else 1


CHANNEL_FAMILIES = [
    Family(
        "batch_norm",
        lambda x, w, b, **kw: F.batch_norm(x, None, None, w, b, training=True, return_stats=True, **kw),
        lambda dy, x, m, s, w, b, **kw: F.batch_norm_backward(dy, x, m, s, w, b, **kw),
        lambda x, w, b: ref.batch_norm(x, None, None, w, b, training=True)[:3],
        lambda dy, x, m, s, w, b: ref.batch_norm_backward(dy, x, m, s, w, b),
        lambda tch, x, w, b: tch.nn.functional.batch_norm(x, None, None, w, b, training=True),
    ),
    Family(
        "batch_norm_eval",
        lambda x, w, b, **kw: F.batch_norm(x, *_running(x.shape[1]), w, b, training=False, return_stats=True, **kw),
        lambda dy, x, m, s, w, b, **kw: F.batch_norm_backward(dy, x, m, s, w, b, use_input_stats=False, **kw),
        lambda x, w, b: ref.batch_norm(x, *_running(x.shape[1]), w, b, training=False)[:3],
        lambda dy, x, m, s, w, b: ref.batch_norm_backward(dy, x, m, s, w, b, use_input_stats=False),
    ),
    Family(
        "group_norm",
        lambda x, w, b, **kw: F.group_norm(x, _groups(x), w, b, return_stats=True, **kw),
        lambda dy, x, m, s, w, b, **kw: F.group_norm_backward(dy, x, _groups(x), m, s, w, b, **kw),
        lambda x, w, b: ref.group_norm(x, _groups(x), w, b),
        lambda dy, x, m, s, w, b: ref.group_norm_backward(dy, x, _groups(x), m, s, w, b),
        lambda tch, x, w, b: tch.nn.functional.group_norm(x, _groups(x), w, b),
    ),
    Family(
        "instance_norm",
        lambda x, w, b, **kw: F.instance_norm(x, None, None, w, b, return_stats=True, **kw),
        lambda dy, x, m, s, w, b, **kw: F.instance_norm_backward(dy, x, m, s, w, b, **kw),
        lambda x, w, b: ref.instance_norm(x, None, None, w, b)[:3],
        lambda dy, x, m, s, w, b: ref.instance_norm_backward(dy, x, m, s, w, b),
        lambda tch, x, w, b: tch.nn.functional.instance_norm(x, weight=w, bias=b),
        min_ndim=3,
    ),
    Family(
        "instance_norm_eval",
        lambda x, w, b, **kw: F.instance_norm(x, *_running(x.shape[1]), w, b, use_input_stats=False,
                                              return_stats=True, **kw),
        lambda dy, x, m, s, w, b, **kw: F.instance_norm_backward(dy, x, m, s, w, b, use_input_stats=False, **kw),
        lambda x, w, b: ref.instance_norm(x, *_running(x.shape[1]), w, b, use_input_stats=False)[:3],
        lambda dy, x, m, s, w, b: ref.instance_norm_backward(dy, x, m, s, w, b, use_input_stats=False),
        min_ndim=3,
    ),
]
FAMILY_IDS = [f.name for f in CHANNEL_FAMILIES]

# N = 1, odd sizes, 2-D (N, C) input, and 3-D/5-D; every shape in both layouts where it has two.
SHAPES = [(1, 4, 5, 3), (3, 6, 7, 5), (7, 4), (2, 3, 9), (2, 2, 3, 2, 3)]
LAYOUTS = ["contiguous", "channels_last"]


def _cases():
    for fam in CHANNEL_FAMILIES:
        for shape in SHAPES:
            if len(shape) < fam.min_ndim:
                continue
            for layout in LAYOUTS:
                if layout == "channels_last" and len(shape) < 3:
                    continue
                yield pytest.param(fam, shape, layout, id=f"{fam.name}-{'x'.join(map(str, shape))}-{layout}")


def _data(rng, shape, layout, dtype, residual_dtype=np.float64):
    """x (mean 1, std 2), residual, dy, weight, bias; x and dy in ``layout``, the residual in the other."""
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    r = rng.normal(0.0, 1.0, shape).astype(residual_dtype)
    dy = rng.normal(size=shape).astype(dtype)
    c = shape[1]
    w = rng.normal(1.0, 0.3, c).astype(dtype)
    b = rng.normal(0.0, 0.3, c).astype(dtype)
    if layout == "channels_last":
        x, dy = channels_last(x), channels_last(dy)
    elif len(shape) > 2:
        r = channels_last(r)  # any layout: the residual is laid out like x
    return x, r, dy, w, b


def _epilogue(activation, with_residual, r):
    return {"activation": activation, "residual": r if with_residual else None}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,with_residual", EPILOGUES)
@pytest.mark.parametrize("fam,shape,layout", list(_cases()))
def test_forward_and_backward_match_the_reference_composition(rng, fam, shape, layout, dtype, activation,
                                                              with_residual):
    x, r, dy, w, b = _data(rng, shape, layout, dtype)
    y, mean, rstd = fam.forward(x, w, b, **_epilogue(activation, with_residual, r))
    assert y.dtype == x.dtype and y.strides == x.strides
    ry, rmean, rrstd = fam.ref_forward(x, w, b)
    expected = ry + (r.astype(dtype) if with_residual else 0.0)
    expected = relu(expected) if activation else expected
    tol = tol_for(dtype)
    assert_close(y, expected, tol, name="y")
    assert_close(mean, rmean.reshape(np.shape(mean)), tol, name="mean")

    grads = fam.backward(dy, x, mean, rstd, w, b, y=y, activation=activation, residual=with_residual)
    assert len(grads) == (4 if with_residual else 3)
    g = dy.astype(np.float64) * (y > 0) if activation else dy.astype(np.float64)
    rdx, rdw, rdb = fam.ref_backward(g, x, rmean, rrstd, w, b)
    assert_close(grads[0], rdx, 10 * tol, name="dx")
    assert_close(grads[1], rdw, 10 * tol, name="dweight")
    assert_close(grads[2], rdb, 10 * tol, name="dbias")
    assert grads[0].dtype == x.dtype and grads[0].strides == x.strides
    if with_residual:
        dres = grads[3]
        assert dres.dtype == x.dtype and dres.shape == x.shape
        np.testing.assert_array_equal(dres, g.astype(dtype))
        if activation is None:
            assert dres is dy  # an add passes its gradient through


@pytest.fixture(params=["default", "serial", "parallel", "parallel-planes", "parallel-split"])
def path(request, monkeypatch):
    """Every kernel path: serial and parallel builds, BatchNorm's small planes as columns (the
    default at these sizes), its fused channel pass over planes and its split drivers, small
    moment blocks and column chunks."""
    if request.param in ("parallel-planes", "parallel-split"):
        monkeypatch.setattr(config, "SMALL_PLANE", 1)
        monkeypatch.setattr(config, "WIDE_PLANE", 1)
    for name in ("PARALLEL_MIN_ELEMENTS", "ROWS_PARALLEL_MIN_ELEMENTS"):
        if request.param == "serial":
            monkeypatch.setattr(config, name, 1 << 40)
        elif request.param != "default":
            monkeypatch.setattr(config, name, 0)
    if request.param == "parallel-split":
        monkeypatch.setattr(config, "FUSED_CHANNEL_BYTES", 0)
        monkeypatch.setattr(config, "BLOCK_ELEMENTS", 16)
        monkeypatch.setattr(config, "COLUMN_BLOCK_ELEMENTS", 16)
        monkeypatch.setattr(config, "COLUMN_MIN_ROWS", 1)
    return request.param


def _ulps(dtype):
    """Tolerance of results that differ by the order of float64 sums only: the fused and plain
    paths take their statistics and gradient sums in separately compiled loops, which LLVM may
    vectorize (so reassociate) differently."""
    return 1e-6 if dtype == np.float32 else 1e-13


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fam,shape,layout", [c for c in _cases() if c.values[1][0] > 1])
def test_fused_equals_the_library_composition(path, rng, fam, shape, layout, dtype):
    """The fused forward and backward against the library's own passes composed with NumPy's
    add and ReLU, on every kernel path."""
    x, r, dy, w, b = _data(rng, shape, layout, dtype)
    y0, mean0, rstd0 = fam.forward(x, w, b)
    y, mean, rstd = fam.forward(x, w, b, residual=r, activation="relu")
    assert_close(y, np.maximum(y0 + r.astype(dtype), 0), _ulps(dtype), name="y")
    assert_close(mean, mean0, _ulps(dtype), name="mean")
    g = np.where(y > 0, dy, 0).astype(dtype)
    expected = fam.backward(g, x, mean, rstd, w, b)
    for residual in (True, False):
        got = fam.backward(dy, x, mean, rstd, w, b, y=y, activation="relu", residual=residual)
        for name, a, e in zip(("dx", "dweight", "dbias", "dresidual"), got, expected + (g,), strict=False):
            assert_close(a, e, _ulps(dtype), name=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue_loops_round_as_the_separate_passes(rng, dtype):
    """Given the same normalized values, the epilogue loops store what the separate passes would:
    ``normalize``, then ``+ r`` rounded to x's dtype, then ReLU, bit for bit (-0.0 and NaN included)."""
    from numbanorm.kernels.cpu import elementwise as E

    x = rng.normal(3.0, 2.0, 203).astype(dtype)
    r = rng.normal(size=203).astype(dtype)
    r[:3] = [np.nan, -np.inf, 0.0]
    x[3] = np.nan
    hi, scale, shift = dtype(3.0), dtype(0.5), dtype(-0.25)
    w, b = rng.normal(1.0, 0.3, 203).astype(dtype), rng.normal(0.0, 0.3, 203).astype(dtype)

    def composed(y, r, relu):
        z = y + r if r is not None else y
        return np.where(z < 0, dtype(0), z) if relu else z

    for relu in (True, False):
        for res in (r, None):
            y0, y = np.empty_like(x), np.empty_like(x)
            E.normalize_slice(x, y0, hi, scale, shift)
            E.epilogue_slice(x, res, y, hi, scale, shift, relu)
            np.testing.assert_array_equal(y, composed(y0, res, relu))
            E.normalize_slice_affine(x, y0, hi, scale, shift, w, b)
            E.epilogue_slice_affine(x, res, y, hi, scale, shift, w, b, relu)
            np.testing.assert_array_equal(y, composed(y0, res, relu))
            x2, r2 = x[:200].reshape(20, 10), None if res is None else res[:200].reshape(20, 10)
            y0, y = np.empty_like(x2), np.empty_like(x2)
            cols = [np.full(10, v, dtype) for v in (hi, scale, shift)]
            E.normalize_cols(x2, y0, *cols)
            E.epilogue_cols(x2, r2, y, *cols, relu)
            np.testing.assert_array_equal(y, composed(y0, r2, relu))


def _away_from_kinks(fam, x, w, b, rng):
    """A residual that puts every ``norm(x) + residual`` at least 0.1 from ReLU's kink, so that
    finite differences never cross it."""
    ry = fam.ref_forward(x, w, b)[0]
    target = rng.uniform(0.1, 2.0, x.shape) * rng.choice([-1.0, 1.0], x.shape)
    return target - ry


@pytest.mark.parametrize("fam,shape", [pytest.param(f, shape, id=f"{f.name}-{len(shape)}d")
                                       for f in CHANNEL_FAMILIES if "eval" not in f.name
                                       for shape in [(2, 2, 3), (3, 2)] if len(shape) >= f.min_ndim])
def test_fused_backward_against_finite_differences(rng, fam, shape):
    x = rng.normal(0.5, 1.5, shape)
    w = rng.normal(1.0, 0.3, shape[1])
    b = rng.normal(0.0, 0.3, shape[1])
    r = _away_from_kinks(fam, x, w, b, rng)
    gy = rng.normal(size=shape)

    def f(x, r, w, b):
        return fam.forward(x, w, b, residual=r, activation="relu")[0]

    fd = ref.fd_grads(f, {"x": x, "r": r, "w": w, "b": b}, gy)
    y, mean, rstd = fam.forward(x, w, b, residual=r, activation="relu")
    dx, dw, db, dr = fam.backward(gy, x, mean, rstd, w, b, y=y, activation="relu", residual=True)
    for name, got in (("x", dx), ("r", dr), ("w", dw), ("b", db)):
        assert_close(got, fd[name], 1e-6, name=f"d{name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fam", [f for f in CHANNEL_FAMILIES if f.torch is not None], ids=lambda f: f.name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_pytorch_norm_add_relu_with_autograd(torch, rng, fam, layout, dtype):
    shape = (3, 4, 5, 3)
    x, r, dy, w, b = _data(rng, shape, layout, dtype, residual_dtype=dtype)
    tx, tr, tw, tb = (t(torch, a, requires_grad=True) for a in (x, r, w, b))
    ty = torch.relu(fam.torch(torch, tx, tw, tb) + tr)
    ty.backward(t(torch, dy))
    y, mean, rstd = fam.forward(x, w, b, residual=r, activation="relu")
    dx, dw, db, dr = fam.backward(dy, x, mean, rstd, w, b, y=y, activation="relu", residual=True)
    tol = 10 * tol_for(dtype)
    assert_close(y, n(ty), tol, name="y")
    for name, got, exp in (("dx", dx, tx.grad), ("dweight", dw, tw.grad), ("dbias", db, tb.grad),
                           ("dresidual", dr, tr.grad)):
        assert_close(got, n(exp), tol, name=name)


# -- LayerNorm and RMSNorm: the skip form ------------------------------------------------

ROWS = [
    pytest.param("layer_norm", id="layer_norm"),
    pytest.param("rms_norm", id="rms_norm"),
]
ROW_SHAPES = [((5, 7, 40), (40,)), ((3, 1), (1,)), ((1, 33), (33,)), ((2, 3, 4, 5), (4, 5))]


def _rows_forward(kind, x, shape, w, b, **kw):
    if kind == "layer_norm":
        return F.layer_norm(x, shape, w, b, return_stats=True, **kw)
    return F.rms_norm(x, shape, w, return_stats=True, **kw)


def _rows_backward(kind, dy, s, shape, mean, rstd, w, b, **kw):
    if kind == "layer_norm":
        return F.layer_norm_backward(dy, s, shape, mean, rstd, w, b, **kw)
    return F.rms_norm_backward(dy, s, shape, rstd, w, **kw)


def _rows_reference(kind, dy, s, shape, w, b):
    if kind == "layer_norm":
        y, mean, rstd = ref.layer_norm(s, shape, w, b)
        return y, ref.layer_norm_backward(dy, s, shape, mean, rstd, w, b)
    y, rstd = ref.rms_norm(s, shape, w, eps=ref.rms_eps(s.dtype))
    return y, ref.rms_norm_backward(dy, s, shape, rstd, w)


def _rows_data(rng, xshape, pshape, dtype, kind):
    x = rng.normal(3.0, 2.0, xshape).astype(dtype)
    r = rng.normal(0.0, 1.0, xshape)  # float64: cast to x's dtype
    dy = rng.normal(size=xshape).astype(dtype)
    dsum = rng.normal(size=xshape).astype(np.float32)
    w = rng.normal(1.0, 0.3, pshape).astype(dtype)
    b = rng.normal(0.0, 0.3, pshape).astype(dtype) if kind == "layer_norm" else None
    return x, r, dy, dsum, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xshape,pshape", ROW_SHAPES)
@pytest.mark.parametrize("kind", ROWS)
def test_skip_form_matches_the_reference(rng, kind, xshape, pshape, dtype):
    x, r, dy, dsum, w, b = _rows_data(rng, xshape, pshape, dtype, kind)
    y, s, mean, rstd = _rows_forward(kind, x, pshape, w, b, residual=r)
    np.testing.assert_array_equal(s, x + r.astype(dtype))  # s in x's dtype, rounded once
    assert s.dtype == x.dtype and y.dtype == x.dtype
    assert (mean is None) == (kind == "rms_norm")
    ry, (rdx, rdw, rdb) = _rows_reference(kind, dy, s, pshape, w, b)
    tol = tol_for(dtype)
    assert_close(y, ry, tol, name="y")
    dx, dw, db = _rows_backward(kind, dy, s, pshape, mean, rstd, w, b, dsum=dsum)
    assert_close(dx, rdx + dsum.astype(np.float64), 10 * tol, name="dx")
    assert_close(dw, rdw, 10 * tol, name="dweight")
    if kind == "layer_norm":
        assert_close(db, rdb, 10 * tol, name="dbias")
    # Without return_stats: (y, s); the library's own composition (s bit for bit).
    y2, s2 = (F.layer_norm(x, pshape, w, b, residual=r) if kind == "layer_norm"
              else F.rms_norm(x, pshape, w, residual=r))
    y0 = _rows_forward(kind, s, pshape, w, b)[0]
    assert_close(y2, y0, _ulps(dtype), name="y vs norm(s)")
    np.testing.assert_array_equal(s2, s)
    plain = _rows_backward(kind, dy, s, pshape, mean, rstd, w, b)
    assert_close(dx, plain[0] + dsum, 2 * tol, name="dx vs dx + dsum")


@pytest.mark.parametrize("kind", ROWS)
def test_skip_form_paths(path, rng, kind):
    x, r, dy, dsum, w, b = _rows_data(rng, (9, 70), (70,), np.float64, kind)
    y, s, mean, rstd = _rows_forward(kind, x, (70,), w, b, residual=r)
    ry, (rdx, rdw, _) = _rows_reference(kind, dy, x + r, (70,), w, b)
    assert_close(y, ry, 1e-12, name="y")
    dx, dw, _ = _rows_backward(kind, dy, s, (70,), mean, rstd, w, b, dsum=dsum)
    assert_close(dx, rdx + dsum, 1e-12, name="dx")
    assert_close(dw, rdw, 1e-12, name="dweight")


@pytest.mark.parametrize("kind", ROWS)
def test_skip_form_against_finite_differences(rng, kind):
    """L = sum(y * gy) + sum(s * gs): the gradient of x and of the residual alike is
    ``backward(gy, s, dsum=gs)``."""
    pshape = (5,)
    x = rng.normal(1.0, 1.5, (3, 5))
    r = rng.normal(size=x.shape)
    w = rng.normal(1.0, 0.3, pshape)
    b = rng.normal(0.0, 0.3, pshape) if kind == "layer_norm" else None
    gy, gs = rng.normal(size=x.shape), rng.normal(size=x.shape)

    def f(x, r, w):
        y, s, _, _ = _rows_forward(kind, x, pshape, w, b, residual=r)
        return np.stack([y, s])

    fd = ref.fd_grads(f, {"x": x, "r": r, "w": w}, np.stack([gy, gs]))
    y, s, mean, rstd = _rows_forward(kind, x, pshape, w, b, residual=r)
    dx, dw, _ = _rows_backward(kind, gy, s, pshape, mean, rstd, w, b, dsum=gs)
    assert_close(dx, fd["x"], 1e-6, name="dx")
    assert_close(dx, fd["r"], 1e-6, name="dresidual")
    assert_close(dw, fd["w"], 1e-6, name="dweight")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ROWS)
def test_skip_form_matches_pytorch_with_autograd(torch, rng, kind, dtype):
    x, r, dy, dsum, w, b = _rows_data(rng, (4, 6, 16), (16,), dtype, kind)
    r = r.astype(dtype)
    tx, tr, tw = (t(torch, a, requires_grad=True) for a in (x, r, w))
    ts = tx + tr
    if kind == "layer_norm":
        tb = t(torch, b, requires_grad=True)
        ty = torch.nn.functional.layer_norm(ts, (16,), tw, tb)
    else:
        ty = torch.nn.functional.rms_norm(ts, (16,), tw)
    torch.autograd.backward([ty, ts], [t(torch, dy), t(torch, dsum.astype(dtype))])
    y, s, mean, rstd = _rows_forward(kind, x, (16,), w, b, residual=r)
    dx, dw, db = _rows_backward(kind, dy, s, (16,), mean, rstd, w, b, dsum=dsum)
    tol = 10 * tol_for(dtype)
    assert_close(y, n(ty), tol, name="y")
    assert_close(s, n(ts), tol, name="s")
    assert_close(dx, n(tx.grad), tol, name="dx")
    assert_close(dx, n(tr.grad), tol, name="dresidual")
    assert_close(dw, n(tw.grad), tol, name="dweight")
    if kind == "layer_norm":
        assert_close(db, n(tb.grad), tol, name="dbias")


# -- layers -------------------------------------------------------------------------------

def _layer_cases():
    yield nn.BatchNorm2d, lambda **kw: nn.BatchNorm2d(4, **kw), (3, 4, 5, 3)
    yield nn.BatchNorm1d, lambda **kw: nn.BatchNorm1d(4, **kw), (6, 4)
    yield nn.GroupNorm, lambda **kw: nn.GroupNorm(2, 4, **kw), (3, 4, 5, 3)
    yield nn.InstanceNorm2d, lambda **kw: nn.InstanceNorm2d(4, affine=True, track_running_stats=True, **kw), \
        (3, 4, 5, 3)


LAYERS = [pytest.param(make, shape, id=cls.__name__) for cls, make, shape in _layer_cases()]


@pytest.mark.parametrize("make,shape,layout", [pytest.param(make, shape, layout, id=f"{cls.__name__}-{layout}")
                                               for cls, make, shape in _layer_cases() for layout in LAYOUTS
                                               if layout == "contiguous" or len(shape) > 2])
def test_layer_epilogue_matches_functional(rng, make, shape, layout):
    x, r, dy, _, _ = _data(rng, shape, layout, np.float32)
    fused, plain = make(activation="relu"), make()
    for layer in (fused, plain):
        layer.weight[...] = np.linspace(0.5, 1.5, shape[1])
    for training in (True, False):
        fused.train(training)
        plain.train(training)
        y = fused(x, r)
        y0 = plain(x)
        np.testing.assert_array_equal(y, np.maximum(y0 + r.astype(np.float32), 0))
        assert is_channels_last(y) == is_channels_last(x)
        dx = fused.backward(dy)
        g = np.where(y > 0, dy, 0).astype(np.float32)
        dx0 = plain.backward(g)
        assert_close(dx, dx0, 1e-6, name="dx")
        assert_close(fused.grad_weight, plain.grad_weight, 1e-6, name="grad_weight")
        np.testing.assert_array_equal(fused.grad_residual, g)
        assert plain.grad_residual is None
        if fused.running_mean is not None:
            np.testing.assert_array_equal(fused.running_mean, plain.running_mean)
    # Without a residual: ReLU alone; grad_residual None again.
    y = fused(x)
    fused.backward(dy)
    assert fused.grad_residual is None
    np.testing.assert_array_equal(y, np.maximum(plain(x), 0))


def test_layer_residual_without_activation_passes_dy_through(rng):
    layer = nn.BatchNorm2d(3)
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    r = rng.normal(size=x.shape).astype(np.float32)
    y = layer(x, r)
    np.testing.assert_array_equal(y, nn.BatchNorm2d(3)(x) + r)
    dy = rng.normal(size=x.shape).astype(np.float32)
    layer.backward(dy)
    assert layer.grad_residual is dy
    layer.zero_grad()
    assert layer.grad_residual is None


def test_unbatched_instance_norm_with_residual(rng):
    layer = nn.InstanceNorm2d(3, activation="relu")
    x = rng.normal(size=(3, 4, 5)).astype(np.float32)
    r = rng.normal(size=x.shape).astype(np.float32)
    y = layer(x, r)
    assert y.shape == x.shape
    np.testing.assert_array_equal(y, np.maximum(nn.InstanceNorm2d(3)(x) + r, 0))
    dx = layer.backward(np.ones_like(x))
    assert dx.shape == x.shape and layer.grad_residual.shape == x.shape
    np.testing.assert_array_equal(layer.grad_residual, (y > 0).astype(np.float32))
    with pytest.raises(ValueError, match="residual must have the shape"):
        layer(x, r[:, :2])


def test_sync_batch_norm_group_of_one_is_batchnorm_with_the_epilogue(rng):
    from numbanorm.distributed import LocalCommunicator

    x, r, dy, _, _ = _data(rng, (4, 3, 5, 2), "channels_last", np.float32)
    bn = nn.BatchNorm2d(3, activation="relu")
    sync = nn.SyncBatchNorm(3, comm=LocalCommunicator(), activation="relu")
    for _ in range(2):
        np.testing.assert_array_equal(sync(x, r), bn(x, r))
        np.testing.assert_array_equal(sync.backward(dy), bn.backward(dy))
        np.testing.assert_array_equal(sync.grad_residual, bn.grad_residual)
        np.testing.assert_array_equal(sync.grad_weight, bn.grad_weight)
    assert "activation='relu'" in repr(sync)
    converted = nn.SyncBatchNorm.convert(bn)
    assert converted.activation == "relu"


@pytest.mark.parametrize("cls", [nn.LayerNorm, nn.RMSNorm])
def test_row_layers_skip_form(rng, cls):
    layer, plain = cls(6, dtype=np.float64), cls(6, dtype=np.float64)
    layer.weight[...] = plain.weight[...] = np.linspace(0.5, 1.5, 6)
    x = rng.normal(size=(4, 6))
    r = rng.normal(size=(4, 6))
    y, s = layer(x, r)
    np.testing.assert_array_equal(s, x + r)
    np.testing.assert_array_equal(y, plain(x + r))
    dy, dsum = rng.normal(size=x.shape), rng.normal(size=x.shape)
    dx = layer.backward(dy, dsum)
    assert_close(dx, plain.backward(dy) + dsum, 1e-13, name="dx")
    assert layer.grad_residual is dx
    assert_close(layer.grad_weight, plain.grad_weight, 1e-13, name="grad_weight")
    # Without a residual the layer is as it was; dsum still adds.
    np.testing.assert_array_equal(layer(x), plain(x))
    assert_close(layer.backward(dy, dsum), plain.backward(dy) + dsum, 1e-13, name="dx + dsum")
    assert layer.grad_residual is None


@pytest.mark.parametrize("make", [lambda a: nn.BatchNorm2d(3, activation=a), lambda a: nn.GroupNorm(1, 3, activation=a),
                                  lambda a: nn.InstanceNorm1d(3, activation=a),
                                  lambda a: nn.SyncBatchNorm(3, activation=a, comm=_local())],
                         ids=["BatchNorm2d", "GroupNorm", "InstanceNorm1d", "SyncBatchNorm"])
def test_activation_is_in_repr_and_pickled_state_not_in_state_dict(make):
    import pickle

    layer = make("relu")
    assert repr(layer).endswith(", activation='relu')")
    assert "activation" not in repr(make(None))
    assert "activation" not in layer.state_dict()
    assert pickle.loads(pickle.dumps(layer)).activation == "relu"
    with pytest.raises(ValueError, match="activation must be one of"):
        make("gelu")


def _local():
    from numbanorm.distributed import LocalCommunicator

    return LocalCommunicator()


# -- bad input is rejected before anything changes ------------------------------------------

BAD_RESIDUALS = [
    (lambda x: np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype), ValueError, "residual must have the shape"),
    (lambda x: np.zeros(x.shape, np.int32), TypeError, "residual must have dtype"),
    (lambda x: x.tolist(), TypeError, "residual must be a numpy.ndarray"),
]


@pytest.mark.parametrize("make_bad,exc,match", BAD_RESIDUALS, ids=["shape", "dtype", "type"])
@pytest.mark.parametrize("make,shape", LAYERS)
def test_bad_residual_leaves_the_layer_unchanged(rng, make, shape, make_bad, exc, match):
    layer = make(activation="relu")
    x = rng.normal(size=shape).astype(np.float32)
    snap = snapshot(layer)
    with pytest.raises(exc, match=match):
        layer(x, make_bad(x))
    assert_state_unchanged(layer, snap)
    assert layer._saved is None


@pytest.mark.parametrize("make,shape", LAYERS)
def test_bad_activation_set_after_construction_raises_before_anything(rng, make, shape):
    layer = make(activation="relu")
    layer.activation = "gelu"
    snap = snapshot(layer)
    with pytest.raises(ValueError, match="activation must be one of"):
        layer(rng.normal(size=shape).astype(np.float32))
    assert_state_unchanged(layer, snap)


FUNCTIONAL_FORWARDS = [
    ("batch_norm", lambda x, **kw: F.batch_norm(x, np.zeros(3), np.ones(3), training=True, **kw)),
    ("group_norm", lambda x, **kw: F.group_norm(x, 3, **kw)),
    ("instance_norm", lambda x, **kw: F.instance_norm(x, np.zeros(3), np.ones(3), **kw)),
    ("layer_norm", lambda x, **kw: F.layer_norm(x, (4,), **kw)),
    ("rms_norm", lambda x, **kw: F.rms_norm(x, (4,), **kw)),
]


@pytest.mark.parametrize("name,op", FUNCTIONAL_FORWARDS, ids=[c[0] for c in FUNCTIONAL_FORWARDS])
def test_functional_rejects_bad_epilogue_before_writing(rng, name, op):
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    out = np.full_like(x, 7.0)
    rows = name in ("layer_norm", "rms_norm")
    bad_calls = [
        (dict(residual=np.zeros((2, 3, 5))), ValueError, "residual must have the shape"),
        (dict(residual=np.zeros(x.shape, np.complex64)), TypeError, "residual must have dtype"),
        (dict(residual=x, out=x[...].copy()), None, None),  # a residual may be x itself
    ]
    if not rows:
        bad_calls += [(dict(activation="gelu"), ValueError, "activation must be one of"),
                      (dict(activation="ReLU"), ValueError, "activation must be one of")]
    for kw, exc, match in bad_calls:
        if exc is None:
            op(x, **kw)
            continue
        with pytest.raises(exc, match=match):
            op(x, out=out, **kw)
        assert (out == 7.0).all()
    r = np.zeros_like(x)
    with pytest.raises(ValueError, match="out must not overlap the residual"):
        op(x, residual=r, out=r)
    if name in ("batch_norm", "instance_norm"):
        running_mean = np.zeros(3)
        with pytest.raises(ValueError):
            F.batch_norm(x, running_mean, np.ones(3), training=True, residual=r[:1]) if name == "batch_norm" else \
                F.instance_norm(x, running_mean, np.ones(3), residual=r[:1])
        assert (running_mean == 0).all()


def test_backward_epilogue_options_are_checked(rng):
    x = rng.normal(size=(3, 2, 4))
    y, mean, rstd = F.batch_norm(x, None, None, training=True, return_stats=True, activation="relu")
    dy = np.ones_like(x)
    with pytest.raises(ValueError, match="y .the forward's output. is required"):
        F.batch_norm_backward(dy, x, mean, rstd, activation="relu")
    with pytest.raises(ValueError, match="y must have the shape"):
        F.group_norm_backward(dy, x, 1, mean[None, :1], rstd[None, :1], y=y[:2], activation="relu")
    with pytest.raises(TypeError, match="y must have the dtype"):
        F.instance_norm_backward(dy, x, np.zeros((3, 2)), np.ones((3, 2)), y=y.astype(np.float32),
                                 activation="relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        F.batch_norm_backward(dy, x, mean, rstd, y=y, activation="sigmoid")
    with pytest.raises(TypeError, match="residual must be True or False"):
        F.batch_norm_backward(dy, x, mean, rstd, residual=y)
    with pytest.raises(ValueError, match="dsum must have the shape"):
        F.layer_norm_backward(dy, x, 4, np.zeros((3, 2)), np.ones((3, 2)), dsum=dy[:1])
    # y is not needed (and not read) without an activation
    assert len(F.batch_norm_backward(dy, x, mean, rstd, y=None, residual=True)) == 4


def test_empty_batch_with_the_epilogue(rng):
    x = np.empty((0, 3, 4), np.float32)
    y = F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32), residual=np.empty_like(x),
                     activation="relu")
    assert y.shape == x.shape
    y, s = F.layer_norm(np.empty((0, 4)), 4, residual=np.empty((0, 4)))
    assert y.shape == s.shape == (0, 4)


def test_relu_propagates_nan_and_masks_it_in_backward():
    x = np.array([[1.0, 2.0, 3.0, 4.0]]).reshape(1, 1, 4)
    r = np.array([0.0, np.nan, -10.0, 0.0]).reshape(x.shape)
    y, mean, rstd = F.batch_norm(x, None, None, training=True, return_stats=True, residual=r, activation="relu")
    assert np.isnan(y[0, 0, 1]) and y[0, 0, 2] == 0 and y[0, 0, 3] > 0
    dx, dw, db, dr = F.batch_norm_backward(np.ones_like(x), x, mean, rstd, y=y, activation="relu", residual=True)
    np.testing.assert_array_equal(dr, [[[0.0, 0.0, 0.0, 1.0]]])  # NaN > 0 is False, as in PyTorch
    assert np.isfinite(dx).all()
