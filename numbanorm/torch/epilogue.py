"""The fused epilogue in PyTorch: ``act(norm(x) + residual)`` and ``norm(x + residual)``.

numbanorm.torch's BatchNorm*, GroupNorm and InstanceNorm* take ``activation="relu"`` and
``forward(input, residual=None)``; LayerNorm and RMSNorm take ``forward(input,
residual=None)`` and return ``(norm(input + residual), input + residual)`` with a residual
(ONNX Runtime's SkipLayerNormalization). The epilogue runs in the pass that writes the
output (:mod:`numbanorm.functional`'s ``residual``/``activation`` options) and its
backward from the saved output, so the add and the ReLU cost no pass of their own.

These calls run eagerly through :class:`Epilogue`, a ``torch.autograd.Function``;
``torch.compile`` treats them as a graph break (:func:`torch.compiler.disable`).
"""

import torch

from .. import functional as F
from . import _eager, _ops

__all__ = ["Epilogue", "channel_epilogue", "skip_norm", "check_activation"]


def check_activation(activation):
    """``activation`` if it is None or "relu", else ValueError (as numbanorm's layers)."""
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    return activation


def _np(t):
    return _ops._np(t)


class Epilogue(torch.autograd.Function):
    """One normalization with its epilogue; ``forward_fn``/``backward_fn`` run numbanorm on NumPy views.

    ``forward_fn(x, residual, weight, bias)`` returns ``(outputs, saved)``: NumPy outputs (y,
    or (y, s)) and what ``backward_fn(grads, x, outputs, weight, bias, saved)`` needs; that
    returns NumPy ``(dx, dweight, dbias, dresidual)``.
    """

    @staticmethod
    def forward(ctx, forward_fn, backward_fn, x, residual, weight, bias, buffers):
        xd, layout = _ops._dense(x)
        outputs, saved = forward_fn(_np(xd), _np(residual), _np(weight), _np(bias))
        _eager._bump(*buffers)
        outputs = tuple(_ops._out(o, xd, layout) for o in outputs)
        ctx.save_for_backward(xd, weight, bias, *outputs)
        ctx.saved = saved
        ctx.backward_fn = backward_fn
        ctx.layout = layout
        ctx.has_residual = residual is not None
        return outputs[0] if len(outputs) == 1 else outputs

    @staticmethod
    @_eager._once_differentiable("epilogue_backward")
    def backward(ctx, *grads):
        x, weight, bias, *outputs = ctx.saved_tensors
        grads = tuple(None if g is None else _np(g) for g in grads)
        dx, dw, db, dres = ctx.backward_fn(grads, _np(x), tuple(_np(o) for o in outputs), _np(weight), _np(bias),
                                           ctx.saved)
        if ctx.has_residual and dres is not None and any(dres is a for a in (dx,) + grads):
            dres = dres.copy()  # the residual's gradient must not alias dx or an incoming gradient
        return (None, None, _ops._out(dx, x, ctx.layout),
                _ops._out(dres, x, ctx.layout) if ctx.has_residual and dres is not None else None,
                _ops._grad(dw, weight), _ops._grad(db, bias), None)


def _zeros_like(x):
    import numpy as np

    return np.zeros_like(x)


@torch.compiler.disable
def channel_epilogue(family, input, residual, weight, bias, activation, **kw):
    """``act(family(input) + residual)`` for family "batch_norm", "instance_norm" or "group_norm".

    ``kw`` are the family's functional arguments (running statistics, training or
    use_input_stats, momentum, eps, num_groups).
    """
    forward_f = getattr(F, family)
    backward_f = getattr(F, family + "_backward")
    relu = activation == "relu"
    buffers = [b for b in (kw.get("running_mean"), kw.get("running_var")) if b is not None]
    numpy_kw = {k: (_np(v) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}

    def forward_fn(x, r, w, b):
        if family == "group_norm":
            y, mean, rstd = _ops._call(forward_f, x, numpy_kw["num_groups"], w, b, numpy_kw["eps"], return_stats=True,
                                       residual=r, activation=activation)
        else:
            y, mean, rstd = _ops._call(forward_f, x, numpy_kw["running_mean"], numpy_kw["running_var"], w, b,
                                       numpy_kw["flag"], numpy_kw["momentum"], numpy_kw["eps"], return_stats=True,
                                       residual=r, activation=activation)
        return (y,), (mean, rstd)

    def backward_fn(grads, x, outputs, w, b, saved):
        (dy,) = grads
        if dy is None:
            dy = _zeros_like(outputs[0])
        y = outputs[0] if relu else None
        args = (x, numpy_kw["num_groups"]) if family == "group_norm" else (x,)
        res = _ops._call(backward_f, dy, *args, *saved, w, b, *(() if family == "group_norm" else
                                                                  (numpy_kw["use_input_stats"],)),
                         y=y, activation=activation, residual=residual is not None)
        dx, dw, db = res[:3]
        return dx, dw, db, (res[3] if residual is not None else None)

    return Epilogue.apply(forward_fn, backward_fn, input, residual, weight, bias, buffers)


@torch.compiler.disable
def skip_norm(center, input, residual, normalized_shape, weight, bias, eps):
    """``(norm(input + residual), input + residual)``: LayerNorm (``center``) or RMSNorm."""
    shape = tuple(int(d) for d in ([normalized_shape] if isinstance(normalized_shape, int) else normalized_shape))

    def forward_fn(x, r, w, b):
        if center:
            y, s, mean, rstd = _ops._call(F.layer_norm, x, shape, w, b, eps, return_stats=True, residual=r)
        else:
            y, s, mean, rstd = _ops._call(F.rms_norm, x, shape, w, eps, return_stats=True, residual=r)
        return (y, s), (mean, rstd)

    def backward_fn(grads, x, outputs, w, b, saved):
        dy, ds = grads
        s = outputs[1]
        if dy is None:
            dy = _zeros_like(s)
        mean, rstd = saved
        if center:
            dx, dw, db = _ops._call(F.layer_norm_backward, dy, s, shape, mean, rstd, w, b, dsum=ds)
        else:
            dx, dw, db = _ops._call(F.rms_norm_backward, dy, s, shape, rstd, w, dsum=ds)
        return dx, dw, db, dx

    return Epilogue.apply(forward_fn, backward_fn, input, residual, weight, bias if center else None, [])
