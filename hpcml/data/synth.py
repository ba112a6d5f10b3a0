"""Deterministic synthetic datasets of any size, written shard by shard (rank-parallel).

Shard i is generated from numpy.random.default_rng([seed, i]) alone, so the data do not
depend on how many ranks write it or in which order. Classification: Gaussian blobs around
`classes` random centres; regression: a random linear map plus noise.
"""
import os

import numpy as np

from hpcml.comm.guard import agree, CollectiveError

from .format import shard_name, write_shard, write_manifest, DataError


def shard_rows(rows, shards):
    """Rows per shard: as equal as possible."""
    return [rows * (i + 1) // shards - rows * i // shards for i in range(shards)]


def _params(seed, features, classes, regression):
    rng = np.random.default_rng([seed, 1 << 30])
    if regression:
        return rng.standard_normal(features)
    return rng.standard_normal((classes, features)) * 3.0


def make_shard(seed, index, rows, features, classes=None, regression=False, dtype="float32",
               split=0):
    """(x, y) of shard `index`; split 1: the test split's shards (the same class centres or
    linear map, other rows)."""
    params = _params(seed, features, classes, regression)
    rng = np.random.default_rng([seed, index] if split == 0 else [seed, index, split])
    if regression:
        x = rng.standard_normal((rows, features))
        y = x @ params + 0.1 * rng.standard_normal(rows)
        return x.astype(dtype), y.astype(dtype)
    y = rng.integers(0, classes, rows)
    x = params[y] + rng.standard_normal((rows, features))
    return x.astype(dtype), y.astype(np.int64)


def synth(out, rows, features, classes=None, regression=False, shards=1, seed=0,
          dtype="float32", comm=None, test_rows=0, progress=False, name=None,
          federated=None, clients=30, like=None, drift=None):
    """Write a synthetic sharded dataset to `out`; with `comm`, ranks write shards i = rank,
    rank + p, ... and rank 0 writes the manifest. Returns the manifest (on rank 0).
    test_rows > 0: `out/train` (rows) and `out/test` (test_rows, drawn from the same
    distribution: same centres or map, other rows), as `convert --test-fraction` writes;
    returns {"out/train": manifest, "out/test": manifest}. progress: rank 0 shows its
    shards' rows (a bar on a terminal, else a line every `progress` seconds), named
    `name` (default: out's folder name). federated=(alpha, beta): FedProx's
    Synthetic(alpha, beta) over `clients` clients (hpcml.data.fedsynth; the last feature
    column is the client id). like="digits": rows made from the built-in digits
    (hpcml.data.augment). drift: row positions where the concept changes (a stream,
    hpcml.data.driftsynth; the manifest records them as drift_points)."""
    if drift is not None:
        return _drift(out, rows, features, classes, regression, shards, seed, dtype, comm,
                      test_rows, progress, name, drift)
    if like is not None:
        from . import augment
        augment.check(like, features, classes, regression)

        def maker_of(split):
            return lambda i, n: augment.make_shard(seed, i, n, split, dtype)
    else:
        maker_of = None
    if federated is not None:
        return _federated(out, rows, features, classes, shards, seed, dtype, comm,
                          test_rows, progress, name, federated, clients)
    if test_rows:
        if test_rows < 0:
            raise DataError("test_rows must be >= 0")
        return {os.path.join(out, sub): _synth(os.path.join(out, sub), n, features,
                                                 classes, regression, k, seed, dtype, comm,
                                                 split, progress,
                                                 name and os.path.join(name, sub),
                                                 maker_of=maker_of)
                for sub, n, k, split in (("train", rows, shards, 0),
                                          ("test", test_rows, max(1, min(test_rows, round(
                                              shards * test_rows / rows))), 1))}
    return _synth(out, rows, features, classes, regression, shards, seed, dtype, comm, 0,
                  progress, name, maker_of=maker_of)


def _drift(out, rows, features, classes, regression, shards, seed, dtype, comm, test_rows,
           progress, name, drift):
    from . import driftsynth
    if test_rows:
        raise DataError("--drift makes a stream, evaluated test-then-train (python -m "
                        "hpcml.stream): no --test-rows")
    points = driftsynth.parse(drift, rows) if isinstance(drift, str) else list(drift)
    counts = shard_rows(rows, shards)
    offsets = np.concatenate([[0], np.cumsum(counts)])

    def maker(i):
        return driftsynth.make_shard(seed, i, counts[i], int(offsets[i]), features, classes,
                                     regression, dtype, points)
    return _synth(out, rows, features, classes, regression, shards, seed, dtype, comm, 0,
                  progress, name, maker=maker, counts=counts,
                  kind={"kind": "drift stream (hpcml.data.driftsynth)",
                        "drift_points": points})


def _federated(out, rows, features, classes, shards, seed, dtype, comm, test_rows,
               progress, name, federated, clients):
    from . import fedsynth
    if classes is None or clients < 1 or shards > clients:
        raise DataError("--federated needs --classes, --clients >= 1 and --shards <= "
                        "--clients (a client's rows stay in one shard)")
    sizes = fedsynth.client_sizes(rows, clients, seed)
    parts = [("", sizes, 1)]
    if test_rows:
        test = np.maximum(1, np.round(sizes * test_rows / rows)).astype(np.int64)
        parts = [("train", sizes, 1), ("test", test, 2)]
    out_all = {}
    for sub, n, split in parts:
        def maker(i, n=n, split=split):
            return fedsynth.make_shard(seed, i, shards, n, *federated, features, classes,
                                       dtype, split)
        counts = [int(n[i::shards].sum()) for i in range(shards)]
        folder = os.path.join(out, sub) if sub else out
        out_all[folder] = _synth(folder, int(n.sum()), features + 1, classes, False, shards,
                                 seed, dtype, comm, split - 1, progress,
                                 name and os.path.join(name, sub), maker=maker,
                                 counts=counts, kind={"kind": "fedprox-synthetic",
                                                      "alpha": federated[0],
                                                      "beta": federated[1],
                                                      "clients": clients,
                                                      "client_column": features})
    return out_all if test_rows else out_all[out]


def _synth(out, rows, features, classes, regression, shards, seed, dtype, comm, split=0,
           progress=False, progress_name=None, maker=None, counts=None, kind=None,
           maker_of=None):
    if regression == (classes is not None):
        raise DataError("give either classes (classification) or regression=True")
    if rows < 1 or features < 1 or shards < 1 or (classes is not None and classes < 1):
        raise DataError("rows, features, shards and classes must be >= 1")
    if shards > rows:
        raise DataError(f"{shards} shards for {rows} rows: some would be empty")
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    os.makedirs(out, exist_ok=True)
    counts = counts or shard_rows(rows, shards)
    if maker is None and maker_of is not None:
        make_split = maker_of(split)

        def maker(i):
            return make_split(i, counts[i])
        kind = kind or {"kind": "augmented digits (hpcml.data.augment)"}
    entries, error = {}, None
    bar = None
    if progress and rank == 0:
        from hpcml.progress import Progress
        name = progress_name or os.path.basename(os.path.normpath(out))
        bar = Progress(sum(counts[rank::size]), f"synth {name}" + (
            f" (rank 0 of {size})" if size > 1 else ""),
            every=30.0 if progress is True else progress)
    try:
        for i in range(rank, shards, size):
            x, y = maker(i) if maker is not None else make_shard(
                seed, i, counts[i], features, classes, regression, dtype, split)
            entries[i] = write_shard(out, i, x, y)
            if bar is not None:
                bar.update(counts[i])
    except OSError as e:
        error = f"{out}: writing shard {i}: {e}"
    if bar is not None and error is None:
        bar.close()
    try:
        if comm is not None:
            agree(comm, error, what=f"writing {out}")  # the same error on every rank
        elif error is not None:
            raise DataError(error)
    except (CollectiveError, DataError):
        for i in entries:  # the shards this rank wrote: no half-made dataset left behind
            path = os.path.join(out, shard_name(i))
            if os.path.exists(path):
                os.unlink(path)
        raise
    if comm is not None:
        gathered = comm.gather(entries, root=0)
        if rank != 0:
            comm.Barrier()
            return None
        entries = {k: v for part in gathered for k, v in part.items()}
    m = write_manifest(out, [entries[i] for i in range(shards)], features, dtype,
                       dtype if regression else "int64",
                       "regression" if regression else "classification", classes,
                       extra={"generator": {**(kind or {"kind": "synth"}), "seed": seed,
                                            "split": ["train", "test"][split]}})
    if comm is not None:
        comm.Barrier()
    return m
