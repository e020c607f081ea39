"""Memory layouts and array plumbing of every family, on the CPU and on CUDA: channels-last
input (no copy, the output keeps the layout), non-contiguous views, ``out=``, empty batches."""

import numpy as np
import pytest
from backends import CPU, CUDA, backend_param, both
from checks import DTYPES, check_functional, check_step, layer_pair, set_mode, tol
from families import FAMILIES, Case, Params, cfg_id
from helpers import assert_close, channels_last, data


def _cl_grid():
    """Both dtypes on the CPU, float32 on CUDA."""
    for fam in FAMILIES:
        for case, cfg in fam.cuda_cl_cases + fam.cl_cases:
            for dtype in DTYPES:
                ident = f"{fam}-{case}-{cfg_id(cfg)}-{np.dtype(dtype)}"
                yield backend_param("cpu", fam, case, cfg, dtype, id=f"cpu-{ident}")
                if (case, cfg) in fam.cuda_cl_cases and dtype == np.float32:
                    yield backend_param("cuda", fam, case, cfg, dtype, id=f"cuda-{ident}")


@pytest.mark.parametrize("be,fam,case,cfg,dtype", list(_cl_grid()))
def test_channels_last(rng, be, fam, case, cfg, dtype):
    """A channels-last input (an NCHW view of NHWC memory) and dy: outputs and dx keep
    the input's strides, in training, evaluation and the functional call."""
    x = channels_last(data(rng, case.shape, dtype))
    dy = channels_last(rng.standard_normal(case.shape).astype(dtype))
    assert not x.flags.c_contiguous
    layer, refl, twin = layer_pair(be, fam, case, rng, dtype, **cfg)
    y, dx = check_step(be, fam, layer, refl, x, dy, "train", twin)
    assert tuple(y.strides) == x.strides and tuple(dx.strides) == x.strides, f"strides {y.strides} {dx.strides}"
    if layer.running_mean is not None:
        set_mode(False, layer, refl, twin)
        y, _ = check_step(be, fam, layer, refl, x, dy, "eval", twin)
        assert tuple(y.strides) == x.strides, f"eval output strides {y.strides}"
    mode = fam.modes[0]
    p = fam.params(rng, case, dtype, "none", running=mode.running)
    check_functional(be, fam, case, mode.opts, p, x, dy)  # values and float64 statistics
    assert tuple(fam.forward(be.put(x), case, Params(), **mode.opts)[0].strides) == x.strides


def _views_grid():
    """Every view on the CPU, each family's smallest on CUDA."""
    for fam in FAMILIES:
        sizes = [view[0](np.empty(view[1])).size for view in fam.views]
        for i, view in enumerate(fam.views):
            yield backend_param("cpu", fam, view, id=f"cpu-{fam}-view{i}")
            if sizes[i] == min(sizes):
                yield backend_param("cuda", fam, view, id=f"cuda-{fam}-view{i}")


@pytest.mark.parametrize("be,fam,view", list(_views_grid()))
def test_noncontiguous_views(rng, be, fam, view):
    """Strided, reversed and transposed views (and a non-contiguous dy), float64."""
    make_view, base_shape, arg, cfg = view
    x = make_view(data(rng, base_shape, np.float64))
    assert not x.flags.c_contiguous
    case = Case(x.shape, arg)
    layer, refl, twin = layer_pair(be, fam, case, rng, np.float64, **cfg)
    dy = np.flip(rng.standard_normal(x.shape), -1)
    check_step(be, fam, layer, refl, x, dy, "view", twin, t=1e-10)


def _out_grid():
    """Every out layout: on the CPU in every mode and dtype; on CUDA in the first mode, float64,
    contiguous for every family, every layout for BatchNorm and LayerNorm."""
    for fam in FAMILIES:
        for layout in ("contiguous", "channels_last", "strided"):
            for j, mode in enumerate(fam.modes):
                for dtype in DTYPES:
                    ident = f"{fam}-{mode.name}-{layout}-{np.dtype(dtype)}"
                    yield backend_param("cpu", fam, fam.out_case, mode, layout, dtype, id=f"cpu-{ident}")
                    if j == 0 and dtype == np.float64 and (layout == "contiguous" or fam.name in ("batch_norm",
                                                                                               "layer_norm")):
                        yield backend_param("cuda", fam, fam.cuda_out_case, mode, layout, dtype, id=f"cuda-{ident}")


