"""Shared machinery of the numbanorm asv suite.

Modelled on scikit-learn's ``asv_benchmarks/benchmarks/common.py``: a ``Benchmark``
base fixes the timer, repeats and timeout; data are made deterministically in
``setup`` (or once, in ``setup_cache``); ``params`` grids; ``time_*``, ``peakmem_*``
and ``track_*`` side by side.

Every family module defines three classes per layer, over the grid
``shape x layout x dtype`` (class attributes ``shapes``, ``layouts``, ``dtypes``):

* ``<Layer>`` (:class:`PassBenchmark`, plus a ``pass`` parameter): ``time_pass``,
  numbanorm alone on asv's timer. Each call reads the next input of a pool of at
  least 4 x L3 (:func:`numbanorm.bench.make_pool`), as ``python -m numbanorm bench``
  does, so the time is the out-of-cache one.
* ``<Layer>Ratios`` (:class:`RatioBenchmark`, same grid): ``track_vs_torch`` (PyTorch
  time / numbanorm time, >1: numbanorm faster), ``track_vs_ort`` (ONNX Runtime /
  numbanorm, eval forward only, NaN for the training passes) and ``track_copies``
  (numbanorm time / time of a same-size parallel copy). The peers are timed
  interleaved with numbanorm by :func:`numbanorm.bench.measure`, once for all rows in
  ``setup_cache``; the ``track_`` benchmarks read that result.
* ``<Row>`` and ``<Row>Ratios`` of the fused-epilogue rows (``epilogue.py``:
  :class:`PassBenchmark` and :class:`EpilogueRatioBenchmark` over
  :func:`numbanorm.bench.fused_cases`): ``time_pass`` is the fused call
  (``BatchNorm2d+add+relu``, ``add+LayerNorm``, ``add+RMSNorm``) on a pool that holds the
  residual (and dy, dsum) too; ``track_vs_unfused`` (the plain layer then separate NumPy
  passes, over the fused time: >1, fusing is faster), ``track_vs_torch`` and
  ``track_copies`` come from the same ``setup_cache`` as the other ratios. A skip row
  (add + LayerNorm/RMSNorm) has no eval forward (NotImplementedError, as asv skips).
* ``<Layer>Memory`` (:class:`MemoryBenchmark`): ``peakmem_forward``,
  ``peakmem_backward`` (peak RSS: resident set after setup plus the call's peak; the
  peak is reset at the end of setup on Linux), and ``track_forward_temp_mib`` /
  ``track_backward_temp_mib``: memory a call adds beyond the arrays it must return
  (0 means no full-size temporaries).

Only numbanorm's canonical rows (:func:`numbanorm.bench.canonical_cases`) and the
fused-epilogue rows (:func:`numbanorm.bench.fused_cases`) run by default; other grid
points are skipped in ``setup``. ``NUMBANORM_ASV_FULL_GRID=1`` runs the whole grid (rows
outside the default list measure their ratios in their own ``setup``).
``NUMBANORM_BENCH_THREADS`` sets the thread count (default 2, capped by
``NUMBA_NUM_THREADS``); ``NUMBANORM_ASV_HOT=1`` times every call on one cache-resident
input instead of the pool.

Where the time of ``asv run --quick`` goes, and why the suite is shaped so: asv starts
one process per benchmark and parameter combination, skipped ones included, so
``asv.conf.json`` uses the ``forkserver`` launch method (children fork from a process
that has imported the suite, instead of importing numba and numbanorm again each);
the ratios need PyTorch, ONNX Runtime, pools and calibrated repeats, so they are
measured once per run in one process rather than once per ``track_`` benchmark.
"""

import gc
import math
import os
import sys
import time
from abc import ABC, abstractmethod

try:
    import numbanorm
except ImportError:  # asv run --python=same on a checkout that is not installed
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    import numbanorm  # noqa: F401

import numba

from numbanorm import bench

THREADS = min(int(os.environ.get("NUMBANORM_BENCH_THREADS", "2")),
              numba.config.NUMBA_NUM_THREADS)
FULL_GRID = os.environ.get("NUMBANORM_ASV_FULL_GRID", "") not in ("", "0")
HOT = os.environ.get("NUMBANORM_ASV_HOT", "") not in ("", "0")
PASSES = list(bench.PASSES)
LAYOUTS = list(bench.LAYOUTS)
DTYPES = list(bench.DTYPES)
MIB = float(2**20)

