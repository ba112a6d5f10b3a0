"""The public collectives in one process (COMM_SELF): contract and argument errors."""
import numpy as np
import pytest
from mpi4py import MPI

from hpcml import comm as hc

SELF = MPI.COMM_SELF


@pytest.mark.parametrize("alg", hc.ALGORITHMS, ids=lambda a: f"alg-{a}")
def test_world_of_one_is_identity(alg):
    buf = np.arange(10.0)
    assert hc.allreduce(buf, "sum", SELF, alg) is buf
    assert np.array_equal(buf, np.arange(10.0))
    assert np.array_equal(hc.allreduce(buf.copy(), "mean", SELF, alg), buf)


def test_world_of_one_other_collectives():
    buf = np.arange(6)
    assert hc.broadcast(buf, 0, SELF) is buf
    assert hc.reduce(buf, 0, "sum", SELF) is buf
    assert hc.allgather(buf, SELF) is buf
    assert np.array_equal(hc.reduce_scatter(buf, "sum", SELF), buf)
    assert hc.allreduce_many([buf], "sum", SELF)[0] is buf


@pytest.mark.parametrize("make,err,match", [
    (lambda: [1.0, 2.0], TypeError, "numpy.ndarray"),
    (lambda: np.ones((4, 4))[:, ::2], ValueError, "C-contiguous"),
    (lambda: np.ones(4, dtype=bool), TypeError, "dtype bool"),
    (lambda: np.ones(4, dtype="U3"), TypeError, "not supported"),
])
def test_bad_buffers_are_named(make, err, match):
    with pytest.raises(err, match=match):
        hc.allreduce(make(), comm=SELF)


def test_read_only_buffer():
    buf = np.ones(4)
    buf.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        hc.allreduce(buf, comm=SELF)


def test_op_and_dtype_combinations():
    with pytest.raises(TypeError, match="mean.*int32"):
        hc.allreduce(np.ones(4, np.int32), "mean", SELF)
    with pytest.raises(TypeError, match="complex"):
        hc.allreduce(np.ones(4, np.complex64), "max", SELF)
    with pytest.raises(ValueError, match="unknown op 'avg'"):
        hc.allreduce(np.ones(4), "avg", SELF)


def test_bad_algorithm_and_root():
    with pytest.raises(ValueError, match="unknown algorithm 'nccl'"):
        hc.allreduce(np.ones(4), comm=SELF, algorithm="nccl")
    with pytest.raises(ValueError, match="unknown algorithm 'tree'"):
        hc.allgather(np.ones(4), SELF, "tree")
    with pytest.raises(ValueError, match="root 3 outside"):
        hc.broadcast(np.ones(4), 3, SELF)


def test_rooted_collectives_reject_rhd_and_bad_roots():
    with pytest.raises(ValueError, match="unknown algorithm 'rhd'"):
        hc.broadcast(np.ones(4), 0, SELF, "rhd")
    with pytest.raises(ValueError, match="unknown algorithm 'rhd'"):
        hc.reduce(np.ones(4), 0, "sum", SELF, "rhd")
    for root in (1.0, True, "0", None):
        with pytest.raises(TypeError, match="root must be an integer rank"):
            hc.broadcast(np.ones(4), root, SELF)


@pytest.mark.parametrize("seg", [0, -5, "1M", 2.5, True])
def test_bad_segment_sizes(seg):
    with pytest.raises(ValueError, match="segment_bytes must be a positive integer"):
        hc.allreduce(np.ones(4), comm=SELF, segment_bytes=seg)
    with pytest.raises(ValueError, match="segment_bytes must be a positive integer"):
        hc.reduce_scatter(np.ones(4), comm=SELF, segment_bytes=seg)


def test_bad_bucket_size():
    with pytest.raises(ValueError, match="bucket_bytes must be a positive integer"):
        hc.allreduce_many([np.ones(2)], comm=SELF, bucket_bytes=0)


def test_checked_mode_in_one_process_reports_local_errors_as_collective():
    with pytest.raises(hc.CollectiveError, match="rank 0: allreduce: buf must be C-contiguous"):
        hc.allreduce(np.ones((4, 4))[:, ::2], comm=SELF, check=True)


def test_fusion_rejects_bad_members():
    with pytest.raises(TypeError, match=r"arrays\[1\]"):
        hc.allreduce_many([np.ones(2), "x"], comm=SELF)
