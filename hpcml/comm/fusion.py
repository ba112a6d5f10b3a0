"""Tensor fusion: all-reduce many arrays with few collectives (Horovod's fusion buffer,
PyTorch DDP's gradient buckets).

:func:`plan_buckets` is a pure function of the arrays' sizes and dtypes (so every rank
computes the same plan); :func:`allreduce_many` packs each bucket into a cached fusion
buffer, all-reduces it, and writes the results back into the original arrays.
"""
import threading
import zlib

import numpy as np
from mpi4py import MPI

from hpcml.kernels.reduce import OP_NAMES
from .collectives import (allreduce, _check_algorithm, validate_array, check_positive_int,
                          agree_signature, segment_of, ALGORITHMS, config)
from .guard import agree

#: default bucket cap in bytes (PyTorch DDP's default bucket_cap_mb is 25)
BUCKET_BYTES = 25 << 20

_local = threading.local()  # per thread (in-process ranks are threads)


def plan_buckets(nbytes, dtypes, cap=BUCKET_BYTES):
    """Group arrays into buckets of one dtype and at most `cap` bytes, in order.

    nbytes, dtypes: per array. Returns a list of (dtype, [indices]). An array larger than
    the cap gets a bucket of its own. Arrays of different dtypes never share a bucket;
    within a dtype, arrays keep their order, and a bucket closes when the next array of
    its dtype would overflow it.
    """
    if cap <= 0:
        raise ValueError(f"bucket cap must be positive, got {cap}")
    open_buckets = {}  # dtype -> (index in out, bytes so far)
    out = []
    for i, (nb, dt) in enumerate(zip(nbytes, dtypes)):
        dt = np.dtype(dt)
        cur = open_buckets.get(dt)
        if cur is not None and cur[1] + nb <= cap:
            out[cur[0]][1].append(i)
            open_buckets[dt] = (cur[0], cur[1] + nb)
        else:
            out.append((dt, [i]))
            open_buckets[dt] = (len(out) - 1, nb)
    return out


def _fusion_buffer(dtype, n):
    cache = _local.__dict__.setdefault("fusion", {})
    buf = cache.get(dtype)
    if buf is None or buf.size < n:
        buf = cache[dtype] = np.empty(n, dtype)
    return buf[:n]


def _signature(arrays):
    text = ";".join(f"{a.dtype.str}{a.shape}" for a in arrays)
    return zlib.crc32(text.encode())


def _validate(comm, arrays, op, algorithm, bucket_bytes, check):
    """Local checks of every argument; in checked mode, also agreement across ranks."""
    err = None
    try:
        _check_algorithm("allreduce_many", algorithm, ALGORITHMS)
        if op not in OP_NAMES:  # checked here too: with no arrays nothing else looks at it
            raise ValueError(f"allreduce_many: unknown op {op!r}; expected one of "
                             f"{', '.join(OP_NAMES)}")
        bucket_bytes = check_positive_int("allreduce_many", "bucket_bytes", bucket_bytes)
        for i, a in enumerate(arrays):
            # contiguity is not needed here: non-contiguous arrays are packed by copy
            validate_array(f"allreduce_many: arrays[{i}]", a, op, True, contiguous=False)
    except (TypeError, ValueError) as e:
        if not check:
            raise
        err = str(e)
    if check:
        agree(comm, err, what="allreduce_many")
        agree_signature(comm, "allreduce_many", [
            ("number of arrays", len(arrays), str),
            ("shapes/dtypes (crc32)", _signature(arrays), lambda v: f"{v:08x}"),
            ("op", OP_NAMES.index(op), lambda v: OP_NAMES[v]),
            ("algorithm", ALGORITHMS.index(algorithm), lambda v: ALGORITHMS[v]),
            ("bucket_bytes", bucket_bytes, str),
            ("segment_bytes", segment_of("allreduce_many", None), str)])
    return bucket_bytes


def allreduce_many(arrays, op="sum", comm=None, algorithm="auto", *,
                   bucket_bytes=BUCKET_BYTES, check=None):
    """All-reduce every array in `arrays` in place, fused into buckets of `bucket_bytes`.

    Every rank must pass the same sequence of shapes and dtypes. Returns `arrays`.
    """
    comm = comm if comm is not None else MPI.COMM_WORLD
    arrays = list(arrays)
    check = config.check if check is None else check
    bucket_bytes = _validate(comm, arrays, op, algorithm, bucket_bytes, check)
    plan = plan_buckets([a.nbytes for a in arrays], [a.dtype for a in arrays], bucket_bytes)
    for dtype, idx in plan:
        if len(idx) == 1 and arrays[idx[0]].flags.c_contiguous:
            allreduce(arrays[idx[0]], op, comm, algorithm, check=False)  # no copy needed
            continue
        total = sum(arrays[i].size for i in idx)
        fused = _fusion_buffer(dtype, total)
        o = 0
        for i in idx:
            a = arrays[i]
            fused[o:o + a.size] = a.reshape(-1) if a.flags.c_contiguous else a.ravel()
            o += a.size
        allreduce(fused, op, comm, algorithm, check=False)
        o = 0
        for i in idx:
            a = arrays[i]
            a[...] = fused[o:o + a.size].reshape(a.shape)
            o += a.size
    return arrays
