"""hpcml.data: the sharded HDF5 dataset format, a per-rank streaming loader, generators.

    from hpcml.data import ShardedDataset, synth
    synth("data/blobs", rows=100_000, features=32, classes=10, shards=8, seed=0)
    ds = ShardedDataset("data/blobs", comm=MPI.COMM_WORLD)
    for x, y in ds.loader(batch_size=256, shuffle=True, seed=0):
        ...

Status: the format, `synth`, `info`/`verify` and the loader are here; `convert` (CSV, npy,
HDF5), the built-in `digits` dataset and benchmarks/io.py are not yet (issue 4 is open).
"""
from .format import DataError, read_manifest, write_shard, write_manifest, CHUNK_ROWS
from .dataset import ShardedDataset, Loader
from .synth import synth
from .verify import verify, info

__all__ = ["DataError", "read_manifest", "write_shard", "write_manifest", "CHUNK_ROWS",
           "ShardedDataset", "Loader", "synth", "verify", "info"]
