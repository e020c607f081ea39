"""The fused epilogue on CUDA device arrays against the CPU kernels, on tiny inputs.

``act(norm(x) + residual)`` with its backward (ReLU's mask from the output, the residual's
gradient) for the channel-wise families, and the skip form of LayerNorm/RMSNorm with ``dsum``.
Run as ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda`` (see conftest.py).
"""

import numpy as np
import pytest
from helpers import assert_close, channels_last, channels_last_device

import numbanorm as nn
from numbanorm import functional as F
from numbanorm.distributed import LocalCommunicator

DTYPES = [np.float32, np.float64]
RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}
EPILOGUES = [("relu", True), ("relu", False), (None, True)]


def dev(cuda, a):
    return None if a is None else cuda.to_device(a)


def check(got_dev, expected, dtype, name, scale=1.0):
    got = got_dev.copy_to_host()
    assert got.dtype == np.asarray(expected).dtype, f"{name}: dtype {got.dtype}"
    assert_close(got, expected, RTOL[np.dtype(dtype)] * scale, name=name)


def _data(rng, shape, dtype):
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    r = rng.normal(size=shape)  # float64: cast to x's dtype
    dy = rng.normal(size=shape).astype(dtype)
    w = rng.normal(1.0, 0.3, shape[1]).astype(dtype)
    b = rng.normal(0.0, 0.3, shape[1]).astype(dtype)
    return x, r, dy, w, b


FAMILIES = {
    "batch_norm": (
        lambda x, w, b, **kw: F.batch_norm(x, None, None, w, b, training=True, return_stats=True, **kw),
        lambda dy, x, m, s, w, b, **kw: F.batch_norm_backward(dy, x, m, s, w, b, **kw)),
    "batch_norm_eval": (
        lambda x, w, b, **kw: F.batch_norm(x, _like(x, np.linspace(-1, 1, x.shape[1])),
                                           _like(x, np.linspace(0.5, 2, x.shape[1])), w, b, return_stats=True, **kw),
        lambda dy, x, m, s, w, b, **kw: F.batch_norm_backward(dy, x, m, s, w, b, use_input_stats=False, **kw)),
    "group_norm": (
        lambda x, w, b, **kw: F.group_norm(x, 2, w, b, return_stats=True, **kw),
        lambda dy, x, m, s, w, b, **kw: F.group_norm_backward(dy, x, 2, m, s, w, b, **kw)),
    "instance_norm": (
        lambda x, w, b, **kw: F.instance_norm(x, None, None, w, b, return_stats=True, **kw),
        lambda dy, x, m, s, w, b, **kw: F.instance_norm_backward(dy, x, m, s, w, b, **kw)),
}


