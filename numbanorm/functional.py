"""Functional normalization API: validate, pick the memory layout, dispatch to kernels.

Each forward has a matching ``*_backward`` that returns ``(dx, dweight, dbias)``
(``None`` for a parameter that was not given). Forward calls with
``return_stats=True`` also return the float64 statistics the backward needs.
The input's dtype (float32 or float64) sets the compute and output dtype;
parameters of the other float dtype are cast for the call.
"""

import math
import numbers

import numpy as np

from . import _layout, _memory
from . import _validation as v
from ._device import cuda_ops as _cuda
from ._device import is_cuda_array as _is_cuda
from .kernels.cpu import batchnorm as _bn
from .kernels.cpu import channels as _channels
from .kernels.cpu import groupnorm as _gn
from .kernels.cpu import instancenorm as _in
from .kernels.cpu import layernorm as _ln

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
]


def _check_channels_input(x, min_ndim, name="input"):
    v.check_float_array(x, name)
    if x.ndim < min_ndim:
        raise ValueError(f"expected {name} with at least {min_ndim} dimensions (N, C, ...), got shape {x.shape}")
    return x.shape[1]


def _check_channel_params(c, running_mean, running_var, weight, bias):
    """Per-channel arrays (or None) of C floats; the running pair present or absent together."""
    for name, p in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        v.check_param(p, name, (c,))
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None")


def _empty_forward(x, out, stat_shape, n_stats, return_stats):
    """The result of a forward on an input without elements: y, and NaN statistics."""
    y = np.empty_like(x) if out is None else out
    if not return_stats:
        return y
    return (y,) + tuple(np.full(stat_shape, np.nan) for _ in range(n_stats))


