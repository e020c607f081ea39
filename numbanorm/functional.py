"""Functional normalization API: the one front end for host and device arrays.

Every call is validated once here (shapes, dtypes, devices, parameters), before
anything is computed or changed, and then handed to the backend that the input's
device selects: :mod:`numbanorm.kernels.cpu` for NumPy arrays,
:mod:`numbanorm.kernels.cuda` for CUDA arrays. Both backends have the same drivers
with the same signatures; running statistics are updated in one place
(:func:`_update_running`) for both.

Conventions
-----------
- Each forward has a matching ``*_backward`` that returns ``(dx, dweight, dbias)``
  (``None`` for a parameter that was not given).
- ``return_stats=True`` makes every forward return ``(y, mean, rstd)``: float64
  statistics on the input's device, the ones the backward needs. RMSNorm has no mean:
  its ``mean`` is None.
- The input's dtype (float32 or float64) sets the compute and output dtype;
  parameters of the other float dtype are cast for the call. Gradients come back in
  the input's dtype.
- Arrays live where the input lives: with a CUDA input, parameters, running
  statistics, ``out`` and ``dy`` must be CUDA arrays too (no hidden host-to-device
  copies). A Numba device array comes back for a CUDA input; a CuPy array or PyTorch
  CUDA tensor is read in place (through ``__cuda_array_interface__``) and the result is
  a new Numba device array sharing nothing with it (``cupy.asarray(y)`` or
  ``torch.as_tensor(y, device="cuda")`` wrap it without a copy).
"""

import math
import numbers

import numpy as np

from . import _validation as v
from ._device import backend

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "normalized_shape_tuple",
]


# -- validation shared by the families -----------------------------------------------------

def _input(x, name="input"):
    """``(backend, x)``: x as its backend's array type, checked to be a float array."""
    be = backend(x)
    if be is not None:
        x = be.arrays.asarray(x)
    v.check_float_array(x, name)
    return be, x


def _channels_input(x, min_ndim, name="input"):
    be, x = _input(x, name)
    if x.ndim < min_ndim:
        raise ValueError(f"expected {name} with at least {min_ndim} dimensions (N, C, ...), "
                         f"got shape {tuple(x.shape)}")
    return be, x, x.shape[1]


def _params(be, x, shape, **arrays):
    """Check optional parameters/buffers of ``shape`` on x's device; return them in order."""
    out = []
    for name, p in arrays.items():
        if p is not None and be is not None:
            p = be.arrays.asarray(p) if not isinstance(p, np.ndarray) else p
        out.append(v.check_param(p, name, shape, x))
    return out


def _running_pair(running_mean, running_var):
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None")


def _stats(be, x, arr, name, shape):
    """Saved statistics of a backward call as float64 arrays of ``shape`` on x's device."""
    if arr is not None and not isinstance(arr, np.ndarray):
        arr = be.arrays.asarray(arr)
    arr = v.check_stats(arr, name, shape, x)
    return be.arrays.astype(arr, np.float64, copy=False)


def _empty_forward(be, x, out, stat_shape, return_stats, mean=True):
    """The result of a forward on an input without elements: y, and NaN statistics."""
    y = be.arrays.empty_like(x) if out is None else out
    if not return_stats:
        return y
    nan = be.arrays.full(stat_shape, np.nan)
    return y, (be.arrays.full(stat_shape, np.nan) if mean else None), nan


def _update_running(be, running_mean, running_var, mean, var, momentum, count):
    """The one place running statistics change: ``r = (1 - momentum) r + momentum s`` with
    the unbiased variance ``var * count / (count - 1)``; (N, C) statistics are averaged
    over the batch first (InstanceNorm, as PyTorch does)."""
    be.channels.update_running_stats(running_mean, running_var, mean, var, momentum, count)


def _grad(be, g, x, given):
    """A float64 parameter gradient rounded to x's dtype, or None for a parameter not given."""
    return None if given is None else be.arrays.astype(g, x.dtype, copy=False)


# -- BatchNorm ---------------------------------------------------------------------------

