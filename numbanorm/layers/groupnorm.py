"""GroupNorm: per-(sample, group) statistics, per-channel affine."""

import numpy as np

from .. import _validation as v
from .. import functional as F
from .base import Epilogue, NormBase
from .batchnorm import check_num_features

__all__ = ["GroupNorm"]


class GroupNorm(Epilogue, NormBase):
    r"""Group normalization (Wu & He, 2018).

    .. math::

        y = \frac{x - \mathrm{E}_g[x]}{\sqrt{\mathrm{Var}_g[x] + \epsilon}} \cdot \gamma_c + \beta_c

    Channels are split into ``num_groups`` groups; mean and biased variance are taken
    per sample over a group's channels and all positions. Input (N, C, \*);
    contiguous and channels-last inputs run without a copy.

    Parameters
    ----------
    num_groups : int
        Must divide ``num_channels`` (ValueError otherwise).
    num_channels : int
    eps : float, default 1e-5
    affine : bool, default True
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
    dtype : np.float32 or np.float64
    bias : bool, keyword-only, default True
        With ``affine``, whether the learnable ``bias`` exists (as in PyTorch 2.13).
    activation : None or "relu", keyword-only
        The fused epilogue: ``layer(x, residual)`` returns ``activation(norm(x) + residual)``
        from the pass that writes the output; backward sets ``grad_residual``.

    Notes
    -----
    ``GroupNorm(1, C)`` is LayerNorm over (C, \*) without its per-element affine;
    ``GroupNorm(C, C)`` is InstanceNorm.

    References
    ----------
    Y. Wu and K. He, "Group Normalization", ECCV 2018. arXiv:1803.08494
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32, *, bias=True,
                 activation=None):
        super().__init__(dtype)
        self._init_epilogue(activation)
        self.num_channels = check_num_features(num_channels, "num_channels")
        self.num_groups = F.check_groups(num_groups, self.num_channels)
        self.eps = v.check_eps(eps)
        self.affine = bool(affine)
        self._init_state((self.num_channels,), weight=self.affine, bias=self.affine and bool(bias))

    def _check_input(self, x):
        v.check_float_array(x, "input")
        if x.ndim < 2:
            raise ValueError(f"GroupNorm expected input of shape (N, C, *), got shape {x.shape}")
        if x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm expected {self.num_channels} channels in dimension 1, "
                             f"got {x.shape[1]} (input shape {x.shape})")

    def forward(self, x, residual=None):
        self._check_input(x)
        y, mean, rstd = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, return_stats=True,
                                     residual=residual, activation=self.activation)
        self._saved = {"x": x, "mean": mean, "rstd": rstd, **self._epilogue_saved(y, residual)}
        return y

    def _backward(self, saved, dy):
        return F.group_norm_backward(dy, saved["x"], self.num_groups, saved["mean"], saved["rstd"],
                                     self.weight, self.bias, **self._epilogue_options(saved))

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}" + self._epilogue_repr())
