"""Threads per rank: ranks that share a node share its cores.

configure(local_ranks) gives each rank cores // local_ranks threads (at least 1) for Numba
and, best effort, for the BLAS NumPy uses, so 8 ranks on 2 cores do not each start 2
threads. HPCML_NUM_THREADS overrides. The caller (hpcml.comm's entry point) knows the number
of ranks on this node; kernels know nothing of MPI.
"""
import contextlib
import ctypes
import functools
import os
import threading

_configured = None


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def openblas(name):
    """OpenBLAS's `name` function (e.g. "set_num_threads"; any of its symbol spellings:
    openblas_/scipy_openblas_ prefixes, 64_ suffix) in every OpenBLAS this process has
    loaded (NumPy's and SciPy's may both be): a tuple, empty if none."""
    try:
        with open("/proc/self/maps") as f:
            libs = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln}
    except OSError:
        return ()
    found = []
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for spelling in ("openblas_", "scipy_openblas_"):
            fn = next((getattr(lib, spelling + name + suffix) for suffix in ("", "64_")
                       if hasattr(lib, spelling + name + suffix)), None)
            if fn is not None:
                found.append(fn)
                break
    return tuple(found)


def _blas_set(n):
    """Set the threads of every OpenBLAS this process has loaded, leaving alone one that
    already has n. (An explicit openblas_set_num_threads(2) at start, even to the count it
    had, made later single-threaded calls from two of our threads share one core here:
    OpenBLAS 0.3.x in NumPy 2.4's wheel; hpcml.bench.pca's product_only went from 20-22 to
    11-12 GFMA/s.)"""
    gets, puts = openblas("get_num_threads"), openblas("set_num_threads")
    for i, put in enumerate(puts):
        if len(gets) != len(puts) or int(gets[i]()) != n:
            put(ctypes.c_int(n))
    return bool(puts)


_blas_lock = threading.Lock()


@contextlib.contextmanager
def blas_threads(n):
    """BLAS calls made meanwhile use n threads (OpenBLAS; a no-op elsewhere), restored
    after; one such block at a time (the setting is process-wide)."""
    gets, puts = openblas("get_num_threads"), openblas("set_num_threads")
    if len(gets) != len(puts) or not puts:
        yield
        return
    with _blas_lock:
        before = [int(g()) for g in gets]
        for put in puts:
            put(ctypes.c_int(n))
        try:
            yield
        finally:
            for put, b in zip(puts, before):
                put(ctypes.c_int(b))


def configure(local_ranks=1):
    """Set Numba (and BLAS) threads to cores // local_ranks, or HPCML_NUM_THREADS."""
    global _configured
    text = os.environ.get("HPCML_NUM_THREADS", "").strip()
    if text:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n <= 0:
            raise ValueError(f"HPCML_NUM_THREADS must be a positive integer, got {text!r}")
    else:
        n = max(1, available_cores() // max(1, int(local_ranks)))
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _blas_set(n)
    _configured = n
    return n


def reapply():
    """After a library brought its own OpenBLAS (SciPy's), give every OpenBLAS loaded now
    the count configure() set; nothing when configure() was never called."""
    openblas.cache_clear()
    if _configured is not None:
        _blas_set(_configured)


def current():
    """Threads set by configure(), or None if it was never called."""
    return _configured
