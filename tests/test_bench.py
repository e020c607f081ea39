"""Code paths of the benchmark tooling: ``numbanorm.bench`` and the asv suite.

Tiny shapes only, one repeat, no calibration time: these tests check that the
benchmarks run and produce a table, a JSON file and a PNG, that every callable reads
its input in the cache state it claims, and that the ONNX Runtime peer computes what
numbanorm computes. They never assert a timing (machines here are noisy; targets are
measured by ``python -m numbanorm bench``).
"""

import importlib
import inspect
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest

from numbanorm import bench
from numbanorm.bench import peers, pool, report, timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--repeat", "1", "--min-time", "0", "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAVE_ORT = bench.import_onnxruntime() is not None
SMALL_L3 = bench.CacheInfo(64 * 1024, "a test's small L3", True)


def _table_rows(text):
    """The header and body lines of the table printed by main (from the dashed rule
    to the first blank line; the notes come after it)."""
    lines = text.strip().splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"})
    body = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        body.append(line)
    return lines[rule - 1], body


def _cells(line):
    """The cells of a table line (cells are separated by at least two spaces)."""
    return re.split(r"\s{2,}", line.strip())


def _column(header, body, name):
    index = _cells(header).index(name)
    return [_cells(line)[index] for line in body]


def test_main_tiny_writes_table_json_and_png(tmp_path):
    out = io.StringIO()
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = bench.main(["--tiny", *FAST, "--json", str(json_path), "--plot", str(png_path)],
                    out=out)
    assert rc == 0, out.getvalue()
    header, body = _table_rows(out.getvalue())
    for column in ("op", "shape", "layout", "dtype", "pass", "numbanorm", "unfused", "pytorch",
                   "ort", "copy", "vs torch", "vs unfused", "vs ort", "copies"):
        assert column in header
    cases = bench.tiny_cases() + bench.tiny_fused_cases()
    assert len(body) == sum(len(c.passes) for c in cases)
    assert not any("error" in line for line in body)
    # ONNX Runtime cells: "-" on training passes and fused rows, a value (or n/a) on eval rows;
    # unfused cells: "-" except on fused rows
    for line, ort, unfused in zip(body, _column(header, body, "vs ort"),
                                  _column(header, body, "vs unfused"), strict=True):
        fused = _cells(line)[0] in bench.FUSED_OPS
        assert (ort != "-") == ("eval_forward" in line and not fused)
        assert (unfused != "-") == fused
    data = json.loads(json_path.read_text())
    assert data["meta"]["threads"] == 2
    assert data["meta"]["cache"]["mode"] == "cold"
    rows = data["rows"]
    assert len(rows) == len(body)
    assert {r["pass"] for r in rows} == set(bench.PASSES)
    assert {r["op"] for r in rows} == {c.op for c in cases}
    for r in rows:
        assert tuple(r) == bench.ROW_KEYS
        assert r["error"] is None
        assert r["numbanorm_s"] > 0 and r["copy_s"] > 0
        assert r["cache"] == "cold" and r["pool_entries"] >= 2
        # default --stat paired: median times, ratios = medians of the per-repeat ratios
        ours = r["samples"]["numbanorm"]
        assert len(ours) == data["meta"]["repeat"]
        assert r["numbanorm_s"] == pytest.approx(statistics.median(ours))
        assert r["copies"] == pytest.approx(statistics.median(
            o / c for o, c in zip(ours, r["samples"]["copy"], strict=True)))
        if data["meta"]["torch"] is not None:
            assert r["vs_torch"] == pytest.approx(statistics.median(
                t / o for t, o in zip(r["samples"]["torch"], ours, strict=True)))
        if r["op"] in bench.FUSED_OPS:
            assert r["vs_unfused"] == pytest.approx(statistics.median(
                u / o for u, o in zip(r["samples"]["unfused"], ours, strict=True)))
        else:
            assert r["unfused_s"] is None and r["vs_unfused"] is None
            assert "unfused" not in r["samples"]
        if r["pass"] != "eval_forward" or r["op"] in bench.FUSED_OPS:
            assert r["ort_s"] is None and "ort" not in r["samples"] and "ort" not in r["notes"]
        elif r["ort_s"] is not None:
            assert r["vs_ort"] == pytest.approx(statistics.median(
                t / o for t, o in zip(r["samples"]["ort"], ours, strict=True)))
        else:
            assert r["notes"]["ort"]  # n/a says why
    assert png_path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("stat", ["median", "min"])
def test_stat_median_and_min_give_ratios_of_the_statistic(stat):
    case = bench.Case("LayerNorm", (4, 8))
    r = bench.measure(case, "eval_forward", repeat=3, min_time=0.001, stat=stat)
    pick = statistics.median if stat == "median" else min
    assert r["numbanorm_s"] == pytest.approx(pick(r["samples"]["numbanorm"]))
    assert r["copies"] == pytest.approx(r["numbanorm_s"] / r["copy_s"])
    if r["torch_s"] is not None:
        assert r["vs_torch"] == pytest.approx(r["torch_s"] / r["numbanorm_s"])
    if r["ort_s"] is not None:
        assert r["vs_ort"] == pytest.approx(r["ort_s"] / r["numbanorm_s"])


