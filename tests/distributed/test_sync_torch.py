"""numbanorm.torch.SyncBatchNorm on CPU tensors over a 2-process gloo group: every rank's
output, dx and running statistics equal single-process BatchNorm on the concatenated
batch, and the ranks' own weight/bias gradients add up to its gradients (PyTorch's
convention: DistributedDataParallel averages them)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_close
from scenarios import SCENARIOS, STEPS, shard
from test_sync_mpi import TOL, _reference

pytest.importorskip("torch")
HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gloo")
    port = _free_port()
    procs = []
    for rank in range(SIZE):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "gloo_worker.py"), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a gloo rank hung")
    results = []
    for rank in range(SIZE):
        path = out / f"rank{rank}.npz"
        assert path.exists(), f"rank {rank} saved nothing: {logs[rank][-3000:]}"
        data = dict(np.load(path))
        assert "traceback" not in data, f"rank {rank} failed:\n{data['traceback']}"
        results.append(data)
    return results


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ranks_equal_batchnorm_on_the_whole_batch(ranks, name):
    tol = TOL[np.dtype(SCENARIOS[name][1])]
    steps, rm, rv, _ = _reference(name)
    for step, (y, dx, gw, gb) in enumerate(steps):
        key = f"{name}/{step}"
        for rank, got in enumerate(ranks):
            assert_close(got[f"{key}/y"], shard(name, y, SIZE, rank), tol, name=f"rank {rank} {key} y")
            assert_close(got[f"{key}/dx"], shard(name, dx, SIZE, rank), tol, name=f"rank {rank} {key} dx")
            if SCENARIOS[name][2] == "channels_last" and got[f"{key}/y"].size:
                assert bool(got[f"{key}/channels_last"]), "channels_last output expected"
        assert_close(sum(got[f"{key}/grad_weight"] for got in ranks), gw, tol, name=f"{key} sum of grad_weight")
        assert_close(sum(got[f"{key}/grad_bias"] for got in ranks), gb, tol, name=f"{key} sum of grad_bias")
    for rank, got in enumerate(ranks):
        assert_close(got[f"{name}/running_mean"], rm, tol, name=f"rank {rank} running_mean")
        assert_close(got[f"{name}/running_var"], rv, tol, name=f"rank {rank} running_var")
        assert int(got[f"{name}/num_batches_tracked"]) == STEPS


def test_bad_input_on_one_rank_raises_on_every_rank(ranks):
    errors = {str(got["bad/error"]) for got in ranks}
    assert len(errors) == 1, errors
    error = errors.pop()
    assert f"bad input on rank {SIZE - 1} of {SIZE}" in error and "must have shape (4,)" in error, error
    assert all(bool(got["bad/unchanged"]) for got in ranks)
