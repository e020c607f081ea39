"""The traffic floors (numbanorm.bench.floors): which pass gets which probe, that each probe
reads the groups its pass reads (its output against NumPy), and the floor columns."""

import io

import numpy as np
import pytest

from numbanorm import bench
from numbanorm.bench import floors

FAST = ["--repeat", "1", "--min-time", "0", "--no-progress", "--no-torch", "--no-ort"]


def _first(x, axes):
    """Each group's first value (the float64 probes' shift ``k``), broadcastable against x."""
    return x[tuple(slice(0, 1) if ax in axes else slice(None) for ax in range(x.ndim))]


def _sums_then_apply(x, axes, stats="traffic"):
    """NumPy: ``a = 1 / (sum over axes + 1000)``, ``y = x * a + a`` (float64); with
    ``stats="float64"``, ``a = 1 / (sum(x - k) + sum((x - k)**2) + 1000)``, k the group's first value."""
    if stats == "traffic":
        a = 1.0 / (x.sum(axis=axes, keepdims=True, dtype=np.float64) + 1000.0)
    else:
        d = x - _first(x, axes)
        a = 1.0 / (d.sum(axis=axes, keepdims=True) + (d * d).sum(axis=axes, keepdims=True) + 1000.0)
    return x * a + a


def _backward(x, dy, axes, stats="traffic"):
    """NumPy: ``a = 1 / (sum(dy) + 1000)``, ``b = sum(dy * x) * a``, ``dx = dy * a - x * b + a``;
    with ``stats="float64"``, ``b = sum(dy * (x - k)) * a``."""
    a = 1.0 / (dy.sum(axis=axes, keepdims=True, dtype=np.float64) + 1000.0)
    xs = x if stats == "traffic" else x - _first(x, axes)
    b = (dy * xs).sum(axis=axes, keepdims=True, dtype=np.float64) * a
    return dy * a - x * b + a


def test_floor_kind_of_every_canonical_row():
    kinds = {}
    for case in bench.canonical_cases() + bench.fused_cases():
        for pass_ in case.passes:
            kinds[(case.op, case.layout, len(case.shape), pass_, case.fused)] = bench.floor_kind(case, pass_)
    assert kinds[("BatchNorm2d", "contiguous", 4, "train_forward", False)] == "channel"
    assert kinds[("BatchNorm2d", "channels_last", 4, "train_step", False)] == "columns"
    assert kinds[("BatchNorm1d", "contiguous", 2, "train_forward", False)] == "columns"
    assert kinds[("LayerNorm", "contiguous", 2, "train_step", False)] == "rows"
    assert kinds[("GroupNorm", "contiguous", 4, "train_forward", False)] == "rows"
    assert kinds[("InstanceNorm2d", "channels_last", 4, "train_forward", False)] == "planes"
    assert all(k is None for (_, _, _, pass_, fused), k in kinds.items() if fused or pass_ == "eval_forward")


@pytest.mark.parametrize("case", bench.tiny_cases(), ids=lambda c: c.label)
@pytest.mark.parametrize("pass_", ["train_forward", "train_step"])
@pytest.mark.parametrize("stats", floors.STATS)
def test_probe_reads_the_groups_of_its_pass(case, pass_, stats):
    x, dy = bench.make_input(case)
    x, dy = x.astype(np.float64), dy.astype(np.float64)  # exact enough to compare
    pool = bench.make_pool(x, dy, hot=True)
    run = bench.floor_runner(case, pass_, pool, stats)
    if stats == "float64" and bench.floor_kind(case, pass_) not in floors.FLOAT64_KINDS:
        assert run is None  # column and plane sums have no float64 probe
        return
    got = run()
    # The probe works on memory order: channels last for a channels-last row.
    xm = np.moveaxis(x, 1, -1) if case.layout == "channels_last" else x
    dm = np.moveaxis(dy, 1, -1) if case.layout == "channels_last" else dy
    kind = bench.floor_kind(case, pass_)
    n, c = x.shape[:2]
    if kind == "channel":
        xg, dg, axes = xm.reshape(n, c, -1), dm.reshape(n, c, -1), (0, 2)
    elif kind == "columns":
        xg, dg, axes = xm.reshape(-1, c), dm.reshape(-1, c), (0,)
    elif kind == "planes":
        xg, dg, axes = xm.reshape(n, -1, c), dm.reshape(n, -1, c), (1,)
    else:
        width = {"GroupNorm": x[0].size // (case.groups or 1), "InstanceNorm2d": x[0, 0].size}.get(case.op, x.shape[-1])
        xg, dg, axes = xm.reshape(-1, width), dm.reshape(-1, width), (1,)
    want = _sums_then_apply(xg, axes, stats) if pass_ == "train_forward" else _backward(xg, dg, axes, stats)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-12, atol=1e-12)


