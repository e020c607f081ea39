"""Data-parallel training with SyncBatchNorm: ``python -m numbanorm demo --ranks N``.

The demo's CNN is trained on N MPI ranks, each holding a shard of every batch of 64
digits, with its BatchNorm2d layers converted to :class:`numbanorm.SyncBatchNorm`; the
same network is trained in this process on the whole batches. Data parallelism done
right gives the same loss at every step. What each rank does per step:

- forward on its shard (SyncBatchNorm normalizes with the whole batch's statistics);
- the loss gradient scaled by shard size / batch size, so the ranks' gradients add up
  to the whole batch's mean-loss gradient;
- backward (SyncBatchNorm's ``grad_weight``/``grad_bias`` are already whole-batch sums);
- one all-gather of the shard's loss sum and its Linear/Conv gradients, summed in rank
  order, then the same SGD step on every rank.

Run by hand: ``mpiexec -n 2 python -m numbanorm.demo.parallel --out DIR``.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

__all__ = ["train_data_parallel", "run_ranks", "main"]

BATCH = 64
LR = 0.1


def train_data_parallel(comm, x, y, *, epochs, seed=0, batch_size=BATCH, lr=LR):
    """Train the demo CNN data-parallel over ``comm``; return the whole-batch loss of every step.

    Every rank draws the same batch order from ``seed`` and takes its part of each batch
    (``np.array_split``: uneven when the batch does not divide).
    """
    import numbanorm

    from .nets import cross_entropy, sgd_step
    from .train import make_cnn

    net = numbanorm.SyncBatchNorm.convert(make_cnn(batchnorm=True, seed=seed), comm)
    # Linear/Conv layers: their per-shard gradients are summed over the ranks here.
    plain = [layer for layer in net if layer.weight is not None and not isinstance(layer, numbanorm.SyncBatchNorm)]
    rng = np.random.default_rng(seed)
    n = len(x)
    total_steps = epochs * math.ceil(n / batch_size)
    losses = []
    step = 0
    net.train()
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n - 1, batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:
                continue
            mine = np.array_split(idx, comm.size)[comm.rank]
            loss, dlogits = cross_entropy(net(x[mine]), y[mine])
            net.backward(dlogits * np.float32(len(mine) / len(idx)))
            gathered = comm.allgather((loss * len(mine), [(la.grad_weight, la.grad_bias) for la in plain]))
            for k, layer in enumerate(plain):  # sums in rank order: the same on every rank
                layer.grad_weight = sum(part[1][k][0] for part in gathered)
                if layer.bias is not None:
                    layer.grad_bias = sum(part[1][k][1] for part in gathered)
            sgd_step(net, lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps)))
            losses.append(sum(part[0] for part in gathered) / len(idx))
            step += 1
    return losses


def _worker(args):
    """One MPI rank: train and (rank 0) write the loss of every step to ``args.out``."""
    import numbanorm
    from numbanorm.distributed.mpi import MPICommunicator

    from .data import load_digits_split

    numbanorm.config.PARALLEL = False  # the ranks share the cores
    comm = MPICommunicator()
    data = load_digits_split(args.seed)
    start = time.perf_counter()
    losses = train_data_parallel(comm, data.images(data.x_train), data.y_train, epochs=args.epochs, seed=args.seed)
    if comm.rank == 0:
        with open(os.path.join(args.out, "ranks_losses.json"), "w") as f:
            json.dump({"ranks": comm.size, "losses": losses, "seconds": time.perf_counter() - start}, f)
    return 0


def run_ranks(ranks, *, epochs, seed=0, out="numbanorm-demo", plot=True, echo=print):
    """Train on ``ranks`` MPI processes and in this one; print the comparison, draw the figure."""
    import numbanorm
    from numbanorm.distributed import LocalCommunicator

    from .data import load_digits_split

    os.makedirs(out, exist_ok=True)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        import shutil

        mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise RuntimeError('demo --ranks needs mpiexec: pip install "numbanorm[mpi]"')
    echo(f"numbanorm {numbanorm.__version__} data-parallel demo: the CNN with SyncBatchNorm on {ranks} MPI ranks "
         f"(each takes 1/{ranks} of every batch of {BATCH}) vs one process on the whole batches, {epochs} epochs")
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "numbanorm.demo.parallel", "--out", out,
           "--epochs", str(epochs), "--seed", str(seed)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"mpiexec failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    ranks_seconds = time.perf_counter() - start
    with open(os.path.join(out, "ranks_losses.json")) as f:
        parallel = json.load(f)["losses"]
    parallel_mode = numbanorm.config.PARALLEL
    numbanorm.config.PARALLEL = False
    try:
        data = load_digits_split(seed)
        start = time.perf_counter()
        single = train_data_parallel(LocalCommunicator(), data.images(data.x_train), data.y_train, epochs=epochs,
                                     seed=seed)
        single_seconds = time.perf_counter() - start
    finally:
        numbanorm.config.PARALLEL = parallel_mode
    single, parallel = np.array(single), np.array(parallel)
    steps_per_epoch = len(single) // epochs
    echo(f"\n{'epoch':>5}  {'loss, 1 process':>16}  {f'loss, {ranks} ranks':>16}  {'max |difference|':>16}")
    for e in range(epochs):
        part = slice(e * steps_per_epoch, (e + 1) * steps_per_epoch)
        echo(f"{e + 1:>5}  {single[part].mean():>16.6f}  {parallel[part].mean():>16.6f}  "
             f"{np.abs(single[part] - parallel[part]).max():>16.2e}")
    worst = float(np.abs(single - parallel).max())
    echo(f"Largest difference of a step's loss over {len(single)} steps: {worst:.2e} (float32 arithmetic; the "
         f"shards sum their gradients in another order). Wall time: {ranks} ranks {ranks_seconds:.1f} s with "
         f"start-up, 1 process {single_seconds:.1f} s.")
    figure = None
    if plot:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4))
        ax = fig.add_subplot()
        ax.plot(np.arange(1, len(single) + 1), single, label="1 process, whole batches", lw=3, alpha=0.5)
        ax.plot(np.arange(1, len(parallel) + 1), parallel, "--", label=f"{ranks} ranks, SyncBatchNorm")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("training loss (whole batch)")
        ax.set_yscale("log")
        ax.set_title("Data-parallel training with numbanorm.SyncBatchNorm (CNN, digits)")
        ax.legend()
        fig.tight_layout()
        figure = os.path.join(out, "data_parallel.png")
        fig.savefig(figure, dpi=110)
        echo(f"Figure: {figure}")
    return {"single": single.tolist(), "ranks": parallel.tolist(), "max_difference": worst, "figure": figure}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numbanorm.demo.parallel",
                                     description="One MPI rank of the data-parallel demo (run under mpiexec).")
    parser.add_argument("--out", default="numbanorm-demo")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return _worker(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
