"""numbanorm's kernels as PyTorch custom operators (``torch.ops.numbanorm.*``).

Each family is a functional forward op and a backward op, both CPU-only, whose bodies
are the implementation functions below (``bn_forward``, ``bn_backward``, ...), shared
with the eager path of :mod:`numbanorm.torch._eager`:

========================================  ==========================================================
``batch_norm(x, w, b, rm, rv, training,    ``(y, mean, rstd, new_running_mean, new_running_var)``
momentum, eps)``
``instance_norm(x, w, b, rm, rv,           ``(y, mean, rstd, new_running_mean, new_running_var)``
use_input_stats, momentum, eps)``
``layer_norm(x, normalized_shape, w, b,    ``(y, mean, rstd)``
eps)``
``rms_norm(x, normalized_shape, w, eps)``  ``(y, rstd)``
``group_norm(x, num_groups, w, b, eps)``   ``(y, mean, rstd)``
``<family>_backward(dy, x, <stats>, w, b,  ``(dx, dweight, dbias)``
...)``
========================================  ==========================================================

The bodies call :mod:`numbanorm.functional` on zero-copy NumPy views of the tensors
(``t.detach().numpy()`` keeps strides): contiguous and channels-last inputs (an
NCHW-shaped view of NHWC memory; for 3-D (N, C, L) input, (N, L, C) memory) run without
a copy and the output keeps that layout; other strides are made contiguous first. The
outputs wrap numbanorm's arrays with ``torch.from_numpy`` (no copy). Statistics are
float64, shaped as numbanorm returns them: (C,) for BatchNorm, (N, C) for InstanceNorm,
(N, G) for GroupNorm, ``x.shape[:-len(normalized_shape)]`` for LayerNorm and RMSNorm.

Running statistics: ``torch.library`` refuses ``register_autograd`` on an operator that
declares ``mutates_args`` ("Cannot register autograd formula for non-functional
operator"), so the forward ops are functional. In training with running statistics they
return the updated ones: numbanorm updates copies of the buffers in place through NumPy
views, and :mod:`numbanorm.torch.functional` copies them into the buffers (2 x C
values) after the op has returned, so a bad input leaves the buffers untouched. The
copies are empty (0,) tensors when nothing is updated. (The eager path updates the
buffers themselves in place: numbanorm validates before it writes.)

``register_fake`` gives every op's output shapes, dtypes and strides (meta tensors,
``torch.compile``); ``register_autograd`` runs the backward op. The backward ops have a
registered autograd formula that raises: double backward is not supported.

numbanorm's input errors come out as :class:`InputError`, both a ``RuntimeError`` (what
PyTorch's own kernels raise) and a ``ValueError`` (what numbanorm and PyTorch's
module-level checks raise); a wrong dtype (integer, complex) as :class:`InputTypeError`,
an ``InputError`` that is also a ``TypeError``.

New keyword arguments (a fused ``residual``/``activation`` epilogue) are added at the end
of a schema with defaults, so existing callers keep working.
"""

import torch
from torch import Tensor

from .. import functional as F

__all__ = ["InputError", "InputTypeError", "SUPPORTED_DTYPES", "channel_layout"]

#: Tensor dtypes numbanorm runs; others run PyTorch's own kernels.
SUPPORTED_DTYPES = (torch.float32, torch.float64)


class InputError(RuntimeError, ValueError):
    """A bad input to a numbanorm operator (raised before anything changed): a
    ``RuntimeError`` like PyTorch's kernel checks, and the ``ValueError`` numbanorm raised."""


class InputTypeError(InputError, TypeError):
    """An input of a dtype numbanorm does not take (integer, bool, complex)."""


def _np(t):
    """A zero-copy NumPy view of a CPU tensor (None passes through)."""
    if t is None:
        return None
    t = t.detach()
    if t.is_neg():  # a lazily negated view (some autograd formulas make them)
        t = t.resolve_neg()
    return t.numpy()