def test_unknown_stat_is_refused_before_anything_is_timed(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("timed or built before the stat was checked")

    monkeypatch.setattr(timing, "time_interleaved", must_not_run)
    monkeypatch.setattr(timing, "make_input", must_not_run)
    monkeypatch.setattr(timing, "make_pool", must_not_run)
    with pytest.raises(ValueError, match="unknown stat 'mean'"):
        bench.measure(bench.Case("LayerNorm", (4, 8)), "train_forward", repeat=1, min_time=0.001, stat="mean")
    # the command line refuses it while parsing, before any row
    monkeypatch.setattr("numbanorm.bench.cli.measure", must_not_run)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny", *FAST, "--stat", "mean"])
    assert exc.value.code == 2


def test_main_without_torch_says_na(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "import_torch", lambda: None)
    out = io.StringIO()
    json_path, png_path = tmp_path / "b.json", tmp_path / "b.png"
    cases = [bench.Case("LayerNorm", (4, 8)), bench.Case("BatchNorm2d", (2, 4, 3, 3))]
    rc = bench.main([*FAST, "--json", str(json_path), "--plot", str(png_path)], cases=cases,
                    out=out)
    assert rc == 0, out.getvalue()
    header, body = _table_rows(out.getvalue())
    assert len(body) == 6
    for line in body:  # pytorch time and vs torch (and ORT's two where it is missing)
        ort_na = 2 if "eval_forward" in line and not HAVE_ORT else 0
        assert line.count("n/a") == 2 + ort_na
    assert set(_column(header, body, "pytorch")) == set(_column(header, body, "vs torch")) == {"n/a"}
    assert "n/a pytorch: PyTorch is not installed (6 rows)" in out.getvalue()
    data = json.loads(json_path.read_text())
    assert data["meta"]["torch"] is None
    assert all(r["torch_s"] is None and r["vs_torch"] is None for r in data["rows"])
    assert all(r["notes"]["torch"] == "PyTorch is not installed" for r in data["rows"])
    assert all(r["copies"] > 0 for r in data["rows"])
    assert png_path.read_bytes()[:8] == PNG_MAGIC


def test_no_torch_option(tmp_path):
    out = io.StringIO()
    rc = bench.main(["--tiny", *FAST, "--no-torch", "--filter", "RMSNorm"], out=out)
    assert rc == 0
    _, body = _table_rows(out.getvalue())
    # RMSNorm's three passes, add+RMSNorm's two
    assert len(body) == 5 and all("n/a" in line for line in body)


def test_plot_without_matplotlib_is_one_clear_line(tmp_path, monkeypatch, capsys):
    def missing():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "import_pyplot", missing)
    rc = bench.main(["--tiny", *FAST, "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert "matplotlib" in err and "numbanorm[bench]" in err
    assert not (tmp_path / "p.png").exists()


def test_progress_bar_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    out = io.StringIO()
    rc = bench.main(["--tiny", "--repeat", "1", "--min-time", "0", "--filter",
                     "LayerNorm 4x8 contiguous float32", "--pass", "eval_forward"], out=out)
    assert rc == 0
    assert len(_table_rows(out.getvalue())[1]) == 1


def test_filter_pass_and_threads_list():
    out = io.StringIO()
    rc = bench.main(["--tiny", *FAST, "--filter", "layernorm", "--filter", "rmsnorm",
                     "--pass", "train_step", "--threads", "1,2"], out=out)
    assert rc == 0
    header, body = _table_rows(out.getvalue())
    assert "threads" in header
    # LayerNorm float32 and float64, RMSNorm, add+LayerNorm, add+RMSNorm; one pass; two
    # thread counts
    assert len(body) == 5 * 2
    assert all("train_step" in line for line in body)
    assert {line.split()[0] for line in body} == {"LayerNorm", "RMSNorm", "add+LayerNorm",
                                                  "add+RMSNorm"}


def test_usage_errors(capsys):
    import numba

    assert bench.main(["--tiny", *FAST, "--filter", "no such layer"]) == 2
    assert "--filter" in capsys.readouterr().err
    too_many = numba.config.NUMBA_NUM_THREADS + 1
    assert bench.main(["--tiny", *FAST, "--threads", str(too_many)]) == 2
    assert "NUMBA_NUM_THREADS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--threads", "0"])


def test_failing_row_is_reported_and_the_rest_runs(monkeypatch, tmp_path):
    real = peers.make_numbanorm_layer

    def flaky(case):
        if case.op == "RMSNorm":
            raise RuntimeError("boom")
        return real(case)

    monkeypatch.setattr(peers, "make_numbanorm_layer", flaky)
    out = io.StringIO()
    json_path = tmp_path / "b.json"
    cases = [bench.Case("RMSNorm", (4, 8)), bench.Case("LayerNorm", (4, 8))]
    rc = bench.main([*FAST, "--pass", "eval_forward", "--json", str(json_path)], cases=cases,
                    out=out)
    assert rc == 1
    _, body = _table_rows(out.getvalue())
    assert "error" in body[0] and "error" not in body[1]
    # the error row has the same keys as a measured one
    failed, measured = json.loads(json_path.read_text())["rows"]
    assert tuple(failed) == tuple(measured) == bench.ROW_KEYS
    assert failed["error"] == "RuntimeError: boom" and failed["numbanorm_s"] is None
    assert failed["shape"] == [4, 8] and failed["cache"] == "cold"


def test_row_schema():
    case = bench.Case("GroupNorm", (2, 4, 3, 3), groups=2)
    row = bench.new_row(case, "eval_forward", 2, error="ValueError: x")
    assert tuple(row) == bench.ROW_KEYS
    assert row["groups"] == 2 and row["nbytes"] == 2 * 4 * 9 * 4 and row["notes"] == {}
    measured = bench.measure(case, "eval_forward", threads=1, repeat=1, min_time=0.0)
    assert tuple(measured) == bench.ROW_KEYS
    with pytest.raises(KeyError, match="speed"):
        bench.new_row(case, "eval_forward", 2, speed=1.0)


@pytest.mark.parametrize("pass_", bench.PASSES)
def test_measure_row_and_agreement_with_torch(pass_):
    case = bench.Case("BatchNorm2d", (3, 4, 5, 2), "channels_last")
    row = bench.measure(case, pass_, threads=1, repeat=1, min_time=0.0)
    assert row["shape"] == [3, 4, 5, 2] and row["pass"] == pass_ and row["threads"] == 1
    assert row["numbanorm_s"] > 0 and row["copy_s"] > 0
    if bench.import_torch() is not None:
        assert row["torch_s"] > 0
        assert row["max_abs_diff"] < 1e-4
    if pass_ == "eval_forward" and HAVE_ORT:
        assert row["ort_s"] > 0 and row["vs_ort"] > 0
        assert row["ort_max_abs_diff"] < 1e-4
    else:
        assert row["ort_s"] is None and row["ort_max_abs_diff"] is None
    only_copy = bench.measure(case, pass_, threads=1, repeat=1, min_time=0.0, torch=False,
                              ort=False)
    assert only_copy["torch_s"] is None and only_copy["copies"] > 0
    assert only_copy["ort_s"] is None


def test_make_input_layouts_and_dtypes():
    x, dy = bench.make_input(bench.Case("GroupNorm", (2, 6, 3, 4), "channels_last", "float64"))
    assert x.shape == dy.shape == (2, 6, 3, 4)
    assert x.dtype == np.float64
    assert x.transpose(0, 2, 3, 1).flags.c_contiguous and not x.flags.c_contiguous
    x2, _ = bench.make_input(bench.Case("GroupNorm", (2, 6, 3, 4), "channels_last", "float64"))
    np.testing.assert_array_equal(x, x2)  # deterministic
    x, _ = bench.make_input(bench.Case("InstanceNorm1d", (2, 3, 5), "channels_last"))
    assert x.transpose(0, 2, 1).flags.c_contiguous and x.dtype == np.float32
    x, _ = bench.make_input(bench.Case("LayerNorm", (4, 8)))
    assert x.flags.c_contiguous


def test_case_validation():
    assert bench.Case("GroupNorm", (2, 64, 3, 3)).groups == 32
    assert bench.Case("GroupNorm", (2, 6, 3, 3)).groups == 2
    with pytest.raises(ValueError, match="divisible"):
        bench.Case("GroupNorm", (2, 6, 3, 3), groups=4)
    with pytest.raises(ValueError, match="channels_last"):
        bench.Case("LayerNorm", (4, 8), "channels_last")
    with pytest.raises(ValueError, match="unknown op"):
        bench.Case("Dropout", (4, 8))
    with pytest.raises(ValueError, match="dimensions"):
        bench.Case("BatchNorm2d", (4, 8))
    with pytest.raises(ValueError, match="dtype"):
        bench.Case("LayerNorm", (4, 8), dtype="float16")


