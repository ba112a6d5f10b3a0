"""All-reduce: every algorithm, op, dtype and awkward length against MPI_Allreduce."""
import numpy as np
import pytest
from mpi4py import MPI

from hpcml import comm as hc
from mpi_helpers import all_ranks, same_bytes_everywhere

MPI_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD, "mean": MPI.SUM}
ALGS = ["ring", "tree", "rhd", "mpi", "auto"]
DTYPES = ["float32", "float64", "int32", "int64"]


def sizes(p):
    # empty, fewer elements than ranks, exactly p, odd, several ring segments
    return [0, 1, p - 1, p, p + 1, 37, 1000, 10_007]


def data(n, dtype, rank, op):
    base = np.arange(n) % 7
    if op == "prod":  # keep products exact and inside int32
        return ((base % 2) + 1 + (rank % 2)).astype(dtype)
    return (base - 3 + 2 * rank).astype(dtype)  # negatives too; sums exact in float32


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("op", ["sum", "max", "min", "prod"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_mpi(comm, alg, op, dtype):
    rank = comm.Get_rank()
    for n in sizes(comm.Get_size()):
        buf = data(n, dtype, rank, op)
        ref = buf.copy()
        out = hc.allreduce(buf, op, comm, alg, segment_bytes=256)  # many segments
        if n:
            comm.Allreduce(MPI.IN_PLACE, ref, op=MPI_OPS[op])
        all_ranks(comm, out is buf, "allreduce returns its buffer")
        all_ranks(comm, np.array_equal(buf, ref), f"{alg} {op} {dtype} n={n} differs from MPI")


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mean(comm, alg, dtype):
    p, rank = comm.Get_size(), comm.Get_rank()
    buf = data(1001, dtype, rank, "mean")
    ref = buf.copy()
    hc.allreduce(buf, "mean", comm, alg)
    comm.Allreduce(MPI.IN_PLACE, ref, op=MPI.SUM)
    all_ranks(comm, np.array_equal(buf, ref / p), f"mean {alg} {dtype}")


@pytest.mark.parametrize("alg", ["ring", "tree", "rhd", "auto"])
def test_identical_bytes_on_every_rank_and_run(comm, alg):
    """Random floats (rounding depends on order): still the same bytes everywhere, every run."""
    rng = np.random.default_rng(comm.Get_rank())
    src = rng.standard_normal(12_345).astype(np.float32) * 1e3
    first = hc.allreduce(src.copy(), "sum", comm, alg, segment_bytes=1024)
    all_ranks(comm, same_bytes_everywhere(comm, first), f"{alg}: ranks hold different bytes")
    again = hc.allreduce(src.copy(), "sum", comm, alg, segment_bytes=1024)
    all_ranks(comm, np.array_equal(first, again), f"{alg}: two runs differ")
    ref = src.astype(np.float64)  # exact: a few float32s sum exactly in float64
    comm.Allreduce(MPI.IN_PLACE, ref)
    total = np.abs(src.astype(np.float64))
    comm.Allreduce(MPI.IN_PLACE, total)
    # p - 1 float32 additions in any order: |error| <= (p - 1) u sum|x| < p eps sum|x|
    bound = comm.Get_size() * np.finfo(np.float32).eps * total
    err = np.abs(first - ref)
    all_ranks(comm, (err <= bound).all(), f"{alg}: error {err.max():.3g} above p*eps*sum|x|")


@pytest.mark.parametrize("alg", ["ring", "tree", "rhd"])
def test_max_of_signed_zeros_agrees(comm, alg):
    """max(+0, -0) depends on operand order in IEEE; every rank must still agree."""
    buf = np.array([0.0 if comm.Get_rank() % 2 else -0.0] * 5)
    hc.allreduce(buf, "max", comm, alg)
    all_ranks(comm, same_bytes_everywhere(comm, buf), f"{alg}: signed zeros differ")


def test_multidimensional_and_other_dtypes(comm):
    rank = comm.Get_rank()
    for dtype in ["float16", "int8", "uint16", "uint64", "complex64", "complex128"]:
        buf = (np.arange(24).reshape(2, 3, 4) % 3 + rank).astype(dtype)
        out = hc.allreduce(buf, "sum", comm, "ring")
        expected = sum((np.arange(24).reshape(2, 3, 4) % 3 + r).astype(dtype)
                       for r in range(comm.Get_size()))
        all_ranks(comm, out is buf and out.shape == (2, 3, 4), f"{dtype}: shape kept")
        all_ranks(comm, np.array_equal(buf, expected), f"{dtype}: wrong result")


def test_subcommunicator(comm):
    """Collectives on a split communicator only involve its members."""
    rank = comm.Get_rank()
    sub = comm.Split(rank % 2, rank)
    try:
        buf = np.full(100, float(rank))
        hc.allreduce(buf, "sum", sub, "ring")
        members = [r for r in range(comm.Get_size()) if r % 2 == rank % 2]
        all_ranks(comm, np.all(buf == sum(members)), "split communicator sum")
    finally:
        sub.Free()


def test_user_messages_never_meet_hpcml_messages(comm):
    """A pending user message on the same communicator and tag does not disturb a collective."""
    from hpcml.comm.executor import TAG
    p, rank = comm.Get_size(), comm.Get_rank()
    note = np.array([rank], np.int64)
    req = comm.Isend(note, (rank + 1) % p, TAG)
    buf = np.ones(64)
    hc.allreduce(buf, "sum", comm, "ring")
    got = np.empty(1, np.int64)
    comm.Recv(got, (rank - 1) % p, TAG)
    req.Wait()
    all_ranks(comm, np.all(buf == p) and got[0] == (rank - 1) % p, "user message intact")


def test_calibrated_model_is_identical_and_auto_stays_correct(comm):
    model = hc.calibrate(comm, reps=3, install=False)
    dumped = comm.allgather(model.to_json())
    all_ranks(comm, len(set(dumped)) == 1, "ranks calibrated different models")
    old = hc.model_for(comm)
    hc.set_model(model, comm)
    try:
        for n in (1, 300, 70_000):
            buf = np.arange(n, dtype=np.float64) + comm.Get_rank()
            ref = buf.copy()
            hc.allreduce(buf, "sum", comm, "auto")
            comm.Allreduce(MPI.IN_PLACE, ref)
            all_ranks(comm, np.array_equal(buf, ref), f"auto after calibrate, n={n}")
    finally:
        hc.set_model(old, comm)
