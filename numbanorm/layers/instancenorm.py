"""InstanceNorm1d/2d/3d: per-(sample, channel) statistics; unbatched input accepted."""

import warnings

import numpy as np

from .. import _device
from .. import _validation as v
from .. import functional as F
from .batchnorm import _NormWithRunningStats

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


def _add_batch(a):
    """``a`` with a leading batch axis of 1 (a view where the array type allows)."""
    return _device.backend(a).arrays.add_batch_axis(a)


def _drop_batch(a):
    """``a`` without its leading batch axis of 1, as a view."""
    return a[0]


class _InstanceNorm(_NormWithRunningStats):
    r"""Instance normalization (Ulyanov, Vedaldi & Lempitsky, 2017).

    .. math::

        y = \frac{x - \mathrm{E}_{n,c}[x]}{\sqrt{\mathrm{Var}_{n,c}[x] + \epsilon}} \cdot \gamma_c + \beta_c

    Mean and biased variance per sample and channel over all positions. With
    ``track_running_stats`` the running averages are updated in training with the
    batch average of the instance statistics (unbiased variance) and used in
    evaluation. Unbatched input (without N) is accepted, as in PyTorch.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        None behaves as 0 (the running statistics stay), as in PyTorch.
    affine : bool, default False
    track_running_stats : bool, default False
    dtype : np.float32 or np.float64
    bias : bool, keyword-only, default True
        With ``affine``, whether the learnable ``bias`` exists.
    activation : None or "relu", keyword-only
        The fused epilogue: ``layer(x, residual)`` returns ``activation(norm(x) + residual)``
        from the pass that writes the output; backward sets ``grad_residual``.

    References
    ----------
    D. Ulyanov, A. Vedaldi and V. Lempitsky, "Instance Normalization: The Missing
    Ingredient for Fast Stylization", 2016. arXiv:1607.08022
    """

    _batched_ndim = 0

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 dtype=np.float32, *, bias=True, activation=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias=bias,
                         activation=activation)

    def _channel_axis(self, x):
        return 0 if x.ndim == self._batched_ndim - 1 else 1

    def _check_input(self, x):
        v.check_float_array(x, "input")
        if (x.ndim in self._ndims and not self.affine and not self.track_running_stats
                and x.shape[self._channel_axis(x)] != self.num_features):
            # PyTorch only warns here: num_features is unused without affine or running stats.
            warnings.warn(f"{type(self).__name__}: input's size at dim={self._channel_axis(x)} does not "
                          f"match num_features ({self.num_features}); num_features is unused because "
                          "affine=False and track_running_stats=False", stacklevel=3)
            return
        super()._check_input(x)

    def forward(self, x, residual=None):
        self._check_input(x)
        unbatched = x.ndim == self._batched_ndim - 1
        xb = _add_batch(x) if unbatched else x
        if unbatched and residual is not None:
            v.check_residual(residual, x)  # against the input as given, before the batch axis is added
            residual = _add_batch(residual)
        use_input_stats = self.training or not self.track_running_stats
        y, mean, rstd = F.instance_norm(
            xb, self.running_mean, self.running_var, self.weight, self.bias,
            use_input_stats=use_input_stats,
            momentum=0.0 if self.momentum is None else self.momentum,
            eps=self.eps, return_stats=True, residual=residual, activation=self.activation)
        self._saved = {"x": x, "mean": mean, "rstd": rstd, "use_input_stats": use_input_stats,
                       **self._epilogue_saved(y, residual)}
        return _drop_batch(y) if unbatched else y

    def _backward(self, saved, dy):
        x = saved["x"]
        unbatched = x.ndim == self._batched_ndim - 1
        if unbatched:
            v.check_dy(dy, x)  # against the input as given, before the batch axis is added
            x, dy = _add_batch(x), _add_batch(dy)
        grads = F.instance_norm_backward(dy, x, saved["mean"], saved["rstd"], self.weight, self.bias,
                                         use_input_stats=saved["use_input_stats"], **self._epilogue_options(saved))
        if not unbatched:
            return grads
        dx, dw, db, *dres = grads
        return (_drop_batch(dx), dw, db, *(_drop_batch(d) for d in dres))


class InstanceNorm1d(_InstanceNorm):
    __doc__ = _InstanceNorm.__doc__ + "\n    Input: (N, C, L) or unbatched (C, L).\n"
    _ndims = (2, 3)
    _dims_text = "2D (unbatched) or 3D (batched)"
    _batched_ndim = 3


class InstanceNorm2d(_InstanceNorm):
    __doc__ = _InstanceNorm.__doc__ + "\n    Input: (N, C, H, W) or unbatched (C, H, W).\n"
    _ndims = (3, 4)
    _dims_text = "3D (unbatched) or 4D (batched)"
    _batched_ndim = 4


class InstanceNorm3d(_InstanceNorm):
    __doc__ = _InstanceNorm.__doc__ + "\n    Input: (N, C, D, H, W) or unbatched (C, D, H, W).\n"
    _ndims = (4, 5)
    _dims_text = "4D (unbatched) or 5D (batched)"
    _batched_ndim = 5
