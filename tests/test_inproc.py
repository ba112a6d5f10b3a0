"""The in-process communicator (hpcml/comm/inproc.py): ranks as threads, so the MPI tests'
own bodies (tests/mpi/*.py, each a function of a communicator) run here under plain pytest
at 1, 2, 3 and 8 ranks; under mpiexec the same functions run at 2, 3 and 4. (5 ranks, run
here until 2026-12-02, cost 28 s of CI's budget and covered nothing 3 and 8 do not: a rank
count that is not a power of two, and a deep tree.)"""
import inspect
import itertools
import os
import sys
import time

import numpy as np
import pytest
from mpi4py import MPI

from hpcml import comm as hc
from hpcml.comm.inproc import InprocError, run_ranks

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi"))
import test_allreduce  # noqa: E402
import test_fusion_and_checks  # noqa: E402
import test_p2p_mpi  # noqa: E402
import test_rooted_and_blocks  # noqa: E402
import test_train  # noqa: E402
import test_zero_mpi  # noqa: E402

RANKS = [1, 2, 3, 8]


def _expand(fn):
    """[(id, kwargs)] of a test function's @pytest.mark.parametrize combinations."""
    axes = []
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize":
            names = [n.strip() for n in mark.args[0].split(",")]
            axes.append([dict(zip(names, v if len(names) > 1 else (v,))) for v in mark.args[1]])
    out = []
    for combo in itertools.product(*axes):
        kw = {k: v for d in combo for k, v in d.items()}
        out.append(("-".join(map(str, kw.values())) or "-", kw))
    return out


def _bodies(module, only=None, skip=()):
    """(name, function, kwargs) for the module's tests that need nothing but `comm`."""
    found = []
    for name, fn in sorted(vars(module).items()):
        if not name.startswith("test_") or name in skip or (only and name not in only):
            continue
        params = set(inspect.signature(fn).parameters)
        cases = _expand(fn)
        if "comm" not in params or params - {"comm"} - set(cases[0][1]):
            continue  # not a body of a communicator, or needs another fixture
        found += [(f"{module.__name__}::{name}[{cid}]", fn, kw) for cid, kw in cases]
    return found


SHARED = (_bodies(test_allreduce,
                  skip={"test_calibrated_model_is_identical_and_auto_stays_correct"})
          + _bodies(test_rooted_and_blocks) + _bodies(test_fusion_and_checks)
          + _bodies(test_p2p_mpi))


@pytest.mark.parametrize("ranks", RANKS)
def test_shared_collective_bodies(ranks):
    """Every collective test body of tests/mpi at this rank count (MPI's own operations,
    as the in-process communicator implements them, are the oracle there)."""
    ran = _run_all(SHARED, ranks)
    assert ran >= len(SHARED) - (6 if ranks == 1 else 0)  # 6 need 2 ranks, and skip


def _run_all(bodies, ranks):
    ran = 0
    for name, fn, kw in bodies:
        try:
            run_ranks(ranks, lambda comm: fn(comm, **kw))
            ran += 1
        except pytest.skip.Exception:
            continue
        except BaseException as e:
            raise AssertionError(f"{name} at {ranks} in-process ranks: {e}") from e
    return ran


STRATEGY = _bodies(test_train, only={"test_p_ranks_follow_one_process",
                                     "test_accumulation_follows_one_process",
                                     "test_float32_p_ranks_follow_one_process",
                                     "test_any_global_batch_follows_one_process",
                                     "test_too_small_batch_is_refused_everywhere"})


#: at 1, 2 and 8 ranks (2 is also run under mpiexec) a subset keeps the suite short
SUBSET = {"test_p_ranks_follow_one_process[ring-False]",
          "test_p_ranks_follow_one_process[tree-True]",
          "test_p_ranks_follow_one_process[auto-True]",
          "test_accumulation_follows_one_process[adamw-False]",
          "test_float32_p_ranks_follow_one_process[rhd-False]",
          "test_any_global_batch_follows_one_process[1]",
          "test_too_small_batch_is_refused_everywhere[-]"}


@pytest.mark.parametrize("ranks", RANKS)
def test_data_parallel_bodies(ranks):
    """tests/mpi/test_train.py's bodies: P ranks follow one process (float64 to 1e-12,
    float32 to 1e-5 with the same bytes everywhere; every algorithm, with and without
    overlap; gradient accumulation), here with P up to 8: all of them at 3 ranks."""
    bodies = [b for b in STRATEGY if ranks == 3 or b[0].split("::")[1] in SUBSET]
    assert len(bodies) == (len(STRATEGY) if ranks == 3 else len(SUBSET))
    assert _run_all(bodies, ranks) >= len(bodies) - (ranks == 1)


ZERO = _bodies(test_zero_mpi)  # shared_dir bodies (checkpoints) run under mpiexec only


@pytest.mark.parametrize("ranks", RANKS)
def test_zero_bodies(ranks):
    """tests/mpi/test_zero_mpi.py's bodies: ZeRO-1/2 bit-identical to DataParallel (float32
    and float64, four algorithms), optimizer state 1/P per rank."""
    bodies = [b for b in ZERO if ranks == 3 or b[0].endswith("-2]") or "state" in b[0]]
    assert _run_all(bodies, ranks) == len(bodies)


def test_an_exception_on_one_rank_ends_every_rank():
    """Rank 2 raises before a collective the others are already waiting in: they stop at
    once (no timeout) and its exception is raised here."""
    def body(comm):
        if comm.Get_rank() == 2:
            time.sleep(0.2)
            raise ValueError("bad row on rank 2")
        hc.allreduce(np.ones(4), comm=comm)
    t = time.monotonic()
    with pytest.raises(ValueError, match="bad row on rank 2"):
        run_ranks(4, body, timeout=60)
    assert time.monotonic() - t < 10


def test_a_stuck_wait_times_out_naming_the_operation():
    def body(comm):
        if comm.Get_rank() == 0:
            comm.Recv(np.empty(3), source=1, tag=9)  # rank 1 never sends
    with pytest.raises(InprocError, match=r"rank 0: Recv from rank 1 \(tag 9\) timed out "
                                          r"after 0.5 s"):
        run_ranks(2, body, timeout=0.5)


def test_communicators_and_object_collectives():
    def body(comm):
        p, r = comm.Get_size(), comm.Get_rank()
        sub = comm.Split(r % 2, -r)
        dup = comm.Dup()
        dup.Send(np.array([r], np.int64), (r + 1) % p, tag=1)  # on dup only
        got = np.empty(1, np.int64)
        dup.Recv(got, (r - 1) % p, tag=1)
        return (sub.Get_size(), sub.Get_rank(), sub.allgather(r), comm.bcast(r * 10, root=p - 1),
                comm.allreduce(r, op=MPI.MAX),
                int(got[0]), comm.gather(r, root=1))
    out = run_ranks(5, body)
    for r, (size, rank, members, b, mx, got, gathered) in enumerate(out):
        mine = [q for q in range(5) if q % 2 == r % 2]
        assert size == len(mine) and members == sorted(mine, reverse=True)
        assert rank == members.index(r) and b == 40 and mx == 4 and got == (r - 1) % 5
        assert gathered == (list(range(5)) if r == 1 else None)