def _finish(layout, x3, x, out, compute):
    """Run ``compute(y3)`` into ``out`` (directly when its layout allows) or a new array."""
    if out is None:
        y3, y = _layout.new_output(layout, x3, x.shape)
        compute(y3)
        return y
    y3 = _layout.match_layout(layout, x3, out)
    if y3 is None:
        y3, y = _layout.new_output(layout, x3, x.shape)
        compute(y3)
        out[...] = y
    else:
        compute(y3)
    return out


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
    x : ndarray, shape (N, C) or (N, C, *spatial), float32 or float64
        Any strides; contiguous and channels-last inputs run without a copy and the
        output keeps the input's layout.
    running_mean, running_var : ndarray (C,) or None
    weight, bias : ndarray (C,) or None
        Affine parameters :math:`\gamma`, :math:`\beta`.
    training : bool
        Use batch statistics and update the running ones.
    momentum : float in [0, 1]
        Weight of the new batch statistics in the running averages.
    eps : float
        Added to the variance for numerical stability.
    out : ndarray, optional
        Written in place and returned (same shape and dtype as ``x``).
    return_stats : bool
        Also return the float64 per-channel ``mean`` and ``invstd`` used, for
        :func:`batch_norm_backward`.

    Returns
    -------
    y : ndarray, like ``x``; or ``(y, mean, invstd)`` with ``return_stats``.

    References
    ----------
    S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015. arXiv:1502.03167
    """
    if _is_cuda(x):
        return _cuda.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, out=out,
                                return_stats=return_stats)
    c = _check_channels_input(x, 2)
    _check_channel_params(c, running_mean, running_var, weight, bias)
    eps = v.check_eps(eps)
    use_batch = bool(training) or running_mean is None
    if training:
        momentum = v.check_momentum(momentum, allow_none=False)
    count = x.size // c if c else 0
    if training and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    v.check_out(out, x)

    layout, x3 = _layout.channel_view(x)
    if x.size == 0:
        return _empty_forward(x, out, (c,), 2, return_stats)
    stats = {}

    def compute(y3):
        if use_batch:
            n, mean, var, invstd = _bn.forward_train(layout, x3, y3, weight, bias, eps)
            stats.update(count=n, mean=mean, var=var, invstd=invstd)
        else:
            stats["mean"], stats["invstd"] = _bn.forward_eval(
                layout, x3, y3, running_mean, running_var, weight, bias, eps)

    y = _finish(layout, x3, x, out, compute)
    if training and running_mean is not None:
        _channels.update_running_stats(running_mean, running_var, stats["mean"], stats["var"], momentum,
                                       stats["count"])
    if return_stats:
        return y, stats["mean"], stats["invstd"]
    return y


def batch_norm_backward(dy, x, mean, invstd, weight=None, bias=None, training=True):
    r"""Gradients of :func:`batch_norm` given the statistics its forward used.

    With :math:`\hat x = (x - \mu)\,\sigma^{-1}` and sums over a channel's m values:

    .. math::

        \frac{\partial L}{\partial x} = \gamma \sigma^{-1}\Big(dy - \tfrac{1}{m}\sum dy
            - \hat x\,\tfrac{1}{m}\sum dy\,\hat x\Big),\quad
        \frac{\partial L}{\partial \gamma} = \sum dy\,\hat x,\quad
        \frac{\partial L}{\partial \beta} = \sum dy

    (the two mean terms vanish when ``training`` is False: the statistics were constants).

    Parameters
    ----------
    dy : ndarray, shape and dtype of ``x``
    x : ndarray, the forward input
    mean, invstd : ndarray (C,)
        As returned by ``batch_norm(..., return_stats=True)``.
    weight, bias : ndarray (C,) or None
        The forward's parameters; ``bias`` only decides whether ``dbias`` is returned.
    training : bool
        Whether the forward used batch statistics.

    Returns
    -------
    dx : ndarray like ``x``; dweight, dbias : ndarray (C,) in ``x``'s dtype, or None.
    """
    if _is_cuda(x):
        return _cuda.batch_norm_backward(dy, x, mean, invstd, weight, bias, training)
    c = _check_channels_input(x, 2, "x")
    v.check_dy(dy, x)
    mean = v.check_stats(mean, "mean", (c,))
    invstd = v.check_stats(invstd, "invstd", (c,))
    v.check_param(weight, "weight", (c,))
    v.check_param(bias, "bias", (c,))
    return _channel_backward(_bn.backward, dy, x, mean, invstd, weight, bias, bool(training), rows_2d=False)


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


def _rows_view(x, normalized_shape, name="input"):
    """Check x against normalized_shape; return (shape, (R, D) C-contiguous view of x)."""
    v.check_float_array(x, name)
    shape = normalized_shape_tuple(normalized_shape)
    k = len(shape)
    if x.ndim < k or x.shape[x.ndim - k:] != shape:
        raise ValueError(f"expected {name} with trailing dimensions {list(shape)} (normalized_shape), "
                         f"got shape {x.shape}")
    width = math.prod(shape)
    return shape, np.ascontiguousarray(x).reshape(-1, width)


def _rows_forward(x, normalized_shape, weight, bias, eps, out, center):
    shape, x2 = _rows_view(x, normalized_shape)
    v.check_param(weight, "weight", shape)
    v.check_param(bias, "bias", shape)
    eps = v.check_eps(eps)
    v.check_out(out, x)
    width = x2.shape[1]
    w = _row_param(weight, width, x.dtype, 1, x2.size)
    b = _row_param(bias, width, x.dtype, 0, x2.size)
    direct = out is not None and out.flags.c_contiguous
    y2 = out.reshape(x2.shape) if direct else _memory.empty(x2.shape, x.dtype, x2.size)
    mean, rstd = _ln.forward(x2, y2, w, b, eps, center)
    stat_shape = x.shape[:x.ndim - len(shape)]
    if out is not None:
        if not direct:
            out[...] = y2.reshape(x.shape)
        y = out
    else:
        y = y2.reshape(x.shape)
    if len(stat_shape) != 1:
        mean, rstd = mean.reshape(stat_shape), rstd.reshape(stat_shape)
    return y, mean, rstd


def _row_param(p, width, dtype, fill, work):
    """A (D,) C-contiguous parameter in x's dtype, aligned for a pass of ``work`` elements
    (a copy only when needed)."""
    if p is None:
        return _memory.full(width, fill, dtype, work)
    if p.dtype != dtype:
        p = p.astype(dtype)
    return _memory.aligned(np.ascontiguousarray(p).reshape(width), work)


def _rows_backward(dy, x, normalized_shape, mean, rstd, weight, center):
    shape, x2 = _rows_view(x, normalized_shape, "x")
    v.check_dy(dy, x)
    v.check_param(weight, "weight", shape)
    stat_shape = x.shape[:x.ndim - len(shape)]
    rstd = v.check_stats(rstd, "rstd", stat_shape).reshape(-1)
    mean = np.zeros_like(rstd) if mean is None else v.check_stats(mean, "mean", stat_shape).reshape(-1)
    width = x2.shape[1]
    w = _row_param(weight, width, x.dtype, 1, x2.size)
    dy2 = np.ascontiguousarray(dy).reshape(x2.shape)
    dx2 = _memory.empty(x2.shape, x.dtype, x2.size)
    dw, db = _ln.backward(x2, dy2, dx2, w, mean, rstd, center)
    return dx2.reshape(x.shape), dw.reshape(shape).astype(x.dtype), db.reshape(shape).astype(x.dtype)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    r"""Layer normalization over the trailing ``normalized_shape`` dims (Ba, Kiros & Hinton, 2016).

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta

    with mean and biased variance per sample over the last ``len(normalized_shape)``
    dimensions; the same at training and evaluation.

    Parameters
    ----------
    x : ndarray (..., *normalized_shape), float32 or float64
    normalized_shape : int or tuple of ints
    weight, bias : ndarray of shape ``normalized_shape`` or None
    eps : float
    out : ndarray, optional
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
    if _is_cuda(x):
        return _cuda.layer_norm(x, normalized_shape, weight, bias, eps, out=out, return_stats=return_stats)
    y, mean, rstd = _rows_forward(x, normalized_shape, weight, bias, eps, out, center=True)
    return (y, mean, rstd) if return_stats else y


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight=None, bias=None):
    r"""Gradients of :func:`layer_norm`: returns ``(dx, dweight, dbias)``.

    With :math:`\hat x = (x - \mu) r` and :math:`g = dy \odot \gamma` per row of D values:
    :math:`dx = r\,(g - \overline{g} - \hat x\,\overline{g \hat x})`,
    :math:`d\gamma = \sum_{rows} dy\,\hat x`, :math:`d\beta = \sum_{rows} dy`.
    ``mean``/``rstd`` are those returned by ``layer_norm(..., return_stats=True)``.
    """
    if _is_cuda(x):
        return _cuda.layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight, bias)
    dx, dw, db = _rows_backward(dy, x, normalized_shape, mean, rstd, weight, center=True)
    return dx, (None if weight is None else dw), (None if bias is None else db)


