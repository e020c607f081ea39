"""SyncBatchNorm for PyTorch on CPUs: numbanorm's exchange over ``torch.distributed`` (gloo).

PyTorch's own SyncBatchNorm refuses CPU tensors ("expected input tensor to be on GPU or
XPU"). :class:`numbanorm.torch.SyncBatchNorm` runs numbanorm's SyncBatchNorm
(:func:`numbanorm.functional.batch_norm` with ``comm=``) over a
:class:`TorchCommunicator`: one ``all_gather_object`` of every rank's per-channel float64
(count, mean, M2) in forward, one of (count, sum dy, sum dy*(x - mean)) in backward,
merged in rank order on every rank. A bad input on one rank makes every rank raise; a
rank that never calls ends in the process group's timeout error.
"""

import torch
import torch.distributed as dist

from .. import functional as F
from ..distributed import Communicator
from . import _eager, _ops

__all__ = ["TorchCommunicator", "sync_batch_norm"]


class TorchCommunicator(Communicator):
    """A ``torch.distributed`` process group (the default group when ``group`` is None) as a
    :class:`numbanorm.distributed.Communicator`; collectives honour the group's timeout."""

    def __init__(self, group=None):
        self.group = group

    @property
    def rank(self):
        return dist.get_rank(self.group)

    @property
    def size(self):
        return dist.get_world_size(self.group)

    def allgather(self, obj):
        gathered = [None] * self.size
        dist.all_gather_object(gathered, obj, group=self.group)
        return gathered


class _SyncBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm over the union of the group's batches (eager only)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, comm, check):
        xd, layout = _ops._dense(x)
        y, mean, rstd = _ops._call(F.batch_norm, _ops._np(xd), _ops._np(running_mean), _ops._np(running_var),
                                   _ops._np(weight), _ops._np(bias), True, momentum, eps, return_stats=True,
                                   comm=comm, check_input=check)
        _eager._bump(running_mean, running_var)
        ctx.save_for_backward(xd, weight, bias)
        ctx.stats = mean, rstd
        ctx.comm = comm
        return _ops._out(y, xd, layout)

    @staticmethod
    @_eager._once_differentiable("sync_batch_norm_backward")
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        layout = _ops.channel_layout(x) or "cf"
        dx, dw, db = _ops._call(F.batch_norm_backward, _ops._np(dy), _ops._np(x), *ctx.stats, _ops._np(weight),
                                _ops._np(bias), True, comm=ctx.comm, local_param_grads=True)
        return (_ops._out(dx, x, layout), _ops._grad(dw, weight), _ops._grad(db, bias),
                None, None, None, None, None, None)


@torch.compiler.disable
def sync_batch_norm(input, running_mean, running_var, weight, bias, momentum, eps, comm, check_input=None):
    """Training-mode BatchNorm of a CPU float32/float64 tensor over ``comm``'s group.

    dx is the whole batch's; ``weight.grad``/``bias.grad`` are this rank's own sums
    (PyTorch's convention: DistributedDataParallel averages them). ``check_input`` runs on
    the input inside the exchange, so that its errors reach every rank.
    """
    return _SyncBatchNorm.apply(input, weight, bias, running_mean, running_var, float(momentum), float(eps), comm,
                                check_input)
