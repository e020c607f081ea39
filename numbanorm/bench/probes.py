"""Linux ``/proc`` probes: the memory one call adds, and CPUs kept busy elsewhere."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time

from .._memory import release as release_memory

__all__ = ["busy_cpus", "busy_note", "peak_extra_bytes", "release_free_memory", "reset_peak_rss"]


def _rss_bytes(field_name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field_name} not in /proc/self/status")


def reset_peak_rss():
    """Reset the peak resident set size of this process (Linux; False elsewhere).

    After it, ``resource.getrusage(...).ru_maxrss`` (what asv ``peakmem_`` reports)
    and ``VmHWM`` restart from the current resident size.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


_LIBC = None


def release_free_memory():
    """Give free pages back to the system: numbanorm's recycled buffers
    (:func:`numbanorm.release_memory`), then the allocator's (glibc ``malloc_trim``).

    Without it, a temporary allocated where a freed array was (the previous call's
    output, say) reuses pages that are already resident and adds nothing to the peak,
    so a full-size temporary goes unseen. Returns False where there is no glibc.
    """
    global _LIBC
    release_memory()
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
    if not _LIBC or not hasattr(_LIBC, "malloc_trim"):
        return False
    _LIBC.malloc_trim(0)
    return True


def peak_extra_bytes(fn, expected_bytes=0):
    """Peak resident memory that one call of ``fn`` adds, minus ``expected_bytes``.

    Parameters
    ----------
    fn : callable
        Called once with no arguments; its result is kept until the peak is read.
    expected_bytes : int
        The size of what the call must allocate (its output, its gradients), so that
        the result is the temporaries.

    Returns
    -------
    int or None
        None where ``/proc/self/clear_refs`` and ``VmHWM`` are not available. Free
        memory is handed back first (:func:`release_free_memory`), so that the call's
        allocations touch new pages and are seen.
    """
    gc.collect()
    release_free_memory()
    if not reset_peak_rss():
        return None
    try:
        before = _rss_bytes("VmRSS")
        result = fn()  # noqa: F841  (kept alive until the peak is read)
        peak = _rss_bytes("VmHWM")
    except OSError:
        return None
    return peak - before - expected_bytes


def _cpu_jiffies():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def busy_cpus(interval=0.3):
    """CPUs kept busy by other processes, sampled from ``/proc/stat`` over ``interval``
    seconds while this process sleeps (Linux); the 1-minute load average elsewhere."""
    try:
        busy0, total0 = _cpu_jiffies()
        time.sleep(interval)
        busy1, total1 = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    if total1 == total0:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def busy_note(threads):
    """A warning when other processes keep the cores that the benchmark needs busy."""
    busy, cpus = busy_cpus(), os.cpu_count() or 1
    if busy is None or busy <= cpus - threads + 0.5:
        return None
    return (f"other processes keep {busy:.1f} of {cpus} CPUs busy: they compete with the "
            f"{threads} benchmark threads, timings are unreliable")
