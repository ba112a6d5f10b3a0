"""broadcast, reduce, reduce_scatter and allgather against MPI's own collectives."""
import numpy as np
import pytest
from mpi4py import MPI

from hpcml import comm as hc
from mpi_helpers import all_ranks


def lengths(p):
    return [0, 1, p - 1, p + 2, 999, 5000]


@pytest.mark.parametrize("alg", ["tree", "ring", "mpi", "auto"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_broadcast_every_root(comm, alg, dtype):
    p, rank = comm.Get_size(), comm.Get_rank()
    for root in range(p):
        for n in lengths(p):
            # every element differs by rank (also for n = 1): a no-op broadcast fails
            buf = (np.arange(n) * (rank + 1) + 1000 * rank + 1).astype(dtype)
            ref = buf.copy()
            out = hc.broadcast(buf, root, comm, alg)
            comm.Bcast(ref, root)
            all_ranks(comm, out is buf and np.array_equal(buf, ref),
                      f"broadcast {alg} root={root} n={n}")


@pytest.mark.parametrize("alg", ["tree", "ring", "mpi", "auto"])
@pytest.mark.parametrize("op", ["sum", "max", "min", "prod"])
@pytest.mark.parametrize("dtype", ["float64", "int32"])
def test_reduce_every_root(comm, alg, op, dtype):
    p, rank = comm.Get_size(), comm.Get_rank()
    mpi_op = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}[op]
    for root in range(p):
        for n in lengths(p):
            buf = ((np.arange(n) % 3) + 1 + rank).astype(dtype)
            ref = np.empty_like(buf)
            if n:
                comm.Reduce(buf, ref, mpi_op, root)
            hc.reduce(buf, root, op, comm, alg, segment_bytes=512)
            all_ranks(comm, rank != root or np.array_equal(buf, ref),
                      f"reduce {alg} {op} root={root} n={n}")


def test_reduce_mean_at_root(comm):
    p, rank = comm.Get_size(), comm.Get_rank()
    buf = np.full(10, float(rank))
    hc.reduce(buf, 0, "mean", comm)
    all_ranks(comm, rank != 0 or np.allclose(buf, (p - 1) / 2), "mean at root")


@pytest.mark.parametrize("alg", ["ring", "mpi", "auto"])
@pytest.mark.parametrize("op", ["sum", "max", "mean"])
def test_reduce_scatter_blocks(comm, alg, op):
    p, rank = comm.Get_size(), comm.Get_rank()
    for n in lengths(p):
        buf = ((np.arange(n) % 5) + rank).astype(np.float64)
        full = buf.copy()
        comm.Allreduce(MPI.IN_PLACE, full, op=MPI.MAX if op == "max" else MPI.SUM)
        if op == "mean":
            full /= p
        b = hc.chunk_bounds(n, p)
        mine = hc.reduce_scatter(buf, op, comm, alg, segment_bytes=64)
        ok = mine.size == b[rank + 1] - b[rank] and np.array_equal(mine, full[b[rank]:b[rank + 1]])
        in_place = mine.size == 0 or np.shares_memory(mine, buf)
        all_ranks(comm, ok and in_place,
                  f"reduce_scatter {alg} {op} n={n}")


@pytest.mark.parametrize("alg", ["ring", "mpi", "auto"])
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_allgather_blocks(comm, alg, dtype):
    p, rank = comm.Get_size(), comm.Get_rank()
    for n in lengths(p):
        b = hc.chunk_bounds(n, p)
        expected = np.zeros(n, dtype)
        for r in range(p):
            expected[b[r]:b[r + 1]] = np.arange(b[r], b[r + 1]) + 100 * r
        buf = np.full(n, -1, dtype)
        buf[b[rank]:b[rank + 1]] = expected[b[rank]:b[rank + 1]]
        hc.allgather(buf, comm, alg)
        all_ranks(comm, np.array_equal(buf, expected), f"allgather {alg} n={n}")


@pytest.mark.parametrize("alg", ["ring", "mpi"])
def test_reduce_scatter_with_uneven_bounds(comm, alg):
    """Blocks of any size, empty ones included: each rank's block is the reduced one."""
    p, rank = comm.Get_size(), comm.Get_rank()
    n = 7 * p + 3
    cuts = sorted(np.random.default_rng(p).integers(0, n + 1, p - 1).tolist())
    b = (0, *cuts, n) if p > 1 else (0, n)
    buf = ((np.arange(n) % 7) + 3 * rank).astype(np.float64)
    full = hc.reduce_array(buf, "sum", comm)
    mine = hc.reduce_scatter(buf, "sum", comm, alg, bounds=b, segment_bytes=16)
    all_ranks(comm, mine.size == b[rank + 1] - b[rank] and
              np.array_equal(mine, full[b[rank]:b[rank + 1]]), f"bounds {b}")
    with pytest.raises(ValueError, match="non-decreasing offsets"):
        hc.reduce_scatter(buf, "sum", comm, alg, bounds=(0,) * p + (n - 1,))


def test_ring_reduce_scatter_of_a_range_gives_the_whole_ring_allreduce_bytes(comm):
    """A sub-range reduce-scattered with the owners of the whole buffer gets, to the bit,
    what the ring all-reduce of the whole buffer gives it (ZeRO-2's per-layer reduction)."""
    p, rank = comm.Get_size(), comm.Get_rank()
    n = 50 * p + 3
    rng = np.random.default_rng(100 + rank)
    data = rng.standard_normal(n).astype(np.float32) * 10.0 ** rng.integers(-3, 4, n)
    whole = hc.allreduce(data.copy(), "sum", comm, "ring")
    owners = hc.chunk_bounds(n, p)
    ok = True
    for lo, hi in ((0, n), (3, 40), (n // 2, n), (5, 6)):
        b = tuple(min(max(x, lo), hi) - lo for x in owners)
        part = data[lo:hi].copy()
        mine = hc.reduce_scatter(part, "sum", comm, "ring", bounds=b, segment_bytes=32)
        ok &= np.array_equal(mine, whole[lo + b[rank]:lo + b[rank + 1]])
    all_ranks(comm, ok, "the range's bytes differ from the whole buffer's ring all-reduce")
