"""Timing: interleaved repeats of several callables, and one benchmark row.

Each time is a statistic over repeats of the mean time of a calibrated number of
calls (``timeit`` style, after warm-up calls that also compile). The callables of a
row are timed interleaved, repeat by repeat, so that drift of a noisy machine hits
them alike, and the order changes every repeat (:func:`carryover_orders`). With ``stat="paired"`` (the
default) a ratio is the median of the per-repeat ratios: the callables of one repeat
run back to back, so a burst of load that lasts a repeat or two scales a ratio's
numerator and denominator alike instead of moving one median. ``"median"`` and
``"min"`` take ratios of the medians or of the minima instead.

Every call of every callable reads the next entry of the row's pool
(:mod:`numbanorm.bench.pool`), so calibration, warm-up and timed calls all walk it.
"""

from __future__ import annotations

import gc
import statistics
import time

import numpy as np

from . import floors, peers
from .cases import PASSES, make_epilogue_input, make_input
from .pool import make_pool
from .report import new_row

__all__ = ["STATS", "carryover_orders", "measure", "time_interleaved", "wait_quiet"]

#: Statistics over the repeats that :func:`measure` knows.
STATS = ("paired", "median", "min")


def wait_quiet(least=0.003, most=0.05, step=0.001, busy=0.1):
    """Sleep ``least`` seconds, then until this process's threads stop using the CPU.

    PyTorch, ONNX Runtime and Numba's ``omp`` layer keep their worker threads spinning
    for a while after a parallel region: measured here (2 cores) 1 to 20 ms after a
    LayerNorm (8192, 768) call of each. On a machine with few cores, a block timed
    while another library's threads still spin runs on fewer cores. So after
    ``least``, this sleeps in ``step`` slices until one slice in which the whole
    process used under ``busy`` of a core (``time.process_time`` counts every
    thread), or until ``most`` seconds in all.

    Returns
    -------
    bool
        True when the process went quiet, False when ``most`` ran out first.
    """
    time.sleep(least)
    for _ in range(max(0, round((most - least) / step))):
        t0 = time.process_time()
        time.sleep(step)
        if time.process_time() - t0 < busy * step:
            return True
    return False


