"""Numerical edge cases of every family, on the CPU and on CUDA: float32 data far from
zero, constant groups (and the exact zero dx of a zero-variance group), NaN propagation,
odd sizes; and the same results with 1 and 2 threads."""

import math

import numba
import numpy as np
import pytest
from backends import CPU, backend_param, both
from checks import DTYPES, STATS_TOL, check_step, layer_pair, set_mode, tol
from families import FAMILIES, Params
from helpers import assert_close, channels_last, data, randomize_affine

from numbanorm import config

#: (rtol, atol) of the float32 mean 1e4 / std 1e-2 checks against float64 on the same values
FAR_TOLS = dict(y=(0.0, 1e-3), dx=(1e-3, 0.0), dweight=(1e-3, 0.0), dbias=(1e-5, 1e-5), rstd=(1e-6, 1e-6),
                running_mean=(1e-6, 0.0), running_var=(1e-3, 0.0))


def _far_grid():
    for fam in FAMILIES:
        for layout in ("contiguous", "channels_last") if fam.channels else ("contiguous",):
            yield backend_param("cpu", fam, fam.far_case, layout, id=f"cpu-{fam}-{layout}")
        yield backend_param("cuda", fam, fam.cuda_far_case, "contiguous", id=f"cuda-{fam}-contiguous")


@pytest.mark.parametrize("be,fam,case,layout", list(_far_grid()))
def test_float32_far_from_zero(rng, be, fam, case, layout):
    """Mean 1e4, std 1e-2 in float32 normalizes within 1e-3 of float64 on the same values
    (SPEC accuracy target; PyTorch CPU errs 0.02-0.1 there); so do the gradients, the
    statistics, the running statistics and evaluation with them."""
    tols = FAR_TOLS | fam.far_tols
    x = (1e4 + 1e-2 * rng.standard_normal(case.shape)).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    layer, refl, _ = layer_pair(be, fam, case, rng, np.float32, **fam.far_cfg)
    y = be.get(layer(be.put(x)))
    assert y.dtype == np.float32
    assert_close(y, refl.forward(x), *tols["y"], name="y (float32, mean 1e4, std 1e-2)")
    dy = rng.standard_normal(case.shape).astype(np.float32)
    grads = dict(zip(("dx", "dweight", "dbias"), refl.backward(dy), strict=True))
    got = dict(dx=layer.backward(be.put(dy)), dweight=layer.grad_weight, dbias=layer.grad_bias)
    for name, expected in grads.items():
        if expected is not None:
            assert_close(be.get(got[name]), expected, *tols[name], name=name)
    eps = {} if refl.eps is None else dict(eps=refl.eps)
    p = Params(*(None if a is None else be.put(np.asarray(a, np.float32)) for a in (refl.weight, refl.bias)))
    _, _, rstd = fam.forward(be.put(x), case, p, **eps)
    assert_close(be.get(rstd), refl._saved[2].reshape(fam.stat_shape(case)), *tols["rstd"], name="rstd")
    if layer.running_mean is not None:  # momentum None, first batch: the batch mean and unbiased variance
        for name in ("running_mean", "running_var"):
            assert_close(be.get(getattr(layer, name)), getattr(refl, name), *tols[name], name=name)
        # evaluation with running mean 1e4 and running var 1e-4 on new data from the same law, against
        # the float64 computation on the same float32 values (the stored statistics)
        set_mode(False, layer)
        x2 = (1e4 + 1e-2 * rng.standard_normal(case.shape)).astype(np.float32)
        stored = Params(refl.weight, refl.bias, be.get(layer.running_mean), be.get(layer.running_var))
        eval_opts = next(m for m in fam.modes if m.name == "eval").opts
        ey = fam.ref_forward(x2, case, stored, **dict(eval_opts, eps=refl.eps))[0]
        assert_close(be.get(layer(be.put(x2))), ey, *tols["y"], name="eval y")


