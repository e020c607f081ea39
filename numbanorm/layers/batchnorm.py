"""BatchNorm1d/2d/3d: one base, subclasses differ only in the input dimensions they accept."""

import numbers

import numpy as np

from .. import _validation as v
from .. import functional as F
from ..distributed import as_communicator
from .base import Epilogue, NormBase

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"]


def check_num_features(num_features, name="num_features"):
    if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features <= 0:
        raise ValueError(f"{name} must be a positive integer, got {num_features!r}")
    return int(num_features)


class _NormWithRunningStats(Epilogue, NormBase):
    """Per-channel layers with optional running statistics (BatchNorm, InstanceNorm)."""

    _ndims = ()
    _dims_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32, *, bias=True, activation=None):
        super().__init__(dtype)
        self._init_epilogue(activation)
        self.num_features = check_num_features(num_features)
        self.eps = v.check_eps(eps)
        self.momentum = v.check_momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self._init_state((self.num_features,), weight=self.affine, bias=self.affine and bool(bias),
                         running=self.track_running_stats)

    def _check_input(self, x):
        v.check_float_array(x, "input")
        if x.ndim not in self._ndims:
            raise ValueError(f"{type(self).__name__} expected {self._dims_text} input, got {x.ndim}D input "
                             f"of shape {x.shape}")
        channel_axis = self._channel_axis(x)
        if x.shape[channel_axis] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expected {self.num_features} channels "
                             f"in dimension {channel_axis}, got {x.shape[channel_axis]} (input shape {x.shape})")

    def _channel_axis(self, x):
        return 1

    def _momentum_factor(self):
        """The running-average weight for this step: momentum, or 1/steps when momentum is None."""
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked + 1)
        return self.momentum

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
                + self._epilogue_repr())


class _BatchNorm(_NormWithRunningStats):
    r"""Batch normalization (Ioffe & Szegedy, 2015) over the channel axis.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    Mean and biased variance are taken per channel over the batch and all positions
    in training (or when there are no running statistics); in evaluation the running
    averages are used, updated in training as ``r = (1 - momentum) * r + momentum * s``
    with the unbiased batch variance (``momentum=None``: cumulative average).

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
    affine : bool, default True
        Learnable ``weight`` (:math:`\gamma`, ones) and ``bias`` (:math:`\beta`, zeros).
    track_running_stats : bool, default True
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``.
    dtype : np.float32 or np.float64
        Dtype of parameters and buffers. Inputs of either float dtype are accepted:
        the input's dtype sets the compute and output dtype.
    bias : bool, keyword-only, default True
        With ``affine``, whether the learnable ``bias`` exists (as in PyTorch 2.13).
    activation : None or "relu", keyword-only
        The fused epilogue (timm's ``BatchNormAct2d``, cuDNN's BN_ADD_ACTIVATION):
        ``layer(x, residual)`` returns ``activation(norm(x) + residual)`` from the pass that
        writes the output; ``residual`` is optional.

    Notes
    -----
    ``layer(x)`` (or ``layer(x, residual)``) runs forward; ``layer.backward(dy)`` returns dx
    and sets ``grad_weight``/``grad_bias`` (and ``grad_residual`` after a forward with a
    residual, else None). Only x (by reference) and per-channel statistics
    are kept for backward. Statistics are accumulated in float64 (checked shifted
    block sums with a two-pass fallback for contiguous input, lane-wise Welford over
    the channels of channels-last and (N, C) input) and merged by Chan's formula, and
    the mean is subtracted as a float32 hi/lo pair, so float32 data far from zero
    (mean 1e4, std 1e-2) normalizes to within 1e-3 of the float64 result.

    References
    ----------
    S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015. arXiv:1502.03167
    """

    #: The communicator of SyncBatchNorm; None: this process's batch alone.
    _comm = None

    def forward(self, x, residual=None):
        update = self.training and self.track_running_stats
        use_running = not self.training or self.track_running_stats
        y, mean, rstd = F.batch_norm(
            x,
            self.running_mean if use_running else None,
            self.running_var if use_running else None,
            self.weight,
            self.bias,
            training=self.training or self.running_mean is None,
            momentum=self._momentum_factor() if update else 0.0,
            eps=self.eps,
            return_stats=True,
            comm=self._comm,
            check_input=self._check_input,
            residual=residual,
            activation=self.activation,
        )
        if update:
            self.num_batches_tracked += 1
        self._saved = {"x": x, "mean": mean, "rstd": rstd,
                       "use_input_stats": self.training or self.running_mean is None,
                       **self._epilogue_saved(y, residual)}
        return y

    def _backward(self, saved, dy):
        return F.batch_norm_backward(dy, saved["x"], saved["mean"], saved["rstd"], self.weight, self.bias,
                                     use_input_stats=saved["use_input_stats"], comm=self._comm,
                                     **self._epilogue_options(saved))


