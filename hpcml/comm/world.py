"""The MPI that the rest of hpcml needs, so that nothing outside hpcml.comm imports mpi4py.

    from hpcml import comm as hc
    comm = hc.world()                         # MPI_COMM_WORLD (hc.self_comm(): COMM_SELF)
    t = hc.wtime()
    worst = hc.reduce_value(seconds, "max", comm)   # a Python number, on every rank
    hc.send(buf, dest=1, tag=7, comm=comm); hc.recv(buf, source=0, tag=7, comm=comm)
    sub = hc.split(comm, color, key)

Point-to-point works on NumPy buffers with MPI's uppercase calls (no pickle) and every
blocking wait is bounded by HPCML_TIMEOUT like the collectives. Small JSON-safe control
messages go through `bcast_object` / `gather_objects`.
"""
import json

import time

import numpy as np
from mpi4py import MPI

from .guard import Watchdog, watching

#: reduction names hpcml uses -> MPI's predefined operations
OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}
ANY_SOURCE, ANY_TAG = MPI.ANY_SOURCE, MPI.ANY_TAG


def world():
    """MPI_COMM_WORLD."""
    return MPI.COMM_WORLD


def self_comm():
    """MPI_COMM_SELF: one rank alone."""
    return MPI.COMM_SELF


def wtime():
    """MPI_Wtime: seconds on a clock local to the rank."""
    return MPI.Wtime()


def library_version():
    """The MPI library's own version line (for benchmark records)."""
    return " ".join(MPI.Get_library_version().strip().splitlines()[0].split())


def mpi4py_version():
    import mpi4py
    return mpi4py.__version__


def thread_multiple():
    """True when MPI was initialised with MPI_THREAD_MULTIPLE (background collectives)."""
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def _op(op):
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    return OPS[op]


def reduce_value(value, op="sum", comm=None):
    """All-reduce of one Python number (or small object MPI's lowercase call accepts)."""
    comm = comm if comm is not None else MPI.COMM_WORLD
    with watching(f"all-reduce of a value ({op})"):
        return comm.allreduce(value, op=_op(op))


def reduce_array(src, op="sum", comm=None):
    """MPI_Allreduce of an array into a new array (src untouched), MPI's own algorithm."""
    comm = comm if comm is not None else MPI.COMM_WORLD
    src = np.ascontiguousarray(src)
    out = np.empty_like(src)
    with watching(f"MPI_Allreduce of an array ({op})"):
        comm.Allreduce(src, out, op=_op(op))
    return out


def slowest(seconds, comm=None):
    """The largest of every rank's `seconds` (the time a step took for the job)."""
    return float(reduce_value(float(seconds), "max", comm))


def barrier(comm=None):
    comm = comm if comm is not None else MPI.COMM_WORLD
    with watching("MPI_Barrier"):
        comm.Barrier()


def split(comm, color, key=0):
    """MPI_Comm_split (collective): ranks with the same color form a communicator, ordered
    by key. A negative color gives None (MPI_UNDEFINED)."""
    with watching("MPI_Comm_split"):
        sub = comm.Split(MPI.UNDEFINED if color < 0 else int(color), int(key))
    return None if sub == MPI.COMM_NULL else sub


def node_rank(comm):
    """(this rank's index among comm's ranks on its node, how many there are): collective."""
    with watching("MPI_Comm_split_type(SHARED)"):
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank(), node.Get_size()
    finally:
        node.Free()


def node_objects(obj, comm):
    """Every rank's small JSON-safe object from the ranks of comm on this node, in their
    order (collective over comm)."""
    with watching("MPI_Comm_split_type(SHARED)"):
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return gather_objects(obj, root=None, comm=node)
    finally:
        node.Free()


def cuda_aware():
    """The MPI library's own answer to "can I pass device buffers?"
    (MPIX_Query_cuda_support, MPICH >= 4 and Open MPI): True/False, None if it has no
    such call."""
    import ctypes
    paths = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "libmpi" in ln and "/" in ln})
    except OSError:
        pass
    for path in paths:
        try:
            fn = ctypes.CDLL(path).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        return bool(fn())
    return None


def allreduce_device(buf, comm):
    """MPI_Allreduce (sum, in place) of a device array through a CUDA-aware MPI (mpi4py
    passes __cuda_array_interface__ buffers as device pointers)."""
    with watching("MPI_Allreduce of a device buffer"):
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)


def dup(comm):
    """MPI_Comm_dup (collective): a communicator whose messages never meet comm's."""
    with watching("MPI_Comm_dup"):
        return comm.Dup()


def private_dup(comm):
    """A fresh duplicate of hpcml's private duplicate of comm (collective): for a
    component that needs its own message space, apart from the user's and hpcml's."""
    from .state import state_of
    with watching("MPI_Comm_dup of hpcml's private communicator"):
        return state_of(comm).private.Dup()


def bcast_object(obj, root=0, comm=None):
    """Broadcast a small JSON-safe object (control messages; never pickle)."""
    comm = comm if comm is not None else MPI.COMM_WORLD
    data = json.dumps(obj).encode() if comm.Get_rank() == root else b""
    n = np.array([len(data)], np.int64)
    with watching("broadcast of a control message"):
        comm.Bcast(n, root)
        buf = np.frombuffer(data, np.uint8).copy() if comm.Get_rank() == root else \
            np.empty(int(n[0]), np.uint8)
        comm.Bcast(buf, root)
    return json.loads(buf.tobytes().decode())


