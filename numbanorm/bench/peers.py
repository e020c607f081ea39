"""The callables that are timed: numbanorm, its peers, and the memory copy.

Every runner is a :class:`Runner` over a :class:`~numbanorm.bench.pool.Pool`: each
call runs its pass on the pool's next entry, so that all callables of a row read
their input in the same cache state.

* numbanorm: the layer call, validation included (``layer(x)``, or ``layer(x)`` then
  ``layer.backward(dy)`` for a train step); outputs are allocated by the call, as a
  user's are. A fused-epilogue row calls the fused layer: ``layer(x, residual)`` of a
  layer made with ``activation="relu"`` (``act(norm(x) + residual)``), or the skip form
  ``layer(x, residual)`` -> ``(norm(x + residual), x + residual)`` with
  ``layer.backward(dy, dsum)``.
* PyTorch: the matching ``torch.nn`` module with ``torch.set_num_threads(N)``, under
  ``torch.no_grad()`` for the forward passes and with autograd for the step. A
  fused-epilogue row adds the epilogue as PyTorch code writes it (:func:`torch_runner`).
* ONNX Runtime (eval forward only, the pass it is used for): a one-node model of
  the ONNX operator with the layer's parameters (:func:`make_onnx_model`), run by an
  ``InferenceSession`` on the CPU provider with ``intra_op_num_threads`` = the bench's
  threads, one inter-op thread and sequential execution; ``session.run`` allocates
  the output, as a user's call does. ONNX tensors are NCHW only, so a channels-last
  row feeds ONNX Runtime a contiguous copy of each pool entry, made before timing.
* numbanorm unfused (fused-epilogue rows only, :data:`~numbanorm.bench.cases.FUSED_OPS`):
  the plain layer, then the fewest separate passes a user writes with NumPy for the
  same result (:func:`unfused_runner` says exactly which), so that ``vs unfused`` is
  what the fused call saves.
* copy: a Numba ``prange`` loop ``y[i] = x[i]`` over the pool entry's memory into a
  preallocated destination (one per entry): one read of x and one write of y, the
  floor for any pass that reads x and writes y.

torch, onnx and onnxruntime are imported when a runner needs them, never by
``import numbanorm`` or ``import numbanorm.bench``.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from .cases import FUSED_OPS, PASSES

__all__ = [
    "ONNX_OPS",
    "PeerUnavailable",
    "Runner",
    "copy_runner",
    "import_onnxruntime",
    "import_torch",
    "make_numbanorm_layer",
    "make_onnx_model",
    "make_ort_session",
    "make_torch_module",
    "numbanorm_runner",
    "ort_runner",
    "set_threads",
    "torch_runner",
    "unfused_runner",
]

#: Layer family (class-name prefix) -> (ONNX operator, opset of the one-node model).
#: Each opset is the first one with the operator in the form used here: the
#: per-channel GroupNormalization scale came with opset 21, RMSNormalization with 23.
ONNX_OPS = {
    "BatchNorm": ("BatchNormalization", 15),
    "InstanceNorm": ("InstanceNormalization", 17),
    "LayerNorm": ("LayerNormalization", 17),
    "GroupNorm": ("GroupNormalization", 21),
    "RMSNorm": ("RMSNormalization", 23),
}

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
    attributes (``layer``, ``module``, ``session``). Every callable of a fused row
    returns the same things (see :func:`numbanorm_runner`), so outputs compare pairwise.
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


def import_onnxruntime():
    """``(onnx, onnxruntime)``, or None when either is not installed."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    return onnx, onnxruntime


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
    if case.layer_op in ("LayerNorm", "RMSNorm"):
        return (case.shape[-1],)
    if case.layer_op == "GroupNorm":
        return (case.groups, case.shape[1])
    return (case.shape[1],)


def make_numbanorm_layer(case):
    """The numbanorm layer of ``case`` with default arguments, parameters in ``case.dtype``.

    For a fused-epilogue row, the layer of its family with the row's ``activation``
    (the skip form needs no constructor option: it is the call ``layer(x, residual)``).
    """
    import numbanorm

    cls = getattr(numbanorm, case.layer_op)
    kwargs = {"activation": case.activation} if case.activation is not None else {}
    return cls(*_layer_args(case), dtype=np.dtype(case.dtype), **kwargs)


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
    cls = getattr(torch.nn, case.layer_op)
    return cls(*_layer_args(case), dtype=getattr(torch, case.dtype))