def _call(fn, *args, **kwargs):
    """Run a numbanorm function, turning its input errors into :class:`InputError`."""
    try:
        return fn(*args, **kwargs)
    except TypeError as err:
        raise InputTypeError(str(err)) from err
    except ValueError as err:
        raise InputError(str(err)) from err


# -- layouts --------------------------------------------------------------------------

def channel_layout(x):
    """``"cf"`` for a contiguous tensor, ``"cl"`` for channels-last memory (channels the
    fastest axis, ``x.movedim(1, -1)`` contiguous), None for any other strides."""
    if x.is_contiguous():
        return "cf"
    if x.dim() > 2 and x.movedim(1, -1).is_contiguous():
        return "cl"
    return None


def _dense(x):
    """``x`` itself when numbanorm reads it without a copy (contiguous or channels-last),
    else a contiguous copy, and its layout."""
    layout = channel_layout(x)
    return (x, layout) if layout is not None else (x.contiguous(), "cf")


def _empty(x, layout, dtype=None):
    """An uninitialized tensor shaped like ``x`` in ``layout`` ("cf" or "cl")."""
    dtype = x.dtype if dtype is None else dtype
    if layout == "cl" and x.dim() > 2:
        shape = (x.shape[0],) + tuple(x.shape[2:]) + (x.shape[1],)
        return torch.empty(shape, dtype=dtype, device=x.device).movedim(-1, 1)
    return torch.empty(x.shape, dtype=dtype, device=x.device)


def _out(arr, x, layout):
    """numbanorm's output array as a tensor in ``layout`` (numbanorm keeps the input's
    layout, so this is ``torch.from_numpy``; the copy is a safety net the fake
    implementation relies on never being needed for other strides)."""
    y = torch.from_numpy(arr)
    if y.stride() != _strides(x, layout):
        y = _empty(x, layout).copy_(y)
    return y


def _strides(x, layout):
    if layout == "cl" and x.dim() > 2:
        c, rest = x.shape[1], tuple(x.shape[2:])
        inner = [1] * len(rest)
        step = c
        for i in range(len(rest) - 1, -1, -1):
            inner[i] = step
            step *= rest[i]
        return (step, 1) + tuple(inner)
    strides, step = [], 1
    for d in reversed(x.shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def _stats(arr):
    return torch.from_numpy(arr)


def _grad(grad, param):
    """A parameter's gradient (numbanorm's array) as a tensor in the parameter's dtype, or None."""
    if param is None or grad is None:
        return None
    return torch.from_numpy(grad).to(param.dtype)


def _or_empty(grad, param):
    """The ops' convention for an absent parameter's gradient: an empty (0,) tensor."""
    if grad is None:
        return torch.empty(0, dtype=torch.float64 if param is None else param.dtype)
    return grad


def _fake_param_grad(param, x):
    if param is None:
        return x.new_empty(0, dtype=torch.float64)
    return torch.empty_like(param, memory_format=torch.contiguous_format)


def _fake_grads(input, layout, weight, bias):
    """The fake outputs of a backward op: ``(dx in layout, dweight, dbias)``."""
    return _empty(input, layout), _fake_param_grad(weight, input), _fake_param_grad(bias, input)


def _running_copies(running_mean, running_var):
    """Copies of the running buffers for numbanorm to update in place (None when absent)."""
    if running_mean is None or running_var is None:
        return running_mean, running_var
    return running_mean.detach().clone(), running_var.detach().clone()


def _empty0(x):
    return x.new_empty(0)


def _no_double_backward(name):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"numbanorm::{name}: double backward (the gradient of a gradient, as in gradient penalties) "
            "is not supported by numbanorm's kernels; run these modules with PyTorch's kernels "
            "(numbanorm.torch.revert(model)) for that computation")
    return backward


def _register_backward_op(op, name):
    op.register_autograd(_no_double_backward(name), setup_context=lambda ctx, inputs, output: None)


# -- implementations: tensors in, tensors out (the ops' bodies and the eager Functions') -----