def test_canonical_cases_are_the_spec_rows():
    cases = bench.canonical_cases()
    assert len(cases) == 14 and len(set(cases)) == 14
    assert sum(c.dtype == "float64" for c in cases) == 2
    assert sum(c.layout == "channels_last" for c in cases) == 3
    assert all(c.groups == 32 for c in cases if c.op == "GroupNorm")
    assert all(c.shape != (64, 128, 56, 56) for c in bench.quick_cases())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_carryover_orders_balance_positions_and_predecessors(n):
    from numbanorm.bench.timing import carryover_orders

    orders = carryover_orders(n)
    assert len(orders) == (n if n % 2 == 0 else 2 * n)
    assert all(sorted(o) == list(range(n)) for o in orders)
    reps = len(orders) // n
    for pos in range(n):  # every callable in every position equally often
        assert sorted(o[pos] for o in orders) == sorted(list(range(n)) * reps)
    pairs = [(o[i - 1], o[i]) for o in orders for i in range(1, n)]
    expected = sorted((a, b) for a in range(n) for b in range(n) if a != b) * reps
    assert sorted(pairs) == sorted(expected)  # every callable follows every other equally often


def test_time_interleaved_runs_the_carryover_orders():
    from numbanorm.bench.timing import carryover_orders

    seen = []
    names = ["numbanorm", "torch", "ort", "copy"]
    runners = {name: (lambda name=name: seen.append(name)) for name in names}
    bench.time_interleaved(runners, repeat=5, min_time=0.0, warmup=0, settle=0)
    timed = seen[len(names):]  # after the calibration call of each (one call per block here)
    expected = [names[i] for rep in range(5) for i in carryover_orders(4)[rep % 4]]
    assert timed == expected
    copy_after = {timed[i - 1] for i in range(1, len(timed)) if timed[i] == "copy"}
    assert copy_after == {"numbanorm", "torch", "ort"}  # a rotation kept it behind ort alone


def test_time_interleaved_and_format_table():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
        return fn

    res = bench.time_interleaved({"a": make("a"), "b": make("b"), "none": None}, repeat=3,
                                 min_time=0.0, warmup=2, settle=0)
    assert set(res) == {"a", "b"}
    assert res["a"]["repeat"] == 3 and res["a"]["median"] > 0 and res["a"]["number"] >= 1
    assert calls["a"] == 2 + 1 + 3 * res["a"]["number"]

    case = bench.Case("GroupNorm", (2, 64, 3, 3), groups=32)
    row = bench.new_row(case, "train_step", 2, numbanorm_s=2e-6, torch_s=3e-3, copy_s=1.5,
                        vs_torch=1500.0, copies=1.3e-6)
    err = bench.new_row(case, "eval_forward", 1, error="ValueError: bad")
    text = bench.format_table([row, err])
    header, body = _table_rows(text)
    assert "threads" in header
    assert "GroupNorm G=32" in body[0] and "2.0 us" in body[0] and "3.00 ms" in body[0]
    assert "1.500 s" in body[0] and "1500.00" in body[0]
    assert _column(header, body[:1], "ort") == _column(header, body[:1], "vs ort") == ["-"]
    assert "error" in body[1]


def test_wait_quiet_waits_for_spinning_threads(monkeypatch):
    # a fake process whose other threads use a whole core for 7 slices, then stop
    busy_slices = iter([1.0] * 7 + [0.0] * 100)
    clock = {"cpu": 0.0, "sleeps": 0}

    def sleep(seconds):
        clock["sleeps"] += 1
        clock["cpu"] += next(busy_slices) * seconds

    monkeypatch.setattr(timing.time, "sleep", sleep)
    monkeypatch.setattr(timing.time, "process_time", lambda: clock["cpu"])
    assert bench.wait_quiet(least=0.003, most=0.05, step=0.001)
    assert clock["sleeps"] == 1 + 7  # the first sleep is `least`, busy; 6 more busy, then one quiet
    busy_slices = iter([1.0] * 1000)
    clock["sleeps"] = 0
    assert not bench.wait_quiet(least=0.003, most=0.05, step=0.001)  # gives up after `most`
    assert clock["sleeps"] == 1 + 47


def test_peak_extra_bytes_sees_a_temporary():
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc")
    x = np.ones(2_000_000)
    extra = bench.peak_extra_bytes(lambda: x.astype(np.float32).astype(np.float64), x.nbytes)
    if extra is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert extra > 0.8 * x.nbytes / 2  # the float32 temporary