def _check_pass(pass_, case=None):
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
    if case is not None and pass_ not in case.passes:
        raise ValueError(f"{case.op} is not measured in {pass_} (its passes: {case.passes})")


def _epilogue_entries(case, pass_, pool):
    """``(residuals, dsums)`` of a fused row's pool, checked (dsums None unless needed)."""
    if pool.residuals is None:
        raise ValueError(f"{case.op} needs a pool with residual entries")
    if case.skip and pass_ == "train_step":
        if pool.dsums is None:
            raise ValueError(f"{case.op} train_step needs a pool with dsum entries")
        return pool.residuals, pool.dsums
    return pool.residuals, None


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

        A fused row (the pool needs ``residuals``, and ``dsums`` for a skip row's step)
        calls the fused layer. Channel-wise (``BatchNorm2d+add+relu``): forward
        ``y = layer(x, residual)``; step ``layer(x, residual)``, ``dx = layer.backward(dy)``,
        returning ``(dx, layer.grad_residual)``. Skip (``add+LayerNorm``,
        ``add+RMSNorm``): forward ``(y, s) = layer(x, residual)``, returning ``(y, s)``;
        step ``layer(x, residual)``, ``ds = layer.backward(dy, dsum)`` (the gradient of
        x and of the residual alike), returning ``(ds, layer.grad_residual)``.
    """
    _check_pass(pass_, case)
    layer = make_numbanorm_layer(case) if layer is None else layer
    xs, dys = pool.xs, pool.dys
    layer.train(pass_ != "eval_forward")
    if case.fused:
        run = _fused_numbanorm(case, pass_, pool, layer)
    elif pass_ == "train_step":
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


def _fused_numbanorm(case, pass_, pool, layer):
    xs, dys = pool.xs, pool.dys
    rs, dsums = _epilogue_entries(case, pass_, pool)
    if pass_ != "train_step":
        return Runner(lambda i: layer(xs[i], rs[i]), pool)
    if dys is None:
        raise ValueError("train_step needs a pool with dy entries")
    if case.skip:
        def step(i):
            layer(xs[i], rs[i])
            return layer.backward(dys[i], dsums[i]), layer.grad_residual
    else:
        def step(i):
            layer(xs[i], rs[i])
            return layer.backward(dys[i]), layer.grad_residual
    return Runner(step, pool)


def unfused_runner(case, pass_, pool, layer=None):
    """numbanorm without the fused epilogue: the plain layer, then separate NumPy passes.

    The baseline of ``vs unfused`` on a fused row: what a user writes with numbanorm
    and NumPy for the same outputs, in the fewest passes NumPy allows (in place where
    it can be, no temporaries beyond what NumPy needs). ``y``, ``s``, ``g``, ``ds`` are
    the arrays the calls return; ``x``, ``residual``, ``dy``, ``dsum`` come from the pool.

    Channel-wise row with ReLU (``BatchNorm2d+add+relu``):

    * forward (train and eval): ``y = layer(x)``; ``np.add(y, residual, out=y)``;
      ``np.maximum(y, 0, out=y)``: the norm pass, then two in-place passes over y.
    * step: that forward, then ``g = dy * (y > 0)`` (ReLU's mask, one comparison pass
      and one multiply pass) and ``dx = layer.backward(g)``; returns ``(dx, g)``, g
      being the residual's gradient (no pass of its own). Without an activation
      (none of the default rows) the ReLU pass and the mask are left out and g is dy.

    Skip row (``add+LayerNorm``, ``add+RMSNorm``):

    * forward: ``s = x + residual`` (one pass writing a new array), ``y = layer(s)``;
      returns ``(y, s)``.
    * step: that forward, then ``ds = layer.backward(dy)`` and ``ds += dsum`` (one
      in-place pass); returns ``(ds, ds)``: the gradient of x and of the residual.

    Parameters
    ----------
    case : Case
        A fused row; the layer is its family's plain layer (:attr:`Case.plain`).
    pass_ : str
        One of ``case.passes``.
    pool : Pool
        With ``residuals`` (and ``dys``, plus ``dsums`` for a skip row's step).
    layer : optional
        Default :func:`make_numbanorm_layer` of ``case.plain``.

    Returns
    -------
    Runner
        Returning what :func:`numbanorm_runner` returns for the fused row;
        ``runner.layer`` is the plain layer.

    Raises
    ------
    ValueError
        For a row without an epilogue, or a pool without the entries it needs.
    """
    if not case.fused:
        raise ValueError(f"{case.op} has no fused epilogue: nothing to unfuse")
    _check_pass(pass_, case)
    layer = make_numbanorm_layer(case.plain) if layer is None else layer
    layer.train(pass_ != "eval_forward")
    xs, dys = pool.xs, pool.dys
    rs, dsums = _epilogue_entries(case, pass_, pool)
    relu = case.activation == "relu"
    if pass_ == "train_step" and dys is None:
        raise ValueError("train_step needs a pool with dy entries")

    if case.skip:
        def forward(i):
            s = xs[i] + rs[i]
            return layer(s), s

        def step(i):
            forward(i)
            ds = layer.backward(dys[i])
            ds += dsums[i]
            return ds, ds
    else:
        def forward(i):
            y = layer(xs[i])
            np.add(y, rs[i], out=y)
            if relu:
                np.maximum(y, 0, out=y)
            return y

        def step(i):
            y = forward(i)
            g = dys[i] * (y > 0) if relu else dys[i]
            return layer.backward(g), g

    run = Runner(step if pass_ == "train_step" else forward, pool)
    run.layer = layer
    return run


def torch_runner(case, pass_, pool, threads=None):
    """The PyTorch twin of :func:`numbanorm_runner`.

    The pool's arrays are shared with torch (``torch.from_numpy`` keeps the strides, so
    a channels-last view is a channels_last tensor). Forward passes run under
    ``torch.no_grad()``; the step runs autograd for dx and every parameter gradient,
    with gradients reset to None before each call (no accumulation).

    A fused row adds its epilogue as PyTorch code writes it, with the pool's residual
    (``requires_grad`` for the step, whose gradient autograd computes too):
    ``BatchNorm2d+add+relu`` as torchvision's ResNet blocks do, ``out = bn(x)``,
    ``out += residual``, ``torch.relu_(out)`` (in place: no tensor beyond the module's
    output); the skip rows ``s = x + residual``, ``y = norm(s)``, the step backpropagating
    ``dy`` into y and ``dsum`` into s (``torch.autograd.backward``). Outputs are those of
    :func:`numbanorm_runner` (``(x.grad, residual.grad)`` for a step).

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
    _check_pass(pass_, case)
    torch = import_torch()
    if torch is None:
        raise PeerUnavailable("PyTorch is not installed")
    if threads is not None:
        torch.set_num_threads(int(threads))
    module = make_torch_module(case)
    txs = [torch.from_numpy(x) for x in pool.xs]
    if case.fused:
        run = _fused_torch(torch, case, pass_, pool, module, txs)
    elif pass_ == "train_step":
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


def _fused_torch(torch, case, pass_, pool, module, txs):
    rs, dsums = _epilogue_entries(case, pass_, pool)
    trs = [torch.from_numpy(r) for r in rs]
    relu = case.activation == "relu"

    def epilogue(out, tr):
        out += tr
        return torch.relu_(out) if relu else out

    if pass_ != "train_step":
        module.train(pass_ == "train_forward")
        if case.skip:
            def forward(i):
                with torch.no_grad():
                    s = txs[i] + trs[i]
                    return module(s), s
        else:
            def forward(i):
                with torch.no_grad():
                    return epilogue(module(txs[i]), trs[i])
        return Runner(forward, pool)

    module.train()
    txs = [t.detach().requires_grad_(True) for t in txs]
    trs = [t.detach().requires_grad_(True) for t in trs]
    tdys = [torch.from_numpy(dy) for dy in pool.dys]
    tdsums = None if dsums is None else [torch.from_numpy(d) for d in dsums]
    params = [p for p in module.parameters() if p.requires_grad]

    def step(i):
        tx, tr = txs[i], trs[i]
        tx.grad = tr.grad = None
        for p in params:
            p.grad = None
        if case.skip:
            s = tx + tr
            torch.autograd.backward((module(s), s), (tdys[i], tdsums[i]))
        else:
            epilogue(module(tx), tr).backward(tdys[i])
        return tx.grad, tr.grad

    return Runner(step, pool)


def _onnx_family(op):
    if op in FUSED_OPS:
        raise PeerUnavailable(f"no one-node ONNX model is built for {op}")
    for prefix, entry in ONNX_OPS.items():
        if op.startswith(prefix):
            return prefix, entry
    raise PeerUnavailable(f"no ONNX operator for {op}")


def _require_onnx():
    mods = import_onnxruntime()
    if mods is None:
        raise PeerUnavailable(f"onnx and onnxruntime are not installed ({BENCH_EXTRA_HINT})")
    return mods


def make_onnx_model(case, layer=None):
    """A one-node ONNX model computing ``layer``'s eval forward on NCHW input.

    Parameters
    ----------
    case : Case
        Shape and dtype of the model's input ``x`` and output ``y``.
    layer : optional
        The numbanorm layer whose parameters, running statistics and eps the model
        holds as initializers (default :func:`make_numbanorm_layer`); absent weight
        and bias are ones and zeros, RMSNorm's ``eps=None`` is the dtype's epsilon.

    Returns
    -------
    onnx.ModelProto
        Checked with ``onnx.checker``, stamped with the lowest IR version of its
        opset so that older runtimes load it.

    Raises
    ------
    PeerUnavailable
        When onnx is not installed, or the layer's eval pass has no one-operator ONNX
        form (BatchNorm without running statistics, InstanceNorm with them).
    """
    onnx, _ = _require_onnx()
    from onnx import helper, numpy_helper

    layer = make_numbanorm_layer(case) if layer is None else layer
    family, (op_type, opset) = _onnx_family(case.op)
    dtype = np.dtype(case.dtype)
    channels = case.shape[1]

    def init(name, value, shape, fill):
        arr = np.full(shape, fill, dtype) if value is None else np.asarray(value, dtype)
        return numpy_helper.from_array(np.ascontiguousarray(arr), name)

    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    running = getattr(layer, "running_mean", None) is not None
    if family == "BatchNorm":
        if not running:
            raise PeerUnavailable("BatchNorm without running statistics has no ONNX eval form")
        inits = [init("scale", weight, channels, 1), init("B", bias, channels, 0),
                 init("mean", layer.running_mean, channels, 0),
                 init("var", layer.running_var, channels, 1)]
        attrs = {"epsilon": float(layer.eps)}
    elif family == "InstanceNorm":
        if running:
            raise PeerUnavailable("InstanceNorm with running statistics has no ONNX eval form")
        inits = [init("scale", weight, channels, 1), init("B", bias, channels, 0)]
        attrs = {"epsilon": float(layer.eps)}
    elif family == "GroupNorm":
        inits = [init("scale", weight, channels, 1), init("bias", bias, channels, 0)]
        attrs = {"num_groups": int(layer.num_groups), "epsilon": float(layer.eps)}
    else:  # LayerNorm, RMSNorm: over the trailing normalized_shape
        norm_shape = tuple(layer.normalized_shape)
        inits = [init("scale", weight, norm_shape, 1)]
        if family == "LayerNorm":
            inits.append(init("B", bias, norm_shape, 0))
        eps = layer.eps if layer.eps is not None else np.finfo(dtype).eps
        attrs = {"axis": -len(norm_shape), "epsilon": float(eps)}
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    node = helper.make_node(op_type, ["x"] + [t.name for t in inits], ["y"], **attrs)
    graph = helper.make_graph(
        [node], f"numbanorm_{case.op}",
        [helper.make_tensor_value_info("x", elem, list(case.shape))],
        [helper.make_tensor_value_info("y", elem, list(case.shape))],
        inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="numbanorm.bench")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    return model


def make_ort_session(model, threads):
    """An ONNX Runtime CPU session of ``model`` on ``threads`` intra-op threads.

    One inter-op thread and sequential execution (a one-node graph has nothing to
    run in parallel); warnings are not logged, so they do not land in the table.
    """
    _, ort = _require_onnx()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _first_line(exc, limit=160):
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def ort_runner(case, pool, layer=None, threads=None):
    """ONNX Runtime's eval forward of ``case`` on ``pool``'s entries.

    Parameters
    ----------
    case : Case
    pool : Pool
    layer : optional
        The numbanorm layer whose parameters the model holds (see :func:`make_onnx_model`).
    threads : int, optional
        ``intra_op_num_threads``; default Numba's current thread count.

    Returns
    -------
    Runner
        Returning y; ``runner.session`` is the session. A channels-last pool is
        fed as contiguous NCHW copies of its entries (ONNX has no channels-last
        tensors), made here and not timed; the copies form a pool of the same size.

    Raises
    ------
    PeerUnavailable
        When onnx/onnxruntime are missing, or the model cannot be built, loaded or run
        by the installed runtime (an operator or dtype it does not implement at that
        opset): the model is run once here, so that a row reports what actually runs.
    """
    _, ort = _require_onnx()
    if threads is None:
        import numba

        threads = numba.get_num_threads()
    op_type, opset = _onnx_family(case.op)[1]
    what = f"onnxruntime {ort.__version__} cannot run {op_type} (opset {opset}, {case.dtype})"
    inputs = [np.ascontiguousarray(x) for x in pool.xs]
    feeds = [{"x": a} for a in inputs]
    try:
        session = make_ort_session(make_onnx_model(case, layer), threads)
        session.run(None, feeds[0])
    except PeerUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001  (any failure to build, load or run is the reason)
        raise PeerUnavailable(f"{what}: {_first_line(exc)}") from exc
    outputs = ["y"]
    run = Runner(lambda i: session.run(outputs, feeds[i])[0], pool)
    run.session = session
    return run


_COPY_KERNEL = None


def _copy_kernel():
    global _COPY_KERNEL
    if _COPY_KERNEL is None:
        import numba

        from .. import config

        @numba.njit(parallel=True, cache=config.CACHE)
        def parallel_copy(x, y, zero):
            # ``x + zero`` with zero = -0.0 is x bit for bit (signed zeros included), but LLVM
            # cannot see that it is 0 and turn the loop into a memcpy call: glibc's memcpy
            # took 3-18% longer than this vector loop on the bench's sizes, and the copy is
            # the floor.
            for i in numba.prange(x.size):
                y[i] = x[i] + zero

        _COPY_KERNEL = parallel_copy
    return _COPY_KERNEL


def copy_runner(pool):
    """A same-size parallel copy of each pool entry of x: the floor of a pass.

    Copies ``x.size`` elements of ``x.dtype`` with a vectorized Numba ``prange`` loop on
    Numba's current thread count (:func:`set_threads`), not ``memcpy``. The source is
    the entry's own memory (a layer reads x where it is, so the copy pays the same
    alignment). The destination is allocated per call the way numbanorm allocates a
    layer's output (:func:`numbanorm._memory.empty`, 64-byte aligned: an output of
    ``config.RECYCLE_MIN_BYTES`` or more reuses the buffer of that size freed last, a
    smaller one comes from the C allocator, which reuses a freed block as well), so the
    copy writes into memory in the cache state the layer's output is in; PyTorch's and
    ONNX Runtime's outputs come from allocators that reuse freed blocks too. (A
    destination per pool entry, out of cache, would make every write fetch its line from
    memory first, a cost none of the timed libraries pays.) The kernel is compiled here,
    not in a timed call.

    Returns
    -------
    Runner
        Returning the destination.
    """
    from .. import _memory

    kernel = _copy_kernel()
    # Pool entries are dense, so ravel in memory order is a view of the entry.
    srcs = [x.ravel(order="K") for x in pool.xs]
    zero = srcs[0].dtype.type(-0.0)  # every entry has x's dtype
    kernel(srcs[0], _memory.empty(srcs[0].size, srcs[0].dtype, work=math.inf), zero)

    def copy(i):
        dst = _memory.empty(srcs[i].size, srcs[i].dtype, work=math.inf)
        kernel(srcs[i], dst, zero)
        return dst

    return Runner(copy, pool)
