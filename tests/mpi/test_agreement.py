"""One rank's bad input, failure or setting ends every rank with the same error (never a
hang, never a different result per rank): the cases a review found after issue 6."""
import hashlib
import json
import os

import h5py
import numpy as np
import pytest

from hpcml import comm as hc
from hpcml import config, train
from hpcml.comm import CollectiveError
from hpcml.data import DataError, ShardedDataset, synth
from hpcml.data.verify import scan
from hpcml.ml import PCA, TSNE
from hpcml.ml.pca import InputError
from mpi_helpers import all_ranks, from_root, same_bytes_everywhere, same_message_everywhere


def _dataset(comm, folder, rows=400, features=5, shards=2):
    synth(folder, rows, features, classes=3, shards=shards, seed=0, comm=comm)
    comm.Barrier()
    return folder


def _poison(comm, folder, row, compressed_and_corrupt=False):
    """Rank 0 changes the last shard: a NaN at `row` (checksum updated), or the shard
    rewritten gzip-compressed with its first x chunk overwritten (headers still valid)."""
    if comm.Get_rank() == 0:
        m = json.load(open(os.path.join(folder, "manifest.json")))
        entry = m["shards"][-1]
        path = os.path.join(folder, entry["file"])
        with h5py.File(path, "r") as f:
            x, y = f["x"][...], f["y"][...]
        if compressed_and_corrupt:
            os.remove(path)
            with h5py.File(path, "w") as f:
                f.create_dataset("x", data=x, chunks=(50, x.shape[1]), compression="gzip")
                f.create_dataset("y", data=y, chunks=(50,), compression="gzip")
                info = f["x"].id.get_chunk_info(0)
                off, size = info.byte_offset, info.size
            raw = bytearray(open(path, "rb").read())
            raw[off + 2:off + size] = b"\xab" * (size - 2)
            open(path, "wb").write(bytes(raw))
        else:
            x[row, 2] = np.nan
            with h5py.File(path, "r+") as f:
                f["x"][...] = x
            h = hashlib.sha256()
            h.update(x.tobytes())
            h.update(y.tobytes())
            entry["sha256"] = h.hexdigest()
            json.dump(m, open(os.path.join(folder, "manifest.json"), "w"))
    comm.Barrier()


def test_train_standardizer_and_evaluation_agree_on_bad_rows(comm, shared_dir):
    good = _dataset(comm, os.path.join(shared_dir, "good"))
    bad = _dataset(comm, os.path.join(shared_dir, "bad"))
    _poison(comm, bad, row=50)
    cfg = dict({k: v[0] for k, v in train.SETTINGS.items()}, hidden="8", dtype="float64",
               epochs=1, max_steps=2, progress=False, batch_size=20 * comm.Get_size())
    with pytest.raises(CollectiveError, match="NaN or Inf") as info:  # the standardizer
        train.run(train.validate(dict(cfg, data=bad, test_data="none")), comm,
                  log=lambda *a: None)
    same_message_everywhere(comm, info.value)
    with pytest.raises(CollectiveError, match="NaN or Inf") as info:  # the test-set pass
        train.run(train.validate(dict(cfg, data=good, test_data=bad)), comm,
                  log=lambda *a: None)
    same_message_everywhere(comm, info.value)


def test_unreadable_shard_is_named_on_every_rank(comm, shared_dir):
    folder = _dataset(comm, os.path.join(shared_dir, "corrupt"))
    _poison(comm, folder, 0, compressed_and_corrupt=True)
    with pytest.raises((CollectiveError, DataError), match=r"shard-0000\d\.h5.*cannot be read"
                       ) as info:
        scan(folder, comm)
    same_message_everywhere(comm, info.value)
    with pytest.raises(InputError, match=r"shard-0000\d\.h5.*cannot be read") as info:
        TSNE(perplexity=5, max_iter=250, comm=comm).fit(ShardedDataset(folder, comm))
    same_message_everywhere(comm, info.value)


def test_tsne_uses_the_datasets_split(comm, shared_dir):
    """A dataset opened on the ranks, no comm given to TSNE (or the reverse): every row
    embedded once, the same embedding on every rank, as one process gives."""
    folder = _dataset(comm, os.path.join(shared_dir, "ds"), rows=150)
    serial = from_root(comm, lambda: TSNE(perplexity=5, max_iter=250, random_state=0)
                       .fit_transform(ShardedDataset(folder)))
    a = TSNE(perplexity=5, max_iter=250, random_state=0).fit_transform(
        ShardedDataset(folder, comm))
    b = TSNE(perplexity=5, max_iter=250, random_state=0, comm=comm).fit_transform(
        ShardedDataset(folder))
    all_ranks(comm, a.shape == (150, 2) and b.shape == (150, 2), f"shapes {a.shape} {b.shape}")
    all_ranks(comm, same_bytes_everywhere(comm, a), "embedding differs across ranks")
    all_ranks(comm, np.allclose(a, serial, atol=1e-8) and np.allclose(b, serial, atol=1e-8),
              "embedding differs from one process")


def test_backend_bad_on_one_rank_fails_everywhere(comm):
    r = comm.Get_rank()
    X = np.random.default_rng(r).standard_normal((200, 5))
    with pytest.raises(InputError, match="backend='cpux'") as info:
        PCA(2, comm=comm, backend="cpux" if r == 1 else None).fit(X)
    same_message_everywhere(comm, info.value)
    with pytest.raises(InputError, match="backend='cpux'") as info:
        TSNE(perplexity=5, comm=comm, backend="cpux" if r == 1 else "cpu").fit(X)
    same_message_everywhere(comm, info.value)


