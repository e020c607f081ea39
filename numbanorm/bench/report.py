"""Output of the bench: one row schema, and the table, JSON and plot made from it.

Every row, measured or failed, is made by :func:`new_row` and has exactly the keys of
:data:`ROW_KEYS`, so the table, the JSON file and the plot read one shape.
matplotlib is imported only to draw.
"""

from __future__ import annotations

import datetime
import json
import os
import platform

import numpy as np

from .cases import FUSED_OPS

__all__ = [
    "ROW_KEYS",
    "format_notes",
    "format_table",
    "machine_info",
    "new_row",
    "write_json",
    "write_plot",
]

#: The keys of every row, in JSON order.
#:
#: ``cache`` is "cold" (each call reads the next entry of a pool of at least 4 x L3)
#: or "hot" (one input read again); ``pool_entries`` / ``pool_bytes`` describe the
#: pool of x. Times are seconds per call; ``vs_torch`` = PyTorch / numbanorm and
#: ``vs_ort`` = ONNX Runtime / numbanorm (above 1: numbanorm is faster), ``copies`` =
#: numbanorm / copy. On a fused-epilogue row (``op`` a key of
#: :data:`~numbanorm.bench.cases.FUSED_OPS`) ``numbanorm_s`` is the fused call,
#: ``unfused_s`` the plain layer followed by separate NumPy passes, and ``vs_unfused`` =
#: unfused / fused (above 1: fusing saves time); both are None on the other rows, and
#: ONNX Runtime is not timed on fused rows. ``floor_s`` is the traffic floor of the pass
#: (:mod:`numbanorm.bench.floors`, with ``--floor``; training passes of plain rows) and
#: ``floors`` = numbanorm / floor. ``max_abs_diff`` / ``ort_max_abs_diff``:
#: largest difference of numbanorm's y (or dx; every output of a fused row) to
#: PyTorch's / ONNX Runtime's. ``samples``: per-repeat
#: seconds per call of each callable. ``notes``: peer -> why it has no time in this
#: row. ``error``: why the row failed, else None.
ROW_KEYS = (
    "op", "shape", "layout", "dtype", "pass", "threads", "groups", "nbytes",
    "cache", "pool_entries", "pool_bytes",
    "numbanorm_s", "unfused_s", "torch_s", "ort_s", "copy_s", "floor_s",
    "vs_torch", "vs_unfused", "vs_ort", "copies", "floors",
    "max_abs_diff", "ort_max_abs_diff",
    "samples", "notes", "error",
)


def new_row(case, pass_, threads, **values):
    """A row of ``case`` and ``pass_`` with every key of :data:`ROW_KEYS`.

    Keys not given in ``values`` are None (``notes`` an empty dict).

    Raises
    ------
    KeyError
        For a key that is not in :data:`ROW_KEYS`.
    """
    unknown = set(values) - set(ROW_KEYS)
    if unknown:
        raise KeyError(f"not row keys: {sorted(unknown)}")
    row = dict.fromkeys(ROW_KEYS)
    row.update(op=case.op, shape=list(case.shape), layout=case.layout, dtype=case.dtype,
               threads=int(threads), groups=case.groups, nbytes=case.nbytes, notes={})
    row["pass"] = pass_
    row.update(values)
    return row


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


#: Table columns after the left-aligned ones: (header, row key, formatter).
_VALUE_COLUMNS = (
    ("numbanorm", "numbanorm_s", _fmt_time),
    ("unfused", "unfused_s", _fmt_time),
    ("pytorch", "torch_s", _fmt_time),
    ("ort", "ort_s", _fmt_time),
    ("copy", "copy_s", _fmt_time),
    ("floor", "floor_s", _fmt_time),
    ("vs torch", "vs_torch", _fmt_ratio),
    ("vs unfused", "vs_unfused", _fmt_ratio),
    ("vs ort", "vs_ort", _fmt_ratio),
    ("copies", "copies", _fmt_ratio),
    ("floors", "floors", _fmt_ratio),
)
_LEFT_COLUMNS = ("op", "shape", "layout", "dtype", "pass")
#: ONNX Runtime is timed on the eval forward pass of plain rows only: "-" elsewhere.
_ORT_KEYS = ("ort_s", "vs_ort")
#: numbanorm unfused is timed on fused-epilogue rows only: "-" elsewhere.
_UNFUSED_KEYS = ("unfused_s", "vs_unfused")
#: The traffic floor: training passes of plain rows, and only in runs that measure it
#: (a table without any shows neither column).
_FLOOR_KEYS = ("floor_s", "floors")


def _not_timed(row, key):
    """True where ``key`` has no callable by design (a "-" cell, an empty plot bar)."""
    fused = row["op"] in FUSED_OPS
    if key in _ORT_KEYS:
        return fused or row["pass"] != "eval_forward"
    if key in _UNFUSED_KEYS:
        return not fused
    if key in _FLOOR_KEYS:
        return fused or row["pass"] == "eval_forward"
    return False


def _columns(rows):
    """The value columns of a table of ``rows``: the floor's only where a row has one."""
    with_floor = any(r.get("floor_s") is not None for r in rows)
    return [c for c in _VALUE_COLUMNS if with_floor or c[1] not in _FLOOR_KEYS]


