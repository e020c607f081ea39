"""The callables that are timed: numbanorm, PyTorch, and the memory copy.

Every runner is a :class:`Runner` over a :class:`~numbanorm.bench.pool.Pool`: each
call runs its pass on the pool's next entry, so that all callables of a row read
their input in the same cache state.

* numbanorm: the layer call, validation included (``layer(x)``, or ``layer(x)`` then
  ``layer.backward(dy)`` for a train step); outputs are allocated by the call, as a
  user's are.
* PyTorch: the matching ``torch.nn`` module with ``torch.set_num_threads(N)``, under
  ``torch.no_grad()`` for the forward passes and with autograd for the step.
* copy: a Numba ``prange`` loop ``y[i] = x[i]`` over the pool entry's memory into a
  preallocated destination (one per entry): one read of x and one write of y, the
  floor for any pass that reads x and writes y.

torch is imported when a runner needs it, never by ``import numbanorm`` or
``import numbanorm.bench``.
"""

from __future__ import annotations

import sys

import numpy as np

from .cases import PASSES

__all__ = [
    "PeerUnavailable",
    "Runner",
    "copy_runner",
    "import_torch",
    "make_numbanorm_layer",
    "make_torch_module",
    "numbanorm_runner",
    "set_threads",
    "torch_runner",
]

BENCH_EXTRA_HINT = 'pip install "numbanorm[bench]"'


class PeerUnavailable(RuntimeError):
    """A peer cannot be timed on this row; the message says why (shown beside "n/a")."""


class Runner:
    """A no-argument callable running one pass on the next entry of a pool.

    Parameters
    ----------
    fn : callable
        ``fn(i)`` runs the pass on entry ``i`` and returns its output (y, or dx for
        a train step).
    pool : Pool

    Notes
    -----
    ``runner()`` takes the pool's next entry; ``runner.at(i)`` runs entry ``i``
    (used to compare outputs on one input). Peers attach what they wrap as
    attributes (``layer``, ``module``, ``session``).
    """

    def __init__(self, fn, pool):
        self._fn = fn
        self.pool = pool

    def __call__(self):
        return self._fn(self.pool.take())

    def at(self, i):
        """Run the pass on entry ``i`` (the cursor does not move)."""
        return self._fn(i)


def import_torch():
    """``torch``, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def set_threads(threads):
    """Set the Numba thread count, and PyTorch's when it is imported.

    Raises
    ------
    ValueError
        When ``threads`` exceeds ``NUMBA_NUM_THREADS`` (fixed at start-up).
    """
    import numba

    threads = int(threads)
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise ValueError(
            f"threads must be between 1 and NUMBA_NUM_THREADS={limit}, got {threads} "
            "(set the NUMBA_NUM_THREADS environment variable before starting Python)"
        )
    numba.set_num_threads(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _layer_args(case):
    if case.op in ("LayerNorm", "RMSNorm"):
        return (case.shape[-1],)
    if case.op == "GroupNorm":
        return (case.groups, case.shape[1])
    return (case.shape[1],)


def make_numbanorm_layer(case):
    """The numbanorm layer of ``case`` with default arguments, parameters in ``case.dtype``."""
    import numbanorm

    cls = getattr(numbanorm, case.op)
    return cls(*_layer_args(case), dtype=np.dtype(case.dtype))


def make_torch_module(case):
    """The ``torch.nn`` module matching :func:`make_numbanorm_layer`.

    Raises
    ------
    PeerUnavailable
        When PyTorch is not installed.
    """
    torch = import_torch()
    if torch is None:
        raise PeerUnavailable("PyTorch is not installed")
    cls = getattr(torch.nn, case.op)
    return cls(*_layer_args(case), dtype=getattr(torch, case.dtype))


def _check_pass(pass_):
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")


def numbanorm_runner(case, pass_, pool, layer=None):
    """The numbanorm layer running ``pass_`` on ``pool``'s entries.

    Parameters
    ----------
    case : Case
    pass_ : {"train_forward", "train_step", "eval_forward"}
    pool : Pool
        Needs ``dys`` for ``train_step``.
    layer : optional
        Default :func:`make_numbanorm_layer`.

    Returns
    -------
    Runner
        Returns ``y`` for the forward passes; for ``train_step`` runs ``layer(x)``
        then ``layer.backward(dy)`` (dx, grad_weight and grad_bias) and returns dx.
        ``runner.layer`` is the layer.
    """
    _check_pass(pass_)
    layer = make_numbanorm_layer(case) if layer is None else layer
    xs, dys = pool.xs, pool.dys
    layer.train(pass_ != "eval_forward")
    if pass_ == "train_step":
        if dys is None:
            raise ValueError("train_step needs a pool with dy entries")

        def step(i):
            layer(xs[i])
            return layer.backward(dys[i])

        run = Runner(step, pool)
    else:
        run = Runner(lambda i: layer(xs[i]), pool)
    run.layer = layer
    return run


def torch_runner(case, pass_, pool, threads=None):
    """The PyTorch twin of :func:`numbanorm_runner`.

    The pool's arrays are shared with torch (``torch.from_numpy`` keeps the strides, so
    a channels-last view is a channels_last tensor). Forward passes run under
    ``torch.no_grad()``; the step runs autograd for dx and every parameter gradient,
    with gradients reset to None before each call (no accumulation).

    Returns
    -------
    Runner
        Returning the output (forward) or dx (step) as a tensor; ``runner.module``
        is the module.

    Raises
    ------
    PeerUnavailable
        When PyTorch is not installed.
    """
    _check_pass(pass_)
    torch = import_torch()
    if torch is None:
        raise PeerUnavailable("PyTorch is not installed")
    if threads is not None:
        torch.set_num_threads(int(threads))
    module = make_torch_module(case)
    txs = [torch.from_numpy(x) for x in pool.xs]
    if pass_ == "train_step":
        module.train()
        txs = [t.detach().requires_grad_(True) for t in txs]
        tdys = [torch.from_numpy(dy) for dy in pool.dys]
        params = [p for p in module.parameters() if p.requires_grad]

        def step(i):
            tx = txs[i]
            tx.grad = None
            for p in params:
                p.grad = None
            module(tx).backward(tdys[i])
            return tx.grad

        run = Runner(step, pool)
    else:
        module.train(pass_ == "train_forward")

        def forward(i):
            with torch.no_grad():
                return module(txs[i])

        run = Runner(forward, pool)
    run.module = module
    return run


_COPY_KERNEL = None


def _copy_kernel():
    global _COPY_KERNEL
    if _COPY_KERNEL is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def parallel_copy(x, y):
            for i in numba.prange(x.size):
                y[i] = x[i]

        _COPY_KERNEL = parallel_copy
    return _COPY_KERNEL


def copy_runner(pool):
    """A same-size parallel copy of each pool entry of x: the floor of a pass.

    Copies ``x.size`` elements of ``x.dtype`` with a Numba ``prange`` loop on Numba's
    current thread count (:func:`set_threads`). The source is the entry's own memory
    (a layer reads x where it is, so the copy pays the same alignment); each entry has
    its own destination, 64-byte aligned like numbanorm's outputs and touched before
    timing. The kernel is compiled here, not in a timed call.

    Returns
    -------
    Runner
        Returning the destination.
    """
    kernel = _copy_kernel()
    # Pool entries are dense, so ravel in memory order is a view of the entry.
    srcs = [x.ravel(order="K") for x in pool.xs]
    dsts = pool.empty_like_entries()
    kernel(srcs[0], dsts[0])

    def copy(i):
        kernel(srcs[i], dsts[i])
        return dsts[i]

    return Runner(copy, pool)
