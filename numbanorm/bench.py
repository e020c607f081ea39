"""Benchmarks of numbanorm against PyTorch and the memory floor.

``python -m numbanorm bench [--quick] [--threads N] [--json FILE] [--plot FILE.png]
[--filter SUBSTR]`` measures every canonical shape of ``SPEC.md`` for three passes
(train forward, train step = forward + backward with all gradients, eval forward)
and prints one row per (shape, pass) with three timings taken in the same process:

* numbanorm: the layer call (validation included), ``layer(x)`` or
  ``layer(x); layer.backward(dy)``;
* PyTorch: the matching ``torch.nn`` module with ``torch.set_num_threads(N)``, under
  ``torch.no_grad()`` for the forward passes and with autograd for the step
  ("n/a" when torch is not installed);
* copy: a same-size memory copy ``y[i] = x[i]`` compiled by Numba with
  ``parallel=True`` and run on N threads: one read and one write of ``x``, the floor
  for any pass that reads ``x`` and writes ``y``.

Each time is the median over repeats of the mean time of a calibrated number of
calls (``timeit`` style, after a warm-up call that also compiles), and the three
callables are timed interleaved, repeat by repeat, so that drift of a noisy machine
hits them alike. The table reports ``vs torch = torch time / numbanorm time``
(above 1: numbanorm is faster) and ``copies = numbanorm time / copy time``. By
default (``--stat paired``) each ratio is the median of the per-repeat ratios: the
callables of one repeat run back to back, so a burst of load from elsewhere that
lasts a repeat or two scales a ratio's numerator and denominator alike instead of
moving one median. ``--stat median`` / ``--stat min`` take ratios of the medians /
minima instead.

The measuring functions (:func:`make_input`, :func:`numbanorm_runner`,
:func:`torch_runner`, :func:`copy_runner`, :func:`time_interleaved`,
:func:`measure`) are public so that the asv suite in ``asv_benchmarks/`` measures
PyTorch and the copy inside the same benchmark process as numbanorm.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import _memory, config

__all__ = [
    "LAYOUTS",
    "PASSES",
    "Case",
    "canonical_cases",
    "copy_runner",
    "format_table",
    "main",
    "make_input",
    "make_numbanorm_layer",
    "make_torch_module",
    "measure",
    "numbanorm_runner",
    "peak_extra_bytes",
    "quick_cases",
    "scaling_cases",
    "set_threads",
    "time_interleaved",
    "tiny_cases",
    "torch_runner",
    "write_plot",
]

#: Statistics over the repeats that :func:`measure` knows.
STATS = ("paired", "median", "min")
_STAT_NOTE = {
    "paired": "median of {repeat} repeats, ratios = median of the per-repeat ratios",
    "median": "median of {repeat} repeats",
    "min": "min of {repeat} repeats",
}
#: The passes of every row, in table order.
PASSES = ("train_forward", "train_step", "eval_forward")
#: ``channels_last`` is an NCHW-shaped view of NHWC memory (channel axis last in memory).
LAYOUTS = ("contiguous", "channels_last")
DTYPES = ("float32", "float64")

#: Supported layer families: name -> (minimum ndim, maximum ndim).
OPS = {
    "BatchNorm1d": (2, 3),
    "BatchNorm2d": (4, 4),
    "BatchNorm3d": (5, 5),
    "LayerNorm": (2, 8),
    "RMSNorm": (2, 8),
    "GroupNorm": (2, 8),
    "InstanceNorm1d": (3, 3),
    "InstanceNorm2d": (4, 4),
    "InstanceNorm3d": (5, 5),
}

BENCH_EXTRA_HINT = 'pip install "numbanorm[bench]"'


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One benchmark shape: layer family, input shape, memory layout and dtype.

    ``groups`` is the GroupNorm group count (default ``gcd(32, C)``, so 32 for the
    canonical shapes). LayerNorm and RMSNorm normalize over the last axis.
    """

    op: str
    shape: tuple
    layout: str = "contiguous"
    dtype: str = "float32"
    groups: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; expected one of {sorted(OPS)}")
        lo, hi = OPS[self.op]
        if not lo <= len(self.shape) <= hi:
            raise ValueError(
                f"{self.op} takes inputs with {lo} to {hi} dimensions, got shape {self.shape}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.layout == "channels_last" and len(self.shape) < 3:
            raise ValueError(
                f"channels_last needs an input with at least 3 dimensions, got {self.shape}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {DTYPES}")
        if self.op == "GroupNorm":
            if self.groups is None:
                object.__setattr__(self, "groups", math.gcd(32, self.shape[1]))
            if self.shape[1] % self.groups:
                raise ValueError(
                    f"GroupNorm: {self.shape[1]} channels are not divisible "
                    f"by {self.groups} groups"
                )

    @property
    def nbytes(self):
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def label(self):
        shape = "x".join(str(s) for s in self.shape)
        extra = f" G={self.groups}" if self.op == "GroupNorm" else ""
        return f"{self.op}{extra} {shape} {self.layout} {self.dtype}"


def canonical_cases():
    """The shapes of SPEC.md ("Performance"), in table order."""
    return [
        Case("BatchNorm2d", (32, 64, 56, 56)),
        Case("BatchNorm2d", (64, 128, 56, 56)),
        Case("BatchNorm1d", (4096, 1024)),
        Case("LayerNorm", (8192, 768)),
        Case("RMSNorm", (8192, 768)),
        Case("GroupNorm", (32, 64, 56, 56), groups=32),
        Case("InstanceNorm2d", (32, 64, 56, 56)),
        Case("LayerNorm", (32, 768)),
        Case("BatchNorm1d", (64, 256)),
        Case("BatchNorm2d", (32, 64, 56, 56), "channels_last"),
        Case("GroupNorm", (32, 64, 56, 56), "channels_last", groups=32),
        Case("InstanceNorm2d", (32, 64, 56, 56), "channels_last"),
        Case("BatchNorm2d", (32, 64, 56, 56), dtype="float64"),
        Case("LayerNorm", (8192, 768), dtype="float64"),
    ]


def quick_cases():
    """``--quick``: the canonical rows without the largest shape (64, 128, 56, 56)."""
    return [c for c in canonical_cases() if c.shape != (64, 128, 56, 56)]


def scaling_cases():
    """``--scaling``: BatchNorm2d from (8,64,56,56) to (64,128,56,56), time vs bytes."""
    shapes = [(8, 64, 56, 56), (16, 64, 56, 56), (32, 64, 56, 56), (64, 64, 56, 56),
              (64, 128, 56, 56)]
    return [Case("BatchNorm2d", s) for s in shapes]


def tiny_cases():
    """Very small shapes of every family and layout: for tests of the bench code paths."""
    return [
        Case("BatchNorm2d", (2, 4, 3, 3)),
        Case("BatchNorm2d", (2, 4, 3, 3), "channels_last"),
        Case("BatchNorm1d", (8, 4)),
        Case("LayerNorm", (4, 8)),
        Case("LayerNorm", (4, 8), dtype="float64"),
        Case("RMSNorm", (4, 8)),
        Case("GroupNorm", (2, 4, 3, 3), groups=2),
        Case("InstanceNorm2d", (2, 4, 3, 3), "channels_last"),
    ]


# ----------------------------------------------------------------------- data


def make_input(case, seed=0):
    """Deterministic ``(x, dy)`` for ``case``: standard normal, ``case.dtype``.

    For ``channels_last`` both are NCHW-shaped views of channel-last memory
    (``x_nhwc.transpose(0, 3, 1, 2)`` for 4-D inputs).
    """
    rng = np.random.default_rng(seed)
    shape = case.shape
    if case.layout == "channels_last":
        mem_shape = (shape[0],) + shape[2:] + (shape[1],)
    else:
        mem_shape = shape
    out = []
    for _ in range(2):
        a = rng.standard_normal(mem_shape, dtype=np.dtype(case.dtype))
        if case.layout == "channels_last":
            a = np.moveaxis(a, -1, 1)
        out.append(a)
    return out[0], out[1]


def _layer_args(case):
    c = case.shape[1]
    if case.op in ("LayerNorm", "RMSNorm"):
        return (case.shape[-1],)
    if case.op == "GroupNorm":
        return (case.groups, c)
    return (c,)


def make_numbanorm_layer(case):
    """The numbanorm layer of ``case`` with default arguments, parameters in ``case.dtype``."""
    import numbanorm

    cls = getattr(numbanorm, case.op)
    return cls(*_layer_args(case), dtype=np.dtype(case.dtype))


def _import_torch():
    """``torch``, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _import_pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_torch_module(case):
    """The ``torch.nn`` module matching :func:`make_numbanorm_layer` (torch must be installed)."""
    torch = _import_torch()
    if torch is None:
        raise ImportError("PyTorch is not installed")
    cls = getattr(torch.nn, case.op)
    return cls(*_layer_args(case), dtype=getattr(torch, case.dtype))


# --------------------------------------------------------------------- runners


def set_threads(threads):
    """Set the Numba thread count, and PyTorch's when it is installed.

    Raises ValueError when ``threads`` exceeds ``NUMBA_NUM_THREADS`` (fixed at start-up).
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


def numbanorm_runner(case, pass_, x, dy, layer=None):
    """A no-argument callable running ``pass_`` of the numbanorm layer on ``x``.

    ``train_forward`` and ``eval_forward`` return ``y``; ``train_step`` runs
    ``layer(x)`` then ``layer.backward(dy)`` (dx, grad_weight and grad_bias) and
    returns dx.
    """
    if layer is None:
        layer = make_numbanorm_layer(case)
    if pass_ == "train_forward":
        layer.train()

        def run():
            return layer(x)

    elif pass_ == "eval_forward":
        layer.eval()

        def run():
            return layer(x)

    elif pass_ == "train_step":
        layer.train()

        def run():
            layer(x)
            return layer.backward(dy)

    else:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
    run.layer = layer
    return run


def torch_runner(case, pass_, x, dy, threads=None):
    """The PyTorch twin of :func:`numbanorm_runner`, or None when torch is not installed.

    ``x`` and ``dy`` are shared with NumPy (``torch.from_numpy`` keeps the strides, so a
    channels-last view is a channels_last tensor). Forward passes run under
    ``torch.no_grad()``; the step runs autograd for dx and every parameter gradient,
    with gradients reset to None before each call (no accumulation). Returns the
    output (forward) or dx (step) as a tensor.
    """
    torch = _import_torch()
    if torch is None:
        return None
    if threads is not None:
        torch.set_num_threads(int(threads))
    module = make_torch_module(case)
    tx = torch.from_numpy(x)
    if pass_ in ("train_forward", "eval_forward"):
        module.train(pass_ == "train_forward")

        def run():
            with torch.no_grad():
                return module(tx)

    elif pass_ == "train_step":
        module.train()
        tx = tx.detach().requires_grad_(True)
        tdy = torch.from_numpy(dy)
        params = [p for p in module.parameters() if p.requires_grad]

        def run():
            tx.grad = None
            for p in params:
                p.grad = None
            module(tx).backward(tdy)
            return tx.grad

    else:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
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


def copy_runner(x):
    """A no-argument callable copying ``x.size`` elements of ``x.dtype`` with Numba prange.

    Source and destination are preallocated contiguous 1-D arrays (the memory floor:
    one read and one write of ``x``); the thread count is Numba's current one
    (:func:`set_threads`). The kernel is compiled here, not in the timed call.
    The source sits at the same offset within a cache line as ``x`` (a layer reads
    ``x`` where it is) and the destination is aligned like a layer's output, so the
    floor pays what the layers pay for alignment and no more.
    """
    kernel = _copy_kernel()
    align = config.ALIGN_BYTES
    offset = _memory.address(x) % align
    buf = _memory.empty(x.nbytes + align, np.uint8, work=math.inf)
    src = buf[offset:offset + x.nbytes].view(x.dtype)
    src.reshape(x.shape)[...] = x
    dst = _memory.empty(x.size, x.dtype, work=math.inf)
    kernel(src, dst)

    def run():
        kernel(src, dst)
        return dst

    return run


# ---------------------------------------------------------------------- timing


def time_interleaved(runners, repeat=7, min_time=0.05, warmup=1, settle=0.003):
    """Median seconds per call of each callable in ``runners`` (name -> callable).

    ``timeit`` style: ``warmup`` untimed calls, then the number of calls per repeat is
    calibrated so that one repeat lasts about ``min_time`` seconds, then ``repeat``
    rounds time every callable in turn (interleaved, the order rotated each round)
    with the garbage collector off.
    Before each timed block the process sleeps ``settle`` seconds: PyTorch and Numba's
    ``omp`` layer use two different OpenMP runtimes whose idle threads spin for a
    while after a parallel region, and on a machine with few cores the spinning
    threads of one library would slow the next block of the other.
    Returns name -> dict(median=..., min=..., number=..., repeat=...).
    """
    runners = {k: v for k, v in runners.items() if v is not None}
    numbers = {}
    for name, fn in runners.items():
        for _ in range(max(warmup, 0)):
            fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-9)
        numbers[name] = max(1, min(int(min_time / one), 100_000))
    samples = {name: [] for name in runners}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        names = list(runners)
        for rep in range(max(repeat, 1)):
            # Rotate the order every repeat: a callable's time depends on which one ran
            # just before it (the other library's OpenMP threads still spinning, the
            # cache and allocator state it left), so each gets every position in turn.
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                fn = runners[name]
                n = numbers[name]
                if settle > 0:
                    time.sleep(settle)
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[name].append((time.perf_counter() - t0) / n)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        name: {
            "median": statistics.median(s),
            "min": min(s),
            "samples": list(s),
            "number": numbers[name],
            "repeat": len(s),
        }
        for name, s in samples.items()
    }


