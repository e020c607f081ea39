"""LayerNorm and RMSNorm: per-sample statistics over the trailing ``normalized_shape``."""

import numpy as np

from .. import _validation as v
from .. import functional as F
from .base import NormBase

__all__ = ["LayerNorm", "RMSNorm"]


class LayerNorm(NormBase):
    r"""Layer normalization (Ba, Kiros & Hinton, 2016).

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta

    Mean and biased variance per sample over the last ``len(normalized_shape)``
    dimensions, the same in training and evaluation.

    Parameters
    ----------
    normalized_shape : int or tuple of ints
        Trailing shape normalized over; ``weight``/``bias`` have this shape.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learnable per-element ``weight`` (ones) and ``bias`` (zeros).
    bias : bool, default True
        With ``elementwise_affine``, whether ``bias`` exists.
    dtype : np.float32 or np.float64

    Notes
    -----
    Each row is normalized while it is in cache (one read of x); the statistics are
    float64 block moments (checked shifted sums, two-pass as the fallback) and the
    mean is subtracted as a hi/lo pair, so float32 rows with mean 1e4 and std 1e-2
    normalize to within 1e-3 of float64.

    ``layer(x, residual)`` is the skip form of a transformer block (ONNX Runtime's
    SkipLayerNormalization): it returns ``(y, s)`` with ``s = x + residual`` written in the
    read that takes its statistics and ``y`` its normalization; ``layer.backward(dy, dsum)``
    then returns the gradient of ``s`` (of x and of the residual) with ``dsum``, the gradient
    reaching ``s`` through the residual stream, added.

    References
    ----------
    J. L. Ba, J. R. Kiros and G. E. Hinton, "Layer Normalization", 2016. arXiv:1607.06450
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        super().__init__(dtype)
        self.normalized_shape = F.normalized_shape_tuple(normalized_shape)
        self.eps = v.check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self._init_state(self.normalized_shape, weight=self.elementwise_affine,
                         bias=self.elementwise_affine and bool(bias))

    def forward(self, x, residual=None):
        """``y``; with ``residual``, ``(y, s)``: ``s = x + residual`` normalized (the skip form),
        written in the same pass."""
        if residual is None:
            y, mean, rstd = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                                         return_stats=True)
            self._saved = {"x": x, "mean": mean, "rstd": rstd, "residual": False}
            return y
        y, s, mean, rstd = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                                        return_stats=True, residual=residual)
        self._saved = {"x": s, "mean": mean, "rstd": rstd, "residual": True}
        return y, s

    def backward(self, dy, dsum=None):
        """Return the gradient of x (with a residual: of ``s``, so of x and of the residual alike,
        also kept as ``grad_residual``); set ``grad_weight`` and ``grad_bias``.

        ``dsum`` is a gradient reaching ``s`` from elsewhere (the residual stream that ``s``
        continues); it is added to the result in the same pass. See :meth:`NormBase.backward`.
        """
        return self._run_backward(dy, dsum=dsum)

    def _backward(self, saved, dy, dsum=None):
        grads = F.layer_norm_backward(dy, saved["x"], self.normalized_shape, saved["mean"], saved["rstd"],
                                      self.weight, self.bias, dsum=dsum)
        return grads + grads[:1] if saved["residual"] else grads

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class RMSNorm(NormBase):
    r"""Root mean square layer normalization (Zhang & Sennrich, 2019).

    .. math::

        y = \frac{x}{\sqrt{\tfrac{1}{D}\sum x^2 + \epsilon}} \odot \gamma

    over the trailing ``normalized_shape``; LayerNorm without the mean.

    Parameters
    ----------
    normalized_shape : int or tuple of ints
    eps : float or None, default None
        None means ``np.finfo(x.dtype).eps`` of the input, as in PyTorch.
    elementwise_affine : bool, default True
        Learnable per-element ``weight`` (ones); there is no bias.
    dtype : np.float32 or np.float64

    References
    ----------
    B. Zhang and R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    arXiv:1910.07467
    """

    _param_names = ("weight",)

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__(dtype)
        self.normalized_shape = F.normalized_shape_tuple(normalized_shape)
        self.eps = None if eps is None else v.check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self._init_state(self.normalized_shape, weight=self.elementwise_affine)

    def forward(self, x, residual=None):
        """``y``; with ``residual``, ``(y, s)``: ``s = x + residual`` normalized (Liger's
        FusedAddRMSNorm), written in the same pass."""
        if residual is None:
            y, _, rstd = F.rms_norm(x, self.normalized_shape, self.weight, self.eps, return_stats=True)
            self._saved = {"x": x, "rstd": rstd, "residual": False}
            return y
        y, s, _, rstd = F.rms_norm(x, self.normalized_shape, self.weight, self.eps, return_stats=True,
                                   residual=residual)
        self._saved = {"x": s, "rstd": rstd, "residual": True}
        return y, s

    def backward(self, dy, dsum=None):
        """As :meth:`LayerNorm.backward`: the gradient of x (of ``s`` with a residual), plus ``dsum``."""
        return self._run_backward(dy, dsum=dsum)

    def _backward(self, saved, dy, dsum=None):
        grads = F.rms_norm_backward(dy, saved["x"], self.normalized_shape, saved["rstd"], self.weight, dsum=dsum)
        return grads + grads[:1] if saved["residual"] else grads

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
