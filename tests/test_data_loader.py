"""hpcml.data in one process: format, synth, partition plan, loader, resume, bad input."""
import json
import os

import h5py
import numpy as np
import pytest

from hpcml.data import ShardedDataset, DataError, synth, verify, read_manifest
from hpcml.data.dataset import Loader
from data_helpers import indexed_dataset


def plan_loader(ds, rank, size, **kw):
    """A loader that plans as rank `rank` of `size` (the plan needs no communicator)."""
    ld = ds.loader(**kw)
    ld.rank, ld.size = rank, size
    return ld


@pytest.fixture
def uneven(tmp_path):
    return ShardedDataset(indexed_dataset(str(tmp_path / "d"), [700, 3, 2500, 1024, 1]))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_once_per_epoch_equal_work(uneven, size, shuffle):
    for epoch in (0, 1):
        seen, per_rank, steps = [], [], set()
        for r in range(size):
            ld = plan_loader(uneven, r, size, batch_size=64, shuffle=shuffle, seed=3,
                             block_rows=256)
            ld.epoch = epoch
            batches = list(ld)
            steps.add(len(batches))
            rows = np.concatenate([x[:, 0] for x, _ in batches]).astype(int)
            seen.append(rows)
            per_rank.append(len(rows))
            for x, y in batches:
                np.testing.assert_array_equal(y, x[:, 0].astype(int) % 4)  # labels stay put
        allrows = np.concatenate(seen)
        assert np.array_equal(np.sort(allrows), np.arange(uneven.rows))
        assert max(per_rank) - min(per_rank) <= 1
        assert len(steps) == 1  # every rank makes the same number of steps


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_global_partition_equals_one_process_at_the_global_batch(uneven, size, shuffle,
                                                                 drop_last):
    """partition="global": at every step, the ranks' batches concatenated in rank order are
    exactly the batch one process gets at batch_size * ranks."""
    kw = dict(shuffle=shuffle, seed=9, block_rows=256, drop_last=drop_last)
    serial = [x[:, 0].copy() for x, _ in uneven.loader(batch_size=30 * size, **kw)]
    ranks = [[(x[:, 0].copy(), y.copy()) for x, y in
              uneven.loader(batch_size=30, partition="global", rank=r, ranks=size, **kw)]
             for r in range(size)]
    assert all(len(b) == len(serial) for b in ranks)
    for k, whole in enumerate(serial):
        parts = [ranks[r][k][0] for r in range(size)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        for r in range(size):
            np.testing.assert_array_equal(ranks[r][k][1], ranks[r][k][0].astype(int) % 4)
    if drop_last:
        assert all(len(w) == 30 * size for w in serial)
    else:
        assert sum(map(len, serial)) == uneven.rows


@pytest.mark.parametrize("stop_after", [0, 3, 30])
def test_global_partition_resumes_mid_epoch(uneven, stop_after):
    kw = dict(batch_size=16, seed=2, block_rows=100, partition="global", rank=1, ranks=3)
    full = [x.copy() for x, _ in uneven.loader(**kw)]
    ld = uneven.loader(**kw)
    it = iter(ld)
    head = [next(it)[0].copy() for _ in range(stop_after)]
    it.close()
    resumed = uneven.loader(**kw)
    resumed.load_state_dict(json.loads(json.dumps(ld.state_dict())))
    rest = [x for x, _ in resumed]
    assert len(head) + len(rest) == len(full)
    for a, b in zip(head + rest, full):
        np.testing.assert_array_equal(a, b)
    other = uneven.loader(**dict(kw, partition="contiguous"))
    with pytest.raises(ValueError, match="partition='global'"):
        other.load_state_dict(ld.state_dict())


def test_order_is_deterministic_and_changes_by_epoch(uneven):
    def rows(seed, epoch):
        ld = plan_loader(uneven, 1, 3, batch_size=50, seed=seed, block_rows=128)
        ld.epoch = epoch
        return np.concatenate([x[:, 0] for x, _ in ld])
    assert np.array_equal(rows(5, 0), rows(5, 0))
    assert not np.array_equal(rows(5, 0), rows(5, 1))
    assert not np.array_equal(rows(5, 0), rows(6, 0))


def test_epochs_advance_and_drop_last(uneven):
    ld = uneven.loader(batch_size=1000, shuffle=False, drop_last=True)
    assert len(ld) == uneven.rows // 1000
    first = [x[0, 0] for x, _ in ld]
    assert ld.epoch == 1 and len(first) == len(ld)
    assert all(len(x) == 1000 for x, _ in ld)


@pytest.mark.parametrize("stop_after", [0, 1, 7, 20])
def test_resume_mid_epoch_matches_uninterrupted(uneven, stop_after):
    full = [x.copy() for x, _ in plan_loader(uneven, 0, 2, batch_size=37, seed=1,
                                             block_rows=100)]
    ld = plan_loader(uneven, 0, 2, batch_size=37, seed=1, block_rows=100)
    it = iter(ld)
    head = [next(it)[0].copy() for _ in range(stop_after)]
    it.close()
    state = json.loads(json.dumps(ld.state_dict()))  # survives a JSON checkpoint
    resumed = plan_loader(uneven, 0, 2, batch_size=37, seed=1, block_rows=100)
    resumed.load_state_dict(state)
    rest = [x for x, _ in resumed]
    assert len(head) + len(rest) == len(full)
    for a, b in zip(head + rest, full):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="batch_size=37"):
        plan_loader(uneven, 0, 2, batch_size=36, seed=1, block_rows=100).load_state_dict(state)