def _out_array(be, layout, shape, dtype):
    if layout == "contiguous":
        return be.empty(shape, dtype)
    if layout == "channels_last":
        return be.put(np.empty(np.array(shape)[[0, 2, 3, 1]], dtype).transpose(0, 3, 1, 2))
    return be.put(np.empty(shape[:-1] + (2 * shape[-1],), dtype)[..., ::2])


@pytest.mark.parametrize("be,fam,case,mode,layout,dtype", list(_out_grid()))
def test_out_is_written_and_returned(rng, be, fam, case, mode, layout, dtype):
    x = data(rng, case.shape, dtype, loc=3.0)
    p = fam.params(rng, case, dtype, "wb", running=mode.running)

    def call(**kw):
        run = Params(*(None if a is None else be.put(a.copy()) for a in p))
        return fam.forward(be.put(x), case, run, **mode.opts, **kw)[0]

    expected = be.get(call())
    out = _out_array(be, layout, case.shape, dtype)
    assert call(out=out) is out
    assert np.array_equal(be.get(out), expected)
    assert_close(be.get(out), fam.ref_forward(x, case, p, **mode.opts)[0], tol(dtype), name="out vs reference")


@pytest.mark.parametrize("be,fam", [p for fam in FAMILIES for p in both(fam, id=fam.name)])
def test_bad_out_is_rejected_before_anything_runs(rng, be, fam):
    case = fam.cuda_out_case
    x = be.put(data(rng, case.shape, np.float32))
    p = fam.params(rng, case, np.float32, "wb", running=fam.running)
    pd = Params(*(None if a is None else be.put(a.copy()) for a in p))
    opts = fam.modes[0].opts
    with pytest.raises(ValueError, match="out must have shape"):
        fam.forward(x, case, pd, out=be.empty(case.shape[:-1] + (case.shape[-1] + 1,), np.float32), **opts)
    with pytest.raises(ValueError, match="out must have shape"):
        fam.forward(x, case, pd, out=be.empty(case.shape, np.float64), **opts)
    with pytest.raises(ValueError, match="overlap"):
        fam.forward(x, case, pd, out=x, **opts)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray" if be is CPU else "out must be a CUDA"):
        fam.forward(x, case, pd, out=[0.0], **opts)
    if be is CUDA:
        with pytest.raises(TypeError, match="out must be a CUDA device array"):
            fam.forward(x, case, pd, out=np.empty(case.shape, np.float32), **opts)
    else:
        readonly = np.empty(case.shape, np.float32)
        readonly.flags.writeable = False
        with pytest.raises(ValueError, match="writeable"):
            fam.forward(x, case, pd, out=readonly, **opts)
    for name in ("running_mean", "running_var"):
        if getattr(p, name) is not None:
            assert np.array_equal(be.get(getattr(pd, name)), getattr(p, name)), f"{name} changed"


@pytest.mark.parametrize("be,fam", [p for fam in FAMILIES for p in both(fam, id=fam.name)])
def test_empty_batch(rng, be, fam):
    """N = 0: an empty y, statistics of the right shape (NaN where they come from the
    input), zero parameter gradients, running statistics untouched; BatchNorm refuses to
    train on it (one value per channel is not enough, let alone none)."""
    case = Case((0,) + fam.unit[0].shape[1:], fam.unit[0].arg)
    x = np.zeros(case.shape, np.float32)
    for mode in fam.modes:
        p = fam.params(rng, case, np.float32, "wb", running=mode.running)
        pd = Params(*(None if a is None else be.put(a.copy()) for a in p))
        if fam.name == "batch_norm" and mode.opts.get("training"):
            with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
                fam.forward(be.put(x), case, pd, **mode.opts)
            continue
        y, mean, rstd = fam.forward(be.put(x), case, pd, **mode.opts)
        assert tuple(y.shape) == x.shape and y.dtype == x.dtype, mode.name
        for stat in (mean, rstd) if fam.centered else (rstd,):
            assert tuple(stat.shape) == fam.stat_shape(case), mode.name
            if fam.input_stats(mode.opts, p):
                assert np.isnan(be.get(stat)).all(), mode.name
        dx, dw, db = fam.backward(be.put(x), be.put(x), case, mean, rstd, pd, fam.input_stats(mode.opts, p))
        assert tuple(dx.shape) == x.shape and dx.dtype == x.dtype
        for grad, given in ((dw, p.weight), (db, p.bias)):
            assert (grad is None) == (given is None)
            if grad is not None:
                assert np.array_equal(be.get(grad), np.zeros(given.shape, np.float32))
        for name in ("running_mean", "running_var"):
            if getattr(p, name) is not None:
                assert np.array_equal(be.get(getattr(pd, name)), getattr(p, name)), f"{name} changed"
