"""One rank of the torch SyncBatchNorm tests: ``python gloo_worker.py OUT`` with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; a gloo group on CPU tensors. Saves what the
rank got to ``OUT/rank<r>.npz``."""

import datetime
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from scenarios import SCENARIOS, STEPS, batch, params, shard  # noqa: E402

import numbanorm.torch as nt  # noqa: E402


def run(out):
    rank, size = dist.get_rank(), dist.get_world_size()
    for name, (sample, dtype, *_rest) in SCENARIOS.items():
        tdtype = torch.float32 if dtype == np.float32 else torch.float64
        model = torch.nn.Sequential(torch.nn.BatchNorm2d(sample[0], momentum=SCENARIOS[name][6], dtype=tdtype))
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # torch's own conversion ...
        model, report = nt.convert(model)  # ... then numbanorm's
        layer = model[0]
        assert type(layer) is nt.SyncBatchNorm, report
        w, b = params(name)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
        for step in range(STEPS):
            x, dy = batch(name, step)
            xs = torch.from_numpy(np.array(shard(name, x, size, rank))).requires_grad_(True)
            if SCENARIOS[name][2] == "channels_last" and xs.dim() == 4:
                xs = xs.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            layer.weight.grad = layer.bias.grad = None
            y = model(xs)
            y.backward(torch.from_numpy(np.ascontiguousarray(shard(name, dy, size, rank))))
            out[f"{name}/{step}/y"] = y.detach().numpy()
            out[f"{name}/{step}/channels_last"] = np.array(y.dim() == 4 and y.is_contiguous(
                memory_format=torch.channels_last) and not y.is_contiguous())
            out[f"{name}/{step}/dx"] = xs.grad.numpy()
            out[f"{name}/{step}/grad_weight"] = layer.weight.grad.numpy()
            out[f"{name}/{step}/grad_bias"] = layer.bias.grad.numpy()
        out[f"{name}/running_mean"] = layer.running_mean.numpy()
        out[f"{name}/running_var"] = layer.running_var.numpy()
        out[f"{name}/num_batches_tracked"] = layer.num_batches_tracked.numpy()
    layer = nt.SyncBatchNorm(3)
    before = layer.running_mean.clone()
    bad = torch.ones(2, 4, 5) if rank == size - 1 else torch.ones(2, 3, 5) * rank
    try:
        layer(bad)
        out["bad/error"] = np.array("")
    except Exception as exc:
        out["bad/error"] = np.array(f"{type(exc).__name__}: {exc}")
    out["bad/unchanged"] = np.array(torch.equal(before, layer.running_mean) and int(layer.num_batches_tracked) == 0)


def main():
    out_dir = sys.argv[1]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    out = {}
    try:
        run(out)
    except Exception:
        out["traceback"] = np.array(traceback.format_exc())
    np.savez(os.path.join(out_dir, f"rank{dist.get_rank()}.npz"), **out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
