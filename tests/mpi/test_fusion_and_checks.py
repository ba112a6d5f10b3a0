"""Tensor fusion against per-array MPI_Allreduce; checked mode and collective errors."""
import numpy as np
import pytest
from mpi4py import MPI

from hpcml import comm as hc
from mpi_helpers import all_ranks


def model_like_arrays(rank):
    rng = np.random.default_rng(7)
    shapes = [(3, 4), (5,), (1,), (0,), (17, 3), (2, 2, 2), (1000,), (33,)]
    dtypes = ["float32", "float64", "float32", "float32", "int64", "float64", "float32", "int32"]
    return [((rng.integers(-5, 5, size=s) + rank)).astype(d) for s, d in zip(shapes, dtypes)]


@pytest.mark.parametrize("bucket_bytes", [1, 64, 4096, 25 << 20])
@pytest.mark.parametrize("alg", ["ring", "tree", "auto"])
def test_allreduce_many_matches_per_array(comm, bucket_bytes, alg):
    arrays = model_like_arrays(comm.Get_rank())
    arrays.append(np.arange(40, dtype=np.float64).reshape(8, 5)[:, 1:4] + comm.Get_rank())
    refs = [a.copy() for a in arrays]
    ids = [id(a) for a in arrays]
    out = hc.allreduce_many(arrays, "sum", comm, alg, bucket_bytes=bucket_bytes)
    for r in refs:
        if r.size:
            comm.Allreduce(MPI.IN_PLACE, r)
    all_ranks(comm, [id(a) for a in out] == ids, "same array objects, updated in place")
    all_ranks(comm, all(np.array_equal(a, r) for a, r in zip(arrays, refs)),
              f"fusion with bucket {bucket_bytes} B differs from per-array Allreduce")


def test_allreduce_many_mean(comm):
    """Every input differs by rank (and from the mean): a no-op, a sum, or one rank's
    values all fail."""
    p, rank = comm.Get_size(), comm.Get_rank()
    arrays = [np.arange(10.0) * (rank + 1),
              (np.arange(6) + 10 * rank).reshape(2, 3).astype(np.float32)]
    hc.allreduce_many(arrays, "mean", comm)
    all_ranks(comm, np.allclose(arrays[0], np.arange(10.0) * (p + 1) / 2) and
              np.allclose(arrays[1], np.arange(6).reshape(2, 3) + 5.0 * (p - 1)), "mean")


def _needs_two_ranks(comm):
    """A difference across ranks needs two (the in-process runs include 1 rank)."""
    if comm.Get_size() < 2:
        pytest.skip("a difference across ranks needs 2 ranks")


def _raises_everywhere(comm, fn, *fragments):
    try:
        fn()
    except hc.CollectiveError as e:
        msg = str(e)
    else:
        msg = ""
    all_ranks(comm, msg != "", "CollectiveError raised on every rank")
    every = comm.allgather(msg)
    all_ranks(comm, len(set(every)) == 1, "the same message on every rank")
    for frag in fragments:
        all_ranks(comm, frag in msg, f"message names {frag!r}: {msg}")
    return msg


def test_checked_mode_length_mismatch(comm):
    _needs_two_ranks(comm)
    rank = comm.Get_rank()
    buf = np.ones(100 + (rank == 1))
    _raises_everywhere(comm, lambda: hc.allreduce(buf, comm=comm, check=True),
                       "length differs", "rank 0: 100", "rank 1: 101")


def test_checked_mode_dtype_and_root_mismatch(comm):
    _needs_two_ranks(comm)
    rank = comm.Get_rank()
    buf = np.ones(8, np.float32 if rank == 0 else np.float64)
    _raises_everywhere(comm, lambda: hc.allreduce(buf, comm=comm, check=True),
                       "dtype differs", "rank 0: float32")
    _raises_everywhere(comm, lambda: hc.broadcast(np.ones(4), root=rank % 2, comm=comm,
                                                  check=True), "root differs")


def test_checked_mode_local_error_on_one_rank(comm):
    """A bad buffer on the last rank only: every rank raises, naming that rank."""
    last = comm.Get_size() - 1
    buf = np.ones((4, 4))
    arg = buf[:, ::2] if comm.Get_rank() == last else buf
    _raises_everywhere(comm, lambda: hc.allreduce(arg, comm=comm, check=True),
                       f"rank {last}:", "C-contiguous")


def test_checked_mode_via_environment_default(comm, monkeypatch):
    monkeypatch.setattr(hc.config, "check", True)
    buf = np.ones(3 + comm.Get_rank())
    _raises_everywhere(comm, lambda: hc.allreduce(buf, comm=comm), "length differs")


