"""``python -m numbanorm bench``: argument parsing, the row loop, and the output files."""

from __future__ import annotations

import argparse
import gc
import sys

from . import floors, probes, report
from . import pool as pool_mod
from .cases import (
    FUSED_OPS,
    PASSES,
    canonical_cases,
    fused_cases,
    quick_cases,
    scaling_cases,
    tiny_cases,
    tiny_fused_cases,
)
from .peers import BENCH_EXTRA_HINT
from .timing import STATS, measure

__all__ = ["main"]

#: What the floor column measures, per ``--floor`` kind (the header's note).
_FLOOR_NOTE = {
    "traffic": "the pass's traffic alone",
    "float64": "the pass's traffic with float64 shifted sums",
}

_STAT_NOTE = {
    "paired": "median of {repeat} repeats, ratios = median of the per-repeat ratios",
    "median": "median of {repeat} repeats",
    "min": "min of {repeat} repeats",
}


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
        description="Time numbanorm layers against PyTorch and ONNX Runtime (same threads) "
        "and a same-size parallel memory copy, on numbanorm's canonical shapes, then the "
        "fused-epilogue rows (BatchNorm2d+add+relu, add+LayerNorm, add+RMSNorm; --filter add+ "
        "selects them) against the same ops unfused. By default every call reads its input "
        "from memory, not from cache.",
    )
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, shorter calibration, no (64,128,56,56) rows "
                   "(the fused-epilogue rows stay)")
    p.add_argument("--threads", type=_parse_threads, default=None, metavar="N",
                   help="thread count for numbanorm, PyTorch, ONNX Runtime and the copy "
                   "(default 2; a list like 1,2 measures every row at each count)")
    p.add_argument("--hot", action="store_true",
                   help="every call reads the same input, cache-resident as far as it fits "
                   "(default: each call reads the next of a pool of inputs of at least 4 x L3)")
    p.add_argument("--json", metavar="FILE", help="write machine info and all rows as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a bar chart of the ratios")
    p.add_argument("--filter", metavar="SUBSTR", action="append", default=None,
                   help="keep rows whose 'op shape layout dtype pass' label contains "
                   "SUBSTR (case-insensitive; repeat the option to OR several); the "
                   "fused-epilogue rows' ops contain 'add+' (BatchNorm2d+add+relu, "
                   "add+LayerNorm, add+RMSNorm)")
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
    p.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime (columns n/a)")
    p.add_argument("--floor", nargs="?", const="traffic", default=None, choices=floors.STATS,
                   help="also time each training pass's floor: a minimal kernel that reads and writes what "
                   "the pass must, in the same groups (columns floor, floors = numbanorm/floor; see "
                   "numbanorm.bench.floors); 'traffic' (the default) sums in x's dtype, 'float64' takes the "
                   "float64 shifted sums that numbanorm's statistics cannot do without")
    p.add_argument("--stat", choices=STATS, default="paired",
                   help="statistic over the repeats: 'paired' (default) gives median times "
                   "and ratios that are medians of per-repeat ratios; 'median' and 'min' "
                   "give ratios of medians or of minima")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--models", action="store_true",
                   help="instead: train step and inference of real PyTorch models (transformers, diffusers, "
                        "torch.nn), stock vs numbanorm.torch.convert, with the norm layers' share of the step "
                        "(needs torch, transformers and diffusers)")
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


def _matches(label, filters):
    return not filters or any(f.lower() in label.lower() for f in filters)


def _cache_meta(hot, cache):
    """The cache state of the run, for the header and the JSON ``meta["cache"]``."""
    if hot:
        return {"mode": "hot", "l3_bytes": None, "l3_source": None, "pool_factor": None,
                "pool_target_bytes": None, "pool_cap_bytes": None}
    return {"mode": "cold", "l3_bytes": cache.l3_bytes, "l3_source": cache.note,
            "pool_factor": pool_mod.POOL_FACTOR,
            "pool_target_bytes": pool_mod.POOL_FACTOR * cache.l3_bytes,
            "pool_cap_bytes": pool_mod.POOL_CAP_BYTES}


def _cache_line(meta, rows):
    if meta["mode"] == "hot":
        return "cache: hot (--hot): every call reads the same input, in cache as far as it fits"
    target = meta["pool_target_bytes"] / 2**20
    line = (f"cache: cold: each call reads the next of a pool of distinct inputs of "
            f">= {meta['pool_factor']} x L3 = {target:g} MiB per array; {meta['l3_source']}")
    short = sum(1 for r in rows if r["pool_bytes"] is not None and r["pool_bytes"] < meta["pool_target_bytes"])
    if short:
        line += (f"\nwarning: {short} row(s) with a smaller pool (inputs too small for "
                 f"{pool_mod.POOL_MAX_ENTRIES} entries to reach the target): partly in cache")
    return line


def _check_agreement(progress, label, row, dtype):
    tol = 1e-3 if dtype == "float32" else 1e-8
    for key, peer in (("max_abs_diff", "PyTorch"), ("ort_max_abs_diff", "ONNX Runtime")):
        value = row[key]
        if value is not None and not value <= tol:
            progress.write(f"bench: warning: {label}: numbanorm differs from {peer} by "
                           f"{value:.3g} (> {tol:g})")