def _to_numpy(out):
    if isinstance(out, tuple):
        out = out[0]
    if hasattr(out, "detach"):
        out = out.detach().numpy()
    return np.asarray(out)


def measure(case, pass_, threads=2, *, repeat=7, min_time=0.05, warmup=1,
            torch=True, copy=True, check=True, data=None, stat="paired"):
    """Measure one row: numbanorm, PyTorch and the copy, interleaved, on ``threads`` threads.

    ``torch`` / ``copy`` switch the reference points off; ``data`` is an optional
    ``(x, dy)`` pair (default :func:`make_input`); ``stat`` is ``"median"`` or
    ``"min"`` over the repeats, or ``"paired"``: median times, and ratios that are the
    median of the per-repeat ratios (``samples`` holds the per-repeat times).
    Returns a dict with the row's keys
    (``numbanorm_s``, ``torch_s``, ``copy_s``, ``vs_torch``, ``copies``,
    ``max_abs_diff``: largest difference of y (forward) or dx (step) to PyTorch);
    unavailable values are None.
    """
    set_threads(threads)
    x, dy = make_input(case) if data is None else data
    row = {
        "op": case.op,
        "shape": list(case.shape),
        "layout": case.layout,
        "dtype": case.dtype,
        "pass": pass_,
        "threads": int(threads),
        "groups": case.groups,
        "nbytes": case.nbytes,
        "numbanorm_s": None,
        "torch_s": None,
        "copy_s": None,
        "vs_torch": None,
        "copies": None,
        "max_abs_diff": None,
        "samples": None,
        "error": None,
    }
    runners = {"numbanorm": numbanorm_runner(case, pass_, x, dy)}
    if torch:
        runners["torch"] = torch_runner(case, pass_, x, dy, threads)
    if copy:
        runners["copy"] = copy_runner(x)
    result = time_interleaved(runners, repeat=repeat, min_time=min_time, warmup=warmup)
    if stat not in STATS:
        raise ValueError(f"unknown stat {stat!r}; expected one of {STATS}")
    pick = "median" if stat == "paired" else stat
    ours = result["numbanorm"][pick]
    row["numbanorm_s"] = ours
    row["samples"] = {name: r["samples"] for name, r in result.items()}
    mine = result["numbanorm"]["samples"]
    if "torch" in result:
        row["torch_s"] = result["torch"][pick]
        row["vs_torch"] = (statistics.median(t / o for t, o in zip(result["torch"]["samples"], mine, strict=True))
                           if stat == "paired" else row["torch_s"] / ours)
    if "copy" in result:
        row["copy_s"] = result["copy"][pick]
        row["copies"] = (statistics.median(o / c for o, c in zip(mine, result["copy"]["samples"], strict=True))
                         if stat == "paired" else ours / row["copy_s"])
    if check and runners.get("torch") is not None:
        ref = _to_numpy(runners["torch"]())
        got = _to_numpy(runners["numbanorm"]())
        row["max_abs_diff"] = float(np.max(np.abs(got.astype(np.float64) - ref)))
    return row


