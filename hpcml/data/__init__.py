"""hpcml.data: the sharded HDF5 dataset format, a per-rank streaming loader, generators.

    from hpcml.data import ShardedDataset, synth
    synth("data/blobs", rows=100_000, features=32, classes=10, shards=8, seed=0)
    ds = ShardedDataset("data/blobs", comm=hpcml.comm.world())
    for x, y in ds.loader(batch_size=256, shuffle=True, seed=0):
        ...
"""
from .format import DataError, read_manifest, write_shard, write_manifest, CHUNK_ROWS
from .dataset import ShardedDataset, Loader
from .synth import synth
from .verify import verify, scan, info
from .convert import convert

__all__ = ["DataError", "read_manifest", "write_shard", "write_manifest", "CHUNK_ROWS",
           "ShardedDataset", "Loader", "synth", "verify", "scan", "info", "convert"]