def _row_cells(row, with_threads, columns):
    op = row["op"] + (f" G={row['groups']}" if row["op"] == "GroupNorm" else "")
    cells = [op, "(" + ", ".join(str(s) for s in row["shape"]) + ")", row["layout"],
             row["dtype"], row["pass"]]
    if with_threads:
        cells.append(str(row["threads"]))
    if row["error"]:
        return cells + ["error"] + [""] * (len(columns) - 1)
    for _, key, fmt in columns:
        if _not_timed(row, key):
            cells.append("-")
        else:
            cells.append(fmt(row[key]))
    return cells


def format_table(rows):
    """The rows as a fixed-width text table (values right-aligned, one line per row).

    A failed row shows "error"; "n/a" is a value that could not be measured (see
    :func:`format_notes`); "-" is a callable not timed on that row by design: ONNX
    Runtime on a training pass or a fused row, numbanorm unfused on a plain row, the
    floor on an eval pass or a fused row. The floor's columns appear only when a row has
    one (``--floor``).
    """
    with_threads = len({r["threads"] for r in rows}) > 1
    columns = _columns(rows)
    header = list(_LEFT_COLUMNS) + (["threads"] if with_threads else [])
    header += [name for name, _, _ in columns]
    body = [_row_cells(r, with_threads, columns) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    n_left = len(_LEFT_COLUMNS)
    lines = []
    for i, cells in enumerate([header] + body):
        parts = [c.ljust(w) if j < n_left else c.rjust(w)
                 for j, (c, w) in enumerate(zip(cells, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_notes(rows):
    """Why peers show "n/a": one line per distinct (peer, reason), with its row count."""
    counts = {}
    for r in rows:
        for peer, reason in (r["notes"] or {}).items():
            counts[(peer, reason)] = counts.get((peer, reason), 0) + 1
    names = {"torch": "pytorch", "ort": "ort"}
    return "\n".join(f"n/a {names.get(peer, peer)}: {reason} ({n} row{'s' * (n != 1)})"
                     for (peer, reason), n in counts.items())


def machine_info(threads, cache=None):
    """Machine, library versions, date and cache state for the header and the JSON file.

    Parameters
    ----------
    threads : int or list of int
    cache : dict, optional
        Added under ``"cache"`` (mode, L3 size and source, pool target and caps).
    """
    import numba

    from . import peers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    torch = peers.import_torch()
    onnx_mods = peers.import_onnxruntime()
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
        "onnxruntime": None if onnx_mods is None else onnx_mods[1].__version__,
        "numbanorm": version,
        "threads": threads,
        "cache": cache,
    }


def write_json(path, meta, rows):
    """Write ``{"meta": meta, "rows": rows}`` to ``path``."""
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


def import_pyplot():
    """``matplotlib.pyplot`` on the Agg backend (raises ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Plot panels: (row key, x-axis label, text when no row has a value).
_PANELS = (
    ("vs_torch", "PyTorch time / numbanorm time (>1: numbanorm faster)", "n/a (no PyTorch time)"),
    ("vs_ort", "ONNX Runtime time / numbanorm time (eval forward)", "n/a (no ONNX Runtime time)"),
    ("vs_unfused", "numbanorm unfused / fused (fused-epilogue rows)", "n/a (no fused row)"),
    ("copies", "numbanorm time / copy time (1 = memory floor)", "n/a"),
)


def write_plot(rows, path, title=None):
    """Bar chart (matplotlib, Agg) of the ratios: vs PyTorch, vs ONNX Runtime, vs
    unfused, copies.

    Bars start at 1 on a log axis (right of the line: numbanorm faster, or above the
    floor); a failed row says "error", a missing value "n/a", a cell not timed by design
    (ONNX Runtime on a training pass or fused row, unfused on a plain row) stays empty.
    """
    plt = import_pyplot()
    from matplotlib import ticker

    with_threads = len({q["threads"] for q in rows}) > 1
    labels = []
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"])
        lay = "" if r["layout"] == "contiguous" else " CL"
        dt = "" if r["dtype"] == "float32" else " f64"
        th = f" t{r['threads']}" if with_threads else ""
        labels.append(f"{r['op']} {shape}{lay}{dt} {r['pass']}{th}")
    colors = {"train_forward": "tab:blue", "train_step": "tab:orange",
              "eval_forward": "tab:green"}
    ypos = np.arange(len(rows))
    height = max(3.0, 0.28 * len(rows) + 1.5)
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(22, height), sharey=True)
    for ax, (key, xlabel, empty) in zip(axes, _PANELS, strict=True):
        values = [r[key] for r in rows]
        known = [v for v in values if v is not None and v > 0]
        if not known:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
            ax.set_xscale("log")
            ax.set_xlim(0.5, 2.0)
        else:
            ax.set_xscale("log")
            lo, hi = min(known + [1.0]), max(known + [1.0])
            ax.set_xlim(lo / 1.6, hi * 1.6)
        for y, v, r in zip(ypos, values, rows, strict=True):
            if _not_timed(r, key):
                continue
            if v is None or v <= 0:
                if not known and not r["error"]:
                    continue
                ax.text(1.0, y, " error" if r["error"] else " n/a", va="center",
                        fontsize=7, color="tab:red" if r["error"] else "gray")
                continue
            ax.barh(y, v - 1.0, left=1.0, height=0.8, color=colors.get(r["pass"], "tab:gray"))
            ax.text(v, y, f" {v:.2f} ", va="center", ha="left" if v >= 1 else "right", fontsize=7)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(ypos)
    axes[0].set_yticklabels(labels, fontsize=7)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    axes[-1].legend(handles, list(colors), loc="lower right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
