"""Traffic floors: minimal kernels that move the same memory as a training pass.

The copy is the floor of a pass that reads x once and writes y once. A training pass
needs more: its statistics must be complete before the first output, so it reads a
reduction group before writing it, and a layout decides whether the group can stay in
cache in between (a contiguous BatchNorm channel, a LayerNorm row, a GroupNorm block)
or not (a channels-last BatchNorm channel is a column of every row). Where a pass
misses a copies target, the issue asks for the floor of *that* pass: what a minimal
kernel with the same traffic reaches on the same machine.

Each probe here reads and writes what the pass must, in the same order and with the
same groups, and computes as little as it can: one float sum (two for backward) in x's
dtype, then ``y = x * a + b`` (``dx = dy * a - x * b + a``), compiled with
``config.FASTMATH_REDUCE`` (``reassoc`` lets the sums vectorize; no ``nnan``/``ninf``).
It is not a normalization (no float64 accumulation, no stability work, no parameters):
``numbanorm / floor`` is what numbanorm's arithmetic costs over the traffic, and
``floor / copy`` what the traffic costs over one read and one write.

With ``stats="float64"`` (``bench --floor float64``) the probes take the sums that a pass
meeting the spec's accuracy cannot do without, in float64: per group, with ``k`` its first
value, ``sum(x - k)`` and ``sum((x - k)**2)`` (backward: ``sum(dy)`` and
``sum(dy * (x - k))``; the weight-gradient rows in float64), then the same
``y = x * a + a`` with ``a`` rounded to x's dtype. That is the floor of a float64-statistics
pass: on a CPU where converting and accumulating float64 costs more than the memory
traffic hides, it lies above the traffic floor, and ``numbanorm / floor`` is then what
numbanorm does beyond those sums (block checks, the hi/lo mean, parameters). Only the
``channel`` and ``rows`` probes have this variant: their sums stay in registers. A column
probe's float64 sums would need numbanorm's own multi-row sweeps to be a floor at all
(one row at a time, their loads and stores of C accumulators per value ran slower than
numbanorm), so ``columns`` and ``planes`` rows get no float64 floor.

Probes:

* ``channel``: BatchNorm on contiguous (N, C, S) input: per channel, its N planes
  summed from memory, then written from cache (backward: dy and x summed, then dx).
* ``rows``: LayerNorm/RMSNorm rows, GroupNorm blocks and InstanceNorm planes of
  contiguous input: per row, sum then write (backward adds per-thread weight-gradient
  rows for LayerNorm/RMSNorm, whose weight is per element).
* ``columns``: BatchNorm on (N, C) and channels-last input: column sums over all rows
  in parallel chunks, then a second read of x that writes y (backward: the same for
  the two sums of dy and x, then dx).
* ``planes``: GroupNorm/InstanceNorm on channels-last input: per sample, column sums
  of its (S, C) plane, then the plane written from cache.

The ``channel`` probes and the ``rows`` forward prefetch the next plane or row as they
start on one, as numbanorm's passes of those shapes do (``config.PREFETCH``,
:mod:`numbanorm.kernels.cpu.prefetch`): a floor that left it out would not be one. For the
same reason every probe takes its rows and planes as numbanorm's kernels do, as views
without reference counting (:mod:`numbanorm.kernels.cpu.subarrays`).

Eval passes (the copy is their floor) and fused-epilogue rows have no probe.
"""

from __future__ import annotations

import math

import numpy as np

from .. import config
from .._memory import empty

__all__ = ["STATS", "floor_kind", "floor_runner"]

#: The probes' statistics: ``"traffic"`` (float sums in x's dtype, the least arithmetic: the
#: traffic floor) or ``"float64"`` (float64 shifted sums, the floor of a conforming pass).
STATS = ("traffic", "float64")
#: The probes with a float64 variant: those whose groups are contiguous, summed in registers.
FLOAT64_KINDS = ("channel", "rows")

_KERNELS = None