def bn_forward(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """``(y, mean, rstd)`` of BatchNorm; in training, given running buffers are updated in place."""
    x, layout = _dense(input)
    y, mean, rstd = _call(F.batch_norm, _np(x), _np(running_mean), _np(running_var), _np(weight), _np(bias),
                          training, momentum, eps, return_stats=True)
    return _out(y, x, layout), _stats(mean), _stats(rstd)


def bn_backward(grad_output, input, mean, rstd, weight, bias, use_input_stats):
    """``(dx, dweight or None, dbias or None)`` of BatchNorm."""
    x, layout = _dense(input)
    dx, dw, db = _call(F.batch_norm_backward, _np(grad_output), _np(x), _np(mean), _np(rstd), _np(weight),
                       _np(bias), use_input_stats)  # the flag positionally: it is being renamed
    return _out(dx, x, layout), _grad(dw, weight), _grad(db, bias)


def in_forward(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps):
    """``(y, mean, rstd)`` of InstanceNorm, statistics (N, C); with ``use_input_stats``, given
    running buffers are updated in place."""
    x, layout = _dense(input)
    y, mean, rstd = _call(F.instance_norm, _np(x), _np(running_mean), _np(running_var), _np(weight), _np(bias),
                          use_input_stats, momentum, eps, return_stats=True)
    return _out(y, x, layout), _stats(mean), _stats(rstd)


def in_backward(grad_output, input, mean, rstd, weight, bias, use_input_stats):
    x, layout = _dense(input)
    dx, dw, db = _call(F.instance_norm_backward, _np(grad_output), _np(x), _np(mean), _np(rstd), _np(weight),
                       _np(bias), use_input_stats)
    return _out(dx, x, layout), _grad(dw, weight), _grad(db, bias)


def gn_forward(input, num_groups, weight, bias, eps):
    """``(y, mean, rstd)`` of GroupNorm, statistics (N, num_groups)."""
    x, layout = _dense(input)
    y, mean, rstd = _call(F.group_norm, _np(x), num_groups, _np(weight), _np(bias), eps, return_stats=True)
    return _out(y, x, layout), _stats(mean), _stats(rstd)


def gn_backward(grad_output, input, num_groups, mean, rstd, weight, bias):
    x, layout = _dense(input)
    dx, dw, db = _call(F.group_norm_backward, _np(grad_output), _np(x), num_groups, _np(mean), _np(rstd),
                       _np(weight), _np(bias))
    return _out(dx, x, layout), _grad(dw, weight), _grad(db, bias)


def ln_forward(input, normalized_shape, weight, bias, eps):
    """``(y, mean, rstd)`` of LayerNorm: ``y`` contiguous, statistics ``input.shape[:-k]``."""
    y, mean, rstd = _call(F.layer_norm, _np(input), tuple(normalized_shape), _np(weight), _np(bias), eps,
                          return_stats=True)
    return _out(y, input, "cf"), _stats(mean), _stats(rstd)


def ln_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias):
    dx, dw, db = _call(F.layer_norm_backward, _np(grad_output), _np(input), tuple(normalized_shape), _np(mean),
                       _np(rstd), _np(weight), _np(bias))
    return _out(dx, input, "cf"), _grad(dw, weight), _grad(db, bias)


def rms_forward(input, normalized_shape, weight, eps):
    """``(y, rstd)`` of RMSNorm (``eps=None``: the dtype's machine epsilon)."""
    res = _call(F.rms_norm, _np(input), tuple(normalized_shape), _np(weight), eps, return_stats=True)
    y, rstd = res[0], res[-1]  # (y, rstd) today, (y, None, rstd) once rms_norm matches layer_norm
    return _out(y, input, "cf"), _stats(rstd)


def rms_backward(grad_output, input, normalized_shape, rstd, weight):
    dx, dw, _ = _call(F.rms_norm_backward, _np(grad_output), _np(input), tuple(normalized_shape), _np(rstd),
                      _np(weight))
    return _out(dx, input, "cf"), _grad(dw, weight)


# -- BatchNorm --------------------------------------------------------------------------

