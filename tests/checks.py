"""Assertions shared by the generic ``test_families_*`` modules: one functional call or one
layer step on a backend, compared with the float64 reference (and, on CUDA, with the CPU).

Tolerances, relative to the scale of the expected values (see ``helpers.assert_close``):

- ``TOL``: results in the input's dtype against the float64 reference;
- ``STATS_TOL``: the float64 statistics returned for the input (float64 or compensated
  accumulation makes them far better than float32 rounding, ~6e-8);
- ``RUN_TOL``: running statistics, by their own dtype;
- ``TWIN_TOL`` / ``TWIN_LAYER_TOL``: CUDA against the CPU kernels (same formulas and float64
  statistics, so they differ by rounding only); gradients get ten times as much.
"""

import copy

import numpy as np
from backends import CPU, CUDA
from families import Params
from helpers import TOL, assert_close, host

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
STATS_TOL = {F32: 1e-8, F64: 1e-12}
RUN_TOL = {F32: 1e-5, F64: 1e-12}
TWIN_TOL = {F32: 2e-6, F64: 1e-12}
TWIN_LAYER_TOL = {F32: 1e-5, F64: 1e-11}
DTYPES = [np.float32, np.float64]
GRADS = ("dx", "dweight", "dbias")


def tol(dtype):
    return TOL[np.dtype(dtype)]


def dx_atol(fam, t, rstd, dy, weight, scaled=None):
    """atol of a dx check: ``t``, or (``scaled``, by default for LayerNorm and GroupNorm) ``t``
    times the size of the terms dx is a difference of (rstd * |dy * w|), whichever is larger."""
    if not (fam.dx_atol_scaled if scaled is None else scaled):
        return t
    term = float(np.max(rstd)) * float(np.max(np.abs(dy))) * (1.0 if weight is None else float(np.max(np.abs(weight))))
    return t * max(1.0, term)


# -- functional ---------------------------------------------------------------------

def run_functional(be, fam, case, opts, p, x, dy, out=None):
    """Forward (with statistics) and backward of ``fam`` on ``be``, from host inputs.

    Running statistics are copies of ``p``'s, updated where the call updates them.
    Returns a dict of host arrays: y, mean, rstd, running_mean, running_var, dx, dweight, dbias.
    """
    pd = Params(*(None if a is None else be.put(np.array(a, copy=True)) for a in p))
    x_d = be.put(x)
    y, mean, rstd = fam.forward(x_d, case, pd, out=out, **opts)
    dx, dw, db = fam.backward(be.put(dy), x_d, case, mean, rstd, pd, fam.input_stats(opts, p))
    return dict(y=be.get(y), mean=be.get(mean), rstd=be.get(rstd), running_mean=be.get(pd.running_mean),
                running_var=be.get(pd.running_var), dx=be.get(dx), dweight=be.get(dw), dbias=be.get(db))


def reference_functional(fam, case, opts, p, x, dy):
    """The same as :func:`run_functional`, in float64 by tests/reference.py."""
    y, mean, rstd, rm, rv = fam.ref_forward(x, case, p, **opts)
    grads = fam.ref_backward(dy, x, case, mean, rstd, p, fam.input_stats(opts, p))
    return dict(y=y, mean=mean, rstd=rstd, running_mean=rm, running_var=rv, **dict(zip(GRADS, grads, strict=True)))


def check_functional(be, fam, case, opts, p, x, dy, t=None):
    """Run on ``be``; compare with the reference (and on CUDA with the CPU); return the results."""
    dtype = x.dtype
    t = tol(dtype) if t is None else t
    got = run_functional(be, fam, case, opts, p, x, dy)
    exp = reference_functional(fam, case, opts, p, x, dy)
    for name in ("y", "dx"):
        assert got[name].dtype == dtype and got[name].shape == x.shape, name
    assert_close(got["y"], exp["y"], t, name="y")
    for name in ("mean", "rstd"):
        if exp[name] is None:
            assert got[name] is None, name
            continue
        assert got[name].dtype == np.float64 and got[name].shape == fam.stat_shape(case), name
        assert_close(got[name], exp[name], STATS_TOL[dtype], name=name)
    for name in ("running_mean", "running_var"):
        given = getattr(p, name)
        if given is None:
            continue
        assert got[name].dtype == given.dtype, f"{name} keeps its dtype"
        if not fam.input_stats(opts, p):  # normalized with them: left untouched
            assert np.array_equal(got[name], given), f"{name} changed"
        assert_close(got[name], exp[name], t, name=name)
    assert_close(got["dx"], exp["dx"], t, name="dx")
    for name, given in (("dweight", p.weight), ("dbias", p.bias)):
        if given is None:
            assert got[name] is None, f"{name} without the parameter"
        else:
            assert got[name].dtype == dtype and got[name].shape == given.shape, name
            assert_close(got[name], exp[name], t, name=name)
    if be is CUDA:
        check_twin(got, run_functional(CPU, fam, case, opts, p, x, dy), TWIN_TOL, x.dtype)
    return got


