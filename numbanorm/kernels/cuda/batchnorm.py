"""BatchNorm on CUDA: per-channel statistics over samples and positions (Ioffe & Szegedy, 2015).

The twin of :mod:`numbanorm.kernels.cpu.batchnorm`, with the same drivers and
returns: every array is a C-contiguous (N, C, S) device array and every statistic
float64. A channel's values are shared by up to ``config.CUDA_MAX_PARTIALS`` blocks
whose partial moments are Chan-merged. Partial results (the moments, the gradient
sums) are exposed before they are finished, for SyncBatchNorm. The fused epilogue
(``residual``, ``relu`` in forward; the forward's output ``y3`` and where ReLU's masked
gradient goes, ``g3``, in backward) as in the CPU twin.
"""

from . import channels
from .moments import channel_moments, finish

__all__ = ["moments", "normalize", "grad_sums", "apply_dx", "forward_train", "backward", "dweight"]


def moments(layout, x3):
    """Per-channel float64 ``(count, mean (C,), M2 (C,))`` over samples and positions."""
    count, mean, m2 = channel_moments(x3, False)
    c = x3.shape[1]
    return count, mean.reshape(c), m2.reshape(c)


def normalize(layout, x3, y3, mean, m2, count, weight, bias, eps, residual=None, relu=False):
    """``y = (x - mean) * rstd * weight + bias`` with ``var = m2 / count``; return float64 (var, rstd).

    Batch moments come as ``(mean, M2, count)``, running statistics as
    ``(running_mean, running_var, 1)``. The epilogue ``relu(y + residual)`` (either part
    optional) is applied as y is written.
    """
    c = x3.shape[1]
    mean64, var, rstd = finish(mean, m2, count, eps)
    channels.normalize(x3, y3, mean64.reshape(1, c), rstd.reshape(1, c), 1, weight, bias, residual, relu)
    return var, rstd


def grad_sums(layout, x3, dy3, mean, y3=None, g3=None):
    """Per-channel float64 ``(sum(dy), sum(dy * (x - mean)))``; with ``y3`` (the forward's output
    behind a ReLU), the sums of ``g = dy * (y3 > 0)``, which is written to ``g3``."""
    c = x3.shape[1]
    s_dy, s_dyx = channels.grad_sums(x3, dy3, mean.reshape(1, c), 1, False, y3, g3)
    return s_dy.reshape(c), s_dyx.reshape(c)


def apply_dx(layout, x3, dy3, dx3, mean, rstd, weight, s_dy, s_dyx, count, use_input_stats):
    """Fill ``dx3`` from the gradient sums of ``count`` values per channel; return float64 dweight.

    ``dx = rstd * weight * (dy - mean(dy) - xhat * mean(dy * xhat))`` with batch
    statistics (``use_input_stats``), else ``rstd * weight * dy``. ``dy3`` may be ``dx3``.
    """
    c = x3.shape[1]
    s_dy, s_dyx, mean, rstd = (a.reshape(1, c) for a in (s_dy, s_dyx, mean, rstd))
    channels.apply_dx(x3, dy3, dx3, s_dy, s_dyx, mean, rstd, 1, weight, count, use_input_stats)
    return channels.param_grads(s_dy, s_dyx, rstd, 1)[0]


def forward_train(layout, x3, y3, weight, bias, eps, residual=None, relu=False):
    """Normalize with batch statistics (then the epilogue); return float64 ``(count, mean, M2, var,
    rstd)`` per channel."""
    count, mean, m2 = moments(layout, x3)
    var, rstd = normalize(layout, x3, y3, mean, m2, count, weight, bias, eps, residual, relu)
    return count, mean, m2, var, rstd


def backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats, y3=None, g3=None):
    """Fill ``dx3``; return float64 (C,) (dweight, dbias): :func:`grad_sums` then :func:`apply_dx`.

    With ``y3`` (the output of a ReLU epilogue) the gradient is ``g = dy * (y3 > 0)``, written
    to ``g3`` (the residual's gradient; ``dx3`` when None) by the sums' read.
    """
    if y3 is not None:
        g3 = dx3 if g3 is None else g3
    s_dy, s_dyx = grad_sums(layout, x3, dy3, mean, y3, g3)
    count = x3.size // x3.shape[1]
    return apply_dx(layout, x3, dy3 if y3 is None else g3, dx3, mean, rstd, weight, s_dy, s_dyx, count,
                    use_input_stats), s_dy


def dweight(s_dyx, rstd):
    """float64 ``dweight = rstd * sum(dy * (x - mean))`` per channel, as a (C,) device array."""
    c = s_dyx.shape[0]
    return channels.param_grads(s_dyx.reshape(1, c), s_dyx.reshape(1, c), rstd.reshape(1, c), 1)[0]
