"""``torch.nn`` normalization modules on numbanorm's kernels.

Each class subclasses the matching ``torch.nn`` module and replaces only the method that
calls the kernel (``forward``; ``_apply_instance_norm`` for InstanceNorm): constructor,
parameters, buffers, ``num_batches_tracked``, ``state_dict``, ``repr``, ``momentum=None``
(cumulative average), ``track_running_stats`` and train/eval are PyTorch's own.

Differences from PyTorch, on purpose:

- A bad input raises before anything changes: PyTorch bumps ``num_batches_tracked``
  before its kernel rejects a batch, these modules bump it after the kernel succeeded
  (the value after a good batch is the same).
- numbanorm's input errors are :class:`numbanorm.torch.InputError`, a ``RuntimeError``
  (like PyTorch's kernel checks) that is also a ``ValueError``.
- An input of the other float dtype than the parameters (float64 input, float32 module)
  is accepted, as numbanorm accepts it: the input's dtype sets the output's, and running
  statistics are updated in their own dtype. PyTorch raises there.
- ``momentum`` must lie in [0, 1] (numbanorm's check); PyTorch takes any number.
- Inputs numbanorm does not run (CUDA, float16/bfloat16, sparse) run the stock method:
  exactly PyTorch's behaviour, with one warning.
"""

import torch

from . import functional as NF
from .epilogue import channel_epilogue, check_activation, skip_norm

__all__ = [
    "NumbanormModule",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    "SyncBatchNorm",
]


class NumbanormModule:
    """Base of every numbanorm module: the stock class it replaces and the methods it overrides.

    ``_numbanorm_origin`` is the class :func:`numbanorm.torch.revert` restores;
    ``_numbanorm_replaces`` the methods this class overrides, which a third-party
    subclass must not override itself for :func:`numbanorm.torch.convert` to swap it.
    """

    _numbanorm_origin = None
    _numbanorm_replaces = ("forward",)
    #: The fused epilogue's activation (None or "relu"); converted stock modules have none.
    activation = None

    def _init_activation(self, activation):
        self.activation = check_activation(activation)

    def extra_repr(self):
        text = super().extra_repr()
        return text if self.activation is None else f"{text}, activation={self.activation!r}"

    def _epilogue_unsupported(self, input, residual):
        reason = NF.unsupported_reason(input, residual, *(t for t in (getattr(self, "weight", None),
                                                                       getattr(self, "bias", None))))
        if reason is not None:
            raise TypeError(f"{type(self).__name__}: the fused epilogue (activation/residual) runs on CPU "
                            f"float32/float64 tensors, got {reason}")


class _BatchNorm(NumbanormModule):
    def __init__(self, *args, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_activation(activation)

    def _factor(self):
        """PyTorch's running-average weight of this step (momentum, or 1/steps for momentum=None)
        and whether num_batches_tracked is bumped (after the kernel accepted the batch)."""
        factor = 0.0 if self.momentum is None else self.momentum
        bump = self.training and self.track_running_stats and self.num_batches_tracked is not None
        if bump and self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked + 1)  # cumulative moving average
        return factor, bump

    def forward(self, input, residual=None):
        """``activation(norm(input) + residual)`` (the fused epilogue) with ``activation`` or a
        residual, else PyTorch's BatchNorm forward."""
        self._check_input_dim(input)
        if residual is not None or self.activation is not None:
            return self._epilogue(input, residual)
        reason = NF.unsupported_reason(input, self.weight, self.bias, self.running_mean, self.running_var)
        if reason is not None:
            NF.warn_fallback(type(self).__name__, reason)
            return super().forward(input)
        # PyTorch's rules (torch.nn.modules.batchnorm._BatchNorm.forward), except that
        # num_batches_tracked is bumped after the kernel accepted the batch.
        factor, bump = self._factor()
        if self.training:
            bn_training = True
        else:
            bn_training = self.running_mean is None and self.running_var is None
        use_running = not self.training or self.track_running_stats
        y = NF.batch_norm(input, self.running_mean if use_running else None,
                          self.running_var if use_running else None, self.weight, self.bias, bn_training, factor,
                          self.eps)
        if bump:
            self.num_batches_tracked.add_(1)
        return y

    def _epilogue(self, input, residual):
        self._epilogue_unsupported(input, residual)
        factor, bump = self._factor()
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        y = channel_epilogue("batch_norm", input, residual, self.weight, self.bias, self.activation,
                             running_mean=self.running_mean if use_running else None,
                             running_var=self.running_var if use_running else None, flag=bn_training,
                             momentum=factor, eps=self.eps, use_input_stats=bn_training)
        if bump:
            self.num_batches_tracked.add_(1)
        return y


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` on numbanorm's kernels ((N, C) or (N, C, L) input)."""

    _numbanorm_origin = torch.nn.BatchNorm1d


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` on numbanorm's kernels (contiguous and channels_last run without a copy)."""

    _numbanorm_origin = torch.nn.BatchNorm2d


