"""The exchange protocol of SyncBatchNorm: validity travels with the data.

A rank validates its input and computes its partial results inside an
:class:`Exchange` block; on leaving the block, one all-gather carries either the
results or the rank's error to every rank. If any rank failed, every rank raises the
same exception (the failing rank's type and message, naming the rank) and nothing has
changed anywhere: no rank waits in a collective that another rank will never join.

Merges run in rank order on every rank, so the merged statistics are bitwise the same
everywhere and do not depend on how an MPI library orders a reduction: Chan's formula
for (count, mean, M2) — never sums and sums of squares — and plain float64 sums for the
backward's gradient sums. An all-gather rather than an all-reduce also lets a rank
whose input was unusable (no channel count to size a buffer with) still take part.
"""

import builtins

import numpy as np

from ..kernels.cpu.moments import merge

__all__ = ["Exchange", "merge_moments", "sum_parts"]


def _exception_type(name):
    cls = getattr(builtins, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, Exception) else RuntimeError


class Exchange:
    """``with Exchange(comm, what) as ex: ...; ex.share(payload)``, then ``ex.parts``.

    ``parts`` is every rank's payload in rank order. An exception in the block (on this
    rank) or on any other rank makes every rank raise on leaving the block.
    """

    __slots__ = ("comm", "what", "_payload", "parts")

    def __init__(self, comm, what):
        self.comm = comm
        self.what = what
        self._payload = None
        self.parts = None

    def share(self, payload):
        """What this rank contributes (picklable: NumPy arrays and floats)."""
        self._payload = payload

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        if exc is not None and not isinstance(exc, Exception):
            return False  # KeyboardInterrupt and the like: leave at once
        error = None if exc is None else (etype.__name__, str(exc))
        gathered = self.comm.allgather((error, None if exc is not None else self._payload))
        failed = [(rank, err) for rank, (err, _) in enumerate(gathered) if err is not None]
        if failed:
            rank, (name, message) = failed[0]
            others = f" (and on ranks {[r for r, _ in failed[1:]]})" if len(failed) > 1 else ""
            raise _exception_type(name)(f"{self.what}: bad input on rank {rank} of {len(gathered)}{others}: "
                                        f"{message}") from exc
        self.parts = [payload for _, payload in gathered]
        return False


def merge_moments(parts, what):
    """Chan-merge every rank's float64 ``(count, mean (C,), M2 (C,))`` in rank order.

    Raises ValueError on every rank alike when the ranks disagree on the channel count.
    """
    sizes = {np.asarray(mean).size for _, mean, _ in parts}
    if len(sizes) != 1:
        raise ValueError(f"{what}: the ranks have different channel counts {[np.asarray(m).size for _, m, _ in parts]}")
    counts = np.array([[float(count) for count, _, _ in parts]])
    means = np.stack([np.asarray(mean, np.float64) for _, mean, _ in parts])[None]
    m2s = np.stack([np.asarray(m2, np.float64) for _, _, m2 in parts])[None]
    count, mean, m2 = merge(counts, means, m2s)
    return float(count[0]), mean[0], m2[0]


def sum_parts(parts, what):
    """Sum every rank's tuple of float64 arrays (and counts) element-wise, in rank order."""
    sizes = {tuple(np.asarray(a).size for a in part) for part in parts}
    if len(sizes) != 1:
        raise ValueError(f"{what}: the ranks sent sums of different sizes {sorted(sizes)}")
    total = [np.array(a, dtype=np.float64, copy=True) for a in parts[0]]
    for part in parts[1:]:
        for acc, a in zip(total, part, strict=True):
            acc += a
    return total