@torch.library.custom_op("numbanorm::batch_norm", mutates_args=(), device_types="cpu")
def batch_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
               running_var: Tensor | None, training: bool, momentum: float,
               eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """BatchNorm over axis 1; see :func:`numbanorm.functional.batch_norm`. Returns
    ``(y, mean, rstd, new_running_mean, new_running_var)`` (the last two empty unless
    training with running statistics)."""
    rm, rv = _running_copies(running_mean, running_var) if training else (running_mean, running_var)
    y, mean, rstd = bn_forward(input, weight, bias, rm, rv, training, momentum, eps)
    if not (training and running_mean is not None):
        rm, rv = _empty0(input), _empty0(input)
    return y, mean, rstd, rm, rv


def _fake_channels(input, stat_shape, running_mean, running_var, updates):
    """The fake outputs of the channel ops: ``(y, mean, rstd, new_running_mean, new_running_var)``."""
    mean = input.new_empty(stat_shape, dtype=torch.float64)
    rstd = input.new_empty(stat_shape, dtype=torch.float64)
    if updates and running_mean is not None:
        rm, rv = torch.empty_like(running_mean), torch.empty_like(running_var)
    else:
        rm, rv = _empty0(input), _empty0(input)
    return _empty(input, channel_layout(input) or "cf"), mean, rstd, rm, rv


@batch_norm.register_fake
def _(input, weight, bias, running_mean, running_var, training, momentum, eps):
    return _fake_channels(input, input.shape[1], running_mean, running_var, training)


