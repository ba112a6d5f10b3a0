"""The one place that turns schedule steps into MPI point-to-point calls.

Buffers are NumPy arrays sent with mpi4py's uppercase (buffer) methods: no pickle on the
hot path. Reducing receives land in a cached scratch buffer (one per dtype, grown on
demand, never freed between calls, so no page faults on the hot path) and are combined
into place with the op's ufunc while still in cache.
"""
import threading

import numpy as np

from .guard import Watchdog
from .schedules import COPY, REDUCE

# per thread: the in-process communicator runs ranks as threads, and a background
# all-reduce (DataParallel overlap) runs beside the main thread
_local = threading.local()

#: tag of hpcml's own messages; they travel on a private duplicate of the user's
#: communicator (see collectives._private), so they never meet the user's messages.
TAG = 0x4850


def scratch(dtype, n):
    """A cached scratch array of at least n elements of dtype (its first n returned)."""
    cache = _local.__dict__.setdefault("scratch", {})
    buf = cache.get(dtype)
    if buf is None or buf.size < n:
        buf = cache[dtype] = np.empty(max(n, 1024), dtype)
    return buf[:n]


def execute(comm, buf, schedule, ufunc, what="collective"):
    """Run one rank's `schedule` on the 1-D contiguous array `buf`, in place."""
    steps = schedule.steps
    if not steps:
        return buf
    tmp = scratch(buf.dtype, schedule.scratch)
    wd = Watchdog.active
    try:
        for i, (sp, s0, s1, rp, r0, r1, mode) in enumerate(steps):
            if wd is not None:  # described only if it times out
                wd.enter((what, i, len(steps), sp, rp))
            if rp < 0:
                comm.Send(buf[s0:s1], sp, TAG)
                continue
            dst = buf[r0:r1]
            into = dst if mode == COPY else tmp[:r1 - r0]
            if sp < 0:
                comm.Recv(into, rp, TAG)
            else:
                comm.Sendrecv(buf[s0:s1], sp, TAG, into, rp, TAG)
            if mode == REDUCE:
                ufunc(dst, into, out=dst)
            elif mode != COPY:
                ufunc(into, dst, out=dst)
    finally:
        if wd is not None:
            wd.leave()
    return buf