def _models(args, out):
    """``--models``: :func:`numbanorm.torch.bench_models.run_models` at the bench's thread count."""
    try:
        from ..torch import bench_models
    except ImportError as exc:
        print(f"error: --models needs PyTorch ({exc})", file=sys.stderr)
        return 2
    threads = (args.threads or [2])[0]
    rows = bench_models.run_models(threads, repeat=args.repeat or 7, quick=args.quick,
                                   progress=None if args.no_progress else
                                   (lambda name: print(f"... {name}", file=sys.stderr)))
    print(bench_models.format_table(rows), file=out)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"models": rows}, f, indent=1, default=str)
    return 0


def main(argv=None, *, cases=None, out=None):
    """Entry point of ``python -m numbanorm bench``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``bench`` (default ``sys.argv[1:]``).
    cases : list of Case, optional
        Replaces the shape list (default: the canonical rows, or the quick ones, then the
        fused-epilogue rows).
    out : file, optional
        Text stream for the table (default stdout).

    Returns
    -------
    int
        0; 1 when a row failed (its error is printed and kept in the JSON); 2 on a
        usage error (found before anything is timed).
    """
    args = _parser().parse_args(argv)
    out = sys.stdout if out is None else out
    if args.models:
        return _models(args, out)
    if args.plot:
        try:
            report.import_pyplot()
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

    if cases is None:
        if args.tiny:
            cases = tiny_cases() + tiny_fused_cases()
        elif args.quick:
            cases = quick_cases() + fused_cases()
        else:
            cases = canonical_cases() + fused_cases()
        if args.scaling:
            cases = cases + [c for c in scaling_cases() if c not in cases]
    passes = tuple(args.passes) if args.passes else PASSES
    jobs = [(c, p, t) for t in threads_list for c in cases for p in passes
            if p in c.passes and _matches(f"{c.label} {p}", args.filter)]
    if not jobs:
        print("error: no benchmark row matches --filter", file=sys.stderr)
        return 2

    cache = None if args.hot else pool_mod.last_level_cache()
    cache_meta = _cache_meta(args.hot, cache)
    info = report.machine_info(threads_list if len(threads_list) > 1 else threads_list[0],
                               cache=cache_meta)
    busy_before = probes.busy_note(max(threads_list))
    if busy_before:
        print(f"bench: warning: {busy_before}", file=sys.stderr)
    rows = []
    progress = _Progress(len(jobs), enabled=not args.no_progress)
    try:
        for case, pass_, threads in jobs:
            label = f"{case.label} {pass_}" + (f" t{threads}" if len(threads_list) > 1 else "")
            try:
                row = measure(case, pass_, threads, repeat=repeat, min_time=min_time,
                              torch=not args.no_torch, ort=not args.no_ort, stat=args.stat,
                              hot=args.hot, cache=cache, floor=args.floor)
            except Exception as exc:  # noqa: BLE001  (a failing row must not hide the rest)
                row = report.new_row(case, pass_, threads, cache=cache_meta["mode"],
                                     error=f"{type(exc).__name__}: {exc}")
                progress.write(f"bench: {label}: {row['error']}")
            else:
                _check_agreement(progress, label, row, case.dtype)
            rows.append(row)
            progress.step(label)
            gc.collect()  # the pools of one row go before the next row's are made
    finally:
        progress.close()

    busy_after = probes.busy_note(max(threads_list))
    busy = list(dict.fromkeys(n for n in (busy_before, busy_after) if n))
    header = (f"numbanorm bench: {info['date']}, {info['cpu']} ({info['cpu_count']} CPUs), "
              f"threads={info['threads']}, numba {info['numba']}, "
              f"torch {info['torch'] or 'not installed'}, "
              f"onnxruntime {info['onnxruntime'] or 'not installed'}\n"
              f"{_cache_line(cache_meta, rows)}\n"
              f"{_STAT_NOTE[args.stat].format(repeat=repeat)}; vs torch = torch/numbanorm, "
              "vs ort = onnxruntime/numbanorm (>1: numbanorm faster; ort: eval forward only); "
              "copies = numbanorm/copy"
              + (f"; floors = numbanorm/floor ({_FLOOR_NOTE[args.floor]}, training passes)"
                 if any(r["floor_s"] is not None for r in rows) else ""))
    if any(r["op"] in FUSED_OPS for r in rows):
        header += ("\nfused-epilogue rows (op with add): numbanorm = the fused call, unfused = "
                   "the plain layer then separate NumPy add/ReLU passes (add+Norm: np add then "
                   "the layer), vs unfused = unfused/fused (>1: fusing is faster); pytorch = "
                   "its module + the same ops, autograd for the step; copies = fused/copy of x")
    for note in busy:
        header += f"\nwarning: {note}"
    print(header, file=out)
    print(report.format_table(rows), file=out)
    notes = report.format_notes(rows)
    if notes:
        print("\n" + notes, file=out)
    if args.json:
        meta = dict(info, repeat=repeat, min_time=min_time, stat=args.stat, busy=busy,
                    quick=args.quick, floor=args.floor)
        report.write_json(args.json, meta, rows)
    if args.plot:
        mode = "hot" if args.hot else "out of cache"
        report.write_plot(rows, args.plot,
                          title=f"numbanorm vs PyTorch and ONNX Runtime ({mode}), "
                          f"threads={info['threads']}, {info['cpu']}, {info['date']}")
    return 1 if any(r["error"] for r in rows) else 0