@torch.library.custom_op("numbanorm::batch_norm_backward", mutates_args=(), device_types="cpu")
def batch_norm_backward(grad_output: Tensor, input: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor | None,
                        bias: Tensor | None, use_input_stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` of :func:`batch_norm` (dweight/dbias empty without the parameter)."""
    dx, dw, db = bn_backward(grad_output, input, mean, rstd, weight, bias, use_input_stats)
    return dx, _or_empty(dw, weight), _or_empty(db, bias)


@batch_norm_backward.register_fake
def _(grad_output, input, mean, rstd, weight, bias, use_input_stats):
    return _fake_grads(input, channel_layout(input) or "cf", weight, bias)


def _setup_channels(ctx, inputs, output):
    """Autograd setup of the channel ops ``op(x, weight, bias, running_mean, running_var, flag,
    momentum, eps)``, ``flag`` being BatchNorm's ``training`` or InstanceNorm's
    ``use_input_stats``."""
    x, weight, bias, running_mean, _, flag = inputs[:6]
    _, mean, rstd, rm, rv = output
    ctx.mark_non_differentiable(mean, rstd, rm, rv)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, mean, rstd, weight, bias)
    # Without running statistics BatchNorm normalizes with the batch's in eval mode too
    # (InstanceNorm refuses that combination before this point).
    ctx.use_input_stats = bool(flag) or running_mean is None
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _channels_backward_through(backward_op):
    """The autograd formula of a channel op: ``backward_op(dy, x, mean, rstd, weight, bias,
    use_input_stats)``."""
    def backward(ctx, dy, *_):
        if dy is None:
            return (None,) * 8
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dw, db = backward_op(dy, x, mean, rstd, weight, bias, ctx.use_input_stats)
        return (dx, dw if ctx.has_weight else None, db if ctx.has_bias else None) + (None,) * 5
    return backward


batch_norm.register_autograd(_channels_backward_through(torch.ops.numbanorm.batch_norm_backward),
                             setup_context=_setup_channels)
_register_backward_op(batch_norm_backward, "batch_norm_backward")


# -- InstanceNorm -----------------------------------------------------------------------

@torch.library.custom_op("numbanorm::instance_norm", mutates_args=(), device_types="cpu")
def instance_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                  running_var: Tensor | None, use_input_stats: bool, momentum: float,
                  eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """InstanceNorm per (sample, channel); see :func:`numbanorm.functional.instance_norm`.
    Returns ``(y, mean, rstd, new_running_mean, new_running_var)``, statistics (N, C)."""
    rm, rv = _running_copies(running_mean, running_var) if use_input_stats else (running_mean, running_var)
    y, mean, rstd = in_forward(input, weight, bias, rm, rv, use_input_stats, momentum, eps)
    if not (use_input_stats and running_mean is not None):
        rm, rv = _empty0(input), _empty0(input)
    return y, mean, rstd, rm, rv


@instance_norm.register_fake
def _(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps):
    return _fake_channels(input, tuple(input.shape[:2]), running_mean, running_var, use_input_stats)


@torch.library.custom_op("numbanorm::instance_norm_backward", mutates_args=(), device_types="cpu")
def instance_norm_backward(grad_output: Tensor, input: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor | None,
                           bias: Tensor | None, use_input_stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` of :func:`instance_norm`."""
    dx, dw, db = in_backward(grad_output, input, mean, rstd, weight, bias, use_input_stats)
    return dx, _or_empty(dw, weight), _or_empty(db, bias)


@instance_norm_backward.register_fake
def _(grad_output, input, mean, rstd, weight, bias, use_input_stats):
    return _fake_grads(input, channel_layout(input) or "cf", weight, bias)


instance_norm.register_autograd(_channels_backward_through(torch.ops.numbanorm.instance_norm_backward),
                                setup_context=_setup_channels)
_register_backward_op(instance_norm_backward, "instance_norm_backward")


# -- GroupNorm --------------------------------------------------------------------------

@torch.library.custom_op("numbanorm::group_norm", mutates_args=(), device_types="cpu")
def group_norm(input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None,
               eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """GroupNorm; see :func:`numbanorm.functional.group_norm`. Returns ``(y, mean, rstd)``,
    statistics (N, num_groups)."""
    return gn_forward(input, num_groups, weight, bias, eps)


@group_norm.register_fake
def _(input, num_groups, weight, bias, eps):
    layout = channel_layout(input) or "cf"
    n = input.shape[0]
    return (_empty(input, layout), input.new_empty((n, num_groups), dtype=torch.float64),
            input.new_empty((n, num_groups), dtype=torch.float64))


@torch.library.custom_op("numbanorm::group_norm_backward", mutates_args=(), device_types="cpu")
def group_norm_backward(grad_output: Tensor, input: Tensor, num_groups: int, mean: Tensor, rstd: Tensor,
                        weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` of :func:`group_norm`."""
    dx, dw, db = gn_backward(grad_output, input, num_groups, mean, rstd, weight, bias)
    return dx, _or_empty(dw, weight), _or_empty(db, bias)


@group_norm_backward.register_fake
def _(grad_output, input, num_groups, mean, rstd, weight, bias):
    return _fake_grads(input, channel_layout(input) or "cf", weight, bias)


def _setup_saving_stats(ctx, inputs, output):
    """Autograd setup of the ops ``op(x, extra, weight, bias, eps) -> (y, mean, rstd)``
    (GroupNorm's extra is num_groups, LayerNorm's normalized_shape)."""
    x, extra, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, mean, rstd, weight, bias)
    ctx.extra = extra
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _backward_through(backward_op):
    """The autograd formula of such an op: ``backward_op(dy, x, extra, mean, rstd, weight, bias)``."""
    def backward(ctx, dy, *_):
        if dy is None:
            return (None,) * 5
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dw, db = backward_op(dy, x, ctx.extra, mean, rstd, weight, bias)
        return (dx, None, dw if ctx.has_weight else None, db if ctx.has_bias else None, None)
    return backward


group_norm.register_autograd(_backward_through(torch.ops.numbanorm.group_norm_backward),
                              setup_context=_setup_saving_stats)
_register_backward_op(group_norm_backward, "group_norm_backward")


# -- LayerNorm --------------------------------------------------------------------------

def _stat_shape(x, normalized_shape):
    return tuple(x.shape[:x.dim() - len(normalized_shape)])