def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, out=None, return_stats=False):
    r"""Batch normalization over the channel axis 1 (Ioffe & Szegedy, 2015).

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    with mean and biased variance per channel over the batch and all positions
    (training, or no running statistics), or the running statistics otherwise.
    In training, ``running_mean``/``running_var`` (if given) are updated in place:
    ``r = (1 - momentum) * r + momentum * s`` with the unbiased batch variance.

    Parameters
    ----------
    x : ndarray or CUDA array, shape (N, C) or (N, C, *spatial), float32 or float64
        Any strides; contiguous and channels-last inputs run without a copy and the
        output keeps the input's layout.
    running_mean, running_var : array (C,) or None
    weight, bias : array (C,) or None
        Affine parameters :math:`\gamma`, :math:`\beta`.
    training : bool
        Use batch statistics and update the running ones.
    momentum : float in [0, 1]
        Weight of the new batch statistics in the running averages.
    eps : float
        Added to the variance for numerical stability.
    out : array, optional
        Written in place and returned (same shape and dtype as ``x``, not overlapping it).
    return_stats : bool
        Also return the float64 per-channel ``mean`` and ``rstd`` used, for
        :func:`batch_norm_backward`.

    Returns
    -------
    y : array like ``x``; or ``(y, mean, rstd)`` with ``return_stats``.

    References
    ----------
    S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015. arXiv:1502.03167
    """
    be, x, c = _channels_input(x, 2)
    running_mean, running_var, weight, bias = _params(be, x, (c,), running_mean=running_mean,
                                                      running_var=running_var, weight=weight, bias=bias)
    _running_pair(running_mean, running_var)
    eps = v.check_eps(eps)
    use_input_stats = bool(training) or running_mean is None
    if training:
        momentum = v.check_momentum(momentum, allow_none=False)
    count = x.size // c if c else 0
    if training and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    v.check_out(out, x)
    if x.size == 0:
        return _empty_forward(be, x, out, (c,), return_stats)

    layout, x3 = be.layout.channel_view(x)
    y = be.layout.Output(layout, x3, x, out)
    bn = be.batchnorm
    if use_input_stats:
        count, mean, m2 = bn.moments(layout, x3)
        var, rstd = bn.normalize(layout, x3, y.view, mean, m2, count, weight, bias, eps)
        if training and running_mean is not None:
            _update_running(be, running_mean, running_var, mean, var, momentum, count)
    else:
        _, rstd = bn.normalize(layout, x3, y.view, running_mean, running_var, 1.0, weight, bias, eps)
        mean = be.arrays.astype(running_mean, np.float64)
    y = y.result()
    return (y, mean, rstd) if return_stats else y


def batch_norm_backward(dy, x, mean, rstd, weight=None, bias=None, use_input_stats=True):
    r"""Gradients of :func:`batch_norm` given the statistics its forward used.

    With :math:`\hat x = (x - \mu)\,\sigma^{-1}` and sums over a channel's m values:

    .. math::

        \frac{\partial L}{\partial x} = \gamma \sigma^{-1}\Big(dy - \tfrac{1}{m}\sum dy
            - \hat x\,\tfrac{1}{m}\sum dy\,\hat x\Big),\quad
        \frac{\partial L}{\partial \gamma} = \sum dy\,\hat x,\quad
        \frac{\partial L}{\partial \beta} = \sum dy

    The bracket is formed in float64 and rounded once, so a channel whose values are
    all equal to its mean gets exactly ``dy - mean(dy)`` scaled (and a channel of one
    value exactly 0). The two mean terms vanish when ``use_input_stats`` is False: the
    statistics were constants (running statistics).

    Parameters
    ----------
    dy : array, shape and dtype of ``x``
    x : array, the forward input (read again here: it must hold the values it had in
        the forward call)
    mean, rstd : array (C,)
        As returned by ``batch_norm(..., return_stats=True)``.
    weight, bias : array (C,) or None
        The forward's parameters; ``bias`` only decides whether ``dbias`` is returned.
    use_input_stats : bool
        Whether the forward normalized with the batch's own statistics.

    Returns
    -------
    dx : array like ``x``; dweight, dbias : array (C,) in ``x``'s dtype, or None.
    """
    be, x, c = _channels_input(x, 2, "x")
    v.check_dy(dy, x)
    mean = _stats(be, x, mean, "mean", (c,))
    rstd = _stats(be, x, rstd, "rstd", (c,))
    weight, bias = _params(be, x, (c,), weight=weight, bias=bias)
    layout, x3 = be.layout.channel_view(x)
    dx = be.layout.Output(layout, x3, x)
    if x.size == 0:
        dw = db = be.arrays.full(c, 0.0)
    else:
        dy3 = be.layout.like_view(layout, x3, be.arrays.asarray(dy))
        bn = be.batchnorm
        db, s_dyx = bn.grad_sums(layout, x3, dy3, mean)
        dw = bn.apply_dx(layout, x3, dy3, dx.view, mean, rstd, weight, db, s_dyx, x.size // c,
                         bool(use_input_stats))
    return dx.result(), _grad(be, dw, x, weight), _grad(be, db, x, bias)