def check_twin(got, cpu, tols, dtype):
    """CUDA results against the CPU's: same dtypes, values within rounding; the tolerance is
    the input dtype's (the float64 statistics: float64's), gradients get 10 times as much,
    running statistics twice."""
    for name, expected in cpu.items():
        if expected is None:
            assert got[name] is None, f"{name}: expected None"
            continue
        assert got[name].dtype == expected.dtype, f"{name}: dtype {got[name].dtype} != {expected.dtype}"
        scale = 10 if name in GRADS else 2 if name.startswith("running") else 1
        t = tols[F64 if name in ("mean", "rstd") else np.dtype(dtype)]
        assert_close(got[name], expected, t * scale, name=f"{name} vs CPU")


# -- layers -------------------------------------------------------------------------

def layer_pair(be, fam, case, rng, dtype=np.float32, randomize=True, **cfg):
    """``(layer on be, float64 reference, CPU twin or None)`` with random weight and bias."""
    from helpers import randomize_affine

    layer = fam.make(case, dtype, **cfg)
    if randomize:
        randomize_affine(layer, rng)
    refl = fam.reference_layer(case, layer, **cfg)
    twin = copy.deepcopy(layer) if be is CUDA else None
    return be.layer(layer), refl, twin


def check_step(be, fam, layer, refl, x, dy, what="", twin=None, t=None, run_tol=None, grad_tol=None,
               dx_scaled=None):
    """One forward and backward of ``layer`` (on ``be``) and of its reference on host
    ``x``/``dy``: y, dx (atol as :func:`dx_atol` with ``dx_scaled``), gradients
    (``grad_tol``, default ``t``), running statistics (``run_tol`` by their dtype) and the
    batch counter.
    Returns the backend's (y, dx), to check their layout."""
    t = tol(x.dtype) if t is None else t
    y_b = layer(be.put(x))
    assert y_b.dtype == x.dtype and tuple(y_b.shape) == x.shape, f"y {what}"
    y = be.get(y_b)
    assert_close(y, refl.forward(x), t, name=f"y {what}")
    dx_b = layer.backward(be.put(dy))
    dx = be.get(dx_b)
    edx, edw, edb = refl.backward(dy)
    assert dx.dtype == x.dtype, f"dx {what}"
    assert_close(dx, edx, t, atol=dx_atol(fam, t, refl._saved[2], dy, refl.weight, dx_scaled), name=f"dx {what}")
    for name, expected in (("grad_weight", edw), ("grad_bias", edb)):
        got = getattr(layer, name)
        if expected is None:
            assert got is None, f"{name} {what}"
        else:
            assert_close(be.get(got), expected, grad_tol or t, name=f"{name} {what}")
    if refl.running_mean is None:
        assert layer.running_mean is None and layer.running_var is None and layer.num_batches_tracked is None
    else:
        for name in ("running_mean", "running_var"):
            got = be.get(getattr(layer, name))
            assert got.dtype == layer.dtype, f"{name} keeps the layer's dtype"
            assert_close(got, getattr(refl, name), (run_tol or RUN_TOL)[got.dtype], name=f"{name} {what}")
        if getattr(refl, "num_batches_tracked", None) is not None:
            assert int(layer.num_batches_tracked) == refl.num_batches_tracked
    if twin is not None:
        ty, tdx = twin(x), twin.backward(dy)
        cpu = dict(y=ty, dx=tdx, dweight=twin.grad_weight, dbias=twin.grad_bias)
        check_twin(dict(y=y, dx=dx, dweight=be.get(layer.grad_weight), dbias=be.get(layer.grad_bias)), cpu,
                   TWIN_LAYER_TOL, x.dtype)
        check_same_state(layer, twin, 1e-6)
    return y_b, dx_b


def check_same_state(layer, other, rtol):
    """Two layers (any devices) hold the same state dict, as NumPy arrays of the same dtypes."""
    got, expected = layer.state_dict(), other.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert isinstance(got[key], np.ndarray), f"state_dict()[{key!r}] is not a NumPy array"
        assert got[key].dtype == value.dtype, key
        assert_close(got[key], value, rtol, name=key)


def set_mode(training, *layers):
    """Put layers (numbanorm layers and references) in training or evaluation mode."""
    for layer in layers:
        if layer is None:
            continue
        if hasattr(layer, "train"):
            assert layer.train(training) is layer and layer.training is training
        else:
            layer.training = training


def reference_of(fam, case, layer, **cfg):
    """A float64 reference in the state of ``layer`` (any device): its weight, bias,
    running statistics, batch counter and mode."""
    refl = fam.reference_layer(case, layer, **cfg)
    refl.training = layer.training
    if refl.running_mean is not None:
        refl.running_mean, refl.running_var = (np.array(host(a), np.float64) for a in (layer.running_mean,
                                                                                      layer.running_var))
    if getattr(refl, "num_batches_tracked", None) is not None:
        refl.num_batches_tracked = int(layer.num_batches_tracked)
    return refl