@pytest.mark.parametrize("prefetch", [1, 2])
def test_memory_is_bounded_by_prefetch(tmp_path, prefetch):
    """The reader never runs more than `prefetch` batches ahead of the consumer: counted as
    the steps the reader thread has started, and as the bytes NumPy holds (tracemalloc)."""
    import threading
    import time
    import tracemalloc
    ds = ShardedDataset(indexed_dataset(str(tmp_path / "d"), [40000], features=16))
    batch_bytes = 500 * (16 * 4 + 8)  # 500 rows of float32 x 16 and int64 y: 36 kB
    ld = ds.loader(batch_size=500, shuffle=False, prefetch=prefetch, block_rows=1000)
    started = []
    interval = Loader.interval
    only_arrays = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]

    def numpy_bytes():  # array data only (NumPy traces it in its own domain)
        snap = tracemalloc.take_snapshot().filter_traces(only_arrays)
        return sum(s.size for s in snap.statistics("filename"))

    def counting(self, step):  # the reader calls interval(step) once as it starts a batch
        if threading.current_thread().name == "hpcml-loader":
            started.append(step)
        return interval(self, step)
    tracemalloc.start()
    try:
        Loader.interval = counting
        before = numpy_bytes()
        it = iter(ld)
        first = next(it)
        deadline = time.monotonic() + 0.5  # give the reader every chance to run ahead
        while time.monotonic() < deadline:
            time.sleep(0.05)
        held = numpy_bytes() - before
        ahead = len(started)
        it.close()
    finally:
        Loader.interval = interval
        tracemalloc.stop()
    assert len(first[0]) == 500
    # 1 batch handed out + `prefetch` queued + 1 assembled and waiting to be queued; an
    # unbounded queue reads all 80 batches (2.9 MB)
    assert ahead <= 1 + prefetch + 1, f"the reader started {ahead} batches ahead"
    assert held <= (1 + prefetch + 1) * batch_bytes + 64 * 1024, f"{held} bytes held"


def test_synth_is_deterministic_and_verifies(tmp_path):
    a = synth(str(tmp_path / "a"), 5000, 8, classes=5, shards=3, seed=7)
    b = synth(str(tmp_path / "b"), 5000, 8, classes=5, shards=3, seed=7)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert verify(str(tmp_path / "a")) == 3
    r = synth(str(tmp_path / "r"), 100, 4, regression=True, shards=2, seed=1)
    assert r["task"] == "regression" and "classes" not in r
    with pytest.raises(DataError, match="either classes"):
        synth(str(tmp_path / "x"), 10, 2, classes=3, regression=True)


# --- bad input: a clear error naming the file, never a wrong batch -------------------------