class BatchNorm3d(_BatchNorm, torch.nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` on numbanorm's kernels."""

    _numbanorm_origin = torch.nn.BatchNorm3d


class _InstanceNorm(NumbanormModule):
    _numbanorm_replaces = ("forward", "_apply_instance_norm")

    def __init__(self, *args, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_activation(activation)

    def forward(self, input, residual=None):
        """``activation(norm(input) + residual)`` (the fused epilogue) with ``activation`` or a
        residual, else PyTorch's InstanceNorm forward."""
        if residual is None and self.activation is None:
            return super().forward(input)
        self._epilogue_unsupported(input, residual)
        if input.dim() == self._get_no_batch_dim():  # unbatched
            return self.forward(input.unsqueeze(0), None if residual is None else residual.unsqueeze(0)).squeeze(0)
        use_input_stats = self.training or not self.track_running_stats
        return channel_epilogue("instance_norm", input, residual, self.weight, self.bias, self.activation,
                                running_mean=self.running_mean, running_var=self.running_var, flag=use_input_stats,
                                momentum=self.momentum if self.momentum is not None else 0.0, eps=self.eps,
                                use_input_stats=use_input_stats)

    def _apply_instance_norm(self, input):
        reason = NF.unsupported_reason(input, self.weight, self.bias, self.running_mean, self.running_var)
        if reason is not None:
            NF.warn_fallback(type(self).__name__, reason)
            return super()._apply_instance_norm(input)
        return NF.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training or not self.track_running_stats,
                                self.momentum if self.momentum is not None else 0.0, self.eps)


class InstanceNorm1d(_InstanceNorm, torch.nn.InstanceNorm1d):
    """:class:`torch.nn.InstanceNorm1d` on numbanorm's kernels."""

    _numbanorm_origin = torch.nn.InstanceNorm1d


class InstanceNorm2d(_InstanceNorm, torch.nn.InstanceNorm2d):
    """:class:`torch.nn.InstanceNorm2d` on numbanorm's kernels."""

    _numbanorm_origin = torch.nn.InstanceNorm2d


class InstanceNorm3d(_InstanceNorm, torch.nn.InstanceNorm3d):
    """:class:`torch.nn.InstanceNorm3d` on numbanorm's kernels."""

    _numbanorm_origin = torch.nn.InstanceNorm3d


class LayerNorm(NumbanormModule, torch.nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` on numbanorm's kernels."""

    _numbanorm_origin = torch.nn.LayerNorm

    def forward(self, input, residual=None):
        """LayerNorm; with a residual, ``(norm(input + residual), input + residual)`` in one pass."""
        if residual is not None:
            self._epilogue_unsupported(input, residual)
            return skip_norm(True, input, residual, self.normalized_shape, self.weight, self.bias, self.eps)
        return NF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(NumbanormModule, torch.nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` on numbanorm's kernels (contiguous and channels_last run without a copy)."""

    _numbanorm_origin = torch.nn.GroupNorm

    def __init__(self, *args, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_activation(activation)

    def forward(self, input, residual=None):
        """``activation(norm(input) + residual)`` (the fused epilogue) with ``activation`` or a
        residual, else PyTorch's GroupNorm forward."""
        if residual is not None or self.activation is not None:
            self._epilogue_unsupported(input, residual)
            return channel_epilogue("group_norm", input, residual, self.weight, self.bias, self.activation,
                                    num_groups=self.num_groups, eps=self.eps)
        return NF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class RMSNorm(NumbanormModule, torch.nn.RMSNorm):
    """:class:`torch.nn.RMSNorm` on numbanorm's kernels."""

    _numbanorm_origin = torch.nn.RMSNorm

    def forward(self, x, residual=None):
        """RMSNorm; with a residual, ``(norm(x + residual), x + residual)`` in one pass."""
        if residual is not None:
            self._epilogue_unsupported(x, residual)
            return skip_norm(False, x, residual, self.normalized_shape, self.weight, None, self.eps)
        return NF.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class SyncBatchNorm(_BatchNorm, torch.nn.SyncBatchNorm):
    """:class:`torch.nn.SyncBatchNorm` that also runs on CPU tensors (gloo), on numbanorm's kernels.

    In training with an initialized ``torch.distributed`` group of more than one rank
    (``process_group``, default the world), the statistics are the whole batch's:
    numbanorm's exchange (:mod:`numbanorm.torch.distributed`) merges every rank's
    per-channel (count, mean, M2) with Chan's formula in rank order, so ranks may hold
    uneven batches, or none; running statistics are identical on every rank. dx is the
    whole batch's; ``weight.grad``/``bias.grad`` are this rank's own sums, as in PyTorch
    (DistributedDataParallel averages them). A bad input on one rank makes every rank
    raise; nothing changes anywhere. Otherwise (evaluation, no group, one rank) it is
    BatchNorm. CUDA tensors run PyTorch's own SyncBatchNorm.
    """

    _numbanorm_origin = torch.nn.SyncBatchNorm

    def __init__(self, *args, activation=None, **kwargs):
        if activation is not None:
            raise ValueError("numbanorm.torch.SyncBatchNorm has no fused epilogue: use activation=None")
        super().__init__(*args, **kwargs)

    def forward(self, input):
        need_sync = (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
                     and torch.distributed.get_world_size(self.process_group) > 1)
        if not need_sync or (isinstance(input, torch.Tensor) and input.device.type not in ("cpu", "meta")):
            return super().forward(input)  # BatchNorm (or PyTorch's SyncBatchNorm for device tensors)
        from .distributed import TorchCommunicator, sync_batch_norm

        def check(_):
            # Inside the exchange: every rank learns of a bad input on any rank.
            self._check_input_dim(input)
            reason = NF.unsupported_reason(input, self.weight, self.bias, self.running_mean, self.running_var)
            if reason is not None:
                raise TypeError(f"numbanorm.torch.SyncBatchNorm runs CPU float32/float64 tensors, got {reason}")

        factor, bump = self._factor()
        use_running = self.track_running_stats
        y = sync_batch_norm(input, self.running_mean if use_running else None,
                            self.running_var if use_running else None, self.weight, self.bias, factor, self.eps,
                            TorchCommunicator(self.process_group), check)
        if bump:
            self.num_batches_tracked.add_(1)
        return y


#: Stock ``torch.nn`` class -> numbanorm class.
MODULES = {cls._numbanorm_origin: cls for cls in (BatchNorm1d, BatchNorm2d, BatchNorm3d, InstanceNorm1d,
                                                  InstanceNorm2d, InstanceNorm3d, LayerNorm, GroupNorm, RMSNorm,
                                                  SyncBatchNorm)}