def test_no_probe_for_eval_and_fused_rows():
    case = bench.tiny_cases()[0]
    pool = bench.make_pool(*bench.make_input(case), hot=True)
    assert bench.floor_runner(case, "eval_forward", pool) is None
    fused = bench.tiny_fused_cases()[0]
    assert bench.floor_runner(fused, "train_forward", pool) is None


def test_probe_takes_the_next_entry():
    case = bench.Case("LayerNorm", (8, 16))
    x, dy = bench.make_input(case)
    p = bench.make_pool(x, dy, cache=bench.CacheInfo(8 * x.nbytes, "test", True))
    for k, e in enumerate(p.xs):
        e[...] = k
    run = bench.floor_runner(case, "train_forward", p)
    start = p.take()
    for k in range(3):
        y = run()
        v = (start + 1 + k) % len(p)
        np.testing.assert_allclose(y, _sums_then_apply(p.xs[v].astype(np.float64), (1,)), rtol=1e-6)


def test_measure_and_table_with_and_without_floor():
    case = bench.tiny_cases()[3]  # LayerNorm (4, 8)
    row = bench.measure(case, "train_forward", 1, repeat=3, min_time=0, torch=False, ort=False, floor=True)
    assert row["floor_s"] > 0 and row["floors"] > 0
    s = row["samples"]
    assert row["floors"] == pytest.approx(float(np.median(np.array(s["numbanorm"]) / np.array(s["floor"]))))
    eval_row = bench.measure(case, "eval_forward", 1, repeat=1, min_time=0, torch=False, ort=False, floor=True)
    assert eval_row["floor_s"] is None and "floor" not in eval_row["samples"]
    table = bench.format_table([row, eval_row])
    header = table.splitlines()[0]
    assert "floor" in header and "floors" in header
    assert table.splitlines()[3].split()[-1] == "-"  # the eval row's floors cell
    plain = bench.measure(case, "train_forward", 1, repeat=1, min_time=0, torch=False, ort=False)
    assert plain["floor_s"] is None and "floor" not in bench.format_table([plain]).splitlines()[0]


def test_main_floor_flag():
    out = io.StringIO()
    rc = bench.main(["--tiny", *FAST, "--floor", "--filter", "LayerNorm 4x8 contiguous float32"], out=out)
    assert rc == 0, out.getvalue()
    text = out.getvalue()
    assert "floors = numbanorm/floor" in text and " floors" in text
    assert floors.floor_kind(bench.Case("LayerNorm", (4, 8)), "train_step") == "rows"


def test_main_floor_float64_and_a_bad_kind():
    out = io.StringIO()
    rc = bench.main(["--tiny", *FAST, "--floor", "float64", "--filter", "LayerNorm 4x8 contiguous float32",
                     "--pass", "train_forward"], out=out)
    assert rc == 0, out.getvalue()
    text = out.getvalue()
    assert "floors = numbanorm/floor (the pass's traffic with float64 shifted sums" in text
    with pytest.raises(SystemExit):
        bench.main(["--tiny", *FAST, "--floor", "float32"], out=io.StringIO())
    case = bench.tiny_cases()[3]
    pool = bench.make_pool(*bench.make_input(case), hot=True)
    with pytest.raises(ValueError, match="stats must be one of"):
        bench.floor_runner(case, "train_forward", pool, "float32")


def test_measure_float64_floor_row():
    case = bench.tiny_cases()[3]  # LayerNorm (4, 8)
    row = bench.measure(case, "train_step", 1, repeat=2, min_time=0, torch=False, ort=False, floor="float64")
    assert row["floor_s"] > 0 and row["floors"] > 0
