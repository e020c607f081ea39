"""Sanity checks of tests/reference.py itself (against finite differences and torch).

The references are the oracle for every other test, so they are checked
independently of numbanorm here.
"""

import numpy as np
import reference as ref
from helpers import assert_close, n, t


def _fd_check(fwd, bwd, inputs, rng, tol=1e-6):
    y = fwd(**inputs)
    g = rng.standard_normal(y.shape)
    fd = ref.fd_grads(fwd, inputs, g)
    got = bwd(g, **inputs)
    for name, grad in got.items():
        if fd.get(name) is None:
            assert grad is None
            continue
        assert_close(grad, fd[name], tol, name=name)


def test_reference_batch_norm_fd(rng):
    x = rng.standard_normal((3, 2, 2, 2))
    w, b = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)

    def fwd(x, w, b):
        return ref.batch_norm(x, None, None, w, b, training=True)[0]

    def bwd(g, x, w, b):
        _, mean, invstd, _, _ = ref.batch_norm(x, None, None, w, b, training=True)
        dx, dw, db = ref.batch_norm_backward(g, x, mean, invstd, w, b, use_input_stats=True)
        return {"x": dx, "w": dw, "b": db}

    _fd_check(fwd, bwd, {"x": x, "w": w, "b": b}, rng)


def test_reference_layer_rms_group_instance_fd(rng):
    x = rng.standard_normal((2, 4, 3))
    w, b = rng.uniform(0.5, 1.5, (4, 3)), rng.standard_normal((4, 3))

    def ln(x, w, b):
        return ref.layer_norm(x, (4, 3), w, b)[0]

    def ln_b(g, x, w, b):
        _, m, r = ref.layer_norm(x, (4, 3), w, b)
        return dict(zip("xwb", ref.layer_norm_backward(g, x, (4, 3), m, r, w, b), strict=True))

    _fd_check(ln, ln_b, {"x": x, "w": w, "b": b}, rng)

    def rms(x, w):
        return ref.rms_norm(x, 3, w, eps=1e-3)[0]

    def rms_b(g, x, w):
        _, r = ref.rms_norm(x, 3, w, eps=1e-3)
        dx, dw, _ = ref.rms_norm_backward(g, x, 3, r, w)
        return {"x": dx, "w": dw}

    _fd_check(rms, rms_b, {"x": x, "w": rng.uniform(0.5, 1.5, 3)}, rng)

    wc, bc = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)

    def gn(x, w, b):
        return ref.group_norm(x, 2, w, b)[0]

    def gn_b(g, x, w, b):
        _, m, r = ref.group_norm(x, 2, w, b)
        return dict(zip("xwb", ref.group_norm_backward(g, x, 2, m, r, w, b), strict=True))

    _fd_check(gn, gn_b, {"x": x, "w": wc, "b": bc}, rng)

    def inorm(x, w, b):
        return ref.instance_norm(x, weight=w, bias=b)[0]

    def in_b(g, x, w, b):
        _, m, r, _, _ = ref.instance_norm(x, weight=w, bias=b)
        return dict(zip("xwb", ref.instance_norm_backward(g, x, m, r, w, b), strict=True))

    _fd_check(inorm, in_b, {"x": x, "w": wc, "b": bc}, rng)


def test_reference_against_torch(torch, rng):
    F = torch.nn.functional
    x = rng.standard_normal((3, 4, 5)) * 2 + 1
    g = rng.standard_normal(x.shape)
    w, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2, 4)

    # batch norm, training with running stats update
    xt = t(torch, x, True)
    wt, bt = t(torch, w, True), t(torch, b, True)
    rmt, rvt = t(torch, rm), t(torch, rv)
    yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=True, momentum=0.3, eps=1e-3)
    yt.backward(t(torch, g))
    y, mean, invstd, nrm, nrv = ref.batch_norm(x, rm, rv, w, b, True, 0.3, 1e-3)
    dx, dw, db = ref.batch_norm_backward(g, x, mean, invstd, w, b, True)
    for got, exp in [(y, yt), (nrm, rmt), (nrv, rvt), (dx, xt.grad), (dw, wt.grad),
                     (db, bt.grad)]:
        assert_close(got, n(exp), 1e-12)

    # layer norm, group norm, rms norm, instance norm forward
    assert_close(ref.layer_norm(x, 5)[0], n(F.layer_norm(t(torch, x), (5,))), 1e-12)
    assert_close(ref.group_norm(x, 2, w, b)[0],
                 n(F.group_norm(t(torch, x), 2, t(torch, w), t(torch, b))), 1e-12)
    assert_close(ref.rms_norm(x, 5, eps=ref.rms_eps(np.float64))[0],
                 n(F.rms_norm(t(torch, x), (5,))), 1e-12)
    rmt, rvt = t(torch, rm), t(torch, rv)
    yt = F.instance_norm(t(torch, x), rmt, rvt, t(torch, w), t(torch, b),
                         use_input_stats=True, momentum=0.2)
    y, _, _, nrm, nrv = ref.instance_norm(x, rm, rv, w, b, True, 0.2)
    for got, exp in [(y, yt), (nrm, rmt), (nrv, rvt)]:
        assert_close(got, n(exp), 1e-12)