def test_import_numbanorm_stays_light():
    code = ("import sys, numbanorm, numbanorm.bench; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------------------- cache state


def _write_cache_dir(root, entries):
    for i, (level, size) in enumerate(entries):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(f"{size}\n")
    return str(root)


def test_last_level_cache_from_sysfs(tmp_path):
    root = _write_cache_dir(tmp_path / "a", [(1, "32K"), (1, "32K"), (2, "1024K"), (3, "32768K")])
    info = bench.last_level_cache(root)
    assert info.l3_bytes == 32 * 2**20 and info.from_sysfs and root in info.note
    # another unit, an unreadable entry skipped
    root = _write_cache_dir(tmp_path / "b", [(2, "2M"), (3, "96M"), (3, "junk")])
    assert bench.last_level_cache(root).l3_bytes == 96 * 2**20
    assert pool.parse_cache_size("512") == 512
    with pytest.raises(ValueError):
        pool.parse_cache_size("big")


def test_last_level_cache_falls_back_with_a_note(tmp_path):
    for root in (str(tmp_path / "missing"), _write_cache_dir(tmp_path / "c", [(1, "48K"), (2, "2048K")])):
        info = bench.last_level_cache(root)
        assert info.l3_bytes == pool.L3_FALLBACK_BYTES == 32 * 2**20
        assert not info.from_sysfs and "fallback" in info.note and "assumed" in info.note


def _extent(a):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


@pytest.mark.parametrize("layout", bench.LAYOUTS)
def test_pool_entries_are_distinct_and_total_four_l3(layout):
    case = bench.Case("BatchNorm2d", (4, 8, 4, 8), layout)  # 4 KiB
    x, dy = bench.make_input(case)
    p = bench.make_pool(x, dy, cache=SMALL_L3)
    assert len(p) == math.ceil(4 * SMALL_L3.l3_bytes / x.nbytes) == 64
    assert p.nbytes >= 4 * SMALL_L3.l3_bytes and not p.below_target and not p.hot
    extents = sorted(_extent(a) for a in p.xs + p.dys)
    assert len(extents) == 2 * len(p)
    assert all(end <= start for (_, end), (start, _) in zip(extents[:-1], extents[1:], strict=True))
    for xi, di in zip(p.xs, p.dys, strict=True):
        assert xi.strides == x.strides and di.strides == dy.strides  # same layout
        np.testing.assert_array_equal(xi, x)  # same values: every call does the same work
        np.testing.assert_array_equal(di, dy)
    assert p.xs[0] is x


def test_pool_cursor_is_shared_and_walks_every_entry():
    x = np.zeros(16, np.float32)
    p = bench.Pool(bench.make_pool(x, cache=bench.CacheInfo(64, "tiny", True)).xs)
    assert len(p) == 4
    seen = []
    a = bench.Runner(lambda i: seen.append(("a", i)), p)
    b = bench.Runner(lambda i: seen.append(("b", i)), p)
    for _ in range(3):
        a(), b()
    # one cursor for every callable: an entry is read again only after all the others
    assert [i for _, i in seen] == [0, 1, 2, 3, 0, 1]
    a.at(2)
    assert seen[-1] == ("a", 2) and p.take() == 2  # at() does not move the cursor


def test_pool_caps(monkeypatch):
    # the largest canonical input gets two entries, a 25.7 MB one six (32 MiB L3)
    l3 = 32 * 2**20
    assert bench.pool_entries(64 * 128 * 56 * 56 * 4, l3) == 2
    assert bench.pool_entries(32 * 64 * 56 * 56 * 4, l3) == 6
    assert bench.pool_entries(128, l3) == pool.POOL_MAX_ENTRIES
    monkeypatch.setattr(pool, "POOL_CAP_BYTES", 16 * 1024)
    x = np.zeros(1024, np.float32)  # 4 KiB
    p = bench.make_pool(x, cache=SMALL_L3)
    assert len(p) == 4 and p.below_target  # the cap wins over 4 x L3
    monkeypatch.setattr(pool, "POOL_CAP_BYTES", 1024)
    assert len(bench.make_pool(x, cache=SMALL_L3)) == 2  # never fewer than two


def test_every_peer_reads_the_pool():
    case = bench.Case("LayerNorm", (8, 16))
    x, dy = bench.make_input(case)
    p = bench.make_pool(x, dy, cache=bench.CacheInfo(8 * x.nbytes, "test", True))
    assert len(p) == 32
    copy = bench.copy_runner(p)
    for k, e in enumerate(p.xs):
        e[...] = k  # told apart, to see which entry each call copied
    start = p.take()
    outs = [copy() for _ in range(len(p))]
    assert all(o.ctypes.data % 64 == 0 for o in outs)
    for k, o in enumerate(outs):  # each call copied the next entry
        assert not np.shares_memory(o, p.xs[(start + 1 + k) % len(p)])
        np.testing.assert_array_equal(o, p.xs[(start + 1 + k) % len(p)].ravel())
    # The copy's loop adds -0.0 (so that it stays a vector loop, not memcpy): bit for bit.
    special = np.array([-0.0, 0.0, np.inf, -np.inf, np.nan, 1e-45, -3.5], np.float32)
    for e in p.xs:
        e.ravel()[:special.size] = special
    got = copy()
    assert got[:special.size].tobytes() == special.tobytes()
    nb = bench.numbanorm_runner(case, "train_step", p)
    start = p.take()
    nb()
    assert p.take() == (start + 2) % len(p)  # the step took one entry (x and dy together)


def test_main_pool_follows_the_l3_size(monkeypatch, tmp_path):
    monkeypatch.setattr(pool, "last_level_cache", lambda: SMALL_L3)
    out = io.StringIO()
    json_path = tmp_path / "b.json"
    rc = bench.main(["--tiny", *FAST, "--filter", "LayerNorm 4x8 contiguous float32",
                     "--json", str(json_path)], out=out)
    assert rc == 0
    assert "4 x L3 = 0.25 MiB" in out.getvalue() and SMALL_L3.source in out.getvalue()
    data = json.loads(json_path.read_text())
    assert data["meta"]["cache"]["l3_bytes"] == SMALL_L3.l3_bytes
    for r in data["rows"]:
        assert r["cache"] == "cold" and r["pool_bytes"] >= 4 * SMALL_L3.l3_bytes
        assert r["pool_entries"] == 4 * SMALL_L3.l3_bytes // (4 * 8 * 4)


def test_hot_reads_one_input(tmp_path, monkeypatch):
    def no_sysfs():
        raise AssertionError("--hot needs no cache size")

    monkeypatch.setattr(pool, "last_level_cache", no_sysfs)
    out = io.StringIO()
    json_path = tmp_path / "b.json"
    rc = bench.main(["--tiny", *FAST, "--hot", "--filter", "BatchNorm2d 2x4x3x3 channels_last",
                     "--json", str(json_path)], out=out)
    assert rc == 0
    assert "cache: hot" in out.getvalue()
    data = json.loads(json_path.read_text())
    assert data["meta"]["cache"]["mode"] == "hot"
    assert len(data["rows"]) == 3
    for r in data["rows"]:
        assert r["cache"] == "hot" and r["pool_entries"] == 1 and r["pool_bytes"] == r["nbytes"]
    x, dy = bench.make_input(bench.Case("LayerNorm", (4, 8)))
    p = bench.make_pool(x, dy, hot=True)
    assert p.hot and p.xs[0] is x and p.dys[0] is dy and [p.take() for _ in range(3)] == [0, 0, 0]


# ---------------------------------------------------------------- fused epilogue

FUSED_TEST_CASES = bench.tiny_fused_cases() + [
    bench.Case("BatchNorm2d+add+relu", (3, 4, 5, 2), "channels_last", "float64"),
    bench.Case("add+LayerNorm", (4, 8), dtype="float64"),
]
FUSED_ROWS = [(c, p) for c in FUSED_TEST_CASES for p in c.passes]


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _fused_pool(case, pass_, seed=5):
    x, dy = bench.make_input(case, seed=seed)
    residual, dsum = bench.make_epilogue_input(case, seed=seed + 1)
    step = pass_ == "train_step"
    return bench.make_pool(x, dy if step else None, residual=residual,
                           dsum=dsum if step else None, cache=SMALL_L3)


def _random_params(layer, rng):
    for name in ("weight", "bias", "running_mean"):
        arr = getattr(layer, name, None)
        if arr is not None:
            arr[...] = rng.standard_normal(arr.shape)
    if getattr(layer, "running_var", None) is not None:
        layer.running_var[...] = rng.uniform(0.5, 2.0, layer.running_var.shape)


@pytest.mark.parametrize(("case", "pass_"), FUSED_ROWS, ids=lambda v: getattr(v, "label", v))
def test_fused_and_unfused_compute_the_same(case, pass_):
    """The two numbanorm callables of a fused row: same outputs, same gradients (of x, the
    residual, the parameters), same running statistics, on a pool entry other than the first."""
    p = _fused_pool(case, pass_)
    fused_layer = bench.make_numbanorm_layer(case)
    plain_layer = bench.make_numbanorm_layer(case.plain)
    assert getattr(fused_layer, "activation", None) == case.activation
    assert getattr(plain_layer, "activation", None) is None
    _random_params(fused_layer, np.random.default_rng(1))
    plain_layer.load_state_dict(fused_layer.state_dict())
    fused = bench.numbanorm_runner(case, pass_, p, fused_layer)
    unfused = bench.unfused_runner(case, pass_, p, plain_layer)
    got, expected = _as_tuple(fused.at(3)), _as_tuple(unfused.at(3))
    n_out = 2 if case.skip or pass_ == "train_step" else 1
    assert len(got) == len(expected) == n_out
    tol = 1e-5 if case.dtype == "float32" else 1e-12
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape == case.shape and a.dtype == b.dtype == np.dtype(case.dtype)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    if case.skip:  # the sum, and the step's gradient of x and of the residual alike
        if pass_ == "train_step":
            assert got[0] is got[1]  # one array: the gradient of x is the residual's
        else:
            np.testing.assert_allclose(got[1], p.xs[3] + p.residuals[3], rtol=tol, atol=tol)
    if pass_ == "train_step":
        for name in ("grad_weight", "grad_bias"):
            a, b = getattr(fused_layer, name), getattr(plain_layer, name)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for name in ("running_mean", "running_var"):
        a, b = getattr(fused_layer, name, None), getattr(plain_layer, name, None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize(("case", "pass_"), FUSED_ROWS, ids=lambda v: getattr(v, "label", v))
def test_fused_rows_agree_with_torch(case, pass_):
    torch = pytest.importorskip("torch")
    p = _fused_pool(case, pass_)
    layer = bench.make_numbanorm_layer(case)
    _random_params(layer, np.random.default_rng(2))
    ours = _as_tuple(bench.numbanorm_runner(case, pass_, p, layer).at(1))
    run = bench.torch_runner(case, pass_, p, threads=1)
    run.module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()})
    theirs = _as_tuple(run.at(1))
    assert len(ours) == len(theirs)
    tol = 1e-4 if case.dtype == "float32" else 1e-10
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=tol, atol=tol)


