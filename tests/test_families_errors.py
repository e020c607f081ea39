"""Bad input to every family, on the CPU and on CUDA: the right exception with a clear
message, raised before anything changes (layers are snapshot before and compared after)."""

import numpy as np
import pytest
from backends import CPU, CUDA, both
from checks import check_step, reference_of
from families import FAMILIES, Params
from helpers import assert_close, assert_state_unchanged, data, randomize_affine, snapshot

FAMILY_IDS = [fam.name for fam in FAMILIES]


def _raises_unchanged(layer, exc, fn, match=None):
    before = snapshot(layer)
    with pytest.raises(exc, match=match):
        fn()
    assert_state_unchanged(layer, before)


def _trained(be, fam, rng, case=None, steps=2):
    """A unit-configured layer with random parameters and a few training steps (run on
    the CPU, then moved to ``be``)."""
    case = fam.unit[0] if case is None else case
    layer = fam.make(case, np.float32, **fam.unit[1])
    randomize_affine(layer, rng)
    for _ in range(steps):
        layer(data(rng, case.shape, np.float32))
    return be.layer(layer)


def _grid(*values):
    return [p for fam in FAMILIES for v in values or [None]
            for p in both(fam, *([] if v is None else [v]), id=f"{fam}" + ("" if v is None else f"-{v}"))]


@pytest.mark.parametrize("be,fam,training", _grid(True, False))
def test_bad_input_leaves_state_unchanged(rng, be, fam, training):
    for case, shape in fam.bad_inputs:
        layer = _trained(be, fam, rng, case)
        layer.train(training)
        bad = be.put(np.zeros(shape, np.float32))
        _raises_unchanged(layer, ValueError, lambda layer=layer, bad=bad: layer(bad))
    layer = _trained(be, fam, rng)
    layer.train(training)
    good = data(rng, fam.unit[0].shape, np.float32)
    for bad in (good.astype(np.int64), good.astype(np.int32), good.astype(np.complex128), good > 0,
                good.astype(np.float16)):
        _raises_unchanged(layer, TypeError, lambda bad=bad: layer(be.put(bad)), match="float32 or float64")
    _raises_unchanged(layer, TypeError, lambda: layer(good.tolist()), match="float32 or float64")


@pytest.mark.parametrize("be,fam", _grid())
def test_backward_errors_leave_state_unchanged(rng, be, fam):
    case, cfg = fam.unit
    fresh = be.layer(fam.make(case, np.float32, **cfg))
    x = data(rng, case.shape, np.float32)
    dy = rng.standard_normal(case.shape).astype(np.float32)
    _raises_unchanged(fresh, RuntimeError, lambda: fresh.backward(be.put(dy)), match="before forward")
    layer = _trained(be, fam, rng)
    refl = reference_of(fam, case, layer, **cfg)
    layer(be.put(x))
    refl.forward(x)
    _raises_unchanged(layer, ValueError, lambda: layer.backward(be.put(dy[:1])), match="dy must have the shape")
    _raises_unchanged(layer, ValueError, lambda: layer.backward(be.put(np.ascontiguousarray(dy[..., :1]))),
                      match="dy must have the shape")
    _raises_unchanged(layer, TypeError, lambda: layer.backward(be.put(dy.astype(np.float64))),
                      match="dy must have the dtype")
    _raises_unchanged(layer, TypeError, lambda: layer.backward(be.put(dy.astype(np.int64))))
    if be is CUDA:
        _raises_unchanged(layer, TypeError, lambda: layer.backward(dy), match="dy must be a CUDA device array")
    # what the forward kept is intact: backward still matches the reference
    dx = be.get(layer.backward(be.put(dy)))
    for name, got, expected in zip(("dx", "grad_weight", "grad_bias"), (dx, layer.grad_weight, layer.grad_bias),
                                   refl.backward(dy), strict=True):
        assert (got is None) == (expected is None), name
        if expected is not None:
            assert_close(be.get(got), expected, 1e-5, name=f"{name} after the errors")
    # and so does a new step
    check_step(be, fam, layer, reference_of(fam, case, layer, **cfg), x, dy, "after errors")


def _wrong(shape):
    return shape[:-1] + (shape[-1] + 1,)


