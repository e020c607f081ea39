"""Build the demo networks and train them with minibatch SGD."""

import math
import time
from dataclasses import dataclass, field

import numpy as np

import numbanorm

from .nets import Conv2d, Flatten, Linear, ReLU, Sequential, cross_entropy, sgd_step

__all__ = ["RunResult", "evaluate", "make_cnn", "make_mlp", "predict", "train_run"]

#: A training loss above this (or NaN/inf) counts as diverged; chance level is ln(10) = 2.3.
DIVERGED_LOSS = 100.0


def make_mlp(*, batchnorm, init_scale=1.0, hidden=(128, 128, 128), seed=0):
    """64 -> hidden... -> 10 MLP; each hidden layer is Linear [-> BatchNorm1d] -> ReLU.

    A Linear followed by BatchNorm has no bias (the BatchNorm's bias replaces it).
    The same ``seed`` gives the same Linear weights with and without BatchNorm.
    """
    rng = np.random.default_rng(seed)
    layers = []
    width = 64
    for h in hidden:
        layers.append(Linear(width, h, bias=not batchnorm, init_scale=init_scale, rng=rng))
        if batchnorm:
            layers.append(numbanorm.BatchNorm1d(h))
        layers.append(ReLU())
        width = h
    layers.append(Linear(width, 10, init_scale=init_scale, rng=rng))
    return Sequential(*layers)


def make_cnn(*, batchnorm, init_scale=1.0, channels=(16, 32), seed=0):
    """Small CNN for (N, 1, 8, 8) digits.

    Conv3x3(1->c1, pad 1) [-> BatchNorm2d] -> ReLU -> Conv3x3(c1->c2, stride 2, pad 1)
    [-> BatchNorm2d] -> ReLU -> Flatten -> Linear(c2*4*4 -> 10).
    """
    rng = np.random.default_rng(seed)
    c1, c2 = channels
    layers = [Conv2d(1, c1, 3, padding=1, bias=not batchnorm, init_scale=init_scale, rng=rng)]
    if batchnorm:
        layers.append(numbanorm.BatchNorm2d(c1))
    layers += [ReLU(),
               Conv2d(c1, c2, 3, stride=2, padding=1, bias=not batchnorm, init_scale=init_scale,
                      rng=rng)]
    if batchnorm:
        layers.append(numbanorm.BatchNorm2d(c2))
    layers += [ReLU(), Flatten(), Linear(c2 * 4 * 4, 10, init_scale=init_scale, rng=rng)]
    return Sequential(*layers)


def predict(net, x, batch_size=512):
    """Logits of ``net`` on ``x``, in batches (the network's mode is left as it is)."""
    return np.concatenate([net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(net, x, y):
    """Eval-mode test accuracy; the network is put back in training mode afterwards."""
    net.eval()
    with np.errstate(all="ignore"):
        accuracy = float((predict(net, x).argmax(axis=1) == y).mean())
    net.train()
    return accuracy


@dataclass
class RunResult:
    """One training run: its configuration, per-epoch curves and the trained network."""

    model: str
    batchnorm: bool
    lr: float
    init_scale: float
    train_loss: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    diverged: bool = False
    seconds: float = 0.0
    net: object = field(default=None, repr=False)

    @property
    def label(self):
        bn = "BN" if self.batchnorm else "no BN"
        return f"{self.model} {bn} init x{self.init_scale:g} lr {self.lr:g}"

    @property
    def final_acc(self):
        return self.test_acc[-1] if self.test_acc else float("nan")

    def epochs_to(self, target=0.9):
        """First epoch (1-based) whose test accuracy reaches ``target``, or None."""
        for epoch, acc in enumerate(self.test_acc, start=1):
            if acc >= target:
                return epoch
        return None

    def summary(self):
        return {
            "model": self.model, "batchnorm": self.batchnorm, "lr": self.lr,
            "init_scale": self.init_scale, "final_test_acc": self.final_acc,
            "epochs_to_90": self.epochs_to(0.9), "diverged": self.diverged,
            "train_loss": self.train_loss, "test_acc": self.test_acc, "seconds": self.seconds,
        }


def train_run(net, x_train, y_train, x_test, y_test, *, lr, epochs, batch_size=64, seed=0,
              schedule="cosine", result=None, progress=None):
    """Train ``net`` with plain minibatch SGD and record loss/accuracy per epoch.

    ``schedule="cosine"`` decays the step size from ``lr`` to 0 over the run (per step);
    ``"constant"`` keeps it at ``lr``.

    Training stops early when the loss becomes NaN/inf or exceeds ``DIVERGED_LOSS``;
    the run is then marked diverged. ``progress`` wraps the epoch range (e.g. a tqdm
    factory); it is called as ``progress(range(epochs))``.
    """
    result = RunResult("?", False, lr, 1.0) if result is None else result
    result.net = net
    rng = np.random.default_rng(seed)
    epochs_iter = range(epochs) if progress is None else progress(range(epochs))
    start = time.perf_counter()
    n = len(x_train)
    total_steps = epochs * math.ceil(n / batch_size)
    step = 0
    net.train()
    for _ in epochs_iter:
        order = rng.permutation(n)
        losses = []
        with np.errstate(all="ignore"):  # a diverging run overflows; we detect it below
            for i in range(0, n - 1, batch_size):
                idx = order[i : i + batch_size]
                if len(idx) < 2:  # BatchNorm needs more than one sample per channel
                    continue
                loss, dlogits = cross_entropy(net(x_train[idx]), y_train[idx])
                losses.append(loss)
                if not math.isfinite(loss) or loss > DIVERGED_LOSS:
                    result.diverged = True
                    break
                net.backward(dlogits)
                step_lr = lr
                if schedule == "cosine":
                    step_lr = lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
                sgd_step(net, step_lr)
                step += 1
        result.train_loss.append(float(np.mean(losses)))
        result.test_acc.append(evaluate(net, x_test, y_test))
        if hasattr(epochs_iter, "set_postfix"):
            epochs_iter.set_postfix(loss=f"{result.train_loss[-1]:.3g}",
                                    test_acc=f"{result.test_acc[-1]:.3f}")
        if result.diverged:
            break
    result.seconds = time.perf_counter() - start
    return result