def carryover_orders(n):
    """Orders of ``n`` callables, one per repeat, balanced for position and predecessor.

    A callable's time depends on which one ran just before it (another library's threads
    still spinning, the memory it just freed, the allocator state it left), so a plain
    rotation, which keeps every callable behind the same one, would charge one callable
    for another's after-effects in every repeat. These are the rows of a Williams
    design (E. J. Williams, "Experimental designs balanced for the estimation of residual
    effects of treatments", Aust. J. Sci. Res. A 2, 1949): ``n`` rows for even ``n``, ``2 n``
    (the rows and their mirrors) for odd ``n``, in which every callable takes every position
    equally often and follows every other callable equally often.

    Returns
    -------
    list of list of int
    """
    first = [0]
    lo, hi = 1, n - 1
    while len(first) < n:
        if len(first) % 2:
            first.append(lo)
            lo += 1
        else:
            first.append(hi)
            hi -= 1
    rows = [[(v + r) % n for v in first] for r in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return rows


def time_interleaved(runners, repeat=7, min_time=0.05, warmup=1, settle=0.003):
    """Seconds per call of each callable in ``runners`` (name -> callable or None).

    Parameters
    ----------
    runners : dict
        Name -> no-argument callable; None values are left out.
    repeat : int
        Rounds; each times every callable once, in the next order of
        :func:`carryover_orders` (so that no callable always follows the same one).
    min_time : float
        Seconds one repeat of one callable should last; the calls per repeat are
        calibrated from one call after the warm-up.
    warmup : int
        Untimed calls before calibration.
    settle : float
        Before each timed block, :func:`wait_quiet` sleeps at least this long and
        then until the threads the previous block left spinning are idle (at most
        50 ms), so that no block shares its cores with another library's idle
        threads; 0 skips the wait.

    Returns
    -------
    dict
        Name -> dict(median, min, samples (per-repeat seconds per call), number
        (calls per repeat), repeat). The garbage collector is off while timing.
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
        orders = carryover_orders(len(names))
        for rep in range(max(repeat, 1)):
            for name in (names[i] for i in orders[rep % len(orders)]):
                fn = runners[name]
                n = numbers[name]
                if settle > 0:
                    wait_quiet(settle)
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


def _max_abs_diff(a, b, where=None):
    """Largest difference of two outputs (over ``where`` when given, 0.0 where it is
    empty); of every pair of two tuples of outputs."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return max(_max_abs_diff(p, q, where) for p, q in zip(a, b, strict=True))
    diff = np.abs(_to_numpy(a).astype(np.float64) - _to_numpy(b))
    if where is not None:
        diff = diff[where]
    return float(np.max(diff, initial=0.0))


def _agreement(case, pass_, ours, theirs):
    """``max_abs_diff`` of a row's outputs. On a ReLU row's step, elements where the two
    ReLU masks differ are left out: an output within rounding of 0 (a few per million
    here) is positive in one library and not in the other, and its gradient then differs
    by a whole ``dy``; the residual's gradient (the masked dy) shows where."""
    if case.activation == "relu" and pass_ == "train_step":
        same_mask = (_to_numpy(ours[1]) != 0) == (_to_numpy(theirs[1]) != 0)
        return _max_abs_diff(ours, theirs, same_mask)
    return _max_abs_diff(ours, theirs)


def _ratio(stat, pick, num, den):
    """``num / den`` of two timing results: median of per-repeat ratios when paired."""
    if stat == "paired":
        return statistics.median(n / d for n, d in zip(num["samples"], den["samples"], strict=True))
    return num[pick] / den[pick]


def measure(case, pass_, threads=2, *, repeat=7, min_time=0.05, warmup=1, torch=True,
            ort=True, copy=True, unfused=True, check=True, data=None, stat="paired", hot=False,
            cache=None, floor=False):
    """Measure one row: numbanorm and its peers, interleaved, on ``threads`` threads.

    Parameters
    ----------
    case : Case
    pass_ : {"train_forward", "train_step", "eval_forward"}
    threads : int
    repeat, min_time, warmup
        See :func:`time_interleaved`.
    torch, ort, copy : bool
        Time PyTorch, ONNX Runtime (eval forward only, not on fused rows) and the copy.
    unfused : bool
        On a fused-epilogue row (``case.fused``), time numbanorm unfused
        (:func:`~numbanorm.bench.peers.unfused_runner`) too: ``unfused_s`` and
        ``vs_unfused`` = unfused time / fused time.
    check : bool
        Compare numbanorm's output (y, or dx for a step; every output of a fused row)
        on the first pool entry with PyTorch's and ONNX Runtime's (``max_abs_diff``,
        ``ort_max_abs_diff``; on a ReLU row's step, leaving out the few elements whose
        output is within rounding of 0, where the two ReLU masks can differ).
    data : (x, dy) or (x, dy, residual, dsum), optional
        The input (default :func:`make_input`, and :func:`make_epilogue_input` for a
        fused row); the pool's other entries are copies.
    stat : {"paired", "median", "min"}
        Checked before anything is built or timed.
    hot : bool
        Every call reads the same input (default: a pool of at least 4 x L3).
    cache : CacheInfo, optional
        The L3 to size the pool against (default read from sysfs).
    floor : bool or {"traffic", "float64"}
        Time the pass's floor too (:func:`~numbanorm.bench.floors.floor_runner`; training
        passes of plain rows): ``floor_s`` and ``floors`` = numbanorm / floor. True or
        ``"traffic"``: the traffic floor; ``"float64"``: its probe with float64 statistics.

    Returns
    -------
    dict
        A row with the keys of :data:`numbanorm.bench.report.ROW_KEYS`; values that
        could not be measured are None, and ``notes`` says why for a peer.

    Raises
    ------
    ValueError
        For an unknown ``stat`` or ``pass_``, or a pass the row is not measured in
        (``case.passes``: a skip row has no eval forward).
    """
    if stat not in STATS:
        raise ValueError(f"unknown stat {stat!r}; expected one of {STATS}")
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
    if pass_ not in case.passes:
        raise ValueError(f"{case.op} is not measured in {pass_} (its passes: {case.passes})")
    peers.set_threads(threads)
    if data is None:
        data = make_input(case) + (make_epilogue_input(case) if case.fused else (None, None))
    x, dy, residual, dsum = tuple(data) + (None,) * (4 - len(data))
    step = pass_ == "train_step"
    pool = make_pool(x, dy if step else None, residual=residual if case.fused else None,
                     dsum=dsum if case.fused and step else None, hot=hot, cache=cache)
    row = new_row(case, pass_, threads, cache="hot" if hot else "cold",
                  pool_entries=len(pool), pool_bytes=pool.nbytes)
    runners = {"numbanorm": peers.numbanorm_runner(case, pass_, pool)}
    if case.fused and unfused:
        runners["unfused"] = peers.unfused_runner(case, pass_, pool)
    notes = {}
    if torch:
        try:
            runners["torch"] = peers.torch_runner(case, pass_, pool, threads)
        except peers.PeerUnavailable as exc:
            notes["torch"] = str(exc)
    else:
        notes["torch"] = "not measured (switched off)"
    if pass_ == "eval_forward" and not case.fused:
        if ort:
            try:
                runners["ort"] = peers.ort_runner(case, pool, runners["numbanorm"].layer, threads)
            except peers.PeerUnavailable as exc:
                notes["ort"] = str(exc)
        else:
            notes["ort"] = "not measured (switched off)"
    if copy:
        runners["copy"] = peers.copy_runner(pool)
    if floor:
        stats = "traffic" if floor is True else floor
        runners["floor"] = floors.floor_runner(case, pass_, pool, stats)  # None where the pass has none
    result = time_interleaved(runners, repeat=repeat, min_time=min_time, warmup=warmup)
    pick = "median" if stat == "paired" else stat
    ours = result["numbanorm"]
    row["numbanorm_s"] = ours[pick]
    row["samples"] = {name: r["samples"] for name, r in result.items()}
    row["notes"] = notes
    if "torch" in result:
        row["torch_s"] = result["torch"][pick]
        row["vs_torch"] = _ratio(stat, pick, result["torch"], ours)
    if "ort" in result:
        row["ort_s"] = result["ort"][pick]
        row["vs_ort"] = _ratio(stat, pick, result["ort"], ours)
    if "unfused" in result:
        row["unfused_s"] = result["unfused"][pick]
        row["vs_unfused"] = _ratio(stat, pick, result["unfused"], ours)
    if "copy" in result:
        row["copy_s"] = result["copy"][pick]
        row["copies"] = _ratio(stat, pick, ours, result["copy"])
    if "floor" in result:
        row["floor_s"] = result["floor"][pick]
        row["floors"] = _ratio(stat, pick, ours, result["floor"])
    if check:
        got = runners["numbanorm"].at(0)
        if "torch" in runners:
            row["max_abs_diff"] = _agreement(case, pass_, got, runners["torch"].at(0))
        if "ort" in runners:
            row["ort_max_abs_diff"] = _max_abs_diff(got, runners["ort"].at(0))
    return row