def test_settings_differing_across_ranks_stop_the_job(comm, capsys):
    def parse(argv):
        return {"lr": 0.05 * (1 + comm.Get_rank()), "epochs": 3}
    all_ranks(comm, config.start(comm, parse) is None, "start must refuse")
    err = capsys.readouterr().err
    all_ranks(comm, "settings differ across ranks: lr" in err if comm.Get_rank() == 0
              else "error:" not in err, f"rank 0 prints why, once: {err!r}")
    all_ranks(comm, config.start(comm, lambda argv: {"lr": 0.05}) == {"lr": 0.05}, "same ok")


def test_environment_differing_across_ranks_is_refused(comm, monkeypatch):
    from hpcml.comm.collectives import config as comm_config
    monkeypatch.setattr(comm_config, "segment_bytes", 64 if comm.Get_rank() == 0 else 4096)
    fresh = comm.Dup()  # hpcml's state is made (and checked) on first use of a comm
    try:
        with pytest.raises(CollectiveError, match="HPCML_RING_SEGMENT_BYTES differ") as info:
            hc.allreduce(np.ones(1000), comm=fresh)
        same_message_everywhere(comm, info.value)
    finally:
        fresh.Free()


def test_allreduce_many_checks_op_with_no_arrays(comm):
    with pytest.raises((CollectiveError, ValueError), match="unknown op") as info:
        hc.allreduce_many([], op="bogus" if comm.Get_rank() == 1 else "sum", comm=comm,
                          check=True)
    same_message_everywhere(comm, info.value)


def test_convert_of_bytes_that_are_not_utf8(comm, shared_dir):
    src = os.path.join(shared_dir, "bad.csv")
    out = os.path.join(shared_dir, "out")
    if comm.Get_rank() == 0:
        with open(src, "wb") as f:
            f.write(b"a,b,label\n")
            for i in range(400):
                f.write(f"{i},{i * 0.5},{i % 3}\n".encode())
            f.write(b"1.0,\xff\xfe,1\n")
    comm.Barrier()
    from hpcml.data.convert import convert
    with pytest.raises((CollectiveError, DataError), match="UnicodeDecodeError") as info:
        convert(src, out, shards=2, comm=comm)
    same_message_everywhere(comm, info.value)
    comm.Barrier()
    left = sorted(os.listdir(out)) if os.path.isdir(out) else []
    all_ranks(comm, not [f for f in left if f.endswith(".h5")], f"shards left behind: {left}")


def test_synth_write_failure_on_one_rank(comm, shared_dir):
    out = os.path.join(shared_dir, "syn")
    if comm.Get_rank() == 0:
        os.makedirs(os.path.join(out, "shard-00001.h5"))  # rank 1's shard cannot be renamed
    comm.Barrier()
    with pytest.raises((CollectiveError, DataError), match="shard 1") as info:
        synth(out, 100, 3, classes=2, shards=comm.Get_size(), comm=comm)
    same_message_everywhere(comm, info.value)
    comm.Barrier()
    left = [f for f in os.listdir(out) if f != "shard-00001.h5"]
    all_ranks(comm, left == [], f"files left behind: {left}")


def test_loader_settings_must_agree(comm, shared_dir):
    ds = ShardedDataset(_dataset(comm, os.path.join(shared_dir, "ld")), comm)
    r = comm.Get_rank()
    with pytest.raises(ValueError, match="loader settings differ across ranks") as info:
        ds.loader(16, seed=r)  # each rank another shuffle: rows visited twice or never
    same_message_everywhere(comm, info.value)
    with pytest.raises(ValueError, match="batch_size, prefetch and block_rows") as info:
        ds.loader(0 if r == 1 else 16)
    same_message_everywhere(comm, info.value)
    # the rows are distinct random vectors: every rank's rows together, sorted, must be
    # exactly the dataset's rows (read by one process), each once
    seen = np.concatenate([x for x, _ in ds.loader(16, seed=3)])
    seen = np.concatenate(comm.allgather(seen))
    every = from_root(comm, lambda: np.concatenate(
        [x for x, _ in ShardedDataset(ds.path).loader(1000, shuffle=False)]))
    all_ranks(comm, seen.shape == every.shape and np.array_equal(
        seen[np.lexsort(seen.T[::-1])], every[np.lexsort(every.T[::-1])]), "every row once")


@pytest.mark.parametrize("where", ["checkpoint_dir", "metrics"])
def test_train_output_failure_on_rank0_reaches_every_rank(comm, shared_dir, where):
    blocker = os.path.join(shared_dir, "a-file")
    if comm.Get_rank() == 0:
        open(blocker, "w").close()
    comm.Barrier()
    cfg = dict({k: v[0] for k, v in train.SETTINGS.items()}, hidden="8", dtype="float64",
               epochs=1, max_steps=3, progress=False, test_data="none",
               batch_size=20 * comm.Get_size())
    cfg[where] = os.path.join(blocker, "out")  # under a file: cannot be created
    with pytest.raises(CollectiveError, match="rank 0") as info:
        train.run(train.validate(cfg), comm, log=lambda *a: None)
    same_message_everywhere(comm, info.value)