def _dtype_grid():
    """Both dtypes on the CPU, float32 on CUDA."""
    for fam in FAMILIES:
        for dtype in DTYPES:
            yield backend_param("cpu", fam, dtype, id=f"cpu-{fam}-{np.dtype(dtype)}")
            if dtype == np.float32:
                yield backend_param("cuda", fam, dtype, id=f"cuda-{fam}-{np.dtype(dtype)}")


@pytest.mark.parametrize("be,fam,dtype", list(_dtype_grid()))
def test_constant_groups(rng, be, fam, dtype):
    """Two groups of float32-representable constants (0.1 and 10000.1: float64 sums of them
    are exact): y is the bias there; everything else as the reference."""
    case, cfg, labels = fam.const_case
    x = data(rng, case.shape, dtype)
    groups = fam.labels(case)
    for label, value in zip(labels, (0.1, 10000.1), strict=True):
        x[groups == label] = np.float32(value)
    layer, refl, twin = layer_pair(be, fam, case, rng, dtype, **cfg)
    dy = rng.standard_normal(case.shape).astype(dtype)
    y, _ = check_step(be, fam, layer, refl, x, dy, twin=twin)
    if fam.centered:
        mask = np.isin(groups, labels)
        ey = fam.ref_forward(x, case, Params(refl.weight, refl.bias), eps=refl.eps)[0]
        assert_close(be.get(y)[mask], ey[mask], 1e-6, name="constant groups -> bias")
    if layer.running_mean is not None:
        assert_close(be.get(layer.running_var), refl.running_var, 1e-6, name="running_var")


def _zero_var_grid():
    for fam in FAMILIES:
        for case, labels in fam.zero_var_cases:
            for dtype in DTYPES:
                ident = f"{fam}-{case}-{np.dtype(dtype)}"
                yield backend_param("cpu", fam, case, labels, dtype, id=f"cpu-{ident}")
                if dtype == np.float32:
                    yield backend_param("cuda", fam, case, labels, dtype, id=f"cuda-{ident}")


@pytest.mark.parametrize("be,fam,case,labels,dtype", list(_zero_var_grid()))
def test_zero_variance_group_gets_exactly_zero_dx(rng, be, fam, case, labels, dtype):
    """A group without variance and a constant dy over it (LayerNorm over one element,
    GroupNorm with one value per group, a constant channel or instance): the true dx is 0,
    and dx's bracket is formed in float64, so it is exactly 0 in float32 (SPEC; PyTorch gives
    |dx| up to ~5e-4 there)."""
    groups = fam.labels(case)
    chosen = np.unique(groups) if labels is None else labels
    for trial in range(3 if be is CPU else 1):
        x = data(rng, case.shape, dtype, loc=3.0, scale=100.0)
        dy = rng.standard_normal(case.shape).astype(dtype)
        for label in chosen:
            x[groups == label] = x[groups == label][0]
            dy[groups == label] = dy[groups == label][0]
        layer = fam.make(case, dtype, **({"affine": True} if fam.name == "instance_norm" else {}))
        randomize_affine(layer, rng)
        be.layer(layer)(be.put(x))
        dx = be.get(layer.backward(be.put(dy)))
        mask = np.isin(groups, chosen)
        # float32 dy sums exactly in float64; float64 ones round, to ~1e-13 after the 1/sqrt(eps) scale
        bound = 0.0 if dtype == np.float32 else 1e-12
        assert np.abs(dx[mask]).max() <= bound, f"trial {trial}: max |dx| {np.abs(dx[mask]).max():.3e}"


@pytest.mark.parametrize("be,fam", [p for fam in FAMILIES for p in both(fam, id=fam.name)])
def test_nan_propagates_within_its_group(rng, be, fam):
    """A NaN in x makes its whole group NaN (as in PyTorch: no nnan/ninf fast-math flags) and
    nothing else; gradients and running statistics follow the reference, NaN for NaN."""
    case, cfg, index = fam.nan_case
    x = data(rng, case.shape, np.float64)
    x[index] = np.nan
    layer, refl, twin = layer_pair(be, fam, case, rng, np.float64, **cfg)
    y, _ = check_step(be, fam, layer, refl, x, rng.standard_normal(case.shape), twin=twin, t=1e-10, dx_scaled=False)
    groups = fam.labels(case)
    assert np.array_equal(np.isnan(be.get(y)), groups == groups[index])