def _rms_eps(eps, dtype):
    return float(np.finfo(dtype).eps) if eps is None else eps


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False):
    r"""Root mean square normalization (Zhang & Sennrich, 2019).

    .. math::

        y = \frac{x}{\sqrt{\tfrac{1}{D}\sum x^2 + \epsilon}} \odot \gamma

    over the trailing ``normalized_shape`` dims; ``eps=None`` means
    ``np.finfo(x.dtype).eps`` as in PyTorch.

    Returns
    -------
    y, or (y, rstd) with ``return_stats`` (float64, shape ``x.shape[:-len(normalized_shape)]``).

    References
    ----------
    B. Zhang and R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    arXiv:1910.07467
    """
    if _is_cuda(x):
        return _cuda.rms_norm(x, normalized_shape, weight, eps, out=out, return_stats=return_stats)
    v.check_float_array(x, "input")
    y, _, rstd = _rows_forward(x, normalized_shape, weight, None, _rms_eps(eps, x.dtype), out, center=False)
    return (y, rstd) if return_stats else y


def rms_norm_backward(dy, x, normalized_shape, rstd, weight=None):
    r"""Gradients of :func:`rms_norm`: returns ``(dx, dweight, None)``.

    With :math:`\hat x = x r`, :math:`g = dy \odot \gamma`:
    :math:`dx = r\,(g - \hat x\,\overline{g \hat x})`, :math:`d\gamma = \sum_{rows} dy\,\hat x`.
    """
    if _is_cuda(x):
        return _cuda.rms_norm_backward(dy, x, normalized_shape, rstd, weight)
    dx, dw, _ = _rows_backward(dy, x, normalized_shape, None, rstd, weight, center=False)
    return dx, (None if weight is None else dw), None


# -- GroupNorm and InstanceNorm ---------------------------------------------------------

def _check_groups(num_groups, channels):
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups <= 0:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}")
    if channels % num_groups:
        raise ValueError(f"num_channels ({channels}) must be divisible by num_groups ({num_groups})")
    return int(num_groups)


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
    if _is_cuda(x):
        return _cuda.group_norm(x, num_groups, weight, bias, eps, out=out, return_stats=return_stats)
    c = _check_channels_input(x, 2)
    groups = _check_groups(num_groups, c)
    v.check_param(weight, "weight", (c,))
    v.check_param(bias, "bias", (c,))
    eps = v.check_eps(eps)
    v.check_out(out, x)
    n = x.shape[0]
    layout, x3 = _layout.channel_view(x, rows_2d=True)
    if x.size == 0:
        return _empty_forward(x, out, (n, groups), 2, return_stats)
    result = {}

    def compute(y3):
        result["stats"] = _gn.forward(layout, x3, y3, groups, weight, bias, eps)

    y = _finish(layout, x3, x, out, compute)
    _, mean, _, rstd = result["stats"]
    return (y, mean, rstd) if return_stats else y


