"""CPU-only inference with BatchNorm folded away, and the train/eval pitfall."""

import copy
import time

import numpy as np

import numbanorm
from numbanorm.fuse import fold_batchnorm

from .nets import Conv2d, Linear, Sequential
from .train import predict

__all__ = ["compare_folded", "fold_network", "train_mode_pitfall"]

_BATCHNORMS = (numbanorm.BatchNorm1d, numbanorm.BatchNorm2d, numbanorm.BatchNorm3d)


def fold_network(net):
    """A copy of ``net`` with every BatchNorm folded into the Linear/Conv2d before it.

    Uses :func:`numbanorm.fuse.fold_batchnorm` on the BatchNorm's running statistics,
    so the result computes what ``net.eval()`` computes, with no normalization layer.
    """
    layers = list(net)
    folded = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        following = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, (Linear, Conv2d)) and isinstance(following, _BATCHNORMS):
            weight, bias = fold_batchnorm(layer.weight, layer.bias, following)
            if isinstance(layer, Linear):
                folded.append(Linear.from_arrays(weight, bias))
            else:
                folded.append(Conv2d.from_arrays(weight, bias, stride=layer.stride,
                                                 padding=layer.padding))
            i += 2
        else:
            folded.append(copy.deepcopy(layer))
            i += 1
    return Sequential(*folded).eval()


def _median_seconds(fn, repeats):
    fn()  # warm-up (and JIT compilation, if any)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compare_folded(net, x, *, repeats=20):
    """Compare the eval-mode network with its folded copy on inputs ``x``.

    Returns a dict: number of layers before/after, ``max_abs_diff`` of the logits,
    ``max_abs_logit`` (for scale), ``labels_identical`` and ``n_same`` (predicted
    labels), and the median seconds of one forward pass over ``x`` for each.
    """
    net.eval()
    folded = fold_network(net)
    logits = predict(net, x, batch_size=len(x))
    logits_folded = predict(folded, x, batch_size=len(x))
    labels, labels_folded = logits.argmax(axis=1), logits_folded.argmax(axis=1)
    result = {
        "layers": len(net),
        "layers_folded": len(folded),
        "n": len(x),
        "max_abs_diff": float(np.abs(logits.astype(np.float64) - logits_folded).max()),
        "max_abs_logit": float(np.abs(logits).max()),
        "labels_identical": bool((labels == labels_folded).all()),
        "n_same": int((labels == labels_folded).sum()),
        "seconds_unfolded": _median_seconds(lambda: net(x), repeats),
        "seconds_folded": _median_seconds(lambda: folded(x), repeats),
    }
    net.train()
    return result


def _batches(n, batch_size):
    """Index ranges of size ``batch_size``; a lone leftover sample joins the previous batch."""
    starts = list(range(0, n, batch_size))
    if batch_size > 1 and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [n]
    return list(zip(starts, ends, strict=True))


def _buffers(net):
    return [
        (layer.running_mean.copy(), layer.running_var.copy(), int(layer.num_batches_tracked))
        for layer in net if isinstance(layer, _BATCHNORMS)
    ]


def _same_buffers(a, b):
    return all(
        np.array_equal(ma, mb) and np.array_equal(va, vb) and na == nb
        for (ma, va, na), (mb, vb, nb) in zip(a, b, strict=True)
    )


def train_mode_pitfall(net, x, y, batch_sizes=(1, 2, 4, 16)):
    """Accuracy of a trained network left in training mode, by inference batch size.

    In training mode BatchNorm normalizes with the statistics of the batch it is given,
    so predictions depend on the other samples in the batch, and a single sample with
    one value per channel cannot be normalized at all. Each batch size runs on a fresh
    copy of ``net`` (training-mode forward passes update the running statistics).

    Returns ``{"eval_acc": float, "train_mode": [row, ...]}`` where each row has
    ``batch_size`` and either ``acc`` or ``error`` (the ValueError's message, with
    ``state_unchanged``: whether the copy's running statistics survived the error).
    """
    net.eval()
    eval_acc = float((predict(net, x).argmax(axis=1) == y).mean())
    rows = []
    for batch_size in batch_sizes:
        trial = copy.deepcopy(net).train()
        before = _buffers(trial)
        try:
            logits = np.concatenate([trial(x[s:e]) for s, e in _batches(len(x), batch_size)])
        except ValueError as exc:
            rows.append({"batch_size": batch_size, "error": str(exc),
                         "state_unchanged": _same_buffers(before, _buffers(trial))})
            continue
        rows.append({"batch_size": batch_size,
                     "acc": float((logits.argmax(axis=1) == y).mean())})
    net.train()
    return {"eval_acc": eval_acc, "train_mode": rows}
