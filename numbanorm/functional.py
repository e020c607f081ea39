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
- The fused epilogue: ``batch_norm``, ``group_norm`` and ``instance_norm`` take
  ``residual=None, activation=None`` and return ``act(norm(x) + residual)`` from the pass
  that writes the output (cuDNN's BN_ADD_ACTIVATION, timm's ``BatchNormAct2d``); their
  backward takes the forward's output ``y`` (ReLU's mask is ``y > 0``) and with
  ``residual=True`` returns ``(dx, dweight, dbias, dresidual)``. ``layer_norm`` and
  ``rms_norm`` take ``residual=None`` and normalize ``s = x + residual``, returning
  ``(y, s)`` (ONNX Runtime's SkipLayerNormalization); their backward takes ``dsum``, a
  gradient reaching ``s`` from elsewhere, and returns dx + dsum.
- Arrays live where the input lives: with a CUDA input, parameters, running
  statistics, ``out`` and ``dy`` must be CUDA arrays too (no hidden host-to-device
  copies). A Numba device array comes back for a CUDA input; a CuPy array or PyTorch
  CUDA tensor is read in place (through ``__cuda_array_interface__``) and the result is
  a new Numba device array sharing nothing with it (``cupy.asarray(y)`` or
  ``torch.as_tensor(y, device="cuda")`` wrap it without a copy).
"""

import contextlib
import math
import numbers

import numpy as np

from . import _validation as v
from ._device import backend
from .distributed.exchange import Exchange, merge_moments, sum_parts

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


#: The context of a call without a communicator (:class:`Exchange` with one).
_LOCAL = contextlib.nullcontext()
#: The CPU backend, which NumPy arrays select (looked up once).
_CPU = backend(np.empty(0))


# -- validation shared by the families -----------------------------------------------------

def _input(x, name="input"):
    """``(backend, x)``: x as its backend's array type, checked to be a float array."""
    if type(x) is np.ndarray and x.dtype.char in "fd":  # the common case, checked cheaply
        return _CPU, x
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


#: The names of the per-channel arrays that :func:`_params` checks, in their order.
_AFFINE = ("weight", "bias")
_RUNNING_AFFINE = ("running_mean", "running_var", "weight", "bias")


def _params(be, x, shape, names, *arrays):
    """Check optional parameters/buffers ``arrays`` (called ``names``) of ``shape`` (a tuple)
    on x's device; return them in order."""
    if type(x) is np.ndarray:
        # The common case, checked cheaply: NumPy arrays of the right shape and a float dtype.
        for p in arrays:
            if p is not None and (type(p) is not np.ndarray or p.shape != shape or p.dtype.char not in "fd"):
                break
        else:
            return arrays
    return [_param(be, x, shape, name, p) for name, p in zip(names, arrays, strict=True)]


def _param(be, x, shape, name, p):
    if p is None:
        return None
    if type(p) is not np.ndarray and be is not None:
        p = be.arrays.asarray(p)
    return v.check_param(p, name, shape, x)


def _residual(be, x, residual, name="residual"):
    """A residual (or ``dsum``) checked against x: None, or an array of x's shape on x's device."""
    if residual is None:
        return None
    v.check_residual(residual, x, name)
    return be.arrays.asarray(residual)


def _forward_residual(be, x, residual, out):
    """A forward's ``residual`` checked as :func:`_residual` does, and its ``out=`` against x and
    the residual; returns the residual. The common call, with neither, costs one test."""
    if residual is None and out is None:
        return None
    residual = _residual(be, x, residual)
    v.check_out(out, x, residual)
    return residual


def _like(be, layout, x3, arr, dtype):
    """``arr`` (shaped like the input, any layout and float dtype) as a view like ``x3`` in ``dtype``,
    or None."""
    if arr is None:
        return None
    return be.layout.like_view(layout, x3, be.arrays.astype(arr, dtype, copy=False))


def _epilogue_grad(be, x, y, activation, residual):
    """The backward's epilogue options, checked: ``(relu, y as a backend array or None, residual)``."""
    if activation is None and residual is False:  # no epilogue: the common call, checked first
        return False, None, False
    relu = v.check_activation(activation)
    if not isinstance(residual, (bool, np.bool_)):
        raise TypeError(f"residual must be True or False (whether the forward added one), got {residual!r}")
    if not relu:
        return False, None, bool(residual)
    if y is None:
        raise ValueError("y (the forward's output) is required with activation='relu': ReLU's mask is y > 0")
    v.check_dy(y, x, "y")
    return True, be.arrays.asarray(y), bool(residual)


def _grad_outputs(be, layout, x3, x, relu, residual):
    """``(dx, dresidual, g3)``: the dx Output, the residual's gradient Output (ReLU and a
    residual) or None, and where the masked gradient goes (None without ReLU; the residual's
    gradient, or dx's buffer as scratch)."""
    dx = be.layout.Output(layout, x3, x)
    dres = be.layout.Output(layout, x3, x) if relu and residual else None
    g3 = None if not relu else (dx.view if dres is None else dres.view)
    return dx, dres, g3


def _with_residual_grad(grads, residual, dres, dy):
    """The backward's result: ``grads`` (dx, dweight, dbias), and the residual's gradient with
    ``residual`` (the masked dy, or dy itself without an activation)."""
    if not residual:
        return grads
    return grads + ((dy if dres is None else dres.result()),)


def _running_pair(running_mean, running_var):
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None")


def _stats(be, x, arr, name, shape):
    """Saved statistics of a backward call as float64 arrays of ``shape`` on x's device."""
    if arr is not None and not isinstance(arr, np.ndarray):
        arr = be.arrays.asarray(arr)
    arr = v.check_stats(arr, name, shape, x)
    return arr if arr.dtype == np.float64 else be.arrays.astype(arr, np.float64, copy=False)


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
               eps=1e-5, *, out=None, return_stats=False, comm=None, check_input=None, residual=None,
               activation=None):
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
    comm : numbanorm.distributed.Communicator, optional
        In training, the batch is the union of every rank's ``x`` (SyncBatchNorm): each
        rank's per-channel (count, mean, M2) goes through one all-gather and every rank
        merges them with Chan's formula in rank order, so ``y``'s statistics and the
        running statistics are those of the whole batch, identical on every rank. Ranks
        may hold different batch sizes, zero included. Every rank must call; a bad input
        on any rank makes every rank raise, with nothing changed. Without ``training``
        nothing is exchanged.
    check_input : callable, optional
        Called with ``x`` before anything else, inside the exchange when there is one, so
        that its errors reach every rank too (layers pass their dimension and channel checks).
    residual : array of x's shape, optional
        Added to the normalized output before the activation (a ResNet block's shortcut), in
        the pass that writes ``y``: ``y = act(norm(x) + residual)``. Any float dtype and
        layout on x's device; cast to x's dtype.
    activation : None or "relu"
        Applied last, in the same pass. Backward needs the returned ``y`` for ReLU's mask.

    Returns
    -------
    y : array like ``x``; or ``(y, mean, rstd)`` with ``return_stats``.

    References
    ----------
    S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015. arXiv:1502.03167
    """
    exchange = Exchange(comm, "batch_norm") if comm is not None and training else None
    with exchange or _LOCAL:
        if check_input is not None:
            check_input(x)
        be, x, c = _channels_input(x, 2)
        running_mean, running_var, weight, bias = _params(be, x, (c,), _RUNNING_AFFINE, running_mean, running_var,
                                                          weight, bias)
        _running_pair(running_mean, running_var)
        eps = v.check_eps(eps)
        use_input_stats = bool(training) or running_mean is None
        if training:
            momentum = v.check_momentum(momentum, allow_none=False)
        if exchange is None:
            _check_count(x.size // c if c else 0, training, x.shape)
        relu = v.check_activation(activation)
        residual = _forward_residual(be, x, residual, out)
        layout, x3 = be.layout.channel_view(x)
        r3 = _like(be, layout, x3, residual, x.dtype)
        if exchange is not None:
            local = be.batchnorm.moments(layout, x3) if x.size else (0.0, np.zeros(c), np.zeros(c))
            exchange.share(tuple(be.arrays.to_host(a) if i else a for i, a in enumerate(local)))
    if exchange is not None:
        count, mean, m2 = merge_moments(exchange.parts, "batch_norm")
        _check_count(count, training, f"{tuple(x.shape)} on this rank, {count:g} values per channel in all")
        mean, m2 = be.arrays.from_host(mean), be.arrays.from_host(m2)
    elif x.size == 0:
        return _empty_forward(be, x, out, (c,), return_stats)

    y = be.layout.Output(layout, x3, x, out)
    bn = be.batchnorm
    if use_input_stats:
        if exchange is not None:
            var, rstd = bn.normalize(layout, x3, y.view, mean, m2, count, weight, bias, eps, r3, relu)
        else:
            count, mean, _, var, rstd = bn.forward_train(layout, x3, y.view, weight, bias, eps, r3, relu)
        if training and running_mean is not None:
            _update_running(be, running_mean, running_var, mean, var, momentum, count)
    else:
        _, rstd = bn.normalize(layout, x3, y.view, running_mean, running_var, 1.0, weight, bias, eps, r3, relu)
        if not return_stats:
            return y.result()
        mean = be.arrays.astype(running_mean, np.float64)
    y = y.result()
    return (y, mean, rstd) if return_stats else y


def _check_count(count, training, size):
    if training and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def batch_norm_backward(dy, x, mean, rstd, weight=None, bias=None, use_input_stats=True, *, comm=None, y=None,
                        activation=None, residual=False, local_param_grads=False):
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
    comm : numbanorm.distributed.Communicator, optional
        The forward's communicator: with ``use_input_stats``, every rank's per-channel
        (count, sum dy, sum dy*(x - mean)) goes through one all-gather and is summed in
        rank order, so dx equals a single-process BatchNorm's on the whole batch and
        ``dweight``/``dbias`` are whole-batch sums, identical on every rank. With ReLU the
        mask is applied before the exchanged sums.
    y : array like ``x``, optional
        The forward's output; required with ``activation="relu"``, whose gradient is
        ``g = dy * (y > 0)``: it is formed in the gradient sums' read and replaces dy in the
        formulas above.
    activation : None or "relu"
        The forward's activation.
    residual : bool
        Whether the forward added a residual: its gradient ``g`` is returned as well.
    local_param_grads : bool
        With ``comm``: return this rank's own ``dweight``/``dbias`` sums instead (PyTorch's
        SyncBatchNorm convention, which leaves them for DistributedDataParallel to average).

    Returns
    -------
    dx : array like ``x``; dweight, dbias : array (C,) in ``x``'s dtype, or None;
    and with ``residual``, dresidual : the gradient of the residual, like ``x`` (``dy``
    itself without an activation).
    """
    exchange = Exchange(comm, "batch_norm_backward") if comm is not None and use_input_stats else None
    with exchange or _LOCAL:
        be, x, c = _channels_input(x, 2, "x")
        v.check_dy(dy, x)
        relu, y, residual = _epilogue_grad(be, x, y, activation, residual)
        mean = _stats(be, x, mean, "mean", (c,))
        rstd = _stats(be, x, rstd, "rstd", (c,))
        weight, bias = _params(be, x, (c,), _AFFINE, weight, bias)
        dy = be.arrays.asarray(dy)
        layout, x3 = be.layout.channel_view(x)
        dy3 = be.layout.like_view(layout, x3, dy)
        y3 = _like(be, layout, x3, y, x.dtype)
        dx, dres, g3 = _grad_outputs(be, layout, x3, x, relu, residual)
        if exchange is not None:
            count = x.size // c if c else 0
            if x.size:
                db, s_dyx = be.batchnorm.grad_sums(layout, x3, dy3, mean, y3, g3)
            else:
                db = s_dyx = be.arrays.full(c, 0.0)
            exchange.share((np.array([float(count)]), be.arrays.to_host(db), be.arrays.to_host(s_dyx)))
    if exchange is not None:
        local = db, s_dyx
        total, db, s_dyx = sum_parts(exchange.parts, "batch_norm_backward")
        db, s_dyx = be.arrays.from_host(db), be.arrays.from_host(s_dyx)
        dw = be.batchnorm.apply_dx(layout, x3, dy3 if g3 is None else g3, dx.view, mean, rstd, weight, db, s_dyx,
                                   float(total[0]), bool(use_input_stats))
        if local_param_grads:
            db, dw = local[0], be.batchnorm.dweight(local[1], rstd)
    elif x.size:
        dw, db = be.batchnorm.backward(layout, x3, dy3, dx.view, mean, rstd, weight, bool(use_input_stats), y3,
                                       None if dres is None else dres.view)
    else:
        dw = db = be.arrays.full(c, 0.0)
    grads = (dx.result(), _grad(be, dw, x, weight), _grad(be, db, x, bias))
    return _with_residual_grad(grads, residual, dres, dy)


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
    if type(normalized_shape) is int and normalized_shape > 0:  # the common cases, checked cheaply
        shape = (normalized_shape,)
    elif type(normalized_shape) is tuple and len(normalized_shape) == 1 and type(normalized_shape[0]) is int \
            and normalized_shape[0] > 0:
        shape = normalized_shape
    else:
        shape = normalized_shape_tuple(normalized_shape)
    k = len(shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"expected {name} with trailing dimensions {list(shape)} (normalized_shape), "
                         f"got shape {tuple(x.shape)}")
    return be, x, shape, tuple(x.shape[:x.ndim - k])


def _rows_forward(x, normalized_shape, weight, bias, eps, out, center, residual, return_stats):
    """LayerNorm/RMSNorm forward and its result: y, (y, s) with a residual, and the
    statistics after them with ``return_stats``."""
    be, x, shape, stat_shape = _rows_input(x, normalized_shape)
    weight, bias = _params(be, x, shape, _AFFINE, weight, bias)
    eps = v.check_eps(float(np.finfo(x.dtype).eps) if eps is None and not center else eps)
    residual = _forward_residual(be, x, residual, out)
    layout, x2 = be.layout.rows_view(x, math.prod(shape))
    y = be.layout.Output(layout, x2, x, out)
    if residual is None:
        mean, rstd = be.layernorm.forward(x2, y.view, weight, bias, eps, center)
        result = (y.result(),)
    else:
        s = be.layout.Output(layout, x2, x)
        mean, rstd = be.layernorm.forward(x2, y.view, weight, bias, eps, center,
                                          _like(be, layout, x2, residual, x.dtype), s.view)
        result = (y.result(), s.result())
    if not return_stats:
        return result[0] if residual is None else result
    if len(stat_shape) != 1:
        mean, rstd = mean.reshape(stat_shape), rstd.reshape(stat_shape)
    return result + ((mean if center else None), rstd)


def _rows_backward(dy, x, normalized_shape, mean, rstd, weight, bias, center, dsum):
    be, x, shape, stat_shape = _rows_input(x, normalized_shape, "x")
    v.check_dy(dy, x)
    dsum = _residual(be, x, dsum, "dsum")
    rstd = _stats(be, x, rstd, "rstd", stat_shape)
    mean = _stats(be, x, mean, "mean", stat_shape) if center else None
    weight = _param(be, x, shape, "weight", weight)
    bias = _param(be, x, shape, "bias", bias)
    layout, x2 = be.layout.rows_view(x, math.prod(shape))
    rows = x2.shape[0]
    dy2 = be.layout.like_view(layout, x2, be.arrays.asarray(dy))
    dx = be.layout.Output(layout, x2, x)
    mean = be.arrays.full(rows, 0.0) if mean is None else mean.reshape(rows)
    dw, db = be.layernorm.backward(x2, dy2, dx.view, mean, rstd.reshape(rows), weight, center,
                                   _like(be, layout, x2, dsum, x.dtype))
    return dx.result(), _grad(be, dw.reshape(shape), x, weight), _grad(be, db.reshape(shape), x, bias)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False,
               residual=None):
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
    residual : array of x's shape, optional
        The skip form (ONNX Runtime's SkipLayerNormalization): ``s = x + residual`` is
        normalized instead of x and returned too. Each row of ``s`` is written (in x's dtype)
        and its moments taken in one read of x and the residual. Any float dtype and layout.

    Returns
    -------
    y, or (y, mean, rstd) with ``return_stats``; with a residual, (y, s) or (y, s, mean, rstd).

    References
    ----------
    J. L. Ba, J. R. Kiros and G. E. Hinton, "Layer Normalization", 2016. arXiv:1607.06450
    """
    return _rows_forward(x, normalized_shape, weight, bias, eps, out, True, residual, return_stats)


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight=None, bias=None, *, dsum=None):
    r"""Gradients of :func:`layer_norm`: returns ``(dx, dweight, dbias)``.

    With :math:`\hat x = (x - \mu) r` and :math:`g = dy \odot \gamma` per row of D values:
    :math:`dx = r\,(g - \overline{g} - \hat x\,\overline{g \hat x})` (the bracket in
    float64, so a row of one value gets exactly 0),
    :math:`d\gamma = \sum_{rows} dy\,\hat x`, :math:`d\beta = \sum_{rows} dy`.
    ``mean``/``rstd`` are those returned by ``layer_norm(..., return_stats=True)``; ``x``
    must hold the values it had in the forward call: for the skip form, ``s``.

    ``dsum`` (an array of x's shape, optional) is a gradient that reaches the normalized
    input by another path, as the residual stream of a transformer block does; it is added
    to dx in the same loop, so for the skip form the returned dx is the gradient of both
    ``x`` and ``residual``.
    """
    return _rows_backward(dy, x, normalized_shape, mean, rstd, weight, bias, True, dsum)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False, residual=None):
    r"""Root mean square normalization (Zhang & Sennrich, 2019).

    .. math::

        y = \frac{x}{\sqrt{\tfrac{1}{D}\sum x^2 + \epsilon}} \odot \gamma

    over the trailing ``normalized_shape`` dims; ``eps=None`` means
    ``np.finfo(x.dtype).eps`` as in PyTorch.

    ``residual`` gives the skip form (ONNX Runtime's SkipSimplifiedLayerNormalization, Liger's
    FusedAddRMSNorm): ``s = x + residual`` is normalized and returned too, as in
    :func:`layer_norm`.

    Returns
    -------
    y, or (y, None, rstd) with ``return_stats`` (RMSNorm has no mean; ``rstd`` float64 of
    shape ``x.shape[:-len(normalized_shape)]``); with a residual, (y, s) or (y, s, None, rstd).

    References
    ----------
    B. Zhang and R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    arXiv:1910.07467
    """
    return _rows_forward(x, normalized_shape, weight, None, eps, out, False, residual, return_stats)


def rms_norm_backward(dy, x, normalized_shape, rstd, weight=None, *, dsum=None):
    r"""Gradients of :func:`rms_norm`: returns ``(dx, dweight, None)``.

    With :math:`\hat x = x r`, :math:`g = dy \odot \gamma`:
    :math:`dx = r\,(g - \hat x\,\overline{g \hat x})`, :math:`d\gamma = \sum_{rows} dy\,\hat x`.
    ``x`` is the normalized input (``s`` for the skip form); ``dsum`` is added to dx as in
    :func:`layer_norm_backward`.
    """
    return _rows_backward(dy, x, normalized_shape, None, rstd, weight, None, False, dsum)


# -- GroupNorm and InstanceNorm ---------------------------------------------------------

def check_groups(num_groups, channels):
    """``num_groups`` as an int that divides ``channels``, or ValueError."""
    if type(num_groups) is int and num_groups > 0 and not channels % num_groups:  # the common case, checked cheaply
        return num_groups
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups <= 0:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}")
    if channels % num_groups:
        raise ValueError(f"num_channels ({channels}) must be divisible by num_groups ({num_groups})")
    return int(num_groups)


def _per_sample_backward(family_backward, be, dy, x, mean, rstd, weight, bias, use_input_stats, relu, y, residual):
    """dx, dweight, dbias (and dresidual) of GroupNorm and InstanceNorm from checked (N, P)
    statistics and epilogue options."""
    layout, x3 = be.layout.channel_view(x, rows_2d=True)
    dx, dres, g3 = _grad_outputs(be, layout, x3, x, relu, residual)
    c = x.shape[1]
    dy = be.arrays.asarray(dy)
    if x.size == 0:
        dw = db = be.arrays.full(c, 0.0)
    else:
        dy3 = be.layout.like_view(layout, x3, dy)
        dw, db = family_backward(layout, x3, dy3, dx.view, mean, rstd, weight, bool(use_input_stats),
                                 _like(be, layout, x3, y, x.dtype), None if dres is None else dres.view)
    grads = (dx.result(), _grad(be, dw, x, weight), _grad(be, db, x, bias))
    return _with_residual_grad(grads, residual, dres, dy)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False, residual=None,
               activation=None):
    r"""Group normalization (Wu & He, 2018) of (N, C, \*) input.

    .. math::

        y = \frac{x - \mathrm{E}_g[x]}{\sqrt{\mathrm{Var}_g[x] + \epsilon}} \cdot \gamma_c + \beta_c

    with mean and biased variance per sample and group of ``C / num_groups``
    channels, over those channels and all positions. Contiguous and channels-last
    inputs run without a copy; the output keeps the layout.

    ``residual`` and ``activation`` give the fused epilogue ``y = act(norm(x) + residual)``
    as for :func:`batch_norm`.

    Returns
    -------
    y, or (y, mean, rstd) with ``return_stats`` (float64, shape (N, num_groups)).

    References
    ----------
    Y. Wu and K. He, "Group Normalization", ECCV 2018. arXiv:1803.08494
    """
    be, x, c = _channels_input(x, 2)
    groups = check_groups(num_groups, c)
    weight, bias = _params(be, x, (c,), _AFFINE, weight, bias)
    eps = v.check_eps(eps)
    relu = v.check_activation(activation)
    residual = _forward_residual(be, x, residual, out)
    if x.size == 0:
        return _empty_forward(be, x, out, (x.shape[0], groups), return_stats)
    layout, x3 = be.layout.channel_view(x, rows_2d=True)
    y = be.layout.Output(layout, x3, x, out)
    _, mean, _, rstd = be.groupnorm.forward(layout, x3, y.view, groups, weight, bias, eps,
                                            _like(be, layout, x3, residual, x.dtype), relu)
    y = y.result()
    return (y, mean, rstd) if return_stats else y


def group_norm_backward(dy, x, num_groups, mean, rstd, weight=None, bias=None, *, y=None, activation=None,
                        residual=False):
    r"""Gradients of :func:`group_norm`: returns ``(dx, dweight, dbias)``.

    Per group of m values with :math:`\hat x = (x - \mu) r` and :math:`g = dy\,\gamma_c`:
    :math:`dx = r\,(g - \overline{g} - \hat x\,\overline{g \hat x})` (the bracket in
    float64), :math:`d\gamma_c = \sum dy\,\hat x`, :math:`d\beta_c = \sum dy` over samples
    and positions. ``x`` must hold the values it had in the forward call.

    The epilogue options as in :func:`batch_norm_backward`: with ``activation="relu"`` the
    forward's output ``y`` is required and ``dy * (y > 0)`` replaces dy (formed in the
    gradient sums' read); with ``residual=True`` the residual's gradient is returned fourth.
    """
    be, x, c = _channels_input(x, 2, "x")
    groups = check_groups(num_groups, c)
    v.check_dy(dy, x)
    relu, y, residual = _epilogue_grad(be, x, y, activation, residual)
    mean = _stats(be, x, mean, "mean", (x.shape[0], groups))
    rstd = _stats(be, x, rstd, "rstd", (x.shape[0], groups))
    weight, bias = _params(be, x, (c,), _AFFINE, weight, bias)
    return _per_sample_backward(be.groupnorm.backward, be, dy, x, mean, rstd, weight, bias, True, relu, y, residual)


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, out=None, return_stats=False, residual=None, activation=None):
    r"""Instance normalization (Ulyanov, Vedaldi & Lempitsky, 2017) of (N, C, \*) input.

    .. math::

        y = \frac{x - \mathrm{E}_{n,c}[x]}{\sqrt{\mathrm{Var}_{n,c}[x] + \epsilon}} \cdot \gamma_c + \beta_c

    with statistics per sample and channel over positions (``use_input_stats``), or
    the running statistics. With ``use_input_stats`` and running arrays given, they
    are updated in place with the batch average of the instance statistics
    (unbiased variance), as PyTorch does.

    ``residual`` and ``activation`` give the fused epilogue ``y = act(norm(x) + residual)``
    as for :func:`batch_norm`.

    Returns
    -------
    y, or (y, mean, rstd) with ``return_stats`` (float64, shape (N, C)).

    References
    ----------
    D. Ulyanov, A. Vedaldi and V. Lempitsky, "Instance Normalization: The Missing
    Ingredient for Fast Stylization", 2016. arXiv:1607.08022
    """
    be, x, c = _channels_input(x, 3)
    running_mean, running_var, weight, bias = _params(be, x, (c,), _RUNNING_AFFINE, running_mean, running_var,
                                                      weight, bias)
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
    relu = v.check_activation(activation)
    residual = _forward_residual(be, x, residual, out)
    if x.size == 0:
        return _empty_forward(be, x, out, (n, c), return_stats)
    layout, x3 = be.layout.channel_view(x)
    y = be.layout.Output(layout, x3, x, out)
    r3 = _like(be, layout, x3, residual, x.dtype)
    if use_input_stats:
        count, mean, var, rstd = be.instancenorm.forward(layout, x3, y.view, weight, bias, eps, r3, relu)
        if running_mean is not None:
            _update_running(be, running_mean, running_var, mean, var, momentum, count)
    else:
        # Running statistics are per channel: BatchNorm's evaluation pass.
        _, rstd = be.batchnorm.normalize(layout, x3, y.view, running_mean, running_var, 1.0, weight, bias, eps,
                                         r3, relu)
        mean, rstd = be.arrays.repeat_rows(running_mean, n), be.arrays.repeat_rows(rstd, n)
    y = y.result()
    return (y, mean, rstd) if return_stats else y


def instance_norm_backward(dy, x, mean, rstd, weight=None, bias=None, use_input_stats=True, *, y=None,
                           activation=None, residual=False):
    r"""Gradients of :func:`instance_norm`: returns ``(dx, dweight, dbias)``.

    Per (n, c) instance as for :func:`group_norm_backward` with one channel per group;
    without ``use_input_stats`` the statistics were constants: ``dx = dy * gamma * rstd``.
    The epilogue options (``y``, ``activation``, ``residual``) as in :func:`batch_norm_backward`.
    """
    be, x, c = _channels_input(x, 3, "x")
    v.check_dy(dy, x)
    relu, y, residual = _epilogue_grad(be, x, y, activation, residual)
    mean = _stats(be, x, mean, "mean", (x.shape[0], c))
    rstd = _stats(be, x, rstd, "rstd", (x.shape[0], c))
    weight, bias = _params(be, x, (c,), _AFFINE, weight, bias)
    return _per_sample_backward(be.instancenorm.backward, be, dy, x, mean, rstd, weight, bias, use_input_stats,
                                relu, y, residual)
