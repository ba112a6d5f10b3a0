"""Memory the ranks of one node share: an MPI shared-memory window (MPI_Win_allocate_shared)
as one NumPy array, and an exclusive lock on it.

    shared = SharedArray(n, np.float32, comm)     # collective; every rank on one node
    shared.array[...]                             # the same bytes in every rank's process
    with shared.lock():                           # MPI_Win_lock(EXCLUSIVE) on rank 0's part
        ...
    shared.free()                                 # collective

Under the in-process communicator (ranks are threads) the array is one NumPy array and the
lock a threading.Lock.
"""
import threading
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI

from .inproc import InprocComm


class SharedArray:
    def __init__(self, n, dtype, comm):
        dtype = np.dtype(dtype)
        self.comm, self.win = comm, None
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        same = node.Get_size() == comm.Get_size()
        if not comm.allreduce(int(same), MPI.MIN):
            raise ValueError(f"shared memory: the {comm.Get_size()} ranks are not all on one "
                             f"node (this one shares it with {node.Get_size()}); run them on "
                             f"one node")
        if isinstance(comm, InprocComm):
            made = (np.zeros(n, dtype), threading.Lock()) if comm.Get_rank() == 0 else None
            self.array, self._lock = comm.bcast(made, root=0)
            return
        size = n * dtype.itemsize if node.Get_rank() == 0 else 0
        self.win = MPI.Win.Allocate_shared(size, dtype.itemsize, comm=node)
        buf, _ = self.win.Shared_query(0)
        self.array = np.ndarray((n,), dtype, buffer=buf)
        self._node = node

    @contextmanager
    def lock(self):
        """Exclusive access among the ranks that take this lock (others are not held)."""
        if self.win is None:
            with self._lock:
                yield
            return
        self.win.Lock(0, MPI.LOCK_EXCLUSIVE)
        try:
            yield
        finally:
            self.win.Sync()
            self.win.Unlock(0)

    def sync(self):
        """Make this rank's stores visible to the others (a memory barrier)."""
        if self.win is not None:
            self.win.Lock(0, MPI.LOCK_SHARED)
            self.win.Sync()
            self.win.Unlock(0)

    def free(self):
        """Collective: release the window (the array must not be used after)."""
        if self.win is not None:
            self.win.Free()
            self.win = None
