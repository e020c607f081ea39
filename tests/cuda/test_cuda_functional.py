"""Every functional op on CUDA device arrays against the CPU kernels, on tiny inputs.

Run as ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda`` (see conftest.py).
"""

import numpy as np
import pytest
from helpers import assert_close, channels_last, channels_last_device

from numbanorm import functional as F

DTYPES = [np.float32, np.float64]
# CPU and CUDA share formulas and float64 statistics: they differ by rounding only.
RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}


def rtol(dtype):
    return RTOL[np.dtype(dtype)]


def dev(cuda, a):
    return None if a is None else cuda.to_device(a)


def host(a):
    return None if a is None else a.copy_to_host()


def check(got_dev, expected, dtype, name, scale=1.0):
    """A device result equals the CPU one (same dtype, same shape, close values)."""
    if expected is None:
        assert got_dev is None, f"{name}: expected None"
        return
    got = host(got_dev)
    assert got.dtype == np.asarray(expected).dtype, f"{name}: dtype {got.dtype} != {np.asarray(expected).dtype}"
    assert_close(got, expected, rtol(dtype) * scale, name=name)


def params(rng, c, dtype, affine=True):
    if not affine:
        return None, None
    return (rng.normal(1.0, 0.5, c).astype(dtype), rng.normal(0.0, 0.5, c).astype(dtype))


# -- BatchNorm ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3), (3, 4, 5), (2, 3, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train(cuda, rng, dtype, shape, affine):
    x = rng.normal(2.0, 3.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    c = shape[1]
    w, b = params(rng, c, dtype, affine)
    rm, rv = rng.normal(size=c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    rm_d, rv_d = dev(cuda, rm), dev(cuda, rv)
    y, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, return_stats=True)
    y_d, mean_d, invstd_d = F.batch_norm(dev(cuda, x), rm_d, rv_d, dev(cuda, w), dev(cuda, b), training=True,
                                         momentum=0.3, return_stats=True)
    check(y_d, y, dtype, "y")
    check(mean_d, mean, np.float64, "mean")
    check(invstd_d, invstd, np.float64, "invstd")
    check(rm_d, rm, np.float32, "running_mean", scale=2)
    check(rv_d, rv, np.float32, "running_var", scale=2)

    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, w, b, use_input_stats=True)
    dx_d, dw_d, db_d = F.batch_norm_backward(dev(cuda, dy), dev(cuda, x), mean_d, invstd_d, dev(cuda, w),
                                             dev(cuda, b), use_input_stats=True)
    check(dx_d, dx, dtype, "dx", scale=10)
    check(dw_d, dw, dtype, "dweight", scale=10)
    check(db_d, db, dtype, "dbias", scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_eval_and_no_running_stats(cuda, rng, dtype):
    x = rng.normal(-1.0, 2.0, (3, 4, 5)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    w, b = params(rng, 4, dtype)
    rm, rv = rng.normal(size=4).astype(np.float64), rng.uniform(0.5, 2, 4).astype(np.float64)
    y, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=False, return_stats=True)
    y_d, mean_d, invstd_d = F.batch_norm(dev(cuda, x), dev(cuda, rm), dev(cuda, rv), dev(cuda, w), dev(cuda, b),
                                         training=False, return_stats=True)
    check(y_d, y, dtype, "y eval")
    check(invstd_d, invstd, np.float64, "invstd eval")
    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, w, b, use_input_stats=False)
    got = F.batch_norm_backward(dev(cuda, dy), dev(cuda, x), mean_d, invstd_d, dev(cuda, w), dev(cuda, b),
                                use_input_stats=False)
    for g, e, name in zip(got, (dx, dw, db), ("dx", "dweight", "dbias"), strict=True):
        check(g, e, dtype, name + " eval", scale=10)
    # No running statistics: batch statistics even when not training.
    y = F.batch_norm(x, None, None, w, b, training=False)
    check(F.batch_norm(dev(cuda, x), None, None, dev(cuda, w), dev(cuda, b), training=False), y, dtype, "y batch")