def test_unfused_step_is_the_documented_composition():
    """unfused_runner's BatchNorm step is exactly: y = bn(x); y += r; relu; g = dy * (y > 0);
    dx = bn.backward(g); and the skip step ds = norm.backward(dy) + dsum."""
    case = bench.Case("BatchNorm2d+add+relu", (2, 4, 3, 3))
    p = _fused_pool(case, "train_step")
    dx, g = bench.unfused_runner(case, "train_step", p).at(0)
    bn = bench.make_numbanorm_layer(case.plain)
    y = np.maximum(bn(p.xs[0]) + p.residuals[0], 0)
    np.testing.assert_array_equal(g, p.dys[0] * (y > 0))
    np.testing.assert_array_equal(dx, bn.backward(g))
    case = bench.Case("add+RMSNorm", (4, 8))
    p = _fused_pool(case, "train_step")
    ds, ds2 = bench.unfused_runner(case, "train_step", p).at(0)
    rms = bench.make_numbanorm_layer(case.plain)
    rms(p.xs[0] + p.residuals[0])
    assert ds is ds2
    np.testing.assert_array_equal(ds, rms.backward(p.dys[0]) + p.dsums[0])


@pytest.mark.parametrize("layout", bench.LAYOUTS)
def test_fused_pool_holds_every_input(layout):
    """Every array a fused step reads (x, residual, dy, dsum) has its own entry per call."""
    case = bench.Case("add+LayerNorm", (8, 16)) if layout == "contiguous" else \
        bench.Case("BatchNorm2d+add+relu", (4, 8, 4, 8), layout)
    p = _fused_pool(case, "train_step")
    arrays = [p.xs, p.dys, p.residuals] + ([p.dsums] if case.skip else [])
    assert p.dsums is None or len(p.dsums) == len(p)
    assert all(len(a) == len(p) >= 2 for a in arrays)
    extents = sorted(_extent(e) for a in arrays for e in a)
    assert len(extents) == len(arrays) * len(p)
    assert all(end <= start for (_, end), (start, _) in zip(extents[:-1], extents[1:], strict=True))
    assert all(r.strides == p.xs[0].strides for r in p.residuals)
    # each call reads its own entry's residual: change one, only that entry's output moves
    run = bench.numbanorm_runner(case, "train_forward", p)
    before = _as_tuple(run.at(1))[0].copy()
    p.residuals[1] += 1
    assert not np.array_equal(_as_tuple(run.at(1))[0], before)
    np.testing.assert_array_equal(_as_tuple(run.at(2))[0], before)
    # and the runners take one entry per call, with the pool's shared cursor
    start = p.take()
    bench.unfused_runner(case, "train_step", p)()
    assert p.take() == (start + 2) % len(p)


def test_fused_row_schema_and_vs_unfused():
    case = bench.Case("add+LayerNorm", (4, 8))
    row = bench.measure(case, "train_step", threads=1, repeat=3, min_time=0.0)
    assert tuple(row) == bench.ROW_KEYS and row["error"] is None
    assert row["op"] == "add+LayerNorm" and row["shape"] == [4, 8]
    assert row["unfused_s"] > 0 and row["numbanorm_s"] > 0 and row["copy_s"] > 0
    assert row["vs_unfused"] == pytest.approx(statistics.median(
        u / f for u, f in zip(row["samples"]["unfused"], row["samples"]["numbanorm"], strict=True)))
    assert row["ort_s"] is None and row["vs_ort"] is None and "ort" not in row["notes"]
    if bench.import_torch() is not None:
        assert row["vs_torch"] > 0 and row["max_abs_diff"] < 1e-4
    off = bench.measure(case, "train_forward", threads=1, repeat=1, min_time=0.0, unfused=False)
    assert off["unfused_s"] is None and off["vs_unfused"] is None
    plain = bench.measure(case.plain, "train_step", threads=1, repeat=1, min_time=0.0)
    assert tuple(plain) == bench.ROW_KEYS
    assert plain["unfused_s"] is None and plain["vs_unfused"] is None
    assert "unfused" not in plain["samples"]
    with pytest.raises(ValueError, match="eval_forward"):
        bench.measure(case, "eval_forward", threads=1, repeat=1, min_time=0.0)


def test_fused_cases_and_their_passes():
    cases = bench.fused_cases()
    assert [c.op for c in cases] == ["BatchNorm2d+add+relu", "BatchNorm2d+add+relu",
                                     "add+LayerNorm", "add+RMSNorm"]
    assert [c.layout for c in cases[:2]] == ["contiguous", "channels_last"]
    assert all(c.fused and c.dtype == "float32" for c in cases)
    assert cases[0].shape == (32, 64, 56, 56) and cases[2].shape == cases[3].shape == (8192, 768)
    assert cases[0].passes == bench.PASSES and cases[0].layer_op == "BatchNorm2d"
    assert cases[0].activation == "relu" and not cases[0].skip
    assert cases[2].passes == ("train_forward", "train_step") and cases[2].skip
    assert cases[2].plain == bench.Case("LayerNorm", (8192, 768))
    plain = bench.Case("LayerNorm", (4, 8))
    assert not plain.fused and plain.plain is plain and plain.activation is None
    assert not any(c.fused for c in bench.canonical_cases())
    with pytest.raises(ValueError, match="no fused epilogue"):
        bench.make_epilogue_input(plain)
    with pytest.raises(ValueError, match="nothing to unfuse"):
        bench.unfused_runner(plain, "train_step", bench.make_pool(*bench.make_input(plain), hot=True))
    with pytest.raises(bench.PeerUnavailable):
        bench.make_onnx_model(bench.Case("add+LayerNorm", (4, 8)))


def test_agreement_leaves_out_relu_mask_flips():
    case = bench.Case("BatchNorm2d+add+relu", (1, 2, 2, 2))
    dy = np.linspace(1, 2, 8).reshape(case.shape)
    ours_g, theirs_g = dy.copy(), dy.copy()
    theirs_g[0, 1, 1, 1] = 0  # an output within rounding of 0: masked in one library only
    ours_dx, theirs_dx = dy * 2, dy * 2
    theirs_dx[0, 1, 1, 1] += 5
    theirs_dx[0, 0, 0, 0] += 1e-6
    diff = timing._agreement(case, "train_step", (ours_dx, ours_g), (theirs_dx, theirs_g))
    assert diff == pytest.approx(1e-6, rel=1e-2)
    assert timing._agreement(case, "train_forward", ours_dx, theirs_dx) == pytest.approx(5, rel=1e-6)


