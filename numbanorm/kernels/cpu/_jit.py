"""The one place kernels are compiled: flags come from :mod:`numbanorm.config`."""

import types

import numba
from numba.extending import overload

from ... import config

__all__ = ["reduce_helper", "reduce_inline", "elementwise_helper", "dx_helper", "kernel", "Kernel", "all_dispatchers",
           "cast_like"]

#: Every dispatcher compiled through this module, for flag checks in the tests.
_DISPATCHERS = []


def _register(dispatcher, flags):
    dispatcher._numbanorm_fastmath = flags
    _DISPATCHERS.append(dispatcher)
    return dispatcher


def _helper(flag_set, doc, **options):
    def compile_helper(func):
        flags = set(flag_set)
        opts = dict(fastmath=flags, cache=config.CACHE, nogil=True, error_model=config.ERROR_MODEL, **options)
        return _register(numba.njit(**opts)(func), flags)

    compile_helper.__doc__ = doc
    return compile_helper


#: Compile a serial reduction helper with ``config.FASTMATH_REDUCE``.
reduce_helper = _helper(config.FASTMATH_REDUCE, "Compile a serial reduction helper with config.FASTMATH_REDUCE.")
#: Compile a reduction helper that Numba inlines into the IR of its callers, with
#: ``config.FASTMATH_REDUCE``. An inlined body is compiled with its caller's flags, so only
#: reduce helpers may call one; it saves a call per slice where slices are short (a
#: LayerNorm row of 768 values spends about a third of its moments in the calls).
reduce_inline = _helper(config.FASTMATH_REDUCE, "Compile a reduction helper inlined into its callers (reduce helpers "
                        "only: the body takes the caller's flags).", inline="always")
#: Compile a serial element-wise helper with ``config.FASTMATH_ELEMENTWISE``.
elementwise_helper = _helper(config.FASTMATH_ELEMENTWISE,
                             "Compile a serial element-wise helper with config.FASTMATH_ELEMENTWISE.")
#: Compile a serial dx helper with ``config.FASTMATH_DX``.
dx_helper = _helper(config.FASTMATH_DX, "Compile a serial dx helper with config.FASTMATH_DX.")


class Kernel:
    """A kernel compiled twice from one Python function: serial and ``parallel=True``.

    Calling it picks the parallel build when ``config.PARALLEL`` is on and the work
    (``size`` elements, the first argument) reaches the threshold named by ``threshold``
    (an attribute of :mod:`numbanorm.config`, ``PARALLEL_MIN_ELEMENTS`` by default):
    below that, starting the thread pool costs more than it saves. The body uses
    ``prange`` for its outer loop, which is a plain ``range`` in the serial build.
    """

    def __init__(self, func, threshold="PARALLEL_MIN_ELEMENTS"):
        flags = set(config.FASTMATH_ELEMENTWISE)
        opts = dict(fastmath=flags, cache=config.CACHE, nogil=True, error_model=config.ERROR_MODEL)
        getattr(config, threshold)  # a misspelt name fails here, not on a first call
        self.threshold = threshold
        self.py_func = func
        self.serial = _register(numba.njit(**opts)(func), flags)
        self.parallel = _register(numba.njit(parallel=True, **opts)(_renamed(func, "parallel")), flags)
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__

    def runs_parallel(self, size):
        """Whether a call with ``size`` elements of work takes the parallel build."""
        return config.PARALLEL and size >= getattr(config, self.threshold)

    def __call__(self, size, *args):
        if self.runs_parallel(size):
            return self.parallel(*args)
        return self.serial(*args)

    def __repr__(self):
        return f"<numbanorm kernel {self.__name__}>"


def _renamed(func, suffix):
    """A copy of ``func`` under another qualified name.

    Numba's on-disk cache is keyed by the function's qualified name and signature,
    not by the ``parallel`` flag: two builds of one function would overwrite each
    other's cache entries (and load the wrong one), so the parallel build gets its own name.
    """
    new = types.FunctionType(func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__)
    new.__qualname__ = f"{func.__qualname__}__{suffix}"
    new.__module__ = func.__module__
    new.__doc__ = func.__doc__
    return new


def kernel(func=None, *, threshold="PARALLEL_MIN_ELEMENTS"):
    """Decorator: compile ``func`` as a :class:`Kernel` (serial + parallel builds), used bare
    or as ``@kernel(threshold="ROWS_PARALLEL_MIN_ELEMENTS")``."""
    if func is None:
        return lambda f: Kernel(f, threshold)
    return Kernel(func, threshold)


def all_dispatchers():
    """Return every Numba dispatcher compiled by numbanorm (for flag checks)."""
    return list(_DISPATCHERS)


def cast_like(value, arr):
    """``value`` rounded to ``arr``'s dtype (in compiled code; float32 hi/lo splits use it)."""
    return arr.dtype.type(value)


@overload(cast_like, jit_options={"cache": config.CACHE})
def _cast_like_impl(value, arr):
    dtype = arr.dtype

    def impl(value, arr):
        return dtype(value)

    return impl
