"""Assertion and data helpers shared by the numbanorm tests (no numbanorm import)."""

import numpy as np

# Tolerances (relative to the scale of the expected values) for comparing the
# library against the float64 references.
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}

STATE_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def tol_for(dtype):
    return TOL[np.dtype(dtype)]


def data(rng, shape, dtype, loc=0.5, scale=2.0):
    """Normal data of mean ``loc`` and std ``scale`` in ``dtype``."""
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def host(a):
    """A NumPy copy of a NumPy or CUDA device array (None passes through)."""
    if a is None:
        return None
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.array(a, copy=True)


def assert_close(got, expected, rtol, atol=None, name="value"):
    """max|got - expected| <= atol + rtol * max|expected| (NaNs must coincide).

    The bound is relative to the *scale* of the expected array rather than to
    every element, which is the right notion for normalized outputs and sums.
    """
    assert got is not None, f"{name}: got None"
    got = np.asarray(got)
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != {expected.shape}"
    gnan, enan = np.isnan(got), np.isnan(expected)
    assert np.array_equal(gnan, enan), (
        f"{name}: NaN positions differ ({int(gnan.sum())} got vs {int(enan.sum())} expected)")
    g = got[~gnan].astype(np.float64)
    e = expected[~enan].astype(np.float64)
    if e.size == 0:
        return
    if atol is None:
        atol = rtol
    scale = float(np.max(np.abs(e)))
    err = float(np.max(np.abs(g - e)))
    bound = atol + rtol * scale
    assert err <= bound, (
        f"{name}: max abs error {err:.3e} > {bound:.3e} (scale {scale:.3e}); "
        f"worst at {np.unravel_index(np.argmax(np.abs(g - e)), e.shape)}")


def channels_last(x):
    """Same values as x (N, C, *S) but as a view of (N, *S, C) contiguous memory."""
    x = np.asarray(x)
    mem = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return np.moveaxis(mem, -1, 1)


def channels_last_device(cuda, x):
    """A device array of shape (N, C, H, W) viewing (N, H, W, C) device memory; ``cuda`` is
    ``numba.cuda`` (the simulator's or a real one)."""
    mem = cuda.to_device(np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    try:
        return mem.transpose((0, 3, 1, 2))  # the simulator's arrays transpose like NumPy's
    except NotImplementedError:  # real device arrays transpose only in 2-D: build the view
        from numba.cuda.cudadrv.devicearray import DeviceNDArray

        view = np.moveaxis(np.empty(mem.shape, mem.dtype), -1, 1)
        return DeviceNDArray(view.shape, view.strides, mem.dtype, gpu_data=mem.gpu_data)


def is_channels_last(a):
    """True when a (N, C, *S) array is a view of C-contiguous (N, *S, C) memory."""
    return np.moveaxis(a, 1, -1).flags.c_contiguous


def snapshot(layer):
    """Host copies of a layer's parameters and buffers (None kept as None), on any device."""
    snap = {}
    for name in STATE_NAMES:
        snap[name] = host(getattr(layer, name, None))
    snap["training"] = layer.training
    return snap


def assert_state_unchanged(layer, snap):
    for name in STATE_NAMES:
        v = getattr(layer, name, None)
        if snap[name] is None:
            assert v is None, f"{name} appeared"
            continue
        assert v is not None, f"{name} disappeared"
        v = host(v)
        assert v.dtype == snap[name].dtype, f"{name} dtype changed {snap[name].dtype} -> {v.dtype}"
        assert v.shape == snap[name].shape, f"{name} shape changed"
        assert np.array_equal(v, snap[name], equal_nan=True), f"{name} values changed"
    assert layer.training == snap["training"], "training flag changed"


def randomize_affine(layer, rng):
    """Fill weight/bias in place with random values; returns (weight, bias) copies."""
    w = b = None
    if getattr(layer, "weight", None) is not None:
        layer.weight[...] = rng.uniform(0.5, 1.5, layer.weight.shape)
        w = layer.weight.copy()
    if getattr(layer, "bias", None) is not None:
        layer.bias[...] = rng.standard_normal(layer.bias.shape)
        b = layer.bias.copy()
    return w, b


def t(torch, a, requires_grad=False):
    """NumPy -> torch tensor (contiguous copy), optionally requiring grad."""
    ten = torch.from_numpy(np.ascontiguousarray(a).copy())
    if requires_grad:
        ten.requires_grad_(True)
    return ten


def n(ten):
    """torch tensor -> NumPy (None passes through)."""
    return None if ten is None else ten.detach().numpy()