def test_allreduce_many_checked_mismatch(comm):
    _needs_two_ranks(comm)
    rank = comm.Get_rank()
    arrays = [np.ones(3), np.ones(4 if rank == 0 else 5)]
    _raises_everywhere(comm, lambda: hc.allreduce_many(arrays, comm=comm, check=True),
                       "shapes/dtypes (crc32) differs across ranks")


def test_agree_reports_every_failing_rank(comm):
    rank = comm.Get_rank()
    err = f"shard-0000{rank}.h5: bad checksum" if rank % 2 else None
    if comm.Get_size() == 1:
        pytest.skip("needs 2 ranks")
    msg = _raises_everywhere(comm, lambda: hc.agree(comm, err, what="loading"), "loading failed")
    for r in range(1, comm.Get_size(), 2):
        all_ranks(comm, f"rank {r}: shard-0000{r}.h5" in msg, "names each failing rank")


def test_checked_mode_segment_mismatch(comm):
    _needs_two_ranks(comm)
    seg = 800 if comm.Get_rank() == 0 else 1600
    _raises_everywhere(comm, lambda: hc.allreduce(np.ones(1000), comm=comm, algorithm="ring",
                                                  check=True, segment_bytes=seg),
                       "segment_bytes differs", "rank 0: 800")


def test_checked_mode_bad_segment_or_root_on_one_rank(comm):
    last = comm.Get_size() - 1
    seg = "x" if comm.Get_rank() == last else None
    _raises_everywhere(comm, lambda: hc.allreduce(np.ones(10), comm=comm, check=True,
                                                  segment_bytes=seg),
                       f"rank {last}:", "segment_bytes must be a positive integer")
    root = 1.0 if comm.Get_rank() == last else 0
    _raises_everywhere(comm, lambda: hc.broadcast(np.ones(4), root, comm, "ring", check=True),
                       f"rank {last}:", "root must be an integer rank")


def test_allreduce_many_checked_op_algorithm_bucket(comm):
    _needs_two_ranks(comm)
    rank = comm.Get_rank()
    arrays = [np.ones(3), np.ones(4)]
    _raises_everywhere(comm, lambda: hc.allreduce_many(
        arrays, "sum" if rank == 0 else "max", comm, check=True), "op differs")
    _raises_everywhere(comm, lambda: hc.allreduce_many(
        arrays, "sum", comm, "ring" if rank == 0 else "tree", check=True), "algorithm differs")
    _raises_everywhere(comm, lambda: hc.allreduce_many(
        arrays, "sum", comm, bucket_bytes=64 if rank == 0 else 128, check=True),
        "bucket_bytes differs")
    _raises_everywhere(comm, lambda: hc.allreduce_many(
        arrays, "sum", comm, bucket_bytes=0 if rank == 0 else 128, check=True),
        "rank 0: allreduce_many: bucket_bytes must be a positive integer")


def test_freed_communicator_leaves_nothing_stale(comm):
    """MPI reuses freed handles: a new communicator must not inherit the old one's plans."""
    p, rank = comm.Get_size(), comm.Get_rank()
    base = np.arange(10.0)
    for _ in range(20):
        sub = comm.Split(rank % 2, rank)
        buf = base + rank  # differs by rank: a no-op or another comm's ranks give other sums
        hc.allreduce(buf, "sum", sub, "ring")
        same_parity = range(rank % 2, p, 2)
        ok_sub = np.array_equal(buf, base * len(same_parity) + sum(same_parity))
        sub.Free()
        dup = comm.Dup()
        buf = base + rank
        hc.allreduce(buf, "sum", dup, "ring")
        dup.Free()
        all_ranks(comm, ok_sub and np.array_equal(buf, base * p + p * (p - 1) // 2),
                  "stale per-communicator state")


def test_bad_cost_model_file_fails_on_every_rank(comm, tmp_path_factory, monkeypatch):
    """HPCML_COMM_MODEL unreadable on one rank: every rank raises, naming it, no hang."""
    last = comm.Get_size() - 1
    if comm.Get_rank() == last:
        monkeypatch.setenv("HPCML_COMM_MODEL", "/nonexistent/model.json")
    else:
        monkeypatch.delenv("HPCML_COMM_MODEL", raising=False)
    fresh = comm.Dup()  # its state is created (and the model loaded) on first use
    try:
        _raises_everywhere(comm, lambda: hc.allreduce(np.ones(4), comm=fresh),
                           "setting up hpcml on this communicator", f"rank {last}:",
                           "/nonexistent/model.json")
    finally:
        fresh.Free()