#: The rows measured by default: the canonical ones, then the fused-epilogue ones.
DEFAULT_CASES = bench.canonical_cases() + bench.fused_cases()
#: (op, shape, layout, dtype) of the rows measured by default.
CANONICAL = {(c.op, c.shape, c.layout, c.dtype) for c in DEFAULT_CASES}
#: What setup_cache keeps of each measured row.
RATIO_KEYS = ("numbanorm_s", "unfused_s", "torch_s", "ort_s", "copy_s", "vs_torch", "vs_unfused",
              "vs_ort", "copies", "pool_entries", "cache", "notes")


class Benchmark:
    """Base of every numbanorm benchmark: timer, repeats and timeout fixed here."""

    timer = time.perf_counter
    processes = 1
    number = 0  # asv calibrates the calls per sample from sample_time
    sample_time = 0.05
    repeat = (3, 10, 20.0)  # min repeats, max repeats, max seconds
    warmup_time = 0.2
    timeout = 600
    #: repeats and seconds per repeat of the in-benchmark ratio measurements
    ratio_repeat = 5
    ratio_min_time = 0.02


class _NormBase(Benchmark, ABC):
    @property
    @abstractmethod
    def op(self):
        """Layer class name in numbanorm and torch.nn; a class attribute of subclasses
        (abstract until then, so asv does not collect the bases)."""

    #: GroupNorm group count
    groups = None
    shapes = ()
    layouts = ("contiguous",)
    dtypes = tuple(DTYPES)

    def _make_case(self, shape, layout, dtype):
        key = (self.op, tuple(shape), layout, dtype)
        if not FULL_GRID and key not in CANONICAL:
            raise NotImplementedError("not a canonical row (NUMBANORM_ASV_FULL_GRID=1 runs it)")
        try:
            case = bench.Case(self.op, shape, layout, dtype, groups=self.groups)
        except ValueError as exc:
            raise NotImplementedError(str(exc)) from None
        bench.set_threads(THREADS)
        return case

    def _make_row(self, shape, layout, dtype, pass_):
        """The case of a (shape, layout, dtype, pass) grid point; NotImplementedError
        (asv: skipped) for a point that is not measured."""
        case = self._make_case(shape, layout, dtype)
        if pass_ not in case.passes:
            raise NotImplementedError(f"{case.op} has no {pass_} row")
        return case


def row_key(case, pass_):
    """The key of one (case, pass) in the result of :func:`measure_rows`."""
    return f"{case.label} {pass_}"


def measure_rows(cases, passes=PASSES, repeat=Benchmark.ratio_repeat,
                 min_time=Benchmark.ratio_min_time):
    """Time numbanorm, PyTorch, ONNX Runtime and the copy on every (case, pass) of
    ``case.passes`` (and numbanorm unfused on a fused row).

    Returns
    -------
    dict
        :func:`row_key` -> the :data:`RATIO_KEYS` of the row made by
        :func:`numbanorm.bench.measure`. A row that fails keeps its error under
        ``"error"`` and its ratios are None, so one bad row does not lose the others.
    """
    rows = {}
    for case in cases:
        for pass_ in passes:
            if pass_ not in case.passes:
                continue
            try:
                row = bench.measure(case, pass_, THREADS, repeat=repeat, min_time=min_time,
                                    check=False, hot=HOT)
            except Exception as exc:  # noqa: BLE001
                row = bench.new_row(case, pass_, THREADS, error=f"{type(exc).__name__}: {exc}")
            rows[row_key(case, pass_)] = {k: row[k] for k in RATIO_KEYS + ("error",)}
            gc.collect()  # one row's pools go before the next row's are made
    return rows


def _ratio(value):
    return math.nan if value is None else float(value)


