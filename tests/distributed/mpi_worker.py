"""One rank of the SyncBatchNorm tests, run as ``mpiexec -n N python mpi_worker.py OUT MODE``.

MODE ``scenarios``: every scenario of scenarios.py (training steps with backward, then an
evaluation forward), then a bad input on the last rank; each rank saves what it got to
``OUT/rank<r>.npz``. MODE ``timeout``: the last rank never calls the layer; the others must
raise TimeoutError. Exits with os._exit so a broken collective cannot hang MPI_Finalize.
"""

import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402
from scenarios import SCENARIOS, STEPS, batch, params, shard  # noqa: E402

import numbanorm as nn  # noqa: E402
from numbanorm.distributed.mpi import MPICommunicator  # noqa: E402


def run_scenarios(comm, out):
    rank, size = comm.rank, comm.size
    for name, (sample, dtype, *_rest) in SCENARIOS.items():
        momentum = SCENARIOS[name][6]
        layer = nn.SyncBatchNorm(sample[0], momentum=momentum, comm=comm, dtype=dtype)
        layer.weight[...], layer.bias[...] = params(name)
        for step in range(STEPS):
            x, dy = batch(name, step)
            xs, dys = shard(name, x, size, rank), shard(name, dy, size, rank)
            y = layer(xs)
            dx = layer.backward(dys)
            out[f"{name}/{step}/y"] = y
            out[f"{name}/{step}/y_strides"] = np.array(y.strides)
            out[f"{name}/{step}/x_strides"] = np.array(xs.strides)
            out[f"{name}/{step}/dx"] = dx
            out[f"{name}/{step}/grad_weight"] = layer.grad_weight
            out[f"{name}/{step}/grad_bias"] = layer.grad_bias
        out[f"{name}/running_mean"] = layer.running_mean
        out[f"{name}/running_var"] = layer.running_var
        out[f"{name}/num_batches_tracked"] = layer.num_batches_tracked
        layer.eval()
        out[f"{name}/eval_y"] = layer(shard(name, batch(name, STEPS)[0], size, rank))

    # A bad input on the last rank: every rank raises, nothing changes anywhere.
    layer = nn.SyncBatchNorm(3, comm=comm)
    good = np.ones((2, 3, 4), np.float32) * (rank + 1)
    before = (layer.running_mean.copy(), layer.running_var.copy(), int(layer.num_batches_tracked))
    for kind, bad in (("channels", np.ones((2, 4, 4), np.float32)), ("dtype", np.ones((2, 3, 4), np.int64)),
                      ("ndim", np.ones((2,), np.float32))):
        try:
            layer(bad if rank == size - 1 else good)
            out[f"bad/{kind}/error"] = np.array("")
        except Exception as exc:  # recorded for the test to compare across ranks
            out[f"bad/{kind}/error"] = np.array(f"{type(exc).__name__}: {exc}")
    after = (layer.running_mean, layer.running_var, int(layer.num_batches_tracked))
    out["bad/unchanged"] = np.array(all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)))
    # A good step afterwards still works (the failed exchanges left the group usable), and a
    # bad dy in backward on one rank makes every rank raise too.
    layer(good)
    try:
        layer.backward(np.ones((2, 3, 5), np.float32) if rank == size - 1 else np.ones((2, 3, 4), np.float32))
        out["bad/dy/error"] = np.array("")
    except Exception as exc:
        out["bad/dy/error"] = np.array(f"{type(exc).__name__}: {exc}")


def run_timeout(comm, out, path):
    layer = nn.SyncBatchNorm(2, comm=comm)
    if comm.rank == comm.size - 1:
        np.savez(path, called=np.array(False))
        # Stay alive past the others' timeout (mpiexec ends every rank once one exits).
        time.sleep(comm.timeout + 30)
        os._exit(0)
    try:
        layer(np.ones((3, 2), np.float32))
        out["error"] = np.array("")
    except TimeoutError as exc:
        out["error"] = np.array(f"TimeoutError: {exc}")


def main():
    out_dir, mode = sys.argv[1], sys.argv[2]
    world = MPI.COMM_WORLD
    out = {}
    status = 0
    path = os.path.join(out_dir, f"rank{world.Get_rank()}.npz")
    try:
        if mode == "scenarios":
            run_scenarios(MPICommunicator(world, timeout=60), out)
        else:
            run_timeout(MPICommunicator(world, timeout=2), out, path)
    except Exception:
        out["traceback"] = np.array(traceback.format_exc())
        status = 1
    np.savez(path, **out)
    sys.stdout.flush()
    if mode == "scenarios" and status == 0:
        world.Barrier()
        MPI.Finalize()
    os._exit(status)


if __name__ == "__main__":
    main()
