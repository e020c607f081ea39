"""SyncBatchNorm with the fused epilogue: ReLU's mask is applied before the exchanged sums, so
ranks holding parts of a batch (uneven, empty) get the whole batch's BatchNorm + add + ReLU."""

import numpy as np
import pytest
from helpers import assert_close, channels_last
from test_sync_local import ThreadRanks

import numbanorm as nn
from numbanorm import functional as F
from numbanorm.distributed import LocalCommunicator


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_thread_ranks_match_the_whole_batch_with_the_epilogue(rng, layout):
    x = rng.normal(1.0, 2.0, (9, 4, 3, 2))
    r = rng.normal(size=x.shape)
    dy = rng.normal(size=x.shape)
    if layout == "channels_last":
        x, r, dy = channels_last(x), channels_last(r), channels_last(dy)
    splits = [0, 4, 4, 9]  # rank 1 holds no samples
    whole = nn.BatchNorm2d(4, dtype=np.float64, activation="relu")
    y_ref = whole(x, r)
    dx_ref = whole.backward(dy)

    def step(rank, comm):
        layer = nn.SyncBatchNorm(4, comm=comm, dtype=np.float64, activation="relu")
        part = slice(splits[rank], splits[rank + 1])
        y = layer(x[part], r[part])
        dx = layer.backward(dy[part])
        return y, dx, layer.grad_residual, layer.grad_weight, layer.grad_bias

    out = ThreadRanks(3).run(step)
    for rank, result in enumerate(out):
        assert not isinstance(result, Exception), result
        y, dx, dres, gw, gb = result
        part = slice(splits[rank], splits[rank + 1])
        assert_close(y, y_ref[part], 1e-12, name="y")
        assert_close(dx, dx_ref[part], 1e-12, name="dx")
        np.testing.assert_array_equal(dres, whole.grad_residual[part])
        assert_close(gw, whole.grad_weight, 1e-12, name="grad_weight")
        assert_close(gb, whole.grad_bias, 1e-12, name="grad_bias")


def test_functional_with_a_communicator_and_the_epilogue(rng):
    x = rng.normal(size=(5, 3, 4)).astype(np.float32)
    r = rng.normal(size=x.shape)
    dy = rng.normal(size=x.shape).astype(np.float32)
    w, b = rng.normal(1.0, 0.3, 3).astype(np.float32), rng.normal(0.0, 0.3, 3).astype(np.float32)
    comm = LocalCommunicator()
    y, mean, rstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True, residual=r,
                                 activation="relu", comm=comm)
    y0, mean0, rstd0 = F.batch_norm(x, None, None, w, b, training=True, return_stats=True, residual=r,
                                    activation="relu")
    np.testing.assert_array_equal(y, y0)
    got = F.batch_norm_backward(dy, x, mean, rstd, w, b, comm=comm, y=y, activation="relu", residual=True)
    expected = F.batch_norm_backward(dy, x, mean0, rstd0, w, b, y=y0, activation="relu", residual=True)
    for name, g, e in zip(("dx", "dweight", "dbias", "dresidual"), got, expected, strict=True):
        assert_close(g, e, 1e-6, name=name)


def test_bad_residual_on_one_rank_raises_everywhere_and_changes_nothing(rng):
    layers = [nn.SyncBatchNorm(3, comm=LocalCommunicator(), activation="relu") for _ in range(3)]
    snaps = [(la.running_mean.copy(), int(la.num_batches_tracked)) for la in layers]

    def call(rank, comm):
        layers[rank].comm = comm
        x = np.ones((2, 3, 4), np.float32)
        r = np.ones((2, 3, 5 if rank == 2 else 4), np.float32)
        return layers[rank](x, r)

    errors = ThreadRanks(3).run(call)
    assert all(isinstance(e, ValueError) for e in errors), errors
    assert len({str(e) for e in errors}) == 1 and "residual must have the shape" in str(errors[0])
    for layer, (rm, nbt) in zip(layers, snaps, strict=True):
        assert np.array_equal(layer.running_mean, rm) and int(layer.num_batches_tracked) == nbt