# -- LayerNorm and RMSNorm ---------------------------------------------------------------

def normalized_shape_tuple(normalized_shape):
    """``normalized_shape`` as a tuple of positive ints (an int means one trailing dim)."""
    if type(normalized_shape) is int:
        shape = (normalized_shape,)
    elif type(normalized_shape) is tuple and all(type(d) is int for d in normalized_shape):
        shape = normalized_shape
    else:
        if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        try:
            shape = tuple(normalized_shape)
        except TypeError:
            raise TypeError(f"normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}") from None
        if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape):
            raise ValueError(f"normalized_shape must be a non-empty tuple of positive ints, got {normalized_shape!r}")
        shape = tuple(int(d) for d in shape)
    if not shape or min(shape) <= 0:
        raise ValueError(f"normalized_shape must be a non-empty tuple of positive ints, got {normalized_shape!r}")
    return shape


def _rows_input(x, normalized_shape, name="input"):
    """Check x against normalized_shape; return (backend, x, shape, stat_shape)."""
    be, x = _input(x, name)
    shape = normalized_shape_tuple(normalized_shape)
    k = len(shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"expected {name} with trailing dimensions {list(shape)} (normalized_shape), "
                         f"got shape {tuple(x.shape)}")
    return be, x, shape, tuple(x.shape[:x.ndim - k])


def _rows_forward(x, normalized_shape, weight, bias, eps, out, center):
    be, x, shape, stat_shape = _rows_input(x, normalized_shape)
    weight, bias = _params(be, x, shape, weight=weight, bias=bias)
    eps = v.check_eps(float(np.finfo(x.dtype).eps) if eps is None and not center else eps)
    v.check_out(out, x)
    layout, x2 = be.layout.rows_view(x, math.prod(shape))
    y = be.layout.Output(layout, x2, x, out)
    mean, rstd = be.layernorm.forward(x2, y.view, weight, bias, eps, center)
    if len(stat_shape) != 1:
        mean, rstd = mean.reshape(stat_shape), rstd.reshape(stat_shape)
    return y.result(), (mean if center else None), rstd


def _rows_backward(dy, x, normalized_shape, mean, rstd, weight, bias, center):
    be, x, shape, stat_shape = _rows_input(x, normalized_shape, "x")
    v.check_dy(dy, x)
    rstd = _stats(be, x, rstd, "rstd", stat_shape)
    mean = _stats(be, x, mean, "mean", stat_shape) if center else None
    weight, bias = _params(be, x, shape, weight=weight, bias=bias)
    layout, x2 = be.layout.rows_view(x, math.prod(shape))
    rows = x2.shape[0]
    dy2 = be.layout.like_view(layout, x2, be.arrays.asarray(dy))
    dx = be.layout.Output(layout, x2, x)
    mean = be.arrays.full(rows, 0.0) if mean is None else mean.reshape(rows)
    dw, db = be.layernorm.backward(x2, dy2, dx.view, mean, rstd.reshape(rows), weight, center)
    return dx.result(), _grad(be, dw.reshape(shape), x, weight), _grad(be, db.reshape(shape), x, bias)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    r"""Layer normalization over the trailing ``normalized_shape`` dims (Ba, Kiros & Hinton, 2016).

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta

    with mean and biased variance per sample over the last ``len(normalized_shape)``
    dimensions; the same at training and evaluation.

    Parameters
    ----------
    x : array (..., *normalized_shape), float32 or float64
    normalized_shape : int or tuple of ints
    weight, bias : array of shape ``normalized_shape`` or None
    eps : float
    out : array, optional
        Written in place and returned.
    return_stats : bool
        Also return float64 ``mean`` and ``rstd`` of shape ``x.shape[:-len(normalized_shape)]``.

    Returns
    -------
    y, or (y, mean, rstd) with ``return_stats``.

    References
    ----------
    J. L. Ba, J. R. Kiros and G. E. Hinton, "Layer Normalization", 2016. arXiv:1607.06450
    """
    y, mean, rstd = _rows_forward(x, normalized_shape, weight, bias, eps, out, center=True)
    return (y, mean, rstd) if return_stats else y


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight=None, bias=None):
    r"""Gradients of :func:`layer_norm`: returns ``(dx, dweight, dbias)``.

    With :math:`\hat x = (x - \mu) r` and :math:`g = dy \odot \gamma` per row of D values:
    :math:`dx = r\,(g - \overline{g} - \hat x\,\overline{g \hat x})` (the bracket in
    float64, so a row of one value gets exactly 0),
    :math:`d\gamma = \sum_{rows} dy\,\hat x`, :math:`d\beta = \sum_{rows} dy`.
    ``mean``/``rstd`` are those returned by ``layer_norm(..., return_stats=True)``; ``x``
    must hold the values it had in the forward call.
    """
    return _rows_backward(dy, x, normalized_shape, mean, rstd, weight, bias, center=True)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False):
    r"""Root mean square normalization (Zhang & Sennrich, 2019).

    .. math::

        y = \frac{x}{\sqrt{\tfrac{1}{D}\sum x^2 + \epsilon}} \odot \gamma

    over the trailing ``normalized_shape`` dims; ``eps=None`` means
    ``np.finfo(x.dtype).eps`` as in PyTorch.

    Returns
    -------
    y, or (y, None, rstd) with ``return_stats`` (RMSNorm has no mean; ``rstd`` float64 of
    shape ``x.shape[:-len(normalized_shape)]``).

    References
    ----------
    B. Zhang and R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    arXiv:1910.07467
    """
    y, mean, rstd = _rows_forward(x, normalized_shape, weight, None, eps, out, center=False)
    return (y, mean, rstd) if return_stats else y


