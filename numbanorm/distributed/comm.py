"""The communicator interface SyncBatchNorm exchanges its partial results through."""

__all__ = ["Communicator", "LocalCommunicator", "as_communicator"]


class Communicator:
    """A group of processes (ranks) that can all-gather Python objects.

    Subclasses implement :attr:`rank`, :attr:`size` and :meth:`allgather`. Every rank of
    the group must make the same sequence of calls; an implementation should raise
    ``TimeoutError`` rather than wait forever when a rank never arrives, where its
    engine allows (:class:`numbanorm.distributed.mpi.MPICommunicator` does).
    """

    #: This process's index in the group, 0 <= rank < size.
    rank = 0
    #: Number of processes in the group.
    size = 1

    def allgather(self, obj):
        """Every rank's ``obj``, as a list in rank order, on every rank (one collective)."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class LocalCommunicator(Communicator):
    """A group of one: :meth:`allgather` returns ``[obj]``. SyncBatchNorm over it is BatchNorm."""

    def allgather(self, obj):
        return [obj]


def as_communicator(comm):
    """``comm`` as a :class:`Communicator`: itself, or an mpi4py communicator wrapped in
    :class:`~numbanorm.distributed.mpi.MPICommunicator`; ``None`` means ``MPI.COMM_WORLD``."""
    if isinstance(comm, Communicator):
        return comm
    from .mpi import MPICommunicator

    return MPICommunicator(comm)
