"""SyncBatchNorm without MPI: a group of one is BatchNorm, and the exchange protocol on
in-process "ranks" (threads) merges and fails as it does across processes."""

import pickle
import sys
import threading

import numpy as np
import pytest
from helpers import assert_close, channels_last

import numbanorm as nn
from numbanorm import functional as F
from numbanorm.distributed import Communicator, LocalCommunicator


class ThreadRanks:
    """``size`` communicators for threads of one process: allgather meets at a barrier."""

    def __init__(self, size):
        self.size = size
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=30)

    def comm(self, rank):
        group = self

        class ThreadComm(Communicator):
            def allgather(self, obj):
                group.slots[rank] = obj
                group.barrier.wait()
                gathered = list(group.slots)
                group.barrier.wait()
                return gathered

        c = ThreadComm()
        c.rank, c.size = rank, self.size
        return c

    def run(self, fn):
        """fn(rank, comm) on every rank in its own thread; returns results (or exceptions) by rank."""
        out = [None] * self.size

        def target(rank):
            try:
                out[rank] = fn(rank, self.comm(rank))
            except Exception as exc:  # compared by the test
                out[rank] = exc

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", [((6, 3), "contiguous"), ((4, 3, 5), "contiguous"),
                                          ((3, 4, 5, 2), "channels_last")])
def test_group_of_one_is_batchnorm_bitwise(rng, dtype, shape, layout):
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    if layout == "channels_last":
        x, dy = channels_last(x), channels_last(dy)
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]
    bn = cls(shape[1], dtype=dtype)
    sync = nn.SyncBatchNorm(shape[1], comm=LocalCommunicator(), dtype=dtype)
    for layer in (bn, sync):
        layer.weight[...] = np.linspace(0.5, 1.5, shape[1])
    for _ in range(2):
        assert np.array_equal(sync(x), bn(x))
        assert np.array_equal(sync.backward(dy), bn.backward(dy))
        assert np.array_equal(sync.grad_weight, bn.grad_weight) and np.array_equal(sync.grad_bias, bn.grad_bias)
    assert np.array_equal(sync.running_var, bn.running_var) and sync.num_batches_tracked == 2
    assert np.array_equal(sync.eval()(x), bn.eval()(x))


def test_thread_ranks_match_the_whole_batch_and_agree_bitwise(rng):
    x = rng.normal(3.0, 0.5, (9, 4, 3))
    dy = rng.normal(size=x.shape)
    splits = [0, 4, 5, 9]  # rank 0 holds 4 samples, rank 1 one, rank 2 four
    ref = nn.BatchNorm1d(4, dtype=np.float64)
    y_ref, dx_ref = ref(x), ref.backward(dy)

    def step(rank, comm):
        layer = nn.SyncBatchNorm(4, comm=comm, dtype=np.float64)
        part = slice(splits[rank], splits[rank + 1])
        return layer(x[part]), layer.backward(dy[part]), layer.grad_weight, layer.running_var

    out = ThreadRanks(3).run(step)
    for rank, (y, dx, gw, rv) in enumerate(out):
        part = slice(splits[rank], splits[rank + 1])
        assert_close(y, y_ref[part], 1e-12, name="y")
        assert_close(dx, dx_ref[part], 1e-12, name="dx")
        assert_close(gw, ref.grad_weight, 1e-12, name="grad_weight")
        assert np.array_equal(rv, out[0][3]) and np.array_equal(gw, out[0][2])
        assert_close(rv, ref.running_var, 1e-12, name="running_var")


def test_functional_rank_with_no_samples_and_too_few_values(rng):
    x = rng.normal(size=(1, 2, 1))

    def call(rank, comm):
        part = x if rank == 0 else x[:0]
        return F.batch_norm(part, np.zeros(2), np.ones(2), training=True, comm=comm)

    errors = ThreadRanks(2).run(call)
    # one value per channel in the whole batch: every rank raises, even the empty one
    assert all(isinstance(e, ValueError) and "Expected more than 1 value per channel" in str(e) for e in errors)


def test_bad_input_on_one_rank_raises_everywhere_and_changes_nothing(rng):
    layers = [nn.SyncBatchNorm(3, comm=LocalCommunicator()) for _ in range(3)]
    snaps = [(la.running_mean.copy(), int(la.num_batches_tracked)) for la in layers]

    def call(rank, comm):
        layers[rank].comm = comm
        x = np.ones((2, 3, 4), np.float32) if rank != 1 else np.ones((2, 5, 4), np.float32)
        return layers[rank](x)

    errors = ThreadRanks(3).run(call)
    messages = {str(e) for e in errors}
    assert all(isinstance(e, ValueError) for e in errors) and len(messages) == 1
    assert "bad input on rank 1 of 3" in messages.pop()
    for layer, (rm, nbt) in zip(layers, snaps, strict=True):
        assert np.array_equal(layer.running_mean, rm) and int(layer.num_batches_tracked) == nbt


def test_eval_exchanges_nothing(rng):
    class Refusing(Communicator):
        def allgather(self, obj):
            raise AssertionError("no exchange in evaluation")

    layer = nn.SyncBatchNorm(3, comm=Refusing()).eval()
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    layer(x)
    layer.backward(np.ones_like(x))


def test_convert_keeps_state_and_shares_arrays(rng):
    bn = nn.BatchNorm2d(3)
    bn(rng.normal(size=(2, 3, 2, 2)).astype(np.float32))
    bn.weight[...] = [1.0, 2.0, 3.0]
    comm = LocalCommunicator()
    sync = nn.SyncBatchNorm.convert(bn, comm)
    assert isinstance(sync, nn.SyncBatchNorm) and sync.comm is comm
    assert sync.weight is bn.weight and sync.running_mean is bn.running_mean and sync.num_batches_tracked == 1
    assert sync.state_dict().keys() == bn.state_dict().keys()
    converted = nn.SyncBatchNorm.convert([bn, nn.LayerNorm(3)], comm)
    assert isinstance(converted[0], nn.SyncBatchNorm) and isinstance(converted[1], nn.LayerNorm)


def test_pickle_keeps_state_not_the_communicator(rng):
    layer = nn.SyncBatchNorm(3, comm=LocalCommunicator())
    layer(rng.normal(size=(4, 3)).astype(np.float32))
    clone = pickle.loads(pickle.dumps(layer))
    assert clone._comm is None and np.array_equal(clone.running_mean, layer.running_mean)


def test_without_mpi4py_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"numbanorm\[mpi\]"):
        nn.SyncBatchNorm(3)
