"""Benchmarks of numbanorm against PyTorch, ONNX Runtime and the memory floor.

``python -m numbanorm bench [--quick] [--hot] [--threads N] [--json FILE]
[--plot FILE.png] [--filter SUBSTR]`` measures numbanorm's canonical shapes
(:func:`canonical_cases`) in three passes (train forward; train step = forward +
backward with all gradients; eval forward) and prints one row per (shape, pass) with
the times of numbanorm, PyTorch (same threads), ONNX Runtime (eval forward, same
threads) and a same-size parallel copy, taken interleaved in one process, and the
ratios ``vs torch`` and ``vs ort`` (peer time / numbanorm time, above 1: numbanorm is
faster) and ``copies`` (numbanorm time / copy time).

The fused-epilogue rows (:func:`fused_cases`, after the canonical ones; ops
``BatchNorm2d+add+relu``, ``add+LayerNorm``, ``add+RMSNorm``, so ``--filter add+``
selects them) time numbanorm's fused call against the same ops unfused: the plain
layer and separate NumPy passes (:func:`unfused_runner`), and PyTorch's module with
the same ops; ``vs unfused`` = unfused time / fused time.

By default every call of every callable reads the next of a pool of distinct inputs
totalling at least 4 x L3 (read from sysfs), so all of them run from memory;
``--hot`` reads one input again and again.

Modules
-------
cases
    :class:`Case`, the canonical, fused, quick, scaling and tiny row lists,
    :func:`make_input`, :func:`make_epilogue_input`.
pool
    L3 size from sysfs, :class:`Pool` of distinct inputs with one shared cursor.
peers
    The timed callables: numbanorm (fused and unfused), PyTorch, ONNX Runtime
    (one-node models), the copy.
floors
    Floors of the training passes: minimal kernels with a pass's memory traffic (and,
    ``stats="float64"``, its float64 sums).
timing
    :func:`time_interleaved` (paired repeats in the orders of :func:`carryover_orders`) and
    :func:`measure` (one row).
report
    The row schema (:data:`ROW_KEYS`, :func:`new_row`), the table, JSON and plot.
probes
    ``/proc`` probes: peak memory a call adds, CPUs busy elsewhere.
cli
    :func:`main`, the command line.

The names below are public so that the asv suite in ``asv_benchmarks/`` measures
with the same code. Importing this package imports neither torch, onnx, onnxruntime
nor matplotlib; each is imported when a run needs it.
"""

from .cases import (
    DTYPES,
    FUSED_OPS,
    LAYOUTS,
    OPS,
    PASSES,
    Case,
    canonical_cases,
    fused_cases,
    make_epilogue_input,
    make_input,
    quick_cases,
    scaling_cases,
    tiny_cases,
    tiny_fused_cases,
)
from .cli import main
from .floors import floor_kind, floor_runner
from .peers import (
    ONNX_OPS,
    PeerUnavailable,
    Runner,
    copy_runner,
    import_onnxruntime,
    import_torch,
    make_numbanorm_layer,
    make_onnx_model,
    make_ort_session,
    make_torch_module,
    numbanorm_runner,
    ort_runner,
    set_threads,
    torch_runner,
    unfused_runner,
)
from .pool import CacheInfo, Pool, last_level_cache, make_pool, pool_entries
from .probes import busy_cpus, peak_extra_bytes, reset_peak_rss
from .report import ROW_KEYS, format_notes, format_table, machine_info, new_row, write_plot
from .timing import STATS, carryover_orders, measure, time_interleaved, wait_quiet

__all__ = [
    "DTYPES",
    "FUSED_OPS",
    "LAYOUTS",
    "ONNX_OPS",
    "OPS",
    "PASSES",
    "ROW_KEYS",
    "STATS",
    "CacheInfo",
    "Case",
    "PeerUnavailable",
    "Pool",
    "Runner",
    "busy_cpus",
    "canonical_cases",
    "copy_runner",
    "floor_kind",
    "floor_runner",
    "format_notes",
    "fused_cases",
    "format_table",
    "import_onnxruntime",
    "import_torch",
    "last_level_cache",
    "machine_info",
    "main",
    "make_epilogue_input",
    "make_input",
    "make_numbanorm_layer",
    "make_onnx_model",
    "make_ort_session",
    "make_pool",
    "make_torch_module",
    "measure",
    "new_row",
    "numbanorm_runner",
    "ort_runner",
    "peak_extra_bytes",
    "pool_entries",
    "quick_cases",
    "reset_peak_rss",
    "scaling_cases",
    "set_threads",
    "time_interleaved",
    "carryover_orders",
    "tiny_cases",
    "tiny_fused_cases",
    "torch_runner",
    "unfused_runner",
    "wait_quiet",
    "write_plot",
]