@pytest.mark.parametrize("be,fam", _grid())
def test_functional_errors_leave_running_stats(rng, be, fam):
    case = fam.unit[0]
    x = data(rng, case.shape, np.float64)
    p = fam.params(rng, case, np.float64, "wb", running=fam.running)
    opts = fam.modes[0].opts
    pd = Params(*(None if a is None else be.put(a.copy()) for a in p))
    x_d = be.put(x)
    bad_w = be.put(np.ones(_wrong(fam.param_shape(case))))
    with pytest.raises(ValueError, match="weight must have shape"):
        fam.forward(x_d, case, pd._replace(weight=bad_w), **opts)
    with pytest.raises(TypeError, match="float32 or float64"):
        fam.forward(be.put(x.astype(np.int64)), case, pd, **opts)
    if fam.running:
        bad_r = be.put(np.ones(_wrong(fam.param_shape(case))))
        with pytest.raises(ValueError, match="running_mean must have shape"):
            fam.forward(x_d, case, pd._replace(running_mean=bad_r, running_var=bad_r), **opts)
        with pytest.raises(ValueError, match="running_var must have shape"):
            fam.forward(x_d, case, pd._replace(running_var=bad_r), **opts)
        with pytest.raises(ValueError, match="momentum"):
            fam.forward(x_d, case, pd, **dict(opts, momentum=2.0))
        if be is CUDA:
            with pytest.raises(TypeError, match="running_mean must be a CUDA device array like the input"):
                fam.forward(x_d, case, pd._replace(running_mean=p.running_mean, running_var=p.running_var), **opts)
        assert np.array_equal(be.get(pd.running_mean), p.running_mean)
        assert np.array_equal(be.get(pd.running_var), p.running_var)
    if be is CUDA:
        with pytest.raises(TypeError, match="weight must be a CUDA device array like the input"):
            fam.forward(x_d, case, pd._replace(weight=p.weight), **opts)
    _, mean, rstd = fam.forward(x_d, case, pd._replace(running_mean=None, running_var=None), **dict(opts, eps=1e-5))
    dy = be.put(x.copy())
    with pytest.raises(ValueError, match="dy must have the shape"):
        fam.backward(be.put(np.ascontiguousarray(x[..., :-1])), x_d, case, mean, rstd, pd, True)
    with pytest.raises(TypeError, match="dy must have the dtype"):
        fam.backward(be.put(x.astype(np.float32)), x_d, case, mean, rstd, pd, True)
    if be is CUDA:
        with pytest.raises(TypeError, match="dy must be a CUDA device array"):
            fam.backward(x, x_d, case, mean, rstd, pd, True)
    stat = np.zeros(_wrong(fam.stat_shape(case)))
    if fam.centered:
        with pytest.raises(ValueError, match="mean must have shape"):
            fam.backward(dy, x_d, case, be.put(stat), rstd, pd, True)
    with pytest.raises(ValueError, match="rstd must have shape"):
        fam.backward(dy, x_d, case, mean, be.put(stat), pd, True)
    with pytest.raises(ValueError, match="weight must have shape"):
        fam.backward(dy, x_d, case, mean, rstd, pd._replace(weight=bad_w), True)


@pytest.mark.parametrize("be,fam,dtype", _grid(np.float16, np.int32)
                         + [pytest.param(CPU, fam, np.int64, id=f"cpu-{fam}-int64") for fam in FAMILIES])
def test_float16_and_int_are_rejected_by_every_op(rng, be, fam, dtype):
    """float16 and integer input, dy or parameters: a TypeError naming float32/float64,
    from the functional forward and backward and from the layer, before anything runs."""
    case, cfg = fam.unit
    good = data(rng, case.shape, np.float32)
    bad = good.astype(dtype)
    p = fam.params(rng, case, np.float32, "wb", running=fam.running)
    pd = Params(*(None if a is None else be.put(a) for a in p))
    opts = fam.modes[0].opts
    match = "float32 or float64"
    with pytest.raises(TypeError, match=match):
        fam.forward(be.put(bad), case, pd, **opts)
    with pytest.raises(TypeError, match=match):
        fam.forward(be.put(good), case, pd._replace(weight=be.put(p.weight.astype(dtype))), **opts)
    _, mean, rstd = fam.forward(good, case, p, **opts)  # valid statistics, computed on the CPU
    mean, rstd = be.put(mean), be.put(rstd)
    with pytest.raises(TypeError, match=match):
        fam.backward(be.put(bad), be.put(bad), case, mean, rstd, pd, True)
    with pytest.raises(TypeError, match="dtype"):
        fam.backward(be.put(bad), be.put(good), case, mean, rstd, pd, True)
    with pytest.raises(TypeError, match=match):
        fam.make(case, dtype, **cfg)
    layer = _trained(be, fam, rng, steps=1)
    _raises_unchanged(layer, TypeError, lambda: layer(be.put(bad)), match=match)
    layer(be.put(good))
    _raises_unchanged(layer, TypeError, lambda: layer.backward(be.put(bad)), match="dtype")
    _raises_unchanged(layer, TypeError, lambda: layer.to(dtype), match=match)


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
def test_load_state_dict_errors_leave_state_unchanged(rng, fam):
    layer = _trained(CPU, fam, rng)
    good = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    new_w = good["weight"] + 1.0  # a valid value that must not be loaded either
    keys = list(good)
    bad_dicts = [{}, dict(good, weight=new_w, foo=np.zeros(3, np.float32))]
    bad_dicts += [{k: v for k, v in (good | {"weight": new_w}).items() if k != missing} for missing in keys]
    bad_dicts += [dict(good, weight=new_w, **{k: np.zeros(_wrong(good[k].shape or (1,)), np.float32)})
                  for k in keys if k not in ("weight", "num_batches_tracked")]
    bad_dicts += [dict(good, weight=np.ones(_wrong(good["weight"].shape), np.float32))]
    for d in bad_dicts:
        _raises_unchanged(layer, RuntimeError, lambda d=d: layer.load_state_dict(d))  # as PyTorch
    _raises_unchanged(layer, RuntimeError, lambda: layer.load_state_dict(bad_dicts[-1], strict=False))
    _raises_unchanged(layer, TypeError, lambda: layer.load_state_dict(dict(good, weight=new_w.astype(np.complex64))))