def test_main_filter_selects_the_fused_rows(tmp_path):
    out = io.StringIO()
    json_path = tmp_path / "f.json"
    rc = bench.main(["--tiny", *FAST, "--filter", "add+", "--json", str(json_path)], out=out)
    assert rc == 0, out.getvalue()
    header, body = _table_rows(out.getvalue())
    assert "fused-epilogue rows" in out.getvalue()
    # every fused row and pass, and nothing else; no eval forward of the skip rows
    assert len(body) == sum(len(c.passes) for c in bench.tiny_fused_cases()) == 10
    assert {_cells(line)[0] for line in body} == set(bench.FUSED_OPS)
    assert not any(line.startswith("add+") and "eval_forward" in line for line in body)
    assert "-" not in _column(header, body, "vs unfused")
    assert "-" not in _column(header, body, "unfused")
    assert set(_column(header, body, "vs ort")) == set(_column(header, body, "ort")) == {"-"}
    rows = json.loads(json_path.read_text())["rows"]
    assert all(tuple(r) == bench.ROW_KEYS and r["vs_unfused"] > 0 for r in rows)
    # one group by its op name; the plain rows show "-" for unfused
    out = io.StringIO()
    assert bench.main(["--tiny", *FAST, "--filter", "BatchNorm2d+add+relu"], out=out) == 0
    _, body = _table_rows(out.getvalue())
    assert len(body) == 6 and all(line.startswith("BatchNorm2d+add+relu") for line in body)
    out = io.StringIO()
    assert bench.main(["--tiny", *FAST, "--filter", "BatchNorm1d"], out=out) == 0
    header, body = _table_rows(out.getvalue())
    assert set(_column(header, body, "vs unfused")) == set(_column(header, body, "unfused")) == {"-"}
    assert "fused-epilogue rows" not in out.getvalue()


@pytest.mark.parametrize("argv", [[], ["--quick"]])
def test_default_and_quick_runs_include_the_fused_rows(monkeypatch, argv):
    seen = []

    def fake_measure(case, pass_, threads, **kwargs):
        seen.append((case, pass_))
        return bench.new_row(case, pass_, threads, cache="cold", numbanorm_s=1.0)

    monkeypatch.setattr("numbanorm.bench.cli.measure", fake_measure)
    assert bench.main([*argv, "--no-progress"], out=io.StringIO()) == 0
    base = bench.quick_cases() if argv else bench.canonical_cases()
    expected = [(c, p) for c in base + bench.fused_cases() for p in c.passes]
    assert seen == expected
    assert [c.op for c, _ in seen[-10:]] == ["BatchNorm2d+add+relu"] * 6 + ["add+LayerNorm"] * 2 \
        + ["add+RMSNorm"] * 2


def test_format_table_and_plot_with_fused_rows(tmp_path):
    fused = bench.new_row(bench.Case("add+RMSNorm", (4, 8)), "train_step", 2, numbanorm_s=1e-3,
                          unfused_s=2e-3, torch_s=3e-3, copy_s=5e-4, vs_torch=3.0, vs_unfused=2.0,
                          copies=2.0)
    plain = bench.new_row(bench.Case("RMSNorm", (4, 8)), "eval_forward", 2, numbanorm_s=1e-3,
                          torch_s=2e-3, ort_s=1e-3, copy_s=5e-4, vs_torch=2.0, vs_ort=1.0, copies=2.0)
    header, body = _table_rows(bench.format_table([fused, plain]))
    assert _column(header, body, "vs unfused") == ["2.00", "-"]
    assert _column(header, body, "unfused") == ["2.00 ms", "-"]
    assert _column(header, body, "vs ort") == ["-", "1.00"]
    png = tmp_path / "p.png"
    bench.write_plot([fused, plain], str(png))
    assert png.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------ ONNX Runtime

ORT_CASES = [
    bench.Case("BatchNorm2d", (2, 4, 3, 3)),
    bench.Case("BatchNorm2d", (2, 4, 3, 3), "channels_last"),
    bench.Case("BatchNorm2d", (2, 4, 3, 3), dtype="float64"),
    bench.Case("BatchNorm1d", (8, 4)),
    bench.Case("LayerNorm", (4, 8)),
    bench.Case("LayerNorm", (4, 8), dtype="float64"),
    bench.Case("RMSNorm", (4, 8)),
    bench.Case("GroupNorm", (2, 6, 3, 3), groups=3),
    bench.Case("GroupNorm", (2, 6, 3, 3), "channels_last", groups=3),
    bench.Case("InstanceNorm2d", (2, 4, 3, 3)),
    bench.Case("InstanceNorm2d", (2, 4, 3, 3), "channels_last"),
]


@pytest.mark.parametrize("case", ORT_CASES, ids=lambda c: c.label)
def test_ort_model_computes_numbanorm_eval(case, rng):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    layer = bench.make_numbanorm_layer(case)
    # parameters and running statistics away from their defaults, so that the model
    # must carry them to agree
    for name in ("weight", "bias", "running_mean"):
        arr = getattr(layer, name, None)
        if arr is not None:
            arr[...] = rng.standard_normal(arr.shape)
    if getattr(layer, "running_var", None) is not None:
        layer.running_var[...] = rng.uniform(0.5, 2.0, layer.running_var.shape)
    x, _ = bench.make_input(case, seed=3)
    x = x * 3 + 1
    try:
        run = bench.ort_runner(case, bench.make_pool(x, hot=True), layer, threads=1)
    except bench.PeerUnavailable as exc:
        if re.search(r"NOT_IMPLEMENTED|not (?:be )?support|unsupported", str(exc), re.I):
            pytest.skip(f"the installed onnxruntime does not run this: {exc}")
        raise
    got = run.at(0)
    expected = layer.eval()(x)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tol = 1e-5 if case.dtype == "float32" else 1e-10
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
    opts = run.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1


def test_ort_session_threads_and_opsets():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ops = {"GroupNorm": ("GroupNormalization", 21), "RMSNorm": ("RMSNormalization", 23),
           "LayerNorm": ("LayerNormalization", 17)}
    for op, (op_type, opset) in ops.items():
        shape = (4, 8) if op != "GroupNorm" else (2, 4, 3, 3)
        model = bench.make_onnx_model(bench.Case(op, shape))
        assert model.graph.node[0].op_type == op_type
        assert model.opset_import[0].version == opset
    import onnxruntime as ort

    session = bench.make_ort_session(bench.make_onnx_model(bench.Case("LayerNorm", (4, 8))), 2)
    opts = session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_ort_unavailable_row_says_why(monkeypatch):
    case = bench.Case("LayerNorm", (4, 8))
    monkeypatch.setattr(peers, "import_onnxruntime", lambda: None)
    row = bench.measure(case, "eval_forward", threads=1, repeat=1, min_time=0.0, torch=False)
    assert row["ort_s"] is None and row["vs_ort"] is None and "not installed" in row["notes"]["ort"]
    monkeypatch.undo()
    if not HAVE_ORT:
        pytest.skip("onnxruntime is not installed")
    # an operator the runtime does not know: n/a with the runtime's reason, not an error
    monkeypatch.setitem(peers.ONNX_OPS, "LayerNorm", ("NoSuchNormalization", 17))
    row = bench.measure(case, "eval_forward", threads=1, repeat=1, min_time=0.0, torch=False)
    assert row["error"] is None and row["numbanorm_s"] > 0 and row["ort_s"] is None
    assert "NoSuchNormalization" in row["notes"]["ort"]
    out = io.StringIO()
    assert bench.main([*FAST, "--pass", "eval_forward", "--no-torch"], cases=[case], out=out) == 0
    header, body = _table_rows(out.getvalue())
    assert _column(header, body, "ort") == _column(header, body, "vs ort") == ["n/a"]
    assert "n/a ort: onnxruntime" in out.getvalue() and "NoSuchNormalization" in out.getvalue()