def group_norm_backward(dy, x, num_groups, mean, rstd, weight=None, bias=None):
    r"""Gradients of :func:`group_norm`: returns ``(dx, dweight, dbias)``.

    Per group of m values with :math:`\hat x = (x - \mu) r` and :math:`g = dy\,\gamma_c`:
    :math:`dx = r\,(g - \overline{g} - \hat x\,\overline{g \hat x})`,
    :math:`d\gamma_c = \sum dy\,\hat x`, :math:`d\beta_c = \sum dy` over samples and positions.
    """
    if _is_cuda(x):
        return _cuda.group_norm_backward(dy, x, num_groups, mean, rstd, weight, bias)
    c = _check_channels_input(x, 2, "x")
    groups = _check_groups(num_groups, c)
    v.check_dy(dy, x)
    mean = v.check_stats(mean, "mean", (x.shape[0], groups))
    rstd = v.check_stats(rstd, "rstd", (x.shape[0], groups))
    v.check_param(weight, "weight", (c,))
    v.check_param(bias, "bias", (c,))
    return _channel_backward(_gn.backward, dy, x, mean, rstd, weight, bias, True)


def _channel_backward(driver, dy, x, mean, rstd, weight, bias, stats_grad, rows_2d=True):
    """dx, dweight, dbias of a channel-wise family; ``rows_2d`` as the forward's layout
    (False for BatchNorm, whose (N, C) input is channels-last; True for GroupNorm)."""
    c = x.shape[1]
    layout, x3 = _layout.channel_view(x, rows_2d=rows_2d)
    dx3, dx = _layout.new_output(layout, x3, x.shape)
    if x.size == 0:
        dw, db = np.zeros(c), np.zeros(c)
    else:
        dy3 = _layout.like_view(layout, x3, dy)
        dw, db = driver(layout, x3, dy3, dx3, mean, rstd, weight, stats_grad)
    return (dx, None if weight is None else dw.astype(x.dtype), None if bias is None else db.astype(x.dtype))


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
    if _is_cuda(x):
        return _cuda.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, out=out,
                                   return_stats=return_stats)
    c = _check_channels_input(x, 3)
    _check_channel_params(c, running_mean, running_var, weight, bias)
    if not use_input_stats and running_mean is None:
        raise ValueError("Expected running_mean and running_var to be defined when use_input_stats is False")
    eps = v.check_eps(eps)
    if use_input_stats:
        momentum = v.check_momentum(momentum, allow_none=False)
        spatial = x.size // (x.shape[0] * c) if x.shape[0] * c else 0
        if spatial <= 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")
    v.check_out(out, x)
    layout, x3 = _layout.channel_view(x)
    if x.size == 0:
        return _empty_forward(x, out, (x.shape[0], c), 2, return_stats)
    result = {}

    def compute(y3):
        if use_input_stats:
            result["stats"] = _in.forward_train(layout, x3, y3, weight, bias, eps)
        else:
            result["stats"] = (None,) + _in.forward_eval(layout, x3, y3, running_mean, running_var,
                                                         weight, bias, eps)

    y = _finish(layout, x3, x, out, compute)
    if use_input_stats:
        count, mean, var, rstd = result["stats"]
        if running_mean is not None:
            # PyTorch averages the per-instance statistics over the batch.
            _channels.update_running_stats(running_mean, running_var, mean, var, momentum, count)
    else:
        _, mean, rstd = result["stats"]
    return (y, mean, rstd) if return_stats else y


def instance_norm_backward(dy, x, mean, rstd, weight=None, bias=None, use_input_stats=True):
    r"""Gradients of :func:`instance_norm`: returns ``(dx, dweight, dbias)``.

    Per (n, c) instance as for :func:`group_norm_backward` with one channel per group;
    without ``use_input_stats`` the statistics were constants: ``dx = dy * gamma * rstd``.
    """
    if _is_cuda(x):
        return _cuda.instance_norm_backward(dy, x, mean, rstd, weight, bias, use_input_stats)
    c = _check_channels_input(x, 3, "x")
    v.check_dy(dy, x)
    mean = v.check_stats(mean, "mean", (x.shape[0], c))
    rstd = v.check_stats(rstd, "rstd", (x.shape[0], c))
    v.check_param(weight, "weight", (c,))
    v.check_param(bias, "bias", (c,))
    return _channel_backward(_in.backward, dy, x, mean, rstd, weight, bias, bool(use_input_stats))