def _like(x, values):
    """``values`` on x's device (running statistics of the eval case)."""
    if isinstance(x, np.ndarray):
        return values
    from numba import cuda

    return cuda.to_device(values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,with_residual", EPILOGUES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_channel_epilogue_matches_the_cpu(cuda, rng, family, activation, with_residual, dtype):
    forward, backward = FAMILIES[family]
    x, r, dy, w, b = _data(rng, (2, 4, 3, 2), dtype)
    kw = {"activation": activation, "residual": r if with_residual else None}
    y, mean, rstd = forward(x, w, b, **kw)
    kw_d = {"activation": activation, "residual": dev(cuda, r) if with_residual else None}
    y_d, mean_d, rstd_d = forward(dev(cuda, x), dev(cuda, w), dev(cuda, b), **kw_d)
    check(y_d, y, dtype, "y")
    opts = {"activation": activation, "residual": with_residual}
    expected = backward(dy, x, mean, rstd, w, b, y=y, **opts)
    got = backward(dev(cuda, dy), dev(cuda, x), mean_d, rstd_d, dev(cuda, w), dev(cuda, b), y=y_d, **opts)
    assert len(got) == len(expected)
    for name, g, e in zip(("dx", "dweight", "dbias", "dresidual")[:len(got)], got, expected, strict=True):
        check(g, e, dtype, name, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_last_input_and_residual_of_another_layout(cuda, rng, dtype):
    x, r, dy, w, b = _data(rng, (3, 4, 2, 3), dtype)
    x_d, dy_d = channels_last_device(cuda, x), channels_last_device(cuda, dy)
    x, dy = channels_last(x), channels_last(dy)
    y, mean, rstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True, residual=r,
                                 activation="relu")
    y_d, mean_d, rstd_d = F.batch_norm(x_d, None, None, dev(cuda, w), dev(cuda, b), training=True,
                                       return_stats=True, residual=dev(cuda, r), activation="relu")
    assert y_d.strides == x_d.strides
    check(y_d, y, dtype, "y")
    got = F.batch_norm_backward(dy_d, x_d, mean_d, rstd_d, dev(cuda, w), dev(cuda, b), y=y_d,
                                activation="relu", residual=True)
    expected = F.batch_norm_backward(dy, x, mean, rstd, w, b, y=y, activation="relu", residual=True)
    for name, g, e in zip(("dx", "dweight", "dbias", "dresidual"), got, expected, strict=True):
        check(g, e, dtype, name, scale=10)


def test_sync_batch_norm_exchange_path_with_the_epilogue(cuda, rng):
    """With a communicator the split drivers run: the masked gradient is written by the sums
    and read back after the exchange."""
    x, r, dy, w, b = _data(rng, (3, 2, 4), np.float64)
    y, mean, rstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True, residual=r,
                                 activation="relu")
    y_d, mean_d, rstd_d = F.batch_norm(dev(cuda, x), None, None, dev(cuda, w), dev(cuda, b), training=True,
                                       return_stats=True, residual=dev(cuda, r), activation="relu",
                                       comm=LocalCommunicator())
    check(y_d, y, np.float64, "y")
    expected = F.batch_norm_backward(dy, x, mean, rstd, w, b, y=y, activation="relu")
    got = F.batch_norm_backward(dev(cuda, dy), dev(cuda, x), mean_d, rstd_d, dev(cuda, w), dev(cuda, b), y=y_d,
                                activation="relu", comm=LocalCommunicator())
    for name, g, e in zip(("dx", "dweight", "dbias"), got, expected, strict=True):
        check(g, e, np.float64, name, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_skip_form_matches_the_cpu(cuda, rng, kind, dtype):
    x = rng.normal(3.0, 2.0, (3, 2, 6)).astype(dtype)
    r = rng.normal(size=x.shape)
    dy = rng.normal(size=x.shape).astype(dtype)
    dsum = rng.normal(size=x.shape).astype(dtype)
    w = rng.normal(1.0, 0.3, 6).astype(dtype)
    if kind == "layer_norm":
        b = rng.normal(0.0, 0.3, 6).astype(dtype)
        fwd = lambda x, r, w, b: F.layer_norm(x, 6, w, b, residual=r, return_stats=True)  # noqa: E731
        bwd = lambda dy, s, m, rs, w, b, ds: F.layer_norm_backward(dy, s, 6, m, rs, w, b, dsum=ds)  # noqa: E731
    else:
        b = None
        fwd = lambda x, r, w, b: F.rms_norm(x, 6, w, residual=r, return_stats=True)  # noqa: E731
        bwd = lambda dy, s, m, rs, w, b, ds: F.rms_norm_backward(dy, s, 6, rs, w, dsum=ds)  # noqa: E731
    y, s, mean, rstd = fwd(x, r, w, b)
    y_d, s_d, mean_d, rstd_d = fwd(dev(cuda, x), dev(cuda, r), dev(cuda, w), dev(cuda, b))
    check(s_d, s, dtype, "s")
    check(y_d, y, dtype, "y")
    check(rstd_d, rstd, np.float64, "rstd")
    got = bwd(dev(cuda, dy), s_d, mean_d, rstd_d, dev(cuda, w), dev(cuda, b), dev(cuda, dsum))
    expected = bwd(dy, s, mean, rstd, w, b, dsum)
    for name, g, e in zip(("dx", "dweight", "dbias"), got, expected, strict=True):
        if e is None:
            assert g is None
        else:
            check(g, e, dtype, name, scale=10)


def test_layers_on_the_device(cuda, rng):
    x, r, dy, _, _ = _data(rng, (2, 3, 2, 2), np.float32)
    cpu = nn.BatchNorm2d(3, activation="relu")
    gpu = nn.BatchNorm2d(3, activation="relu").to("cuda")
    y = cpu(x, r)
    y_d = gpu(dev(cuda, x), dev(cuda, r))
    check(y_d, y, np.float32, "y")
    dx = cpu.backward(dy)
    dx_d = gpu.backward(dev(cuda, dy))
    check(dx_d, dx, np.float32, "dx", scale=10)
    check(gpu.grad_residual, cpu.grad_residual, np.float32, "grad_residual")
    ln = nn.LayerNorm(2, dtype=np.float64).to("cuda")
    xl = rng.normal(size=(3, 2))
    y_d, s_d = ln(dev(cuda, xl), dev(cuda, xl))
    check(s_d, 2 * xl, np.float64, "s")
    with pytest.raises(TypeError, match="residual must be a CUDA device array"):
        gpu(dev(cuda, x), r)