# ---------------------------------------------------------------------------- asv


@pytest.fixture(scope="module")
def asv_modules():
    path = os.path.join(ROOT, "asv_benchmarks")
    sys.path.insert(0, path)
    try:
        names = ["batchnorm", "layernorm", "rmsnorm", "groupnorm", "instancenorm", "epilogue", "small"]
        yield {n: importlib.import_module(f"benchmarks.{n}") for n in names}
    finally:
        sys.path.remove(path)


def _benchmark_classes(modules):
    from benchmarks.common import (
        EpilogueRatioBenchmark,
        MemoryBenchmark,
        PassBenchmark,
        RatioBenchmark,
    )

    bases = (PassBenchmark, RatioBenchmark, EpilogueRatioBenchmark, MemoryBenchmark)
    for module in modules.values():
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and not name.startswith("_")
                    and not inspect.isabstract(obj)  # the bases, as asv sees them
                    and issubclass(obj, bases)):
                yield obj


def test_asv_grids_cover_every_canonical_row(asv_modules):
    classes = list(_benchmark_classes(asv_modules))
    names = {c.__name__ for c in classes}
    for layer in ("BatchNorm2d", "BatchNorm1d", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm2d"):
        assert {layer, layer + "Ratios", layer + "Memory"} <= names
    covered = {"": set(), "Ratios": set(), "Memory": set()}
    for cls in classes:
        assert len(cls.params) == len(cls.param_names)
        kind = next((k for k in ("Ratios", "Memory") if cls.__name__.endswith(k)), "")
        if kind == "Memory":
            assert cls.param_names == ["shape", "layout", "dtype"]
        else:
            assert cls.param_names == ["shape", "layout", "dtype", "pass"]
            assert cls.params[3] == list(bench.PASSES)
        for shape in cls.params[0]:
            for layout in cls.params[1]:
                for dtype in cls.params[2]:
                    covered[kind].add((cls.op, tuple(shape), layout, dtype))
    spec = {(c.op, c.shape, c.layout, c.dtype) for c in bench.canonical_cases()}
    for rows in covered.values():
        assert spec <= rows
    # the fused rows: time and ratios (no memory benchmark)
    fused = {(c.op, c.shape, c.layout, c.dtype) for c in bench.fused_cases()}
    assert fused <= covered[""] and fused <= covered["Ratios"]
    assert not fused & covered["Memory"]
    for cls in classes:
        if cls.op in bench.FUSED_OPS:
            assert cls.params[2] == ["float32"]  # no grid points asv would only skip
            assert hasattr(cls, "time_pass") or (hasattr(cls, "track_vs_unfused")
                                                and not hasattr(cls, "track_vs_ort"))
        else:
            assert not hasattr(cls, "track_vs_unfused")


def test_asv_fused_rows_share_the_one_setup_cache(asv_modules):
    common = importlib.import_module("benchmarks.common")
    epi = asv_modules["epilogue"]
    classes = (asv_modules["layernorm"].LayerNormRatios, asv_modules["batchnorm"].BatchNorm2dRatios,
               epi.BatchNorm2dAddReLURatios, epi.AddLayerNormRatios, epi.AddRMSNormRatios)
    # asv keys its setup cache by the function's source and place: one function, one key
    assert len({getattr(cls.setup_cache, "__func__", cls.setup_cache) for cls in classes}) == 1
    try:  # asv's own key, where the bench extra is installed
        from asv_runner.benchmarks._base import get_setup_cache_key
    except ImportError:
        return
    assert len({get_setup_cache_key(cls.setup_cache) for cls in classes}) == 1
    assert common.DEFAULT_CASES == bench.canonical_cases() + bench.fused_cases()


def test_asv_uses_public_bench_helpers_only():
    pattern = re.compile(r"bench\._\w+")
    for name in os.listdir(os.path.join(ROOT, "asv_benchmarks", "benchmarks")):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "asv_benchmarks", "benchmarks", name)) as f:
                assert not pattern.findall(f.read()), name


def test_asv_benchmarks_run_on_a_small_row(asv_modules):
    common = importlib.import_module("benchmarks.common")
    ln = asv_modules["layernorm"]
    params = ((32, 768), "contiguous", "float32")
    case = bench.Case("LayerNorm", (32, 768))
    rows = common.measure_rows([case], repeat=2, min_time=0.0)
    for pass_ in bench.PASSES:
        b = ln.LayerNorm()
        b.setup(*params, pass_)
        b.time_pass(*params, pass_)
        r = ln.LayerNormRatios()
        r.setup(rows, *params, pass_)
        row = rows[common.row_key(case, pass_)]
        assert row["cache"] == "cold" and row["pool_entries"] >= 2
        assert r.track_copies(rows, *params, pass_) == row["copies"] > 0
        vs_torch = r.track_vs_torch(rows, *params, pass_)
        if bench.import_torch() is None:
            assert math.isnan(vs_torch) and row["notes"]["torch"]
        else:
            assert vs_torch == row["vs_torch"] > 0
        vs_ort = r.track_vs_ort(rows, *params, pass_)
        if pass_ == "eval_forward" and HAVE_ORT:
            assert vs_ort == row["vs_ort"] > 0
        else:
            assert math.isnan(vs_ort)


def test_asv_small_shapes_run_every_pass(asv_modules):
    small = asv_modules["small"]
    assert small.SmallShapes.params == [list(small.CASES), list(bench.PASSES)]
    for case, (op, _, shape) in small.CASES.items():
        for pass_ in bench.PASSES:
            b = small.SmallShapes()
            b.setup(case, pass_)
            assert type(b.layer).__name__ == op and b.layer.training == (pass_ != "eval_forward")
            b.time_pass(case, pass_)
            y = b.layer(b.x)
            assert y.shape == shape and np.isfinite(y).all()
            if pass_ == "train_step":
                assert np.isfinite(b.layer.backward(b.dy)).all()


def test_asv_ratios_are_the_measured_rows(asv_modules, monkeypatch):
    """The track_ values are the paired ratios of one measurement, not a re-timing."""
    common = importlib.import_module("benchmarks.common")
    samples = {"numbanorm": [2.0, 4.0, 8.0], "torch": [3.0, 4.0, 4.0],
               "ort": [1.0, 6.0, 8.0], "copy": [1.0, 1.0, 2.0]}

    def fake_time_interleaved(runners, **kwargs):
        return {name: {"median": statistics.median(samples[name]), "min": min(samples[name]),
                       "samples": samples[name], "number": 1, "repeat": 3} for name in runners}

    monkeypatch.setattr(timing, "time_interleaved", fake_time_interleaved)
    case = bench.Case("LayerNorm", (32, 768))
    rows = common.measure_rows([case], passes=["eval_forward"])
    r = asv_modules["layernorm"].LayerNormRatios()
    params = ((32, 768), "contiguous", "float32", "eval_forward")
    r.setup(rows, *params)
    assert r.track_copies(rows, *params) == statistics.median([2.0, 4.0, 4.0])
    if bench.import_torch() is not None:
        assert r.track_vs_torch(rows, *params) == statistics.median([1.5, 1.0, 0.5])
    if HAVE_ORT:
        assert r.track_vs_ort(rows, *params) == statistics.median([0.5, 1.5, 1.0])
    # a row that failed in setup_cache makes its benchmarks fail, not report a number
    broken = {k: dict(v, error="RuntimeError: boom") for k, v in rows.items()}
    with pytest.raises(RuntimeError, match="boom"):
        r.setup(broken, *params)


