"""Public collectives: in place on a contiguous NumPy array, returning it.

Every function takes ``comm=None`` (COMM_WORLD) and ``algorithm``:
``"ring"`` / ``"tree"`` / ``"rhd"`` (hpcml's own schedules), ``"mpi"`` (the MPI library's
collective, the reference) or ``"auto"`` (the alpha-beta model in :mod:`hpcml.comm.model`
picks among hpcml's own). ``check=True`` (or ``HPCML_CHECK=1``) first verifies,
collectively, that all ranks passed valid arguments and the same length, dtype, op,
algorithm, root and segment size, and raises the same CollectiveError on every rank
otherwise (costs two small collectives per call).
"""
import os

import numpy as np
from mpi4py import MPI

from hpcml.kernels.reduce import OP_NAMES, ufunc_for
from . import schedules as S
from .executor import execute
from .guard import CollectiveError, Watchdog, agree, watching
from .model import choose_allreduce, choose_rooted
from .state import state_of, model_for


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_int(name, default):
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer (bytes), got {text!r}")
    return value


class Config:
    """Process-wide defaults; keyword arguments override them per call."""

    #: verify argument agreement across ranks before each collective (HPCML_CHECK=1)
    check = _env_flag("HPCML_CHECK")
    #: ring reduce-scatter segment (bytes): received segments are reduced while in cache.
    #: 1 MiB measured best here for 1-64 MiB messages (64 KiB, 256 KiB and whole-chunk were
    #: slower at 2 and 4 ranks).
    segment_bytes = _env_int("HPCML_RING_SEGMENT_BYTES", 1 << 20)


config = Config()

DTYPES = tuple(np.dtype(t) for t in (
    "float32", "float64", "int32", "int64", "float16", "int8", "int16", "uint8", "uint16",
    "uint32", "uint64", "complex64", "complex128"))
_DTYPE_CODE = {dt: i for i, dt in enumerate(DTYPES)}
_OP_CODE = {op: i for i, op in enumerate(OP_NAMES)}
_MPI_OPS = {"sum": MPI.SUM, "mean": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}
ALGORITHMS = ("auto", "ring", "tree", "rhd", "mpi")
#: broadcast and reduce: binomial tree, ring-based (scatter/gather + ring), MPI's own
ROOTED = ("auto", "ring", "tree", "mpi")
_ALG_CODE = {a: i for i, a in enumerate(ALGORITHMS)}

def private(comm):
    """hpcml's own duplicate of `comm` for its point-to-point traffic (made on first use)."""
    return state_of(comm).private


def validate_array(name, buf, op, reducing, contiguous=True):
    """Local validation of one array argument. Raises TypeError/ValueError naming it."""
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{name}: buf must be a numpy.ndarray, got {type(buf).__name__}")
    if contiguous and not buf.flags.c_contiguous:
        raise ValueError(f"{name}: buf must be C-contiguous (in-place collectives need one "
                         f"memory block); pass np.ascontiguousarray(buf) and copy back")
    if not buf.flags.writeable:
        raise ValueError(f"{name}: buf is read-only")
    if buf.dtype not in _DTYPE_CODE:
        raise TypeError(f"{name}: dtype {buf.dtype} is not supported; use one of "
                        f"{', '.join(str(d) for d in DTYPES)}")
    if reducing:
        if op not in _OP_CODE:
            raise ValueError(f"{name}: unknown op {op!r}; expected one of {', '.join(OP_NAMES)}")
        kind = buf.dtype.kind
        if op == "mean" and kind in "iu":
            raise TypeError(f"{name}: op='mean' needs a floating or complex dtype, got "
                            f"{buf.dtype}; use op='sum' and divide with the rounding you want")
        if op in ("max", "min") and kind == "c":
            raise TypeError(f"{name}: op={op!r} is not defined for complex dtype {buf.dtype}")


def _flatten(name, buf, op, reducing):
    """Validated 1-D view of buf."""
    validate_array(name, buf, op, reducing)
    return buf.reshape(-1)


