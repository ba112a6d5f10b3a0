"""Collective assertion helpers for the MPI tests."""
import numpy as np
from mpi4py import MPI


def all_ranks(comm, ok, message):
    """Assert `ok` on every rank: all ranks fail together, naming the ranks where it failed."""
    flags = comm.allgather(bool(ok))
    bad = [r for r, f in enumerate(flags) if not f]
    assert not bad, f"{message} (failed on ranks {bad})"


def same_bytes_everywhere(comm, arr):
    """True on every rank iff every rank holds exactly the same bytes as rank 0."""
    ref = comm.bcast(np.ascontiguousarray(arr).tobytes(), root=0)
    return comm.allreduce(int(np.ascontiguousarray(arr).tobytes() == ref), op=MPI.MIN) == 1


def same_message_everywhere(comm, exc):
    """Assert that every rank raised an exception with the same message."""
    all_ranks(comm, len(set(comm.allgather(str(exc)))) == 1, "same message everywhere")


def from_root(comm, fn):
    """fn() run on rank 0 only (a serial reference), its result on every rank. An
    exception on rank 0 is raised on every rank, so no rank is left waiting in the next
    collective."""
    value = error = None
    if comm.Get_rank() == 0:
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - handed to every rank, then raised
            error = f"{type(e).__name__}: {e}"
    value, error = comm.bcast((value, error), root=0)
    if error is not None:
        raise RuntimeError(f"the reference computed on rank 0 failed: {error}")
    return value