def rms_norm_backward(dy, x, normalized_shape, rstd, weight=None):
    r"""Gradients of :func:`rms_norm`: returns ``(dx, dweight, None)``.

    With :math:`\hat x = x r`, :math:`g = dy \odot \gamma`:
    :math:`dx = r\,(g - \hat x\,\overline{g \hat x})`, :math:`d\gamma = \sum_{rows} dy\,\hat x`.
    """
    return _rows_backward(dy, x, normalized_shape, None, rstd, weight, None, center=False)


# -- GroupNorm and InstanceNorm ---------------------------------------------------------

def check_groups(num_groups, channels):
    """``num_groups`` as an int that divides ``channels``, or ValueError."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups <= 0:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}")
    if channels % num_groups:
        raise ValueError(f"num_channels ({channels}) must be divisible by num_groups ({num_groups})")
    return int(num_groups)


def _per_sample_backward(family_backward, be, dy, x, mean, rstd, weight, bias, use_input_stats):
    """dx, dweight, dbias of GroupNorm and InstanceNorm from checked (N, P) statistics."""
    layout, x3 = be.layout.channel_view(x, rows_2d=True)
    dx = be.layout.Output(layout, x3, x)
    c = x.shape[1]
    if x.size == 0:
        dw = db = be.arrays.full(c, 0.0)
    else:
        dy3 = be.layout.like_view(layout, x3, be.arrays.asarray(dy))
        dw, db = family_backward(layout, x3, dy3, dx.view, mean, rstd, weight, bool(use_input_stats))
    return dx.result(), _grad(be, dw, x, weight), _grad(be, db, x, bias)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    r"""Group normalization (Wu & He, 2018) of (N, C, \*) input.

    .. math::

        y = \frac{x - \mathrm{E}_g[x]}{\sqrt{\mathrm{Var}_g[x] + \epsilon}} \cdot \gamma_c + \beta_c

    with mean and biased variance per sample and group of ``C / num_groups``
    channels, over those channels and all positions. Contiguous and channels-last
    inputs run without a copy; the output keeps the layout.

    Returns
    -------
    y, or (y, mean, rstd) with ``return_stats`` (float64, shape (N, num_groups)).

    References
    ----------
    Y. Wu and K. He, "Group Normalization", ECCV 2018. arXiv:1803.08494
    """
    be, x, c = _channels_input(x, 2)
    groups = check_groups(num_groups, c)
    weight, bias = _params(be, x, (c,), weight=weight, bias=bias)
    eps = v.check_eps(eps)
    v.check_out(out, x)
    if x.size == 0:
        return _empty_forward(be, x, out, (x.shape[0], groups), return_stats)
    layout, x3 = be.layout.channel_view(x, rows_2d=True)
    y = be.layout.Output(layout, x3, x, out)
    _, mean, _, rstd = be.groupnorm.forward(layout, x3, y.view, groups, weight, bias, eps)
    y = y.result()
    return (y, mean, rstd) if return_stats else y


def group_norm_backward(dy, x, num_groups, mean, rstd, weight=None, bias=None):
    r"""Gradients of :func:`group_norm`: returns ``(dx, dweight, dbias)``.

    Per group of m values with :math:`\hat x = (x - \mu) r` and :math:`g = dy\,\gamma_c`:
    :math:`dx = r\,(g - \overline{g} - \hat x\,\overline{g \hat x})` (the bracket in
    float64), :math:`d\gamma_c = \sum dy\,\hat x`, :math:`d\beta_c = \sum dy` over samples
    and positions. ``x`` must hold the values it had in the forward call.
    """
    be, x, c = _channels_input(x, 2, "x")
    groups = check_groups(num_groups, c)
    v.check_dy(dy, x)
    mean = _stats(be, x, mean, "mean", (x.shape[0], groups))
    rstd = _stats(be, x, rstd, "rstd", (x.shape[0], groups))
    weight, bias = _params(be, x, (c,), weight=weight, bias=bias)
    return _per_sample_backward(be.groupnorm.backward, be, dy, x, mean, rstd, weight, bias, True)


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, out=None, return_stats=False):
    r"""Instance normalization (Ulyanov, Vedaldi & Lempitsky, 2017) of (N, C, \*) input.

    .. math::

        y = \frac{x - \mathrm{E}_{n,c}[x]}{\sqrt{\mathrm{Var}_{n,c}[x] + \epsilon}} \cdot \gamma_c + \beta_c

    with statistics per sample and channel over positions (``use_input_stats``), or
    the running statistics. With ``use_input_stats`` and running arrays given, they
    are updated in place with the batch average of the instance statistics
    (unbiased variance), as PyTorch does.

    Returns
    -------
    y, or (y, mean, rstd) with ``return_stats`` (float64, shape (N, C)).

    References
    ----------
    D. Ulyanov, A. Vedaldi and V. Lempitsky, "Instance Normalization: The Missing
    Ingredient for Fast Stylization", 2016. arXiv:1607.08022
    """
    be, x, c = _channels_input(x, 3)
    running_mean, running_var, weight, bias = _params(be, x, (c,), running_mean=running_mean,
                                                      running_var=running_var, weight=weight, bias=bias)
    _running_pair(running_mean, running_var)
    if not use_input_stats and running_mean is None:
        raise ValueError("Expected running_mean and running_var to be defined when use_input_stats is False")
    eps = v.check_eps(eps)
    n = x.shape[0]
    if use_input_stats:
        momentum = v.check_momentum(momentum, allow_none=False)
        spatial = math.prod(x.shape[2:])
        if spatial <= 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(x.shape)}")
    v.check_out(out, x)
    if x.size == 0:
        return _empty_forward(be, x, out, (n, c), return_stats)
    layout, x3 = be.layout.channel_view(x)
    y = be.layout.Output(layout, x3, x, out)
    if use_input_stats:
        count, mean, var, rstd = be.instancenorm.forward(layout, x3, y.view, weight, bias, eps)
        if running_mean is not None:
            _update_running(be, running_mean, running_var, mean, var, momentum, count)
    else:
        # Running statistics are per channel: BatchNorm's evaluation pass.
        _, rstd = be.batchnorm.normalize(layout, x3, y.view, running_mean, running_var, 1.0, weight, bias, eps)
        mean, rstd = be.arrays.repeat_rows(running_mean, n), be.arrays.repeat_rows(rstd, n)
    y = y.result()
    return (y, mean, rstd) if return_stats else y


def instance_norm_backward(dy, x, mean, rstd, weight=None, bias=None, use_input_stats=True):
    r"""Gradients of :func:`instance_norm`: returns ``(dx, dweight, dbias)``.

    Per (n, c) instance as for :func:`group_norm_backward` with one channel per group;
    without ``use_input_stats`` the statistics were constants: ``dx = dy * gamma * rstd``.
    """
    be, x, c = _channels_input(x, 3, "x")
    v.check_dy(dy, x)
    mean = _stats(be, x, mean, "mean", (x.shape[0], c))
    rstd = _stats(be, x, rstd, "rstd", (x.shape[0], c))
    weight, bias = _params(be, x, (c,), weight=weight, bias=bias)
    return _per_sample_backward(be.instancenorm.backward, be, dy, x, mean, rstd, weight, bias, use_input_stats)