def _odd_grid():
    """Every case in both dtypes on the CPU; each family's first two small ones (at most 21
    elements, sizes 1, 3 or 7) in float32 on CUDA."""
    for fam in FAMILIES:
        small = [case for case in fam.odd_cases if math.prod(case.shape) <= 21 and max(case.shape) > 1][:2]
        for case in fam.odd_cases:
            yield backend_param("cpu", fam, case, DTYPES, id=f"cpu-{fam}-{case}")
            if case in small:
                yield backend_param("cuda", fam, case, [np.float32], id=f"cuda-{fam}-{case}")


@pytest.mark.parametrize("be,fam,case,dtypes", list(_odd_grid()))
def test_odd_sizes(rng, be, fam, case, dtypes):
    """Sizes 1, 3, 7 and 1023, N = 1 included: vectorized loops and their remainders, blocks
    of a few threads."""
    cfg = dict(affine=True, track_running_stats=True) if fam.name == "instance_norm" else {}
    for dtype in dtypes:
        layer, refl, twin = layer_pair(be, fam, case, rng, dtype, **cfg)
        x = data(rng, case.shape, dtype, loc=3.0)
        check_step(be, fam, layer, refl, x, rng.standard_normal(case.shape).astype(dtype), dtype.__name__, twin)


@pytest.fixture
def parallel_kernels(monkeypatch):
    """Parallel kernels on small inputs, blocks of 16 elements: every thread gets work."""
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(config, "ROWS_PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(config, "BLOCK_ELEMENTS", 16)
    monkeypatch.setattr(config, "COLUMN_BLOCK_ELEMENTS", 16)
    threads = numba.get_num_threads()
    yield
    numba.set_num_threads(threads)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
@pytest.mark.parametrize("dtype", [np.float64])  # the kernels test_paths.py compiles: no extra compilation
@pytest.mark.parametrize("fam,layout", [(fam, layout) for fam in FAMILIES for layout in ("contiguous", "channels_last")
                                        if fam.channels or layout == "contiguous"], ids=str)
def test_one_and_two_threads_agree(rng, parallel_kernels, fam, dtype, layout):
    """The parallel kernels (thresholds lowered) give the same results with 1 and 2 threads,
    to rounding, and match the reference."""
    case = fam.out_case
    x = data(rng, case.shape, dtype, loc=2.0)
    dy = rng.standard_normal(case.shape).astype(dtype)
    if layout == "channels_last":
        x, dy = channels_last(x), channels_last(dy)
    mode = fam.modes[0]
    p = fam.params(rng, case, dtype, "wb", running=mode.running)
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        run = Params(*(None if a is None else a.copy() for a in p))
        y, mean, rstd = fam.forward(x, case, run, **mode.opts)
        grads = fam.backward(dy, x, case, mean, rstd, run, fam.input_stats(mode.opts, p))
        results.append([y, mean, rstd, run.running_mean, run.running_var, *grads])
    expected = fam.ref_forward(x, case, p, **mode.opts)[0]
    assert_close(results[0][0], expected, tol(dtype), name="y vs reference")
    names = ("y", "mean", "rstd", "running_mean", "running_var", "dx", "dweight", "dbias")
    for name, one, two in zip(names, *results, strict=True):
        if one is None:
            assert two is None, name
            continue
        # not bit for bit: the chunks of the parallel reductions depend on the thread count
        t = STATS_TOL[np.dtype(np.float64)] if one.dtype == np.float64 else tol(dtype) / 100
        assert_close(two, one, t, name=f"{name}: 2 threads vs 1")
