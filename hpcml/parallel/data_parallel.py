"""Synchronous data parallelism over one flat gradient buffer.

    dp = DataParallel(model, comm, algorithm="auto")   # broadcasts rank 0's parameters
    for micro in range(K):                             # gradient accumulation: no
        loss, d = cross_entropy(model(x), y, denom=global_rows)   # communication until
        model.backward(d, accumulate=micro > 0)                   # the last micro-step
    flags = dp.sync(error=..., stop=...)                # one all-reduce: gradients + flags
    opt.step()

Each rank's loss is normalised by the *global* number of rows of the step (denom), so the
all-reduced sum of gradients is exactly the gradient of the global mean loss: P ranks at
per-rank batch b follow one process at batch P*b (with the loader's partition="global",
which gives them the same rows).

The all-reduce carries two more numbers after the gradients: how many ranks failed this
step (a data error, say) and how many were asked to stop (SIGTERM/SIGUSR1). Every rank
learns both in the same call, for free, so a bad row on one rank raises the same error on
every rank at the same step, and a preemption signal makes every rank checkpoint at the
same step boundary.
"""
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcml import comm as hc


@dataclass
class StepFlags:
    failed: int  # ranks that reported an error this step
    stop: int  # ranks asked to stop (signal)


class DataParallel:
    """Wraps an hpcml.nn.Sequential: its gradient buffer becomes the head of a buffer with
    two flag slots, all-reduced in one call per optimizer step."""

    def __init__(self, model, comm=None, algorithm="auto"):
        if algorithm not in hc.ALGORITHMS:
            raise ValueError(f"DataParallel: algorithm must be one of "
                             f"{', '.join(hc.ALGORITHMS)}, got {algorithm!r}")
        self.model, self.algorithm = model, algorithm
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.size, self.rank = self.comm.Get_size(), self.comm.Get_rank()
        n = model.size
        self.buffer = np.zeros(n + 2, model.dtype)
        self.buffer[:n] = model.grads
        model.rebind_grads(self.buffer[:n])
        self.comm_seconds = 0.0
        hc.broadcast(model.params, root=0, comm=self.comm)

    def sync(self, error=False, stop=False):
        """All-reduce (sum) the gradients and the flags; returns the summed StepFlags.
        The gradients are left as received even when a rank failed (callers stop then)."""
        n = self.model.size
        self.buffer[n] = 1 if error else 0
        self.buffer[n + 1] = 1 if stop else 0
        if self.size > 1:
            t = MPI.Wtime()
            hc.allreduce(self.buffer, "sum", comm=self.comm, algorithm=self.algorithm)
            self.comm_seconds += MPI.Wtime() - t
        return StepFlags(int(round(float(self.buffer[n]))), int(round(float(self.buffer[n + 1]))))

    def allreduce_sums(self, values):
        """Sum a few float64 numbers over ranks (metrics): one MPI_Allreduce."""
        v = np.asarray(values, np.float64).copy()
        if self.size > 1:
            hc.allreduce(v, "sum", comm=self.comm, algorithm="mpi")
        return v