def gather_objects(obj, root=0, comm=None):
    """Every rank's small JSON-safe object, in rank order, at root (None elsewhere); with
    root=None, on every rank."""
    comm = comm if comm is not None else MPI.COMM_WORLD
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    p = comm.Get_size()
    counts = np.empty(p, np.int64)
    with watching("gather of control messages"):
        comm.Allgather(np.array([data.size], np.int64), counts)
        displs = np.zeros(p, np.int64)
        np.cumsum(counts[:-1], out=displs[1:])
        out = np.empty(int(counts.sum()), np.uint8)
        if root is None:
            comm.Allgatherv(data, [out, counts, displs, MPI.BYTE])
        else:
            comm.Gatherv(data, [out, counts, displs, MPI.BYTE] if comm.Get_rank() == root
                         else None, root)
    if root is not None and comm.Get_rank() != root:
        return None
    raw = out.tobytes()
    return [json.loads(raw[a:a + c].decode()) for a, c in zip(displs, counts)]


# --- point-to-point on NumPy buffers -------------------------------------------------------

def _buf(name, buf):
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise ValueError(f"{name}: the buffer must be a C-contiguous numpy array")
    return buf


def _quick(name, buf):
    """The hot path's check: an ndarray (anything else raises the clear error); 2-D and up
    must be C-contiguous (a 1-D strided view is refused by MPI itself, see _refused)."""
    try:
        if buf.ndim < 2 or buf.flags.c_contiguous:
            return buf
    except AttributeError:
        pass
    return _buf(name, buf)


def _refused(name, e):
    return ValueError(f"{name}: the buffer must be a C-contiguous numpy array ({e})")


def send(buf, dest, tag=0, comm=None):
    if comm is None:
        comm = MPI.COMM_WORLD
    _quick("send", buf)
    try:
        if Watchdog.active is None:  # no HPCML_TIMEOUT: no description to build
            comm.Send(buf, dest, tag)
        else:
            with watching(f"MPI_Send to rank {dest} (tag {tag})"):
                comm.Send(buf, dest, tag)
    except BufferError as e:
        raise _refused("send", e) from None


def recv(buf, source=ANY_SOURCE, tag=ANY_TAG, comm=None):
    """Receive into buf; returns (source, tag, elements received)."""
    if comm is None:
        comm = MPI.COMM_WORLD
    status = MPI.Status()
    _quick("recv", buf)
    try:
        if Watchdog.active is None:
            comm.Recv(buf, source, tag, status)
        else:
            with watching(f"MPI_Recv from rank {source} (tag {tag})"):
                comm.Recv(buf, source, tag, status)
    except BufferError as e:
        raise _refused("recv", e) from None
    return (source if source >= 0 else status.Get_source(), tag if tag >= 0 else
            status.Get_tag(), status.Get_count(MPI.BYTE) // buf.itemsize)


def sendrecv(sendbuf, dest, recvbuf, source, sendtag=0, recvtag=ANY_TAG, comm=None):
    comm = comm if comm is not None else MPI.COMM_WORLD
    with watching(f"MPI_Sendrecv to rank {dest}, from rank {source}"):
        comm.Sendrecv(_buf("sendrecv", sendbuf), dest, sendtag, _buf("sendrecv", recvbuf),
                      source, recvtag)
    return recvbuf


class Request:
    """A non-blocking send or receive; wait() is bounded by HPCML_TIMEOUT."""

    __slots__ = ("_req", "_what")

    def __init__(self, req, what):
        self._req, self._what = req, what  # what: (kind, peer, tag), described on timeout

    def wait(self, polite=False):
        """MPI_Wait (it spins on its core); polite=True spins for 200 us, then tests with
        sleeps that grow from 10 us to 1 ms between tests, leaving the core to the ranks
        that compute (a server that mostly waits, or more ranks than cores), at up to 1 ms
        more latency on a long wait."""
        wait = self._polite if polite else self._req.Wait
        if Watchdog.active is None:
            wait()
            return
        kind, peer, tag = self._what
        with watching(f"MPI_Wait on a {kind} {'to' if kind == 'send' else 'from'} rank "
                      f"{peer} (tag {tag})"):
            wait()

    def _polite(self):
        end = time.perf_counter() + 2e-4  # a short wait spins (small messages stay fast)
        while not self._req.Test():
            if time.perf_counter() > end:
                break
        else:
            return
        delay = 1e-5
        while not self._req.Test():
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)

    def test(self):
        return bool(self._req.Test())


def isend(buf, dest, tag=0, comm=None):
    comm = comm if comm is not None else MPI.COMM_WORLD
    try:
        return Request(comm.Isend(_quick("isend", buf), dest, tag), ("send", dest, tag))
    except BufferError as e:
        raise _refused("isend", e) from None


def irecv(buf, source=ANY_SOURCE, tag=ANY_TAG, comm=None):
    comm = comm if comm is not None else MPI.COMM_WORLD
    try:
        return Request(comm.Irecv(_quick("irecv", buf), source, tag), ("receive", source, tag))
    except BufferError as e:
        raise _refused("irecv", e) from None


def wait_all(requests):
    for r in requests:
        r.wait()


def probe(source=ANY_SOURCE, tag=ANY_TAG, comm=None, dtype=np.uint8):
    """Block until a message is ready; returns (source, tag, elements of dtype)."""
    comm = comm if comm is not None else MPI.COMM_WORLD
    status = MPI.Status()
    with watching(f"MPI_Probe for rank {source} (tag {tag})"):
        comm.Probe(source, tag, status)
    return status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE) // \
        np.dtype(dtype).itemsize


__all__ = ["world", "self_comm", "wtime", "library_version", "mpi4py_version",
           "thread_multiple", "reduce_value", "reduce_array", "slowest", "barrier", "split",
           "dup", "private_dup", "bcast_object", "gather_objects", "send", "recv",
           "sendrecv", "isend", "irecv", "wait_all", "probe", "Request",
           "ANY_SOURCE", "ANY_TAG", "OPS"]