def _rss_bytes(field_name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field_name} not in /proc/self/status")


def reset_peak_rss():
    """Reset the peak resident set size of this process (Linux; False elsewhere).

    After it, ``resource.getrusage(...).ru_maxrss`` (what asv ``peakmem_`` reports)
    and ``VmHWM`` restart from the current resident size.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_extra_bytes(fn, expected_bytes=0):
    """Peak resident memory that one call of ``fn`` adds, minus ``expected_bytes``.

    Linux only (``/proc/self/clear_refs`` and ``VmHWM``); returns None elsewhere. Pass
    the size of the results the call must allocate (its output, its gradients) to get
    the temporaries; memory that the allocator reuses without touching new pages is
    not seen.
    """
    gc.collect()
    if not reset_peak_rss():
        return None
    try:
        before = _rss_bytes("VmRSS")
        result = fn()  # noqa: F841  (kept alive until the peak is read)
        peak = _rss_bytes("VmHWM")
    except OSError:
        return None
    return peak - before - expected_bytes


# ---------------------------------------------------------------------- output


def _fmt_time(seconds):
    if seconds is None:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def _fmt_ratio(value):
    return "n/a" if value is None else f"{value:.2f}"


_COLUMNS = ("op", "shape", "layout", "dtype", "pass", "numbanorm", "pytorch", "copy",
            "vs torch", "copies")


def _row_cells(row, with_threads):
    op = row["op"] + (f" G={row['groups']}" if row["op"] == "GroupNorm" else "")
    cells = [op, "(" + ", ".join(str(s) for s in row["shape"]) + ")", row["layout"],
             row["dtype"], row["pass"]]
    if with_threads:
        cells.append(str(row["threads"]))
    if row.get("error"):
        return cells + ["error", "", "", "", ""]
    return cells + [_fmt_time(row["numbanorm_s"]), _fmt_time(row["torch_s"]),
                    _fmt_time(row["copy_s"]), _fmt_ratio(row["vs_torch"]),
                    _fmt_ratio(row["copies"])]


def format_table(rows):
    """The rows as a fixed-width text table (times right-aligned, one line per row)."""
    with_threads = len({r["threads"] for r in rows}) > 1
    header = list(_COLUMNS)
    if with_threads:
        header.insert(5, "threads")
    body = [_row_cells(r, with_threads) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    n_left = 5
    lines = []
    for i, cells in enumerate([header] + body):
        parts = [c.ljust(w) if j < n_left else c.rjust(w)
                 for j, (c, w) in enumerate(zip(cells, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_plot(rows, path, title=None):
    """Bar chart (matplotlib, Agg) of the ratios vs PyTorch (line at 1) and of the copies."""
    plt = _import_pyplot()
    from matplotlib import ticker

    labels = []
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"])
        lay = "" if r["layout"] == "contiguous" else " CL"
        dt = "" if r["dtype"] == "float32" else " f64"
        th = f" t{r['threads']}" if len({q["threads"] for q in rows}) > 1 else ""
        labels.append(f"{r['op']} {shape}{lay}{dt} {r['pass']}{th}")
    colors = {"train_forward": "tab:blue", "train_step": "tab:orange",
              "eval_forward": "tab:green"}
    ypos = np.arange(len(rows))
    height = max(3.0, 0.28 * len(rows) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(14, height), sharey=True)
    panels = (("vs_torch", "PyTorch time / numbanorm time (>1: numbanorm faster)"),
              ("copies", "numbanorm time / copy time (1 = memory floor)"))
    for ax, (key, xlabel) in zip(axes, panels, strict=True):
        values = [r.get(key) for r in rows]
        known = [v for v in values if v is not None and v > 0]
        if not known:
            ax.text(0.5, 0.5, "n/a (PyTorch not installed)" if key == "vs_torch" else "n/a",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_xscale("log")
            ax.set_xlim(0.5, 2.0)
        else:
            # log scale, bars from 1: right of the line is faster / above the floor
            ax.set_xscale("log")
            lo, hi = min(known + [1.0]), max(known + [1.0])
            ax.set_xlim(lo / 1.6, hi * 1.6)
        for y, v, r in zip(ypos, values, rows, strict=True):
            if v is None or v <= 0:
                if not known and not r.get("error"):
                    continue
                ax.text(1.0, y, " error" if r.get("error") else " n/a", va="center",
                        fontsize=7, color="tab:red" if r.get("error") else "gray")
                continue
            ax.barh(y, v - 1.0, left=1.0, height=0.8,
                    color=colors.get(r["pass"], "tab:gray"))
            ax.text(v, y, f" {v:.2f} ", va="center",
                    ha="left" if v >= 1 else "right", fontsize=7)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(ypos)
    axes[0].set_yticklabels(labels, fontsize=7)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    axes[1].legend(handles, list(colors), loc="lower right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info(threads):
    """Machine, library versions and date for the table header and the JSON file."""
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    torch = _import_torch()
    try:
        import numbanorm

        version = getattr(numbanorm, "__version__", "unknown")
    except ImportError:  # pragma: no cover
        version = "not importable"
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = numba.config.THREADING_LAYER
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": layer,
        "torch": None if torch is None else torch.__version__,
        "numbanorm": version,
        "threads": threads,
    }


# ------------------------------------------------------------------------ CLI


def _parse_threads(text):
    try:
        values = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N1,N2,..., got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return values


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m numbanorm bench",
        description="Time numbanorm layers against PyTorch (same threads) and a "
        "same-size parallel memory copy, on the canonical shapes of SPEC.md.",
    )
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, shorter calibration, no (64,128,56,56) rows")
    p.add_argument("--threads", type=_parse_threads, default=None, metavar="N",
                   help="thread count for numbanorm, PyTorch and the copy (default 2; "
                   "a list like 1,2 measures every row at each count)")
    p.add_argument("--json", metavar="FILE", help="write machine info and all rows as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a bar chart of the ratios")
    p.add_argument("--filter", metavar="SUBSTR", action="append", default=None,
                   help="keep rows whose 'op shape layout dtype pass' label contains "
                   "SUBSTR (case-insensitive; repeat the option to OR several)")
    p.add_argument("--pass", dest="passes", action="append", choices=PASSES, default=None,
                   help="run only this pass (repeatable; default all three)")
    p.add_argument("--scaling", action="store_true",
                   help="add BatchNorm2d rows from (8,64,56,56) to (64,128,56,56)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed repeats per row (default 7, 3 with --quick)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds per repeat used to calibrate the calls per repeat "
                   "(default 0.1, 0.02 with --quick)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch (columns n/a)")
    p.add_argument("--stat", choices=STATS, default="paired",
                   help="statistic over the repeats: 'paired' (default) gives median times "
                   "and ratios that are medians of per-repeat ratios; 'median' and 'min' "
                   "give ratios of medians or of minima")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # For the tests: tiny shapes of every family.
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return p


class _Progress:
    """tqdm on stderr when installed, else nothing."""

    def __init__(self, total, enabled):
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, file=sys.stderr, unit="row", desc="bench",
                                 leave=False, dynamic_ncols=True)

    def step(self, label):
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)

    def write(self, text):
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _cpu_jiffies():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def busy_cpus(interval=0.3):
    """CPUs kept busy by other processes, sampled from ``/proc/stat`` over ``interval``
    seconds while this process sleeps (Linux); the 1-minute load average elsewhere."""
    try:
        busy0, total0 = _cpu_jiffies()
        time.sleep(interval)
        busy1, total1 = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    if total1 == total0:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def _busy_note(threads):
    """A warning when other processes keep the cores that the benchmark needs busy."""
    busy, cpus = busy_cpus(), os.cpu_count() or 1
    if busy is None or busy <= cpus - threads + 0.5:
        return None
    return (f"other processes keep {busy:.1f} of {cpus} CPUs busy: they compete with the "
            f"{threads} benchmark threads, timings are unreliable")


def _matches(label, filters):
    return not filters or any(f.lower() in label.lower() for f in filters)


def main(argv=None, *, cases=None, out=None):
    """Entry point of ``python -m numbanorm bench``; ``argv`` is the list after ``bench``.

    ``cases`` replaces the shape list (a list of :class:`Case`); ``out`` is the text
    stream for the table (default stdout). Returns the exit status: 0, 1 when a row
    failed (its error is printed and kept in the JSON), 2 on a usage error.
    """
    args = _parser().parse_args(argv)
    out = sys.stdout if out is None else out
    if args.plot:
        try:
            _import_pyplot()
        except ImportError:
            print("error: --plot needs matplotlib, which is not installed; install the "
                  f"bench extra: {BENCH_EXTRA_HINT}", file=sys.stderr)
            return 2
    import numba

    if args.threads is None:
        threads_list = [min(2, numba.config.NUMBA_NUM_THREADS)]
    else:
        threads_list = args.threads
    for t in threads_list:
        if t > numba.config.NUMBA_NUM_THREADS:
            print(f"error: --threads {t} exceeds NUMBA_NUM_THREADS="
                  f"{numba.config.NUMBA_NUM_THREADS}; set the NUMBA_NUM_THREADS environment "
                  "variable to allow more", file=sys.stderr)
            return 2
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    min_time = args.min_time if args.min_time is not None else (0.02 if args.quick else 0.1)
    use_torch = not args.no_torch and _import_torch() is not None

    if cases is None:
        if args.tiny:
            cases = tiny_cases()
        elif args.quick:
            cases = quick_cases()
        else:
            cases = canonical_cases()
        if args.scaling:
            cases = cases + [c for c in scaling_cases() if c not in cases]
    passes = tuple(args.passes) if args.passes else PASSES
    jobs = [(c, p, t) for t in threads_list for c in cases for p in passes
            if _matches(f"{c.label} {p}", args.filter)]
    if not jobs:
        print("error: no benchmark row matches --filter", file=sys.stderr)
        return 2

    info = machine_info(threads_list if len(threads_list) > 1 else threads_list[0])
    busy_note = _busy_note(max(threads_list))
    if busy_note:
        print(f"bench: warning: {busy_note}", file=sys.stderr)
    rows = []
    progress = _Progress(len(jobs), enabled=not args.no_progress)
    try:
        for case, pass_, threads in jobs:
            label = f"{case.label} {pass_}" + (f" t{threads}" if len(threads_list) > 1 else "")
            try:
                row = measure(case, pass_, threads, repeat=repeat, min_time=min_time,
                              torch=use_torch, stat=args.stat)
            except Exception as exc:  # noqa: BLE001  (a failing row must not hide the rest)
                row = {"op": case.op, "shape": list(case.shape), "layout": case.layout,
                       "dtype": case.dtype, "pass": pass_, "threads": threads,
                       "groups": case.groups, "nbytes": case.nbytes,
                       "numbanorm_s": None, "torch_s": None, "copy_s": None,
                       "vs_torch": None, "copies": None, "max_abs_diff": None,
                       "error": f"{type(exc).__name__}: {exc}"}
                progress.write(f"bench: {label}: {row['error']}")
            else:
                tol = 1e-3 if case.dtype == "float32" else 1e-8
                if row["max_abs_diff"] is not None and not row["max_abs_diff"] <= tol:
                    progress.write(f"bench: warning: {label}: numbanorm differs from "
                                   f"PyTorch by {row['max_abs_diff']:.3g} (> {tol:g})")
            rows.append(row)
            progress.step(label)
            gc.collect()
    finally:
        progress.close()

    torch_note = info["torch"] if info["torch"] else "not installed"
    busy_after = _busy_note(max(threads_list))
    header = (f"numbanorm bench: {info['date']}, {info['cpu']} ({info['cpu_count']} CPUs), "
              f"threads={info['threads']}, numba {info['numba']}, torch {torch_note}\n"
              f"{_STAT_NOTE[args.stat].format(repeat=repeat)}; vs torch = torch/numbanorm "
              "(>1: numbanorm faster); copies = numbanorm/copy")
    for note in dict.fromkeys(n for n in (busy_note, busy_after) if n):
        header += f"\nwarning: {note}"
    print(header, file=out)
    print(format_table(rows), file=out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": dict(info, repeat=repeat, min_time=min_time, stat=args.stat,
                                    busy=[n for n in (busy_note, busy_after) if n],
                                    quick=args.quick), "rows": rows}, f, indent=1)
    if args.plot:
        write_plot(rows, args.plot,
                   title=f"numbanorm vs PyTorch, threads={info['threads']}, "
                   f"{info['cpu']}, {info['date']}")
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
