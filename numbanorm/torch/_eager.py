"""The eager path: ``torch.autograd.Function`` twins of the ``torch.ops.numbanorm`` operators.

A custom operator call in eager mode goes through the dispatcher, the Python autograd
wrapper ``torch.library`` builds and its alias checks, and for BatchNorm and InstanceNorm
copies of the running statistics that the functional schema needs: measured on the
(16, 512, 4, 4) BatchNorm of a ResNet-18 at 2 threads, forward plus backward took
550 us through the operators and 400-430 us through these Functions (PyTorch's own
kernels: 150-180 us; numbanorm's functional calls alone: 155 us). Plain eager calls on
CPU tensors therefore run the operators' implementation functions
(:func:`numbanorm.torch._ops.bn_forward` and friends) through these Functions, which
update running statistics in place through NumPy views of the buffers.
Everything that traces (``torch.compile``, ``torch.export``, ``torch.jit.trace``,
fake and meta tensors, dispatch modes, functorch transforms) sees the operators:
:func:`applies` decides.

Double backward raises a clear error, as the operators' backward does.
"""

import functools

import torch
from torch._C import _functions

from . import _ops

__all__ = ["applies", "BatchNorm", "InstanceNorm", "GroupNorm", "LayerNorm", "RMSNorm"]


def applies(x):
    """True for a plain eager call on a CPU tensor: run the Functions, not the operators."""
    return (not torch.compiler.is_compiling() and (type(x) is torch.Tensor or type(x) is torch.nn.Parameter)
            and x.device.type == "cpu" and not torch.jit.is_tracing() and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._functorch.is_functorch_wrapped_tensor(x))


def _once_differentiable(name):
    """``torch.autograd.function.once_differentiable`` with numbanorm's message."""
    message = (f"numbanorm::{name}: double backward (the gradient of a gradient, as in gradient penalties) "
               "is not supported by numbanorm's kernels; run these modules with PyTorch's kernels "
               "(numbanorm.torch.revert(model)) for that computation").encode()

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return outputs
            # create_graph=True: the outputs get a node that raises if anything differentiates
            # them (a gradient through dy, or through the saved input and parameters).
            if not any(t is not None and t.requires_grad for t in grads + tuple(ctx.saved_tensors)):
                return outputs

            def fake_requires_grad(t):
                if t is not None:
                    t = t.detach()
                    t.requires_grad = True
                return t

            return _functions.DelayedError(message, len(outputs))(*[fake_requires_grad(t) for t in outputs])
        return wrapper
    return decorate


def _bump(*buffers):
    """Bump the version counters of buffers written through NumPy views, as an in-place
    PyTorch op would (autograd then catches a stale saved copy)."""
    for b in buffers:
        if b is not None:
            torch.autograd.graph.increment_version(b)


def _channel_norm(name, op, forward_impl, backward_impl):
    """A Function for ``forward_impl(x, weight, bias, running_mean, running_var, flag, momentum,
    eps) -> (y, mean, rstd)``, ``flag`` being whether the batch's statistics are used and the
    given running buffers updated in place (BatchNorm's ``training``, InstanceNorm's
    ``use_input_stats``), and its ``backward_impl(dy, x, mean, rstd, weight, bias, use_input_stats)``."""

    def forward(ctx, x, weight, bias, running_mean, running_var, flag, momentum, eps):
        y, mean, rstd = forward_impl(x, weight, bias, running_mean, running_var, flag, momentum, eps)
        if flag:
            _bump(running_mean, running_var)
        ctx.save_for_backward(x, weight, bias)
        ctx.stats = mean, rstd
        # Without running statistics BatchNorm normalizes with the batch's in eval mode too
        # (InstanceNorm refuses that combination before this point).
        ctx.use_input_stats = bool(flag) or running_mean is None
        return y

    @_once_differentiable(f"{op}_backward")
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = backward_impl(dy, x, *ctx.stats, weight, bias, ctx.use_input_stats)
        return dx, dw, db, None, None, None, None, None

    return type(name, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


BatchNorm = _channel_norm("BatchNorm", "batch_norm", _ops.bn_forward, _ops.bn_backward)
InstanceNorm = _channel_norm("InstanceNorm", "instance_norm", _ops.in_forward, _ops.in_backward)


def _stats_norm(name, op, forward_impl, backward_impl):
    """A Function for ``forward_impl(x, extra, weight, bias, eps) -> (y, mean, rstd)`` and its
    ``backward_impl(dy, x, extra, mean, rstd, weight, bias)`` (GroupNorm's extra is
    num_groups, LayerNorm's normalized_shape)."""

    def forward(ctx, x, extra, weight, bias, eps):
        y, mean, rstd = forward_impl(x, extra, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias)
        ctx.stats = mean, rstd
        ctx.extra = extra
        return y

    @_once_differentiable(f"{op}_backward")
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = backward_impl(dy, x, ctx.extra, *ctx.stats, weight, bias)
        return dx, None, dw, db, None

    return type(name, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


GroupNorm = _stats_norm("GroupNorm", "group_norm", _ops.gn_forward, _ops.gn_backward)
LayerNorm = _stats_norm("LayerNorm", "layer_norm", _ops.ln_forward, _ops.ln_backward)


class RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, normalized_shape, weight, eps):
        y, rstd = _ops.rms_forward(x, normalized_shape, weight, eps)
        ctx.save_for_backward(x, weight)
        ctx.rstd = rstd
        ctx.normalized_shape = normalized_shape
        return y

    @staticmethod
    @_once_differentiable("rms_norm_backward")
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx, dw = _ops.rms_backward(dy, x, ctx.normalized_shape, ctx.rstd, weight)
        return dx, None, dw, None
