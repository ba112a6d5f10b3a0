"""Small datasets for the data tests: x[:, 0] holds each row's global index."""
import os

import numpy as np

from hpcml.data import write_shard, write_manifest


def indexed_dataset(folder, shard_rows, features=3, classes=4):
    """Shards of the given sizes; row g has x[g, 0] == g and y == g % classes."""
    os.makedirs(folder, exist_ok=True)
    entries, g = [], 0
    for i, n in enumerate(shard_rows):
        idx = np.arange(g, g + n)
        x = np.zeros((n, features), np.float32)
        x[:, 0] = idx
        x[:, 1:] = (idx[:, None] % 7) * 0.5
        entries.append(write_shard(folder, i, x, (idx % classes).astype(np.int64)))
        g += n
    write_manifest(folder, entries, features, "float32", "int64", "classification", classes)
    return folder