@pytest.mark.parametrize(("cls_name", "op", "shape", "layout"), [
    ("AddLayerNorm", "add+LayerNorm", (16, 32), "contiguous"),
    ("AddRMSNorm", "add+RMSNorm", (16, 32), "contiguous"),
    ("BatchNorm2dAddReLU", "BatchNorm2d+add+relu", (2, 4, 3, 3), "channels_last"),
])
def test_asv_fused_benchmarks_run_on_a_small_row(asv_modules, monkeypatch, cls_name, op, shape,
                                                 layout):
    common = importlib.import_module("benchmarks.common")
    monkeypatch.setattr(common, "FULL_GRID", True)  # a small shape outside the default rows
    epi = asv_modules["epilogue"]
    case = bench.Case(op, shape, layout)
    rows = common.measure_rows([case], repeat=2, min_time=0.0)
    assert len(rows) == len(case.passes)  # no eval forward for a skip row
    params = (shape, layout, "float32")
    for pass_ in bench.PASSES:
        b = getattr(epi, cls_name)()
        r = getattr(epi, cls_name + "Ratios")()
        if pass_ not in case.passes:
            with pytest.raises(NotImplementedError):
                b.setup(*params, pass_)
            with pytest.raises(NotImplementedError):
                r.setup(rows, *params, pass_)
            continue
        b.setup(*params, pass_)
        assert b.case.fused and b.run.pool.residuals is not None
        assert (b.run.pool.dsums is not None) == (case.skip and pass_ == "train_step")
        b.time_pass(*params, pass_)
        r.setup(rows, *params, pass_)
        row = rows[common.row_key(case, pass_)]
        assert r.track_vs_unfused(rows, *params, pass_) == row["vs_unfused"] > 0
        assert r.track_copies(rows, *params, pass_) == row["copies"] > 0
        vs_torch = r.track_vs_torch(rows, *params, pass_)
        assert math.isnan(vs_torch) if bench.import_torch() is None else vs_torch == row["vs_torch"] > 0


def test_asv_vs_unfused_is_the_paired_ratio(asv_modules, monkeypatch):
    common = importlib.import_module("benchmarks.common")
    samples = {"numbanorm": [2.0, 4.0, 8.0], "unfused": [3.0, 4.0, 24.0], "torch": [4.0, 4.0, 4.0],
               "copy": [1.0, 1.0, 2.0]}

    def fake_time_interleaved(runners, **kwargs):
        return {name: {"median": statistics.median(samples[name]), "min": min(samples[name]),
                       "samples": samples[name], "number": 1, "repeat": 3} for name in runners}

    monkeypatch.setattr(timing, "time_interleaved", fake_time_interleaved)
    case = bench.fused_cases()[2]  # add+LayerNorm (8192, 768): a default row
    rows = common.measure_rows([case], passes=["train_forward"])
    r = asv_modules["epilogue"].AddLayerNormRatios()
    params = ((8192, 768), "contiguous", "float32", "train_forward")
    r.setup(rows, *params)
    assert r.track_vs_unfused(rows, *params) == statistics.median([1.5, 1.0, 3.0])
    if bench.import_torch() is not None:
        assert r.track_vs_torch(rows, *params) == statistics.median([2.0, 1.0, 0.5])


def test_asv_memory_tracks_see_temporaries(asv_modules, monkeypatch):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc")
    params = ((8192, 768), "contiguous", "float32")
    m = asv_modules["layernorm"].LayerNormMemory()
    m.setup(*params)
    m.peakmem_forward(*params)
    m.peakmem_backward(*params)
    x_mib = m.x.nbytes / 2**20
    forward, backward = m.track_forward_temp_mib(*params), m.track_backward_temp_mib(*params)
    if math.isnan(forward):
        pytest.skip("/proc/self/clear_refs is not writable here")
    # LayerNorm allocates its output and per-row statistics only: no full-size temporary
    assert 0 <= forward < 0.25 * x_mib and 0 <= backward < 0.25 * x_mib
    # and a full-size temporary is seen (the probe can fail)
    layer = m.layer
    m.layer = type("Leaky", (), {"__call__": lambda self, x: (layer(x), np.ones_like(x))[0]})()
    assert m.track_forward_temp_mib(*params) > 0.8 * x_mib


def test_asv_skips_rows_outside_the_spec(asv_modules, monkeypatch):
    common = importlib.import_module("benchmarks.common")
    monkeypatch.setattr(common, "FULL_GRID", False)
    b = asv_modules["layernorm"].LayerNorm()
    with pytest.raises(NotImplementedError):
        b.setup((32, 768), "contiguous", "float64", "train_forward")  # not a canonical row
    r = asv_modules["layernorm"].LayerNormRatios()
    with pytest.raises(NotImplementedError):
        r.setup({}, (32, 768), "contiguous", "float64", "train_forward")


def test_cli_entry_point(tmp_path):
    if not os.path.exists(os.path.join(ROOT, "numbanorm", "__main__.py")):
        pytest.skip("numbanorm/__main__.py (python -m numbanorm) not written yet")
    proc = subprocess.run(
        [sys.executable, "-m", "numbanorm", "bench", "--tiny", *FAST, "--filter",
         "BatchNorm1d", "--pass", "eval_forward", "--json", str(tmp_path / "b.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, NUMBA_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr
    assert "BatchNorm1d" in proc.stdout and "vs torch" in proc.stdout and "vs ort" in proc.stdout
    assert len(json.loads((tmp_path / "b.json").read_text())["rows"]) == 1


def test_models_option_runs_the_model_benchmark(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    from numbanorm.bench import cli
    from numbanorm.torch import bench_models

    calls = []
    row = {"model": "m", "train_stock_ms": 2.0, "train_converted_ms": 1.0, "train_ratio": 2.0, "infer_stock_ms": 1.0,
           "infer_converted_ms": 1.0, "infer_ratio": 1.0, "norm_share_stock": 0.25, "norm_share_converted": 0.1,
           "threads": 3}
    monkeypatch.setattr(bench_models, "run_models", lambda threads, **kw: calls.append((threads, kw)) or [row])
    out = io.StringIO()
    path = tmp_path / "models.json"
    assert cli.main(["--models", "--threads", "3", "--repeat", "2", "--no-progress", "--json", str(path)], out=out) == 0
    assert calls == [(3, {"repeat": 2, "quick": False, "progress": None})]
    assert "train stock" in out.getvalue() and " 2.00 " in out.getvalue()
    assert json.loads(path.read_text())["models"][0]["train_ratio"] == 2.0