class PassBenchmark(_NormBase):
    """Time of one pass of numbanorm, each call on the next input of a pool."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.param_names = ["shape", "layout", "dtype", "pass"]
        cls.params = [list(cls.shapes), list(cls.layouts), list(cls.dtypes), PASSES]

    def setup(self, shape, layout, dtype, pass_):
        self.case = self._make_row(shape, layout, dtype, pass_)
        x, dy = bench.make_input(self.case)
        step = pass_ == "train_step"
        residual = dsum = None
        if self.case.fused:
            residual, dsum = bench.make_epilogue_input(self.case)
        pool = bench.make_pool(x, dy if step else None, residual=residual,
                               dsum=dsum if step else None, hot=HOT)
        self.run = bench.numbanorm_runner(self.case, pass_, pool)
        self.run()  # compile (or load from the cache)

    def time_pass(self, shape, layout, dtype, pass_):
        self.run()


class _RatioBase(_NormBase):
    """Ratios of one pass, read from the one setup_cache of the suite."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.param_names = ["shape", "layout", "dtype", "pass"]
        cls.params = [list(cls.shapes), list(cls.layouts), list(cls.dtypes), PASSES]

    def setup_cache(self):
        # asv keys a setup_cache by where its source is, so this one definition is
        # shared by every RatioBenchmark and EpilogueRatioBenchmark subclass: all
        # canonical and fused rows are measured once per run, in one process, with one
        # import of torch and onnxruntime.
        return measure_rows(DEFAULT_CASES, repeat=self.ratio_repeat,
                            min_time=self.ratio_min_time)

    setup_cache.timeout = 1200

    def setup(self, rows, shape, layout, dtype, pass_):
        case = self._make_row(shape, layout, dtype, pass_)
        key = row_key(case, pass_)
        if key not in rows:  # a NUMBANORM_ASV_FULL_GRID row
            rows = measure_rows([case], [pass_], repeat=self.ratio_repeat,
                                min_time=self.ratio_min_time)
        self.row = rows[key]
        if self.row["error"]:
            raise RuntimeError(self.row["error"])

    def track_vs_torch(self, rows, shape, layout, dtype, pass_):
        return _ratio(self.row["vs_torch"])

    track_vs_torch.unit = "ratio"

    def track_copies(self, rows, shape, layout, dtype, pass_):
        return _ratio(self.row["copies"])

    track_copies.unit = "copies"


class RatioBenchmark(_RatioBase):
    """Ratios of one pass to PyTorch, ONNX Runtime and the copy, read from setup_cache."""

    def track_vs_ort(self, rows, shape, layout, dtype, pass_):
        # ONNX Runtime is an inference engine: only the eval forward pass has a peer.
        return _ratio(self.row["vs_ort"])

    track_vs_ort.unit = "ratio"


class EpilogueRatioBenchmark(_RatioBase):
    """A fused-epilogue row's ratios, read from setup_cache: ``track_vs_unfused`` (numbanorm
    unfused / fused), ``track_vs_torch`` (PyTorch's module and the same ops / fused) and
    ``track_copies`` (fused / copy of x). ONNX Runtime is not timed on these rows."""

    dtypes = ("float32",)

    def track_vs_unfused(self, rows, shape, layout, dtype, pass_):
        return _ratio(self.row["vs_unfused"])

    track_vs_unfused.unit = "ratio"


class MemoryBenchmark(_NormBase):
    """Peak memory of a train forward and of the backward that follows it."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.param_names = ["shape", "layout", "dtype"]
        cls.params = [list(cls.shapes), list(cls.layouts), list(cls.dtypes)]

    def setup(self, shape, layout, dtype):
        self.case = self._make_case(shape, layout, dtype)
        self.x, self.dy = bench.make_input(self.case)
        self.layer = bench.make_numbanorm_layer(self.case).train()
        # compile and run both directions once, then leave the layer ready for backward
        self.layer(self.x)
        self.layer.backward(self.dy)
        self.layer(self.x)
        n_params = sum(p.size for p in self.layer.parameters())
        self.grad_bytes = self.x.nbytes + n_params * self.x.dtype.itemsize
        bench.reset_peak_rss()

    def peakmem_forward(self, shape, layout, dtype):
        self.layer(self.x)

    def peakmem_backward(self, shape, layout, dtype):
        self.layer.backward(self.dy)

    def track_forward_temp_mib(self, shape, layout, dtype):
        extra = bench.peak_extra_bytes(lambda: self.layer(self.x), self.x.nbytes)
        return math.nan if extra is None else max(extra, 0) / MIB

    track_forward_temp_mib.unit = "MiB"

    def track_backward_temp_mib(self, shape, layout, dtype):
        extra = bench.peak_extra_bytes(lambda: self.layer.backward(self.dy), self.grad_bytes)
        return math.nan if extra is None else max(extra, 0) / MIB

    track_backward_temp_mib.unit = "MiB"


__all__ = ["DTYPES", "LAYOUTS", "THREADS", "Benchmark", "EpilogueRatioBenchmark", "MemoryBenchmark",
           "PassBenchmark", "RatioBenchmark", "measure_rows", "row_key"]
