"""Checks of a sharded dataset beyond its headers: checksums and a summary."""
import hashlib
import os

import h5py
import numpy as np

from hpcml.comm.guard import agree
from .format import read_manifest, DataError, CHUNK_ROWS


def shard_checksum(path, rows_per_read=CHUNK_ROWS * 16):
    """SHA-256 of the shard's x bytes then y bytes, read in bounded row blocks."""
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for name in ("x", "y"):
            d = f[name]
            for start in range(0, d.shape[0], rows_per_read):
                h.update(np.ascontiguousarray(d[start:start + rows_per_read]).tobytes())
    return h.hexdigest()


def locate(path):
    """The folder of `path`, or of the built-in dataset it names ("digits"), as jobs
    resolve it."""
    from .builtin import resolve
    path = os.fspath(path)
    return resolve(path) if not os.path.exists(path) and resolve(path) else path


def verify(path, comm=None):
    """Recompute every shard's checksum (ranks share the shards); the same DataError on
    every rank names each shard that does not match. Returns the number of shards checked."""
    path = locate(path)
    m = read_manifest(path)
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    problems = []
    for i in range(rank, len(m["shards"]), size):
        s = m["shards"][i]
        file = os.path.join(path, s["file"])
        try:
            got = shard_checksum(file)
        except (OSError, KeyError) as e:
            problems.append(f"{file}: unreadable ({type(e).__name__}: {e})")
            continue
        if got != s.get("sha256"):
            problems.append(f"{file}: checksum mismatch (manifest {s['sha256'][:12]}..., "
                            f"file {got[:12]}...)")
    error = "; ".join(problems) or None
    if comm is not None:
        agree(comm, error, what=f"verifying {path}")
    elif error:
        raise DataError(error)
    return len(m["shards"])


def scan(path, comm=None, batch_size=65536):
    """Read every row once through the loader (each rank its share) and check the values:
    NaN/Inf features and labels outside 0..classes-1. The same error on every rank names
    each file and row found. Returns the number of rows this rank read."""
    from .dataset import ShardedDataset
    ds = ShardedDataset(path, comm)
    rows, error = 0, None
    try:
        for x, _ in ds.loader(batch_size, shuffle=False):
            rows += len(x)
    except (DataError, OSError) as e:
        error = str(e)
    if comm is not None:
        agree(comm, error, what=f"scanning {path}")
    elif error:
        raise DataError(error)
    return rows


def info(path):
    """A short human-readable summary of the manifest."""
    path = locate(path)
    m = read_manifest(path)
    lines = [f"{path}: {m['rows']:,} rows x {m['features']} features ({m['x_dtype']}), "
             f"{m['task']}" + (f", {m['classes']} classes" if m["task"] == "classification"
                               else "") + f", {len(m['shards'])} shards"]
    sizes = [s["rows"] for s in m["shards"]]
    lines.append(f"rows per shard: min {min(sizes):,}, max {max(sizes):,}")
    return "\n".join(lines)
