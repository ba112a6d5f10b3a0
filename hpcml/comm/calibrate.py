"""Measure the cost model on a communicator (collective): what makes `auto` measured."""
import numpy as np
from mpi4py import MPI

from .collectives import allreduce
from .guard import watching
from .model import CostModel, MEASURED_ALGORITHMS
from .state import state_of, set_model
from .timing import time_interleaved

def _median_max(comm, f, reps):
    """Median over reps of the slowest rank's time for f()."""
    return float(np.median(time_interleaved(comm, {"f": f}, reps)["f"]))


#: message sizes (bytes) at which calibrate() times each all-reduce algorithm
CURVE_SIZES = (8, 1 << 10, 8 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)


def _measure_allreduce(comm, reps):
    """Time hpcml's all-reduce algorithms and MPI's own at CURVE_SIZES, interleaved (same conditions)."""
    p = comm.Get_size()
    pts = {a: [] for a in MEASURED_ALGORITHMS}
    for nbytes in CURVE_SIZES:
        # as in use (and in the benchmark): fresh data written just before each call
        src = (np.arange(nbytes // 4) % 13).astype(np.float32)
        buf = src.copy()
        calls = {a: (lambda a=a: allreduce(buf, "sum", comm, a, check=False))
                 for a in MEASURED_ALGORITHMS}
        prepare = lambda: np.copyto(buf, src)  # noqa: E731
        time_interleaved(comm, calls, 2, prepare)  # warm-up: schedules, scratch, caches
        k = reps if nbytes <= (64 << 10) else max(5, reps // 2)
        for a, t in time_interleaved(comm, calls, k, prepare).items():
            pts[a].append((nbytes, float(np.median(t))))
    return tuple((a, p, tuple(pts[a])) for a in MEASURED_ALGORITHMS)


def calibrate(comm=None, big_bytes=4 << 20, reps=30, install=True):
    """Collective: measure the model on `comm` and (by default) use it for `comm`.

    alpha: ring-neighbour Sendrecv of 8 bytes; beta: the extra time per byte of a
    `big_bytes` Sendrecv; gamma: np.add of a cache-sized block into a big buffer, per byte
    (these drive the rooted collectives). For all-reduce, each of hpcml's algorithms is
    timed at CURVE_SIZES, giving a piecewise alpha-beta model per algorithm, so the
    crossovers are measured on this communicator, not guessed. Every rank gets the same (slowest
    rank's) numbers, so every rank chooses the same algorithm. Takes well under a second.
    """
    comm = comm or MPI.COMM_WORLD
    p, r = comm.Get_size(), comm.Get_rank()
    pcomm = state_of(comm).private  # hpcml's own messages never meet the user's
    right, left = (r + 1) % p, (r - 1) % p
    small_s, small_r = np.zeros(2, np.float32), np.zeros(2, np.float32)
    big_s = np.ones(big_bytes // 4, np.float32)
    big_r = np.empty_like(big_s)

    def exchange(a, b):
        def f():
            with watching("calibrate: Sendrecv with ring neighbours"):
                pcomm.Sendrecv(a, right, 77, b, left, 77)
        return f

    for _ in range(5):
        exchange(small_s, small_r)()
        exchange(big_s, big_r)()
    alpha = _median_max(comm, exchange(small_s, small_r), reps)
    big = _median_max(comm, exchange(big_s, big_r), max(5, reps // 3))
    beta = max(big - alpha, 1e-9) / big_bytes
    seg = big_r[: (1 << 20) // 4]

    def reduce_pass():
        for o in range(0, big_s.size, seg.size):
            d = big_s[o:o + seg.size]
            np.add(seg[:d.size], d, out=d)

    reduce_pass()
    gamma = _median_max(comm, reduce_pass, max(5, reps // 3)) / big_bytes
    model = CostModel(alpha=alpha, beta=beta, gamma=gamma, curves=_measure_allreduce(comm, reps),
                      mpi_below=state_of(comm).model.mpi_below)  # for other world sizes
    if install:
        set_model(model, comm)
    return model
