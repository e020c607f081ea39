"""Every compiled kernel carries the configured fast-math flags, and none drops NaN checks."""

import ast
import importlib
import inspect
import pkgutil

import numpy as np

import numbanorm.kernels.cpu as cpu
from numbanorm import config
from numbanorm.kernels.cpu import _jit
from numbanorm.kernels.cpu import elementwise as E

#: Flags that remove NaN/inf handling: never allowed (``fast`` implies both).
FORBIDDEN = frozenset({"nnan", "ninf", "fast"})


def _all_kernel_modules():
    for info in pkgutil.iter_modules(cpu.__path__):
        importlib.import_module(f"{cpu.__name__}.{info.name}")


def test_every_dispatcher_uses_configured_flags():
    _all_kernel_modules()
    dispatchers = _jit.all_dispatchers()
    assert len(dispatchers) >= 20
    allowed = {frozenset(config.FASTMATH_REDUCE), frozenset(config.FASTMATH_ELEMENTWISE),
               frozenset(config.FASTMATH_DX)}
    for d in dispatchers:
        flags = d.targetoptions["fastmath"]
        flag_set = frozenset(flags.flags) if hasattr(flags, "flags") else frozenset(flags)
        assert flag_set in allowed, (d.py_func.__qualname__, flag_set)
        assert not flag_set & FORBIDDEN, d.py_func.__qualname__
        assert (type(d._cache).__name__ != "NullCache") == config.CACHE, d.py_func.__qualname__
        assert d.targetoptions["error_model"] == config.ERROR_MODEL, d.py_func.__qualname__


def test_division_by_zero_follows_numpy_in_kernels():
    # The "numpy" error model: no ZeroDivisionError test before a division (it kept the
    # per-channel loops from vectorizing); a zero count gives inf/NaN as NumPy would.
    assert config.ERROR_MODEL == "numpy"
    c = 19  # a vector loop and a remainder
    mean, m2 = np.zeros(c), np.ones(c)
    m2[3] = 0.0
    q = np.empty((3, 1, c), np.float32)
    var, rstd = np.empty(c), np.empty(c)
    E.pack_stats(mean, m2, 0.0, 0.0, np.ones(c), np.zeros(c), q, var, rstd)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = m2 / 0.0
    np.testing.assert_array_equal(var, expected)
    assert np.isnan(var[3]) and np.isinf(var[0])
    np.testing.assert_array_equal(rstd[var == np.inf], 0.0)
    # and NumPy's float64 values where the count is not zero (to the rounding that ``arcp``,
    # a multiply by the reciprocal count, allows)
    m2 = np.random.default_rng(1).random(c) + 0.5
    E.pack_stats(mean, m2, 3.0, 1e-5, np.ones(c), np.zeros(c), q, var, rstd)
    np.testing.assert_allclose(var, m2 / 3.0, rtol=4e-16, atol=0)
    np.testing.assert_allclose(rstd, 1.0 / np.sqrt(m2 / 3.0 + 1e-5), rtol=1e-15, atol=0)


def test_configured_sets_never_drop_nan_checks():
    assert not config.FASTMATH_REDUCE & FORBIDDEN
    assert not config.FASTMATH_ELEMENTWISE & FORBIDDEN
    assert not config.FASTMATH_DX & FORBIDDEN
    # contract would fuse a*dy - mean(a*dy) into an fma that keeps a*dy's rounding error
    assert not config.FASTMATH_DX & {"reassoc", "contract"}
    # reassoc would fold the hi/lo mean subtraction back into one rounding
    assert "reassoc" not in config.FASTMATH_ELEMENTWISE
    assert "reassoc" in config.FASTMATH_REDUCE


def test_hi_lo_subtraction_survives_compilation():
    # The compiled normalize loop must compute (x - hi) * scale + shift', with the lo part of
    # the mean folded into shift' in float64: with a mean carrying more bits than float32,
    # the result is closer to float64 than with the mean rounded once to float32.
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.standard_normal(4096)).astype(np.float32)
    mean = x.astype(np.float64).mean()
    hi = np.float32(mean)
    lo = mean - np.float64(hi)
    assert lo != 0
    scale = np.float32(1 / x.astype(np.float64).std())
    y = np.empty_like(x)
    E.normalize_slice(x, y, hi, scale, np.float32(-lo * np.float64(scale)))
    truth = (x.astype(np.float64) - mean) * np.float64(scale)
    y_single = (x - hi) * scale  # the mean rounded once to float32
    err_hi_lo = np.abs(y - truth).max()
    err_single = np.abs(y_single - truth).max()
    assert err_hi_lo < 1e-3
    assert err_hi_lo < err_single / 4


def test_nan_and_inf_propagate_through_compiled_kernels():
    x = np.array([1.0, np.nan, 3.0, np.inf], np.float32)
    y = np.empty_like(x)
    E.normalize_slice(x, y, np.float32(1), np.float32(2), np.float32(0))
    assert y[0] == 0 and np.isnan(y[1]) and y[2] == 4 and np.isinf(y[3])


def _decorator_names(func_def):
    return {d.id if isinstance(d, ast.Name) else getattr(d, "attr", None) for d in func_def.decorator_list}


def test_inlined_reduce_helpers_are_called_by_reduce_helpers_only():
    # An inlined body is compiled with its caller's flags: a reduce_inline helper called from an
    # element-wise or dx function would lose reassoc (or bring it where it must not be).
    _all_kernel_modules()
    inlined = {d.py_func.__name__ for d in _jit.all_dispatchers() if d.targetoptions.get("inline") == "always"}
    assert {"_shifted_sums", "_block_moments", "_shifted_moments"} <= inlined
    checked = 0
    for info in pkgutil.iter_modules(cpu.__path__):
        module = importlib.import_module(f"{cpu.__name__}.{info.name}")
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            called = {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
            if called & inlined:
                checked += 1
                assert _decorator_names(node) & {"reduce_helper", "reduce_inline"}, (info.name, node.name,
                                                                                      called & inlined)
    assert checked >= 4
