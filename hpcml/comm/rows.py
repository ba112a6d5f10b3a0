"""Rows of an array split across ranks, and gathered back: the layout hpcml's estimators
use for data and embeddings held by rows (rank r owns rows [r*n//p, (r+1)*n//p)).

`RowGather` all-gathers the ranks' rows with hpcml's own all-gather (no pickle, identical
bytes on every rank): each rank's block is padded to the largest block so that the blocks
line up with `chunk_bounds`, then the padding is squeezed out.
"""
import numpy as np

from .collectives import allgather


def row_bounds(n, p, r):
    """Rows [lo, hi) of n that rank r of p owns."""
    return n * r // p, n * (r + 1) // p


class RowGather:
    """Reusable buffers for gathering an (n, *row_shape) array owned by rows.

        g = RowGather(n, (2,), np.float64, comm)
        g.local[...] = my_rows          # this rank's rows, shape (hi - lo, 2)
        full = g.gather()               # (n, 2) on every rank (a buffer reused per call)

    counts: rows per rank when they are not the row_bounds split.
    """

    def __init__(self, n, row_shape, dtype, comm=None, algorithm="auto", counts=None):
        self.comm = comm
        self.p = comm.Get_size() if comm is not None else 1
        self.rank = comm.Get_rank() if comm is not None else 0
        self.n, self.algorithm = int(n), algorithm
        if counts is None:  # the row_bounds split
            counts = [row_bounds(self.n, self.p, r)[1] - row_bounds(self.n, self.p, r)[0]
                      for r in range(self.p)]
        counts = [int(c) for c in counts]
        if len(counts) != self.p or sum(counts) != self.n or min(counts) < 0:
            raise ValueError(f"RowGather: counts {counts} do not split {n} rows over "
                             f"{self.p} ranks")
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.counts = counts
        self.lo, self.hi = int(self.offsets[self.rank]), int(self.offsets[self.rank + 1])
        self.m = max(counts)  # the largest block
        self.even = min(counts) == self.m
        rows = self.n if self.even else self.p * self.m
        self._buf = np.zeros((rows,) + tuple(row_shape), dtype)
        self.full = self._buf if self.even else np.empty((self.n,) + tuple(row_shape), dtype)
        start = self.lo if self.even else self.rank * self.m
        self.local = self._buf[start:start + self.hi - self.lo]

    def gather(self):
        if self.p > 1:
            allgather(self._buf, comm=self.comm, algorithm=self.algorithm)
        if not self.even:
            for r in range(self.p):
                lo, hi = self.offsets[r], self.offsets[r + 1]
                self.full[lo:hi] = self._buf[r * self.m:r * self.m + hi - lo]
        return self.full


def row_counts(n_local, comm=None):
    """Every rank's row count (an all-gather of one int64 per rank)."""
    if comm is None or comm.Get_size() == 1:
        return [int(n_local)]
    c = np.zeros(comm.Get_size(), np.int64)
    c[comm.Get_rank()] = n_local
    allgather(c, comm=comm)
    return [int(v) for v in c]


def allgather_rows(local, comm=None, counts=None):
    """Every rank's rows of `local` (any number per rank, same trailing shape and dtype on
    every rank) concatenated in rank order, on every rank."""
    local = np.ascontiguousarray(local)
    counts = row_counts(local.shape[0], comm) if counts is None else counts
    g = RowGather(sum(counts), local.shape[1:], local.dtype, comm, counts=counts)
    g.local[...] = local
    return g.gather()