# -- LayerNorm and RMSNorm ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, normalized", [((3, 4, 6), (6,)), ((2, 3, 5), (3, 5)), ((7,), 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(cuda, rng, dtype, shape, normalized, affine):
    x = rng.normal(3.0, 2.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    pshape = (normalized,) if isinstance(normalized, int) else normalized
    w = rng.normal(1, 0.5, pshape).astype(dtype) if affine else None
    b = rng.normal(0, 0.5, pshape).astype(dtype) if affine else None
    y, mean, rstd = F.layer_norm(x, normalized, w, b, return_stats=True)
    y_d, mean_d, rstd_d = F.layer_norm(dev(cuda, x), normalized, dev(cuda, w), dev(cuda, b), return_stats=True)
    check(y_d, y, dtype, "y")
    check(mean_d, mean, np.float64, "mean")
    check(rstd_d, rstd, np.float64, "rstd")
    got = F.layer_norm_backward(dev(cuda, dy), dev(cuda, x), normalized, mean_d, rstd_d, dev(cuda, w), dev(cuda, b))
    expected = F.layer_norm_backward(dy, x, normalized, mean, rstd, w, b)
    for g, e, name in zip(got, expected, ("dx", "dweight", "dbias"), strict=True):
        check(g, e, dtype, name, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [None, 1e-5])
def test_rms_norm(cuda, rng, dtype, eps):
    x = rng.normal(1.0, 2.0, (3, 2, 9)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    w = rng.normal(1, 0.5, 9).astype(dtype)
    y, _, rstd = F.rms_norm(x, 9, w, eps, return_stats=True)
    y_d, mean_d, rstd_d = F.rms_norm(dev(cuda, x), 9, dev(cuda, w), eps, return_stats=True)
    assert mean_d is None
    check(y_d, y, dtype, "y")
    check(rstd_d, rstd, np.float64, "rstd")
    got = F.rms_norm_backward(dev(cuda, dy), dev(cuda, x), 9, rstd_d, dev(cuda, w))
    expected = F.rms_norm_backward(dy, x, 9, rstd, w)
    for g, e, name in zip(got, expected, ("dx", "dweight", "dbias"), strict=True):
        check(g, e, dtype, name, scale=10)
    y = F.rms_norm(x, (2, 9), None, eps)
    check(F.rms_norm(dev(cuda, x), (2, 9), None, eps), y, dtype, "y no weight")


# -- GroupNorm and InstanceNorm ----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups", [((2, 6, 5), 3), ((3, 4, 2, 2), 1), ((2, 4, 3), 4), ((1, 6), 2)])
def test_group_norm(cuda, rng, dtype, shape, groups):
    x = rng.normal(-2.0, 1.5, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    w, b = params(rng, shape[1], dtype)
    y, mean, rstd = F.group_norm(x, groups, w, b, return_stats=True)
    y_d, mean_d, rstd_d = F.group_norm(dev(cuda, x), groups, dev(cuda, w), dev(cuda, b), return_stats=True)
    check(y_d, y, dtype, "y")
    check(mean_d, mean, np.float64, "mean")
    check(rstd_d, rstd, np.float64, "rstd")
    got = F.group_norm_backward(dev(cuda, dy), dev(cuda, x), groups, mean_d, rstd_d, dev(cuda, w), dev(cuda, b))
    expected = F.group_norm_backward(dy, x, groups, mean, rstd, w, b)
    for g, e, name in zip(got, expected, ("dx", "dweight", "dbias"), strict=True):
        check(g, e, dtype, name, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm(cuda, rng, dtype, use_input_stats, affine):
    x = rng.normal(0.5, 2.0, (2, 3, 7)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    w, b = params(rng, 3, dtype, affine)
    rm, rv = rng.normal(size=3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    rm_d, rv_d = dev(cuda, rm), dev(cuda, rv)
    y, mean, rstd = F.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats, momentum=0.2,
                                    return_stats=True)
    y_d, mean_d, rstd_d = F.instance_norm(dev(cuda, x), rm_d, rv_d, dev(cuda, w), dev(cuda, b),
                                          use_input_stats=use_input_stats, momentum=0.2, return_stats=True)
    check(y_d, y, dtype, "y")
    check(mean_d, mean, np.float64, "mean")
    check(rstd_d, rstd, np.float64, "rstd")
    check(rm_d, rm, dtype, "running_mean", scale=2)
    check(rv_d, rv, dtype, "running_var", scale=2)
    got = F.instance_norm_backward(dev(cuda, dy), dev(cuda, x), mean_d, rstd_d, dev(cuda, w), dev(cuda, b),
                                   use_input_stats=use_input_stats)
    expected = F.instance_norm_backward(dy, x, mean, rstd, w, b, use_input_stats=use_input_stats)
    for g, e, name in zip(got, expected, ("dx", "dweight", "dbias"), strict=True):
        check(g, e, dtype, name, scale=10)


# -- precision, layouts, mixed inputs ----------------------------------------------------

def _far_from_zero(rng, shape):
    """float32 data with mean 1e4 and std 1e-2, and the same values in float64."""
    x32 = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    return x32, x32.astype(np.float64)


@pytest.mark.parametrize("op", ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm"])
def test_float32_far_from_zero(cuda, rng, op):
    """Mean 1e4, std 1e-2 in float32 normalizes within 1e-3 of float64 (SPEC accuracy target)."""
    x32, x64 = _far_from_zero(rng, (4, 3, 16))
    calls = {
        "batch_norm": lambda x: F.batch_norm(x, None, None, training=True),
        "layer_norm": lambda x: F.layer_norm(x, (3, 16)),
        "rms_norm": lambda x: F.rms_norm(x, 16),
        "group_norm": lambda x: F.group_norm(x, 3),
        "instance_norm": lambda x: F.instance_norm(x),
    }
    expected = calls[op](x64)
    got = host(calls[op](dev(cuda, x32)))
    assert got.dtype == np.float32
    err = float(np.max(np.abs(got - expected)))
    assert err <= 1e-3, f"{op}: max error {err:.2e} vs float64"


@pytest.mark.parametrize("op", ["batch_norm", "group_norm", "instance_norm"])
def test_channels_last_input_keeps_layout(cuda, rng, op):
    x = rng.normal(size=(2, 4, 3, 2)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    x_cl = channels_last(x)
    x_d, dy_d = channels_last_device(cuda, x), channels_last_device(cuda, dy)
    assert not x_d.is_c_contiguous()
    fwd = {"batch_norm": lambda x: F.batch_norm(x, None, None, training=True, return_stats=True),
           "group_norm": lambda x: F.group_norm(x, 2, return_stats=True),
           "instance_norm": lambda x: F.instance_norm(x, return_stats=True)}[op]
    y, mean, rstd = fwd(x_cl)
    y_d, mean_d, rstd_d = fwd(x_d)
    assert tuple(y_d.strides) == x_cl.strides
    check(y_d, y, np.float32, "y")
    bwd = {"batch_norm": lambda dy, x, m, r: F.batch_norm_backward(dy, x, m, r),
           "group_norm": lambda dy, x, m, r: F.group_norm_backward(dy, x, 2, m, r),
           "instance_norm": lambda dy, x, m, r: F.instance_norm_backward(dy, x, m, r)}[op]
    dx = bwd(channels_last(dy), x_cl, mean, rstd)[0]
    dx_d = bwd(dy_d, x_d, mean_d, rstd_d)[0]
    assert tuple(dx_d.strides) == x_cl.strides
    check(dx_d, dx, np.float32, "dx", scale=10)


def test_out_and_host_parameters(cuda, rng):
    """``out=`` device arrays are written and returned; NumPy parameters, running statistics
    or ``out`` with a device input are rejected before anything runs (no hidden per-call copies)."""
    x = rng.normal(size=(3, 2, 4))
    w, b = params(rng, 2, np.float32)
    rm, rv = np.zeros(2, np.float32), np.ones(2, np.float32)
    rm_cpu, rv_cpu = rm.copy(), rv.copy()
    out = cuda.device_array(x.shape, x.dtype)
    y = F.batch_norm(x, rm_cpu, rv_cpu, w, b, training=True)
    rm_d, rv_d = dev(cuda, rm), dev(cuda, rv)
    got = F.batch_norm(dev(cuda, x), rm_d, rv_d, dev(cuda, w), dev(cuda, b), training=True, out=out)
    assert got is out
    check(out, y, np.float64, "y")
    assert_close(host(rm_d), rm_cpu, 1e-6, name="running_mean")
    assert_close(host(rv_d), rv_cpu, 1e-6, name="running_var")
    out = cuda.device_array(x.shape, x.dtype)
    assert F.layer_norm(dev(cuda, x), 4, out=out) is out
    check(out, F.layer_norm(x, 4), np.float64, "layer_norm out")
    x_d = dev(cuda, x)
    for kwargs, name in (({"weight": w}, "weight"), ({"running_mean": rm, "running_var": rv}, "running_mean")):
        with pytest.raises(TypeError, match=f"{name} must be a CUDA device array like the input"):
            F.batch_norm(x_d, training=True, **{"running_mean": None, "running_var": None, **kwargs})
    np.testing.assert_array_equal(rm, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="out must be a CUDA device array"):
        F.layer_norm(x_d, 4, out=np.empty(x.shape))
    with pytest.raises(ValueError, match="overlap"):
        F.layer_norm(x_d, 4, out=x_d)


def test_mixed_dtypes(cuda, rng):
    """float64 input with float32 parameters: computed and returned in float64."""
    x = rng.normal(size=(4, 3, 2))
    w, b = params(rng, 3, np.float32)
    y = F.group_norm(x, 3, w, b)
    y_d = F.group_norm(dev(cuda, x), 3, dev(cuda, w), dev(cuda, b))
    check(y_d, y, np.float64, "group_norm")
    w6 = rng.normal(size=2).astype(np.float64)
    x32 = x.astype(np.float32)
    check(F.layer_norm(dev(cuda, x32), 2, dev(cuda, w6)), F.layer_norm(x32, 2, w6), np.float32, "layer_norm")


def test_empty_batch(cuda):
    x = np.zeros((0, 3, 4), np.float32)
    y, mean, invstd = F.batch_norm(dev(cuda, x), None, None, training=False, return_stats=True)
    assert tuple(y.shape) == x.shape and np.isnan(host(mean)).all()
    assert tuple(F.layer_norm(dev(cuda, x), 4).shape) == x.shape


def test_errors_leave_state_unchanged(cuda, rng):
    x = rng.normal(size=(3, 2, 4)).astype(np.float32)
    x_d = dev(cuda, x)
    rm_d, rv_d = dev(cuda, np.zeros(2, np.float32)), dev(cuda, np.ones(2, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        F.batch_norm(dev(cuda, x.astype(np.int32)), rm_d, rv_d, training=True)
    with pytest.raises(ValueError, match="shape"):
        F.batch_norm(x_d, rm_d, rv_d, dev(cuda, np.ones(3, np.float32)), training=True)
    with pytest.raises(ValueError, match="more than 1 value"):
        F.batch_norm(dev(cuda, np.ascontiguousarray(x[:1, :, :1])), rm_d, rv_d, training=True)
    with pytest.raises(ValueError, match="momentum"):
        F.batch_norm(x_d, rm_d, rv_d, training=True, momentum=2.0)
    assert np.array_equal(host(rm_d), np.zeros(2)) and np.array_equal(host(rv_d), np.ones(2))
    _, mean, invstd = F.batch_norm(x_d, None, None, training=True, return_stats=True)
    with pytest.raises(TypeError, match="dy must be a CUDA device array"):
        F.batch_norm_backward(x, x_d, mean, invstd)
    with pytest.raises(ValueError, match="dy must have the shape"):
        F.batch_norm_backward(dev(cuda, x[:2]), x_d, mean, invstd)
    with pytest.raises(ValueError, match="divisible"):
        F.group_norm(x_d, 3)
    with pytest.raises(ValueError, match="trailing dimensions"):
        F.layer_norm(x_d, 5)
    with pytest.raises(ValueError, match="out must have shape"):
        F.layer_norm(x_d, 4, out=cuda.device_array((3, 2, 4), np.float64))
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        F.instance_norm(dev(cuda, x[0]))