def _kernels():
    """Compile the probes on first use (Numba is imported here, not with the package).

    The ``channel`` and ``rows`` probes take ``f64``: None for the traffic floor's float
    sums in x's dtype, or True for float64 shifted sums (a different type: Numba compiles
    each variant apart and drops the other's branch).
    """
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    import numba
    from numba import prange

    from ..kernels.cpu._jit import cast_like
    from ..kernels.cpu.prefetch import prefetch_slice
    from ..kernels.cpu.subarrays import sub, sub2

    jit = numba.njit(parallel=True, fastmath=set(config.FASTMATH_REDUCE), cache=config.CACHE)

    @jit
    def channel_forward(x3, y3, const, lines, f64):
        n, c, s = x3.shape
        for j in prange(c):
            acc = const[0]
            s1 = 0.0
            s2 = 0.0
            k = np.float64(x3[0, j, 0])
            for i in range(n):
                if lines and i + 1 < n:
                    prefetch_slice(sub2(x3, i + 1, j), lines)
                row = sub2(x3, i, j)
                if f64 is None:
                    for t in range(s):
                        acc += row[t]
                else:
                    for t in range(s):
                        d = np.float64(row[t]) - k
                        s1 += d
                        s2 += d * d
            if f64 is None:
                a = const[1] / (acc + const[2])
            else:
                a = cast_like(const[1] / (s1 + s2 + const[2]), x3)
            if lines and j + 1 < c:
                prefetch_slice(sub2(x3, 0, j + 1), lines)
            for i in range(n):
                row = sub2(x3, i, j)
                out = sub2(y3, i, j)
                for t in range(s):
                    out[t] = row[t] * a + a

    @jit
    def channel_backward(x3, g3, d3, const, lines, f64):
        n, c, s = x3.shape
        for j in prange(c):
            s1 = const[0]
            s2 = const[0]
            u1 = 0.0
            u2 = 0.0
            k = np.float64(x3[0, j, 0])
            for i in range(n):
                if lines and i + 1 < n:
                    prefetch_slice(sub2(x3, i + 1, j), lines)
                    prefetch_slice(sub2(g3, i + 1, j), lines)
                row = sub2(x3, i, j)
                g = sub2(g3, i, j)
                if f64 is None:
                    for t in range(s):
                        s1 += g[t]
                        s2 += g[t] * row[t]
                else:
                    for t in range(s):
                        gv = np.float64(g[t])
                        u1 += gv
                        u2 += gv * (np.float64(row[t]) - k)
            if f64 is None:
                a = const[1] / (s1 + const[2])
                b = s2 * a
            else:
                a64 = const[1] / (u1 + const[2])
                a = cast_like(a64, x3)
                b = cast_like(u2 * a64, x3)
            if lines and j + 1 < c:
                prefetch_slice(sub2(x3, 0, j + 1), lines)
                prefetch_slice(sub2(g3, 0, j + 1), lines)
            for i in range(n):
                row = sub2(x3, i, j)
                g = sub2(g3, i, j)
                out = sub2(d3, i, j)
                for t in range(s):
                    out[t] = g[t] * a - row[t] * b + a

    @jit
    def rows_forward(x2, y2, const, lines, f64):
        rows = x2.shape[0]
        for r in prange(rows):
            if lines and r + 1 < rows:
                prefetch_slice(sub(x2, r + 1), lines)
            row = sub(x2, r)
            out = sub(y2, r)
            if f64 is None:
                acc = const[0]
                for t in range(row.size):
                    acc += row[t]
                a = const[1] / (acc + const[2])
            else:
                k = np.float64(row[0])
                s1 = 0.0
                s2 = 0.0
                for t in range(row.size):
                    d = np.float64(row[t]) - k
                    s1 += d
                    s2 += d * d
                a = cast_like(const[1] / (s1 + s2 + const[2]), x2)
            for t in range(row.size):
                out[t] = row[t] * a + a

    @jit
    def rows_backward(x2, g2, d2, wgrad, per_element, const, f64):
        rows, width = x2.shape
        items = wgrad.shape[0]
        per = -(-rows // items)
        for k in prange(items):
            acc = sub(wgrad, k)
            acc[:] = 0
            for r in range(k * per, min(rows, (k + 1) * per)):
                row = sub(x2, r)
                g = sub(g2, r)
                out = sub(d2, r)
                if f64 is None:
                    s1 = const[0]
                    s2 = const[0]
                    if per_element:
                        for t in range(width):
                            p = g[t] * row[t]
                            s1 += g[t]
                            s2 += p
                            acc[t] += p
                    else:
                        for t in range(width):
                            s1 += g[t]
                            s2 += g[t] * row[t]
                    a = const[1] / (s1 + const[2])
                    b = s2 * a
                else:
                    shift = np.float64(row[0])
                    u1 = 0.0
                    u2 = 0.0
                    if per_element:
                        for t in range(width):
                            gv = np.float64(g[t])
                            q = gv * (np.float64(row[t]) - shift)
                            u1 += gv
                            u2 += q
                            acc[t] += q
                    else:
                        for t in range(width):
                            gv = np.float64(g[t])
                            u1 += gv
                            u2 += gv * (np.float64(row[t]) - shift)
                    a64 = const[1] / (u1 + const[2])
                    a = cast_like(a64, x2)
                    b = cast_like(u2 * a64, x2)
                for t in range(width):
                    out[t] = g[t] * a - row[t] * b + a

    @jit
    def columns_sums(x2, g2, part):
        rows, c = x2.shape
        items = part.shape[0]
        per = -(-rows // items)
        for k in prange(items):
            acc = sub(part, k)
            acc[:] = 0
            for i in range(k * per, min(rows, (k + 1) * per)):
                row = sub(x2, i)
                if g2 is None:
                    for j in range(c):
                        acc[0, j] += row[j]
                else:
                    g = sub(g2, i)
                    for j in range(c):
                        acc[0, j] += g[j]
                        acc[1, j] += g[j] * row[j]

    @jit
    def columns_apply(x2, g2, y2, a, b):
        for i in prange(x2.shape[0]):
            row = sub(x2, i)
            out = sub(y2, i)
            if g2 is None:
                for j in range(row.size):
                    out[j] = row[j] * a[j] + b[j]
            else:
                g = sub(g2, i)
                for j in range(row.size):
                    out[j] = g[j] * a[j] - row[j] * b[j] + a[j]

    @jit
    def planes_forward(x3, y3, acc, const):
        n, s, c = x3.shape
        for i in prange(n):
            plane = sub(x3, i)
            out = sub(y3, i)
            sums = sub(acc, i)
            sums[:] = 0
            for t in range(s):
                row = sub(plane, t)
                for j in range(c):
                    sums[j] += row[j]
            for j in range(c):
                sums[j] = const[1] / (sums[j] + const[2])
            for t in range(s):
                row = sub(plane, t)
                o = sub(out, t)
                for j in range(c):
                    o[j] = row[j] * sums[j] + sums[j]

    @jit
    def planes_backward(x3, g3, d3, acc, const):
        n, s, c = x3.shape
        for i in prange(n):
            plane = sub(x3, i)
            gp = sub(g3, i)
            out = sub(d3, i)
            s1 = sub(acc, i)
            s2 = sub(acc, n + i)
            s1[:] = 0
            s2[:] = 0
            for t in range(s):
                row = sub(plane, t)
                g = sub(gp, t)
                for j in range(c):
                    s1[j] += g[j]
                    s2[j] += g[j] * row[j]
            for j in range(c):
                s1[j] = const[1] / (s1[j] + const[2])
                s2[j] = s2[j] * s1[j]
            for t in range(s):
                row = sub(plane, t)
                g = sub(gp, t)
                o = sub(out, t)
                for j in range(c):
                    o[j] = g[j] * s1[j] - row[j] * s2[j] + s1[j]

    _KERNELS = dict(channel_forward=channel_forward, channel_backward=channel_backward,
                    rows_forward=rows_forward, rows_backward=rows_backward, columns_sums=columns_sums,
                    columns_apply=columns_apply, planes_forward=planes_forward,
                    planes_backward=planes_backward)
    return _KERNELS


def floor_kind(case, pass_):
    """The probe of ``case``'s ``pass_`` (see the module docstring), or None (eval passes,
    fused-epilogue rows)."""
    if pass_ == "eval_forward" or case.fused:
        return None
    cl = case.layout == "channels_last"
    if case.op.startswith("BatchNorm"):
        return "columns" if cl or len(case.shape) == 2 else "channel"
    if case.op in ("LayerNorm", "RMSNorm"):
        return "rows"
    return "planes" if cl else "rows"


def _out(x):
    """An output shaped like the C-contiguous ``x``, allocated as numbanorm's outputs are."""
    return empty(x.shape, x.dtype, work=math.inf)


def floor_runner(case, pass_, pool, stats="traffic"):
    """The floor of ``case``'s ``pass_`` on ``pool``'s entries, or None.

    Parameters
    ----------
    stats : {"traffic", "float64"}
        The probes' sums: in x's dtype (the traffic floor), or float64 shifted sums (the
        floor of a pass whose statistics accumulate in float64; see the module docstring).

    Returns
    -------
    Runner or None
        None for eval passes and fused rows, and with ``stats="float64"`` for the
        ``columns`` and ``planes`` probes as well (see the module docstring).
        Returning y (forward) or dx (train step, after the forward's probe). Outputs are
        allocated per call as numbanorm's are (:func:`numbanorm._memory.empty`).
    """
    from ..kernels.cpu.prefetch import prefetch_lines
    from .peers import Runner

    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
    kind = floor_kind(case, pass_)
    f64 = True if stats == "float64" else None
    if kind is None or (f64 and kind not in FLOAT64_KINDS):
        return None
    k = _kernels()
    step = pass_ == "train_step"
    xs, dys = pool.xs, pool.dys
    x0 = xs[0]
    consts = np.array([0, 1, 1000], x0.dtype)
    lines = prefetch_lines(x0.nbytes)  # the next slice prefetched as numbanorm's passes do

    def dense(a):  # the entry's memory as a C-contiguous array (channels moved last)
        return np.moveaxis(a, 1, -1) if case.layout == "channels_last" else a

    flat = [dense(x) for x in xs]
    flat_dy = [dense(d) for d in dys] if step else None
    n, c = x0.shape[:2]
    if kind == "channel":
        def view(a):
            return a.reshape(n, c, -1)

        def forward(i):
            y = _out(flat[i])
            k["channel_forward"](view(flat[i]), view(y), consts, lines, f64)
            return y

        def backward(i):
            dx = _out(flat[i])
            k["channel_backward"](view(flat[i]), view(flat_dy[i]), view(dx), consts, lines, f64)
            return dx
    elif kind == "rows":
        if case.op in ("LayerNorm", "RMSNorm"):
            width = x0.shape[-1]
        elif case.op.startswith("GroupNorm"):
            width = x0[0].size // case.groups
        else:
            width = x0[0, 0].size
        per_element = case.op in ("LayerNorm", "RMSNorm")
        wgrad = np.zeros((4, width), np.float64 if f64 else x0.dtype)

        def view(a):
            return a.reshape(-1, width)

        def forward(i):
            y = _out(flat[i])
            k["rows_forward"](view(flat[i]), view(y), consts, lines, f64)
            return y

        def backward(i):
            dx = _out(flat[i])
            k["rows_backward"](view(flat[i]), view(flat_dy[i]), view(dx), wgrad, per_element, consts, f64)
            return dx
    elif kind == "columns":
        part = np.zeros((8, 2, c), x0.dtype)

        def view(a):
            return a.reshape(-1, c)

        def apply(x2, g2, y2):
            k["columns_sums"](x2, g2, part)
            s = part.sum(axis=0)
            a = (1 / (s[0] + 1000)).astype(x2.dtype)  # (C,) statistics: small beside the passes
            k["columns_apply"](x2, g2, y2, a, (s[1] * a).astype(x2.dtype) if g2 is not None else a)

        def forward(i):
            y = _out(flat[i])
            apply(view(flat[i]), None, view(y))
            return y

        def backward(i):
            dx = _out(flat[i])
            apply(view(flat[i]), view(flat_dy[i]), view(dx))
            return dx
    else:  # planes
        acc = np.zeros((2 * n, c), x0.dtype)

        def view(a):
            return a.reshape(n, -1, c)

        def forward(i):
            y = _out(flat[i])
            k["planes_forward"](view(flat[i]), view(y), acc, consts)
            return y

        def backward(i):
            dx = _out(flat[i])
            k["planes_backward"](view(flat[i]), view(flat_dy[i]), view(dx), acc, consts)
            return dx

    if step:
        def run(i):
            forward(i)
            return backward(i)
    else:
        run = forward
    return Runner(run, pool)