@torch.library.custom_op("numbanorm::layer_norm", mutates_args=(), device_types="cpu")
def layer_norm(input: Tensor, normalized_shape: list[int], weight: Tensor | None, bias: Tensor | None,
               eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm over the trailing ``normalized_shape``; see
    :func:`numbanorm.functional.layer_norm`. Returns contiguous ``y`` and float64
    ``mean``, ``rstd`` of shape ``input.shape[:-len(normalized_shape)]``."""
    return ln_forward(input, normalized_shape, weight, bias, eps)


@layer_norm.register_fake
def _(input, normalized_shape, weight, bias, eps):
    stat = _stat_shape(input, normalized_shape)
    return (_empty(input, "cf"), input.new_empty(stat, dtype=torch.float64),
            input.new_empty(stat, dtype=torch.float64))


@torch.library.custom_op("numbanorm::layer_norm_backward", mutates_args=(), device_types="cpu")
def layer_norm_backward(grad_output: Tensor, input: Tensor, normalized_shape: list[int], mean: Tensor, rstd: Tensor,
                        weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` of :func:`layer_norm` (dx contiguous)."""
    dx, dw, db = ln_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias)
    return dx, _or_empty(dw, weight), _or_empty(db, bias)


@layer_norm_backward.register_fake
def _(grad_output, input, normalized_shape, mean, rstd, weight, bias):
    return _fake_grads(input, "cf", weight, bias)


layer_norm.register_autograd(_backward_through(torch.ops.numbanorm.layer_norm_backward),
                              setup_context=_setup_saving_stats)
_register_backward_op(layer_norm_backward, "layer_norm_backward")


# -- RMSNorm ----------------------------------------------------------------------------

@torch.library.custom_op("numbanorm::rms_norm", mutates_args=(), device_types="cpu")
def rms_norm(input: Tensor, normalized_shape: list[int], weight: Tensor | None,
             eps: float | None) -> tuple[Tensor, Tensor]:
    """RMSNorm over the trailing ``normalized_shape`` (``eps=None``: the dtype's machine
    epsilon); see :func:`numbanorm.functional.rms_norm`. Returns ``(y, rstd)``."""
    return rms_forward(input, normalized_shape, weight, eps)


@rms_norm.register_fake
def _(input, normalized_shape, weight, eps):
    return _empty(input, "cf"), input.new_empty(_stat_shape(input, normalized_shape), dtype=torch.float64)


@torch.library.custom_op("numbanorm::rms_norm_backward", mutates_args=(), device_types="cpu")
def rms_norm_backward(grad_output: Tensor, input: Tensor, normalized_shape: list[int], rstd: Tensor,
                      weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(dx, dweight)`` of :func:`rms_norm` (dweight empty without a weight)."""
    dx, dw = rms_backward(grad_output, input, normalized_shape, rstd, weight)
    return dx, _or_empty(dw, weight)


@rms_norm_backward.register_fake
def _(grad_output, input, normalized_shape, rstd, weight):
    return _empty(input, "cf"), _fake_param_grad(weight, input)


def _rms_setup(ctx, inputs, output):
    x, normalized_shape, weight, _ = inputs
    _, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, rstd, weight)
    ctx.normalized_shape = normalized_shape
    ctx.has_weight = weight is not None


def _rms_backward(ctx, dy, *_):
    if dy is None:
        return (None,) * 4
    x, rstd, weight = ctx.saved_tensors
    dx, dw = torch.ops.numbanorm.rms_norm_backward(dy, x, ctx.normalized_shape, rstd, weight)
    return (dx, None, dw if ctx.has_weight else None, None)


rms_norm.register_autograd(_rms_backward, setup_context=_rms_setup)
_register_backward_op(rms_norm_backward, "rms_norm_backward")

#: Every operator this module registers, forward then backward per family.
OPS = {
    "batch_norm": (batch_norm, batch_norm_backward),
    "instance_norm": (instance_norm, instance_norm_backward),
    "group_norm": (group_norm, group_norm_backward),
    "layer_norm": (layer_norm, layer_norm_backward),
    "rms_norm": (rms_norm, rms_norm_backward),
}