def _check_algorithm(name, algorithm, allowed):
    if algorithm not in allowed:
        raise ValueError(f"{name}: unknown algorithm {algorithm!r}; expected one of "
                         f"{', '.join(allowed)}")


NOROOT = object()  # the root argument of collectives that have none


def check_root(name, root, p):
    """root must be an integer rank of the communicator (not a float, not a bool)."""
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
        raise TypeError(f"{name}: root must be an integer rank, got {root!r}")
    if not 0 <= root < p:
        raise ValueError(f"{name}: root {root} outside 0..{p - 1}")
    return int(root)


def check_positive_int(name, what, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: {what} must be a positive integer, got {value!r}")
    return int(value)


def segment_of(name, segment_bytes):
    """The effective ring segment in bytes (argument, else config), validated."""
    return check_positive_int(name, "segment_bytes",
                              config.segment_bytes if segment_bytes is None else segment_bytes)


def agree_signature(comm, name, fields):
    """Collective: ranks compare (field, int value, show) triples; on any difference every
    rank raises the same CollectiveError naming the field and each rank's value."""
    sig = np.array([v for _, v, _ in fields], np.int64)
    table = np.empty((comm.Get_size(), sig.size), np.int64)
    with watching(f"{name}: comparing arguments across ranks (MPI_Allgather)"):
        comm.Allgather(sig, table)
    for j, (field, _, show) in enumerate(fields):
        column = table[:, j]
        if (column != column[0]).any():
            values = ", ".join(f"rank {r}: {show(int(v))}" for r, v in enumerate(column))
            raise CollectiveError(f"{name}: {field} differs across ranks ({values})")


def _agree_args(comm, name, buf, op, algorithm, root, reducing, allowed, segment_bytes):
    """Checked mode: local validation on every rank, then all ranks compare arguments."""
    err = flat = seg = None
    try:
        _check_algorithm(name, algorithm, allowed)
        flat = _flatten(name, buf, op, reducing)
        if root is not NOROOT:
            root = check_root(name, root, comm.Get_size())
        seg = segment_of(name, segment_bytes)
    except (TypeError, ValueError) as e:
        err = str(e)
    agree(comm, err, what=name)
    agree_signature(comm, name, [
        ("length", flat.size, str),
        ("dtype", _DTYPE_CODE[flat.dtype], lambda v: str(DTYPES[v])),
        ("op", _OP_CODE.get(op, -1) if reducing else -1, lambda v: OP_NAMES[v]),
        ("algorithm", _ALG_CODE[algorithm], lambda v: ALGORITHMS[v]),
        ("root", -1 if root is NOROOT else root, str),
        ("segment_bytes", seg, str)])
    return flat, root, seg


def _prepare(comm, name, buf, op, algorithm, root, check, reducing, allowed, segment_bytes=None):
    """Validated (comm, flat view, root, segment bytes); collective in checked mode."""
    comm = comm if comm is not None else MPI.COMM_WORLD
    if config.check if check is None else check:
        return (comm, *_agree_args(comm, name, buf, op, algorithm, root, reducing, allowed,
                                   segment_bytes))
    _check_algorithm(name, algorithm, allowed)
    if root is not NOROOT:
        root = check_root(name, root, comm.Get_size())
    return comm, _flatten(name, buf, op, reducing), root, segment_of(name, segment_bytes)


def _allreduce_plan(comm, state, dtype, n, op, algorithm, seg_bytes):
    """Everything a call with this signature needs: validated once, then cached."""
    _check_algorithm("allreduce", algorithm, ALGORITHMS)
    validate_array("allreduce", np.empty(0, dtype), op, True)
    seg_bytes = segment_of("allreduce", seg_bytes)
    p, rank = comm.Get_size(), comm.Get_rank()
    if p == 1 or n == 0:
        return None
    seg = max(1, seg_bytes // dtype.itemsize)
    if algorithm == "auto":
        algorithm = choose_allreduce(state.model, n * dtype.itemsize, p, seg * dtype.itemsize)
    if algorithm == "mpi":
        sched = None
    elif algorithm == "tree":
        sched = S.tree_allreduce(p, rank, n)
    else:
        sched = S.ALLREDUCE[algorithm](p, rank, n, seg)
    if len(state.plans) > 4096:
        state.plans.clear()
    return (state.private, sched, ufunc_for(op), p, f"allreduce({algorithm})", _MPI_OPS[op],
            op == "mean")


#: the last communicator an all-reduce ran on and its state (skips the attribute lookup;
#: the state of a freed communicator has private=None, and is then looked up again)
_last_state = (None, None)


def allreduce(buf, op="sum", comm=None, algorithm="auto", *, check=None, segment_bytes=None):
    """Reduce `buf` over all ranks in place; every rank ends with identical bytes.

    op: sum, mean, max, min, prod. algorithm: auto, ring (segmented ring), tree (recursive
    doubling), rhd (Rabenseifner: recursive halving + doubling), mpi. Returns buf.
    The hot path validates the buffer and looks the rest up in a plan cache kept on the
    communicator, keyed by (dtype, length, op, algorithm, segment).
    """
    global _last_state
    if comm is None:
        comm = MPI.COMM_WORLD
    if check or (check is None and config.check):
        flat, _, segment_bytes = _agree_args(comm, "allreduce", buf, op, algorithm, NOROOT,
                                             True, ALGORITHMS, segment_bytes)
    else:
        # carray: C-contiguous, aligned and writeable (anything else: the full check)
        if not (isinstance(buf, np.ndarray) and buf.flags.carray):
            validate_array("allreduce", buf, op, True)
        flat = buf if buf.ndim == 1 else buf.reshape(-1)
        if segment_bytes is None:
            segment_bytes = config.segment_bytes
    last_comm, state = _last_state
    if last_comm is not comm or state.private is None:
        state = state_of(comm)
        _last_state = (comm, state)
    key = (flat.dtype, flat.size, op, algorithm, segment_bytes)
    try:
        plan = state.plans[key]
    except (KeyError, TypeError):  # TypeError: an unhashable argument, rejected below
        plan = _allreduce_plan(comm, state, flat.dtype, flat.size, op, algorithm, segment_bytes)
        state.plans[key] = plan
    if plan is None:
        return buf
    pcomm, sched, ufunc, p, what, mpi_op, mean = plan
    if sched is None:
        wd = Watchdog.active
        if wd is None:
            comm.Allreduce(MPI.IN_PLACE, flat, mpi_op)
        else:
            wd.enter("MPI_Allreduce")
            try:
                comm.Allreduce(MPI.IN_PLACE, flat, mpi_op)
            finally:
                wd.leave()
    else:
        execute(pcomm, flat, sched, ufunc, what)
    if mean:
        np.divide(flat, p, out=flat)
    return buf


def reduce_scatter(buf, op="sum", comm=None, algorithm="auto", *, check=None,
                   segment_bytes=None, bounds=None):
    """Reduce `buf` over all ranks, leaving rank r's block reduced in place.

    The blocks are ``bounds`` (p + 1 non-decreasing offsets from 0 to buf.size, the same on
    every rank; blocks may be empty) or ``chunk_bounds(buf.size, p)`` of the flattened
    buffer; returns the view of this rank's reduced block. The rest of buf is left holding
    partial results. algorithm: auto (= ring), ring, mpi.
    """
    allowed = ("auto", "ring", "mpi")
    comm, flat, _, seg = _prepare(comm, "reduce_scatter", buf, op, algorithm, NOROOT, check,
                                  True, allowed, segment_bytes)
    p, rank = comm.Get_size(), comm.Get_rank()
    b = S.chunk_bounds(flat.size, p) if bounds is None else _bounds(bounds, flat.size, p)
    mine = flat[b[rank]:b[rank + 1]]
    if p == 1 or flat.size == 0:
        return mine
    if algorithm == "mpi":
        counts = np.diff(b).astype(np.int64)
        with watching("MPI_Reduce_scatter"):
            comm.Reduce_scatter(flat.copy(), mine, counts, op=_MPI_OPS[op])
    else:
        sched = S.ring_reduce_scatter(p, rank, flat.size, max(1, seg // flat.itemsize),
                                      None if bounds is None else b)
        execute(private(comm), flat, sched, ufunc_for(op), "reduce_scatter(ring)")
    if op == "mean":
        np.divide(mine, p, out=mine)
    return mine


def _bounds(bounds, n, p):
    """Validated block offsets, as a tuple of ints."""
    try:
        b = tuple(int(x) for x in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"reduce_scatter: bounds must be {p + 1} integers, got {bounds!r}") \
            from None
    if len(b) != p + 1 or b[0] != 0 or b[-1] != n or any(x > y for x, y in zip(b, b[1:])):
        raise ValueError(f"reduce_scatter: bounds must be {p + 1} non-decreasing offsets from "
                         f"0 to {n}, got {b}")
    return b


def allgather(buf, comm=None, algorithm="auto", *, check=None):
    """All-gather in place: rank r contributes block r of ``chunk_bounds(buf.size, p)``;
    afterwards every rank holds every block. algorithm: auto (= ring), ring, mpi."""
    allowed = ("auto", "ring", "mpi")
    comm, flat, _, _ = _prepare(comm, "allgather", buf, None, algorithm, NOROOT, check, False,
                                allowed)
    p, rank = comm.Get_size(), comm.Get_rank()
    if p == 1 or flat.size == 0:
        return buf
    b = S.chunk_bounds(flat.size, p)
    if algorithm == "mpi":
        counts = np.diff(b).astype(np.int64)
        with watching("MPI_Allgatherv"):
            comm.Allgatherv(MPI.IN_PLACE, [flat, (counts, np.asarray(b[:-1], np.int64))])
    else:
        execute(private(comm), flat, S.ring_allgather(p, rank, flat.size), None,
                "allgather(ring)")
    return buf


def broadcast(buf, root=0, comm=None, algorithm="auto", *, check=None):
    """Broadcast root's `buf` to every rank in place. algorithm: auto, tree (binomial),
    ring (scatter + ring all-gather), mpi."""
    comm, flat, root, _ = _prepare(comm, "broadcast", buf, None, algorithm, root, check, False,
                                   ROOTED)
    p = comm.Get_size()
    if p == 1 or flat.size == 0:
        return buf
    if algorithm == "auto":
        algorithm = choose_rooted(model_for(comm), flat.nbytes, p, False)
    if algorithm == "mpi":
        with watching("MPI_Bcast"):
            comm.Bcast(flat, root)
        return buf
    gen = S.binomial_broadcast if algorithm == "tree" else S.scatter_allgather_broadcast
    execute(private(comm), flat, gen(p, comm.Get_rank(), flat.size, root), None,
            f"broadcast({algorithm})")
    return buf


def reduce(buf, root=0, op="sum", comm=None, algorithm="auto", *, check=None,
           segment_bytes=None):
    """Reduce `buf` over all ranks into root's `buf`. On other ranks buf is used as
    scratch and holds partial results afterwards. algorithm: auto, tree, ring, mpi."""
    comm, flat, root, seg = _prepare(comm, "reduce", buf, op, algorithm, root, check, True,
                                     ROOTED, segment_bytes)
    p, rank = comm.Get_size(), comm.Get_rank()
    if p == 1 or flat.size == 0:
        return buf
    if algorithm == "auto":
        algorithm = choose_rooted(model_for(comm), flat.nbytes, p, True)
    if algorithm == "mpi":
        if rank == root:
            with watching("MPI_Reduce"):
                comm.Reduce(MPI.IN_PLACE, flat, op=_MPI_OPS[op], root=root)
        else:
            with watching("MPI_Reduce"):
                comm.Reduce(flat, None, op=_MPI_OPS[op], root=root)
    else:
        if algorithm == "tree":
            sched = S.binomial_reduce(p, rank, flat.size, root)
        else:
            sched = S.ring_reduce(p, rank, flat.size, root, max(1, seg // flat.itemsize))
        execute(private(comm), flat, sched, ufunc_for(op), f"reduce({algorithm})")
    if op == "mean" and rank == root:
        np.divide(flat, p, out=flat)
    return buf
