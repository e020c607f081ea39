"""A :class:`~numbanorm.distributed.comm.Communicator` over MPI, through mpi4py.

Install with ``pip install "numbanorm[mpi]"``: mpi4py and PyPI's ``mpich`` wheel, which
brings ``mpiexec``, so no system MPI is needed. Run with ``mpiexec -n 4 python train.py``.
"""

import pickle
import time

import numpy as np

from .comm import Communicator

__all__ = ["MPICommunicator", "DEFAULT_TIMEOUT"]

#: Seconds a collective waits for every rank before it raises TimeoutError.
DEFAULT_TIMEOUT = 600.0


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("SyncBatchNorm over MPI needs mpi4py and an MPI library: "
                          'pip install "numbanorm[mpi]" (mpi4py and the mpich wheel, which brings mpiexec)') from exc
    return MPI


class MPICommunicator(Communicator):
    """An mpi4py communicator (``MPI.COMM_WORLD`` by default; a sub-communicator is a
    process group).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
    timeout : float, seconds
        How long a collective waits for the other ranks before raising ``TimeoutError``
        (a rank that never calls the layer is a bug of the program, but it should end in
        an error, not a silent hang). The collectives are nonblocking and polled, so the
        wait can end; after a timeout the communicator is unusable (MPI cannot cancel a
        started collective) and the program should exit.
    poll : float, seconds
        Sleep between polls of a pending collective (keeps waiting ranks off the cores).
    """

    def __init__(self, comm=None, timeout=DEFAULT_TIMEOUT, poll=1e-4):
        MPI = _mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.timeout = float(timeout)
        self.poll = float(poll)

    @property
    def rank(self):
        return self.comm.Get_rank()

    @property
    def size(self):
        return self.comm.Get_size()

    def _wait(self, request, what):
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {self.rank}: {what} did not complete within {self.timeout:g} s: "
                                   "a rank of the communicator did not take part (did every rank call the layer?)")
            time.sleep(self.poll)

    def allgather(self, obj):
        """Pickled ``obj`` of every rank: one nonblocking all-gather of the sizes, then one of
        the bytes (``Iallgatherv``), each polled against :attr:`timeout`."""
        MPI = self._MPI
        data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
        sizes = np.empty(self.size, np.int64)
        self._wait(self.comm.Iallgather(np.array([data.size], np.int64), [sizes, MPI.INT64_T]),
                   "the all-gather of payload sizes")
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        buf = np.empty(int(sizes.sum()), np.uint8)
        self._wait(self.comm.Iallgatherv([data, MPI.BYTE], [buf, (sizes, offsets), MPI.BYTE]),
                   "the all-gather of payloads")
        return [pickle.loads(buf[o:o + n].tobytes()) for o, n in zip(offsets, sizes, strict=True)]
