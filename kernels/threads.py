"""Threads per rank: ranks that share a node share its cores.

configure(local_ranks) gives each rank cores // local_ranks threads (at least 1) for Numba
and, best effort, for the BLAS NumPy uses, so 8 ranks on 2 cores do not each start 2
threads. HPCML_NUM_THREADS overrides. The caller (hpcml.comm's entry point) knows the number
of ranks on this node; kernels know nothing of MPI.
"""
import ctypes
import os

_configured = None


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _blas_set(n):
    """Set OpenBLAS threads through whichever OpenBLAS this process has loaded."""
    try:
        with open("/proc/self/maps") as f:
            libs = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln}
    except OSError:
        return False
    done = False
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("openblas_set_num_threads", "openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                done = True
                break
    return done


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


def current():
    """Threads set by configure(), or None if it was never called."""
    return _configured
