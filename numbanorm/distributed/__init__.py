"""Cross-process statistics for SyncBatchNorm: communicators and the exchange protocol.

A communicator moves Python objects between the processes (ranks) of a group; the
:class:`numbanorm.SyncBatchNorm` layer and ``numbanorm.functional.batch_norm(...,
comm=...)`` hand it a rank's partial results — per-channel float64 (count, mean, M2)
in forward, (count, sum dy, sum dy*(x - mean)) in backward — and merge what comes
back in rank order, so every rank computes the same whole-batch statistics.

``comm``      :class:`Communicator`, the interface, and :class:`LocalCommunicator` (one rank).
``exchange``  the protocol: one collective per pass that carries validity with the data,
              so a bad input on any rank makes every rank raise, and the merges.
``mpi``       :class:`MPICommunicator` over mpi4py (extra ``numbanorm[mpi]``), imported on use.

The torch.distributed communicator lives in :mod:`numbanorm.torch`.
"""

from .comm import Communicator, LocalCommunicator, as_communicator

__all__ = ["Communicator", "LocalCommunicator", "as_communicator"]