class BatchNorm1d(_BatchNorm):
    __doc__ = _BatchNorm.__doc__ + "\n    Input: (N, C) or (N, C, L).\n"
    _ndims = (2, 3)
    _dims_text = "2D or 3D"


class BatchNorm2d(_BatchNorm):
    __doc__ = _BatchNorm.__doc__ + "\n    Input: (N, C, H, W), contiguous or channels-last.\n"
    _ndims = (4,)
    _dims_text = "4D"


class BatchNorm3d(_BatchNorm):
    __doc__ = _BatchNorm.__doc__ + "\n    Input: (N, C, D, H, W), contiguous or channels-last.\n"
    _ndims = (5,)
    _dims_text = "5D"


class SyncBatchNorm(_BatchNorm):
    r"""BatchNorm over the union of the batches of a group of processes (data-parallel training).

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    with mean and variance per channel over every rank's batch: in training, each
    rank's per-channel float64 (count, mean, M2) goes through one all-gather and every
    rank merges them with Chan's formula in rank order (never sums of squares), so the
    normalization and the running statistics are those of the whole batch, bitwise the
    same on every rank. Ranks may hold different batch sizes, zero included. Backward
    exchanges the per-channel (count, sum dy, sum dy*(x - mean)) once: dx equals a
    single-process BatchNorm's on the concatenated batch, and ``grad_weight`` /
    ``grad_bias`` are the whole batch's sums, equal on every rank (PyTorch's
    SyncBatchNorm leaves them per rank for DDP to average: here they need no averaging).
    In evaluation nothing is exchanged.

    Every rank must call the layer (forward, then backward) the same number of times; a
    bad input on any rank (shape, channel count, dtype; NaN is data, not an error) makes
    every rank raise the same error, and no state changes on any rank. A rank that never
    calls ends in ``TimeoutError`` on the others (MPI: after ``comm.timeout`` seconds).

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps, momentum, affine, track_running_stats, dtype, bias, activation
        As for :class:`BatchNorm2d` (the epilogue's ReLU mask is applied before the
        exchanged backward sums).
    comm : mpi4py communicator or numbanorm.distributed.Communicator, optional
        The process group; default ``MPI.COMM_WORLD`` (needs ``pip install "numbanorm[mpi]"``).
        A sub-communicator syncs within its group. A group of one is BatchNorm.

    Notes
    -----
    Input: (N, C) or (N, C, *spatial) with 1 to 3 spatial dims, as BatchNorm1d/2d/3d take.
    Run with ``mpiexec -n 4 python train.py``. ``SyncBatchNorm.convert`` turns existing
    BatchNorm layers into this one, keeping their state. A pickled layer keeps its state,
    not its communicator: it syncs over ``MPI.COMM_WORLD`` (or ``comm`` set again) after
    unpickling.

    References
    ----------
    S. Ioffe and C. Szegedy, ICML 2015 (arXiv:1502.03167); T. F. Chan, G. H. Golub and
    R. J. LeVeque, "Updating formulae and a pairwise algorithm for computing sample
    variances", 1979.
    """

    _ndims = (2, 3, 4, 5)
    _dims_text = "2D to 5D"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, comm=None,
                 dtype=np.float32, *, bias=True, activation=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias=bias,
                         activation=activation)
        self.comm = comm

    @property
    def comm(self):
        """The :class:`~numbanorm.distributed.Communicator` this layer syncs over."""
        if self._comm is None:  # unpickled: the default group
            self._comm = as_communicator(None)
        return self._comm

    @comm.setter
    def comm(self, comm):
        self._comm = as_communicator(comm)

    def forward(self, x, residual=None):
        self._comm = self.comm  # the group is known before any state is touched
        return super().forward(x, residual)

    def __getstate__(self):
        state = super().__getstate__()
        state["_comm"] = None  # a communicator is a live connection, not state
        return state

    @classmethod
    def convert(cls, layer_or_layers, comm=None):
        """SyncBatchNorm layers in place of the BatchNorm1d/2d/3d ones in ``layer_or_layers``.

        ``layer_or_layers`` is a layer (a new SyncBatchNorm sharing its parameter and
        buffer arrays, mode and hyperparameters is returned; anything else is returned
        as it is), a list or tuple of layers (a new list or tuple), or an object with a
        ``layers`` list, such as the demo's ``Sequential`` (converted in place and returned).
        """
        if isinstance(layer_or_layers, _BatchNorm) and not isinstance(layer_or_layers, SyncBatchNorm):
            old = layer_or_layers
            new = cls.__new__(cls)
            new.__dict__.update(old.__dict__)
            new._saved = None
            new.comm = comm
            return new
        if isinstance(layer_or_layers, (list, tuple)):
            return type(layer_or_layers)(cls.convert(layer, comm) for layer in layer_or_layers)
        if isinstance(getattr(layer_or_layers, "layers", None), list):
            layer_or_layers.layers[:] = [cls.convert(layer, comm) for layer in layer_or_layers.layers]
        return layer_or_layers
