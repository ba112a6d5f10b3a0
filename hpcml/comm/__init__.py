"""hpcml.comm: every MPI call hpcml makes. Hand-written collectives over NumPy buffers.

    from hpcml import comm
    comm.allreduce(grad)                      # in place, sum, algorithm chosen by model
    comm.allreduce(grad, "mean", algorithm="ring")
    comm.allreduce_many(grads)                # tensor fusion into 25 MiB buckets
    comm.broadcast(params, root=0)
    comm.world(), comm.wtime(), comm.split(c, color), comm.send/recv/isend/irecv (world.py)

See collectives.py for the contract shared by all functions.
"""
from .collectives import (allreduce, reduce_scatter, allgather, broadcast, reduce, config,
                          ALGORITHMS, DTYPES)
from .fusion import allreduce_many, plan_buckets, BUCKET_BYTES
from .guard import CollectiveError, agree, install as install_guard, entry_point, Watchdog
from .model import CostModel
from .state import set_model, model_for
from .calibrate import calibrate
from .schedules import chunk_bounds
from .rows import RowGather, allgather_rows, row_bounds, row_counts
from .world import (world, self_comm, wtime, library_version, mpi4py_version, thread_multiple,
                    reduce_value, reduce_array, slowest, barrier, split, dup, private_dup,
                    bcast_object, gather_objects, send, recv, sendrecv, isend, irecv,
                    wait_all, probe, Request, ANY_SOURCE, ANY_TAG, node_rank, node_objects,
                    cuda_aware, allreduce_device)

__all__ = ["allreduce", "reduce_scatter", "allgather", "broadcast", "reduce", "allreduce_many",
           "plan_buckets", "chunk_bounds", "config", "ALGORITHMS", "DTYPES", "BUCKET_BYTES",
           "CollectiveError", "agree", "install_guard", "entry_point", "Watchdog",
           "CostModel", "calibrate", "set_model", "model_for", "RowGather", "allgather_rows",
           "row_bounds", "row_counts", "world", "self_comm", "wtime", "library_version",
           "mpi4py_version", "thread_multiple", "reduce_value", "reduce_array", "slowest",
           "barrier", "split", "dup", "private_dup", "bcast_object", "gather_objects", "send",
           "recv", "sendrecv", "isend", "irecv", "wait_all", "probe", "Request", "ANY_SOURCE",
           "ANY_TAG", "node_rank", "node_objects", "cuda_aware", "allreduce_device"]
