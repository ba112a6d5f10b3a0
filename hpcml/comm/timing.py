"""OSU-style timing of collective calls: Barrier, MPI.Wtime, max over ranks per iteration."""
import numpy as np
from mpi4py import MPI

from .guard import watching


def time_interleaved(comm, calls, iters, prepare=None):
    """Run each of `calls` (name -> f) `iters` times, interleaved in rotating order.

    Before each timed call, prepare() runs untimed; then Barrier and MPI.Wtime around the
    call. Returns name -> array of per-iteration times, each the max over ranks (identical
    on every rank). Interleaving makes slow drifts of a shared machine hit all calls alike.
    """
    names = list(calls)
    times = {k: np.empty(iters) for k in names}
    for it in range(iters):
        for j in range(len(names)):
            name = names[(it + j) % len(names)]
            if prepare is not None:
                prepare()
            with watching("timing: MPI_Barrier"):
                comm.Barrier()
            t0 = MPI.Wtime()
            calls[name]()
            times[name][it] = MPI.Wtime() - t0
    for k in names:
        with watching("timing: MPI_Allreduce of the times"):
            comm.Allreduce(MPI.IN_PLACE, times[k], op=MPI.MAX)
    return times
