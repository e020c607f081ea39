"""Compile every numbanorm CUDA kernel to PTX for a real GPU target, without a GPU.

The simulator runs kernels as Python, so it accepts code that the CUDA compiler
rejects (untyped globals, unsupported calls, type unification errors). This script
types and lowers every kernel through numba-cuda and NVVM for float32 and float64,
so those errors show up on machines without a GPU. It needs NVVM (``pip install
"numba-cuda[cu13]"`` or a CUDA toolkit), not a driver, and must run WITHOUT
``NUMBA_ENABLE_CUDASIM``::

    python tests/cuda/ptx_check.py    # exit status 0: every kernel compiled; 77: no NVVM

``tests/cuda/test_cuda_ptx.py`` runs it in a subprocess and skips when NVVM is missing.
"""

import os
import sys
import types

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    sys.exit("ptx_check.py compiles for a real GPU: run it without NUMBA_ENABLE_CUDASIM")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

#: Exit status when numba-cuda or NVVM is missing (the test that runs this script skips then).
NO_NVVM = 77
CC = (8, 0)

try:
    import numba.cuda.dispatcher as _dispatcher
    from numba import cuda
except ImportError as exc:
    print(f"numba-cuda is not installed ({exc})", file=sys.stderr)
    sys.exit(NO_NVVM)
from numba.core import types as nt  # noqa: E402

# Device functions are compiled for "the current device": there is none here, so
# stand in one of compute capability CC (compile_ptx below targets the same).
_dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)

from numbanorm.kernels.cuda import _jit, arrays, batchnorm, channels, groupnorm, layernorm, layout, moments  # noqa: E402, F401,E501

f64, i64, b1 = nt.float64, nt.int64, nt.boolean


def arr(dtype, ndim, layout_="C"):
    return nt.Array(dtype, ndim, layout_)


def signatures(t, w):
    """(kernel, argument types) for compute dtype ``t`` and parameter dtype ``w``."""
    T1, T2, T3 = arr(t, 1), arr(t, 2), arr(t, 3)
    W1 = arr(w, 1)
    F1, F2 = arr(f64, 1), arr(f64, 2)
    yield moments.partial_moments, (T3, b1, b1, i64, F2, F2, F2)
    yield moments.partial_moments_add, (T3, T3, T3, b1, b1, i64, F2, F2, F2)
    yield moments.merge_moments, (F2, F2, F2, b1, F1, F1, F1)
    yield moments.finish_stats, (W1, W1, f64, f64, F1, F1, F1)
    yield channels._update_running, (F2, F2, f64, f64, W1, W1)
    yield channels._forward_coefs, (F2, F2, i64, W1, W1, T2, T2, T2, T2)
    yield channels._normalize, (T3, T3, T2, T2, T2, T2)
    yield channels._normalize_epilogue, (T3, T3, T3, T2, T2, T2, T2, b1, b1)
    yield channels._partial_grad_sums, (T3, T3, F2, i64, b1, i64, F2, F2)
    yield channels._partial_grad_sums_relu, (T3, T3, T3, T3, F2, i64, b1, i64, F2, F2)
    yield channels.sum_partials, (F2, F2, F1, F1)
    yield channels._dx_coefs, (F2, F2, F2, F2, i64, F1, f64, b1, F2, F2, F2, F2, F2)
    yield channels._param_grads, (F2, F2, F2, i64, F1, F1)
    yield channels._apply_dx, (T3, T3, T3, F2, F2, F2, F2, F2)
    yield layernorm._normalize_rows, (T2, T2, T2, T2, T2, T1, T1)
    yield layernorm._rows_backward, (T2, T2, T2, T1, F1, F1, b1)
    yield layernorm._rows_backward_sum, (T2, T2, T2, T2, T1, F1, F1, b1)
    yield layernorm._column_partials, (T2, T2, F1, F1, i64, F2, F2)
    yield arrays._fill, (F1, f64)
    yield arrays._fill, (T1, f64)
    yield arrays._repeat_rows, (W1, F2)
    for ndim, kern in layout._COPIES.items():
        yield kern, (arr(t, ndim, "A"), arr(w, ndim))


def _trivial(out):
    out[0] = 1.0


def main():
    try:
        cuda.compile_ptx(_trivial, (arr(f64, 1),), cc=CC)
    except Exception as exc:  # no NVVM (or no usable toolkit): nothing can be checked here
        print(f"cannot compile PTX on this machine ({type(exc).__name__}: {exc})", file=sys.stderr)
        return NO_NVVM
    failures = 0
    count = 0
    checked = {kern.py_func for kern, _ in signatures(f64, f64)}
    for kern in _jit.all_kernels():
        if kern.py_func not in checked:
            failures += 1
            print(f"FAIL {kern.py_func.__module__}.{kern.py_func.__name__}: no signature in ptx_check.py",
                  file=sys.stderr)
    for t in (f64, nt.float32):
        for w in (f64, nt.float32):
            for kern, args in signatures(t, w):
                count += 1
                name = f"{kern.py_func.__module__}.{kern.py_func.__name__}{args}"
                try:
                    cuda.compile_ptx(kern.py_func, args, cc=CC, fastmath=False)
                except Exception as exc:  # report every failure, not just the first
                    failures += 1
                    print(f"FAIL {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"{count - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
