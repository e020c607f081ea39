"""SyncBatchNorm over MPI: ``mpiexec -n 2`` and ``-n 3`` (the mpich wheel's) run
mpi_worker.py, and every rank's results must equal a single-process BatchNorm on the
concatenated batch. Skipped when mpi4py or mpiexec is missing (extra ``numbanorm[mpi]``).
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_close
from scenarios import SCENARIOS, STEPS, batch, params, shard

import numbanorm as nn

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}

pytest.importorskip("mpi4py")


def _mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def run_ranks(tmp_path, size, mode, timeout=240):
    """Start ``size`` ranks of mpi_worker.py; return each rank's saved results."""
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([mpiexec, "-n", str(size), sys.executable, os.path.join(HERE, "mpi_worker.py"),
                           str(tmp_path), mode], env=env, capture_output=True, text=True, timeout=timeout)
    results = []
    for rank in range(size):
        path = tmp_path / f"rank{rank}.npz"
        assert path.exists(), (f"rank {rank} saved nothing (exit {proc.returncode}): "
                               f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
        data = dict(np.load(path, allow_pickle=False))
        assert "traceback" not in data, f"rank {rank} failed:\n{data['traceback']}"
        results.append(data)
    return results


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def ranks(request, tmp_path_factory):
    size = request.param
    return size, run_ranks(tmp_path_factory.mktemp(f"mpi{size}"), size, "scenarios")


def _reference(name):
    """Every step's (y, dx, grad_weight, grad_bias), the final running stats and the eval
    output of a single-process BatchNorm on the whole batch."""
    sample, dtype, *_ = SCENARIOS[name]
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d, 4: nn.BatchNorm3d}[len(sample)]
    layer = cls(sample[0], momentum=SCENARIOS[name][6], dtype=dtype)
    layer.weight[...], layer.bias[...] = params(name)
    steps = []
    for step in range(STEPS):
        x, dy = batch(name, step)
        y = layer(x)
        dx = layer.backward(dy)
        steps.append((y, dx, layer.grad_weight.copy(), layer.grad_bias.copy()))
    layer.eval()
    return steps, layer.running_mean.copy(), layer.running_var.copy(), layer(batch(name, STEPS)[0])


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_rank_equals_batchnorm_on_the_whole_batch(ranks, name):
    size, results = ranks
    dtype = np.dtype(SCENARIOS[name][1])
    tol = TOL[dtype]
    steps, rm, rv, eval_y = _reference(name)
    for rank, got in enumerate(results):
        for step, (y, dx, gw, gb) in enumerate(steps):
            key = f"{name}/{step}"
            assert got[f"{key}/y"].dtype == dtype
            assert_close(got[f"{key}/y"], shard(name, y, size, rank), tol, name=f"rank {rank} {key} y")
            assert_close(got[f"{key}/dx"], shard(name, dx, size, rank), tol, name=f"rank {rank} {key} dx")
            assert_close(got[f"{key}/grad_weight"], gw, tol, name=f"rank {rank} {key} grad_weight")
            assert_close(got[f"{key}/grad_bias"], gb, tol, name=f"rank {rank} {key} grad_bias")
            if got[f"{key}/y"].size:
                # the output keeps the input's memory layout (channels-last stays channels-last)
                assert np.array_equal(np.argsort(got[f"{key}/y_strides"]), np.argsort(got[f"{key}/x_strides"]))
        assert_close(got[f"{name}/running_mean"], rm, tol, name=f"rank {rank} running_mean")
        assert_close(got[f"{name}/running_var"], rv, tol, name=f"rank {rank} running_var")
        assert int(got[f"{name}/num_batches_tracked"]) == STEPS
        assert_close(got[f"{name}/eval_y"], shard(name, eval_y, size, rank), tol, name=f"rank {rank} eval y")
    first = results[0]
    for got in results[1:]:  # merged in rank order on every rank: bitwise the same
        for key in ("running_mean", "running_var", f"{STEPS - 1}/grad_weight", f"{STEPS - 1}/grad_bias"):
            assert np.array_equal(got[f"{name}/{key}"], first[f"{name}/{key}"]), key


@pytest.mark.parametrize("kind,expected", [("channels", "ValueError"), ("dtype", "TypeError"), ("ndim", "ValueError"),
                                           ("dy", "ValueError")])
def test_bad_input_on_one_rank_raises_on_every_rank(ranks, kind, expected):
    size, results = ranks
    errors = {str(got[f"bad/{kind}/error"]) for got in results}
    assert len(errors) == 1, errors  # the same error everywhere
    error = errors.pop()
    assert error.startswith(expected + ":") and f"bad input on rank {size - 1} of {size}" in error, error
    assert all(bool(got["bad/unchanged"]) for got in results)


def test_a_rank_that_never_calls_ends_in_timeout(tmp_path):
    results = run_ranks(tmp_path, 2, "timeout", timeout=120)
    assert str(results[0]["error"]).startswith("TimeoutError:") and "did not take part" in str(results[0]["error"])
    assert not bool(results[1]["called"])