def _break(tmp_path, how):
    folder = indexed_dataset(str(tmp_path / "d"), [300, 200])
    shard = os.path.join(folder, "shard-00001.h5")
    mpath = os.path.join(folder, "manifest.json")
    m = json.load(open(mpath))
    if how == "missing":
        os.unlink(shard)
    elif how == "truncated":
        data = open(shard, "rb").read()
        open(shard, "wb").write(data[: len(data) // 3])
    elif how == "rows":
        m["shards"][1]["rows"] = 201
        m["rows"] = 501
        json.dump(m, open(mpath, "w"))
    elif how == "features":
        with h5py.File(shard, "w") as f:
            f["x"] = np.zeros((200, 5), np.float32)
            f["y"] = np.zeros(200, np.int64)
    elif how == "dtype":
        with h5py.File(shard, "w") as f:
            f["x"] = np.zeros((200, 3), np.float64)
            f["y"] = np.zeros(200, np.int64)
    elif how == "manifest":
        open(mpath, "w").write("{not json")
    elif how == "sha256":
        del m["shards"][1]["sha256"]
        json.dump(m, open(mpath, "w"))
    elif how == "empty":
        for s in m["shards"]:
            s["rows"] = 0
        m["rows"] = 0
        json.dump(m, open(mpath, "w"))
        for i in (0, 1):
            with h5py.File(os.path.join(folder, f"shard-0000{i}.h5"), "w") as f:
                f["x"] = np.zeros((0, 3), np.float32)
                f["y"] = np.zeros(0, np.int64)
    return folder


#: (how the dataset is broken, the message that must name it); also used by tests/mpi
BAD_DATASETS = [
    ("missing", "shard-00001.h5: shard listed in manifest.json is missing"),
    ("truncated", "shard-00001.h5: not a readable shard"),
    ("rows", "shard-00001.h5: x is .* but the manifest says 201 rows"),
    ("features", "shard-00001.h5: x is \\(200, 5\\)"),
    ("dtype", "shard-00001.h5: dtypes x float64"),
    ("manifest", "manifest.json: unreadable manifest"),
    ("sha256", "manifest.json: shard entry 'shard-00001.h5': sha256 must be 64 hex digits"),
    ("empty", "the dataset is empty"),
]


@pytest.mark.parametrize("how,match", BAD_DATASETS)
def test_bad_dataset_is_named(tmp_path, how, match):
    folder = _break(tmp_path, how)
    with pytest.raises(DataError, match=match):
        ShardedDataset(folder)


def test_checksum_mismatch_is_named(tmp_path):
    folder = indexed_dataset(str(tmp_path / "d"), [300, 200])
    with h5py.File(os.path.join(folder, "shard-00000.h5"), "r+") as f:
        f["x"][5, 1] = 123.0
    with pytest.raises(DataError, match="shard-00000.h5: checksum mismatch"):
        verify(folder)


def test_nonfinite_features_error_with_row_or_drop(tmp_path):
    folder = indexed_dataset(str(tmp_path / "d"), [300])
    with h5py.File(os.path.join(folder, "shard-00000.h5"), "r+") as f:
        f["x"][123, 2] = np.nan
    ds = ShardedDataset(folder)
    with pytest.raises(DataError, match=r"shard-00000.h5: row 123 \(row 123 of the dataset, from 0\) has a NaN or Inf"):
        list(ds.loader(batch_size=50, shuffle=False))
    rows = np.concatenate([x[:, 0] for x, _ in ds.loader(batch_size=50, nonfinite="drop")])
    assert len(rows) == 299 and 123 not in rows


def test_label_out_of_range(tmp_path):
    folder = indexed_dataset(str(tmp_path / "d"), [300])
    with h5py.File(os.path.join(folder, "shard-00000.h5"), "r+") as f:
        f["y"][42] = 9
    with pytest.raises(DataError, match=r"row 42 \(row 42 of the dataset\) has label outside 0..3"):
        list(ShardedDataset(folder).loader(batch_size=50, shuffle=False))


def test_loader_arguments(uneven):
    with pytest.raises(ValueError, match="nonfinite must be 'error' or 'drop'"):
        uneven.loader(batch_size=4, nonfinite="keep")
    with pytest.raises(ValueError, match="batch_size, prefetch and block_rows must be >= 1"):
        uneven.loader(batch_size=0)
    assert isinstance(uneven.loader(batch_size=4), Loader)
    assert read_manifest(uneven.path)["rows"] == uneven.rows


def test_builtin_digits_by_name():
    from hpcml.data.builtin import resolve
    train, test = ShardedDataset("digits"), ShardedDataset("digits:test")
    assert (train.rows, test.rows, train.features, train.classes) == (1438, 359, 64, 10)
    assert verify(resolve("digits")) == 1 and verify(resolve("digits:test")) == 1
    x, y = next(iter(train.loader(batch_size=2000, shuffle=False)))
    assert x.shape == (1438, 64) and x.min() == 0 and x.max() == 16
    assert set(np.unique(y)) == set(range(10))
