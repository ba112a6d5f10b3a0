"""hpcml.data on real ranks: rank-parallel synth, exactly-once loading, collective errors."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_helpers import indexed_dataset  # noqa: E402
from hpcml import comm as hc  # noqa: E402
from hpcml.data import ShardedDataset, synth, verify  # noqa: E402
from mpi_helpers import all_ranks, from_root, same_message_everywhere  # noqa: E402
from test_data_loader import BAD_DATASETS  # noqa: E402


def test_rank_parallel_synth_equals_serial(comm, shared_dir):
    par = synth(os.path.join(shared_dir, "par"), 20_001, 6, classes=3, shards=5, seed=11,
                comm=comm)
    ser = from_root(comm, lambda: [s["sha256"] for s in synth(
        os.path.join(shared_dir, "ser"), 20_001, 6, classes=3, shards=5, seed=11)["shards"]])
    # synth returns the manifest on rank 0 (None elsewhere); every rank reads the written one
    from hpcml.data import read_manifest
    written = [s["sha256"] for s in read_manifest(os.path.join(shared_dir, "par"))["shards"]]
    returned = written if par is None else [s["sha256"] for s in par["shards"]]
    all_ranks(comm, written == ser and returned == ser and
              (par is None) == (comm.Get_rank() > 0), "rank-parallel synth wrote different shards")
    all_ranks(comm, verify(os.path.join(shared_dir, "par"), comm) == 5, "verify")


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_once_across_ranks(comm, shared_dir, shuffle):
    folder = os.path.join(shared_dir, "idx")
    if comm.Get_rank() == 0:
        indexed_dataset(folder, [1000, 7, 2048, 333])
    comm.Barrier()
    ds = ShardedDataset(folder, comm)
    ld = ds.loader(batch_size=64, shuffle=shuffle, seed=2, block_rows=256)
    batches = list(ld)
    rows = np.concatenate([x[:, 0] for x, _ in batches]).astype(np.int64)
    all_ranks(comm, all(np.array_equal(y, x[:, 0].astype(np.int64) % 4) for x, y in batches),
              "labels travel with their rows")
    everything = np.concatenate(comm.allgather(rows))  # the row ids every rank saw
    all_ranks(comm, np.array_equal(np.sort(everything), np.arange(ds.rows)),
              f"the ranks' rows together are every row index once ({len(everything)} rows "
              f"seen, {len(np.unique(everything))} distinct, {ds.rows} in the dataset)")
    all_ranks(comm, len(set(comm.allgather(len(batches)))) == 1, "same number of steps")


def test_missing_shard_fails_on_every_rank(comm, shared_dir):
    folder = os.path.join(shared_dir, "broken")
    if comm.Get_rank() == 0:
        indexed_dataset(folder, [100, 100])
        os.unlink(os.path.join(folder, "shard-00001.h5"))
    comm.Barrier()
    with pytest.raises(hc.CollectiveError, match="shard-00001.h5: shard listed in manifest"):
        ShardedDataset(folder, comm)


def test_more_ranks_than_rows(comm, shared_dir):
    folder = os.path.join(shared_dir, "tiny")
    if comm.Get_rank() == 0:
        indexed_dataset(folder, [comm.Get_size() - 1])
    comm.Barrier()
    with pytest.raises(hc.CollectiveError, match=f"{comm.Get_size() - 1} rows for "
                                                 f"{comm.Get_size()} ranks"):
        ShardedDataset(folder, comm)


def _broken(comm, shared_dir, how):
    """A dataset broken in one way, made by rank 0 (see tests/test_data_loader.py)."""
    import pathlib
    from test_data_loader import _break
    folder = None
    if comm.Get_rank() == 0:
        base = pathlib.Path(shared_dir) / how
        base.mkdir()
        folder = _break(base, how)
    return comm.bcast(folder)


@pytest.mark.parametrize("how,match", BAD_DATASETS)
def test_bad_dataset_fails_on_every_rank(comm, shared_dir, how, match):
    folder = _broken(comm, shared_dir, how)
    with pytest.raises(hc.CollectiveError, match=match) as info:
        ShardedDataset(folder, comm)
    same_message_everywhere(comm, info.value)


def _bad_values(comm, shared_dir, what):
    """Rank 0 writes shards [300, 200] with one bad value: "nan" (shard 1, row 17), "label"
    (shard 0, row 250) or "checksum" (shard 0 changed after its checksum); every rank gets
    the folder."""
    import h5py
    folder = os.path.join(shared_dir, what)
    if comm.Get_rank() == 0:
        indexed_dataset(folder, [300, 200])
        with h5py.File(os.path.join(folder, "shard-00001.h5" if what == "nan"
                                    else "shard-00000.h5"), "r+") as f:
            if what == "nan":
                f["x"][17, 1] = np.inf
            elif what == "label":
                f["y"][250] = 4
            else:
                f["x"][3, 2] = -1.0
    comm.Barrier()
    return folder


@pytest.mark.parametrize("what,match", [
    ("nan", r"shard-00001.h5: row 17 \(row [\d,]+ of the dataset, from 0\) has a NaN or Inf"),
    ("label", r"shard-00000.h5: row 250 \(row 250 of the dataset\) has label outside 0..3"),
    ("checksum", "shard-00000.h5: checksum mismatch"),
])
def test_bad_values_fail_on_every_rank(comm, shared_dir, what, match):
    folder = _bad_values(comm, shared_dir, what)
    from hpcml.data import scan
    check = (lambda: verify(folder, comm)) if what == "checksum" else (lambda: scan(folder,
                                                                                     comm))
    with pytest.raises(hc.CollectiveError, match=match):
        check()


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("what,match", [
    ("nan", r"shard-00001.h5: row 17 \(row [\d,]+ of the dataset, from 0\) has a NaN or Inf"),
    ("label", r"shard-00000.h5: row 250 \(row 250 of the dataset\) has label outside 0..3"),
])
def test_loader_errors_agreed_on_every_rank(comm, shared_dir, what, match, shuffle):
    """agree_errors=True: a bad row met by one rank mid-epoch raises the same
    CollectiveError on every rank, at the same step, while each step all-reduces."""
    folder = _bad_values(comm, shared_dir, what)
    ld = ShardedDataset(folder, comm).loader(16, shuffle=shuffle, seed=5, agree_errors=True)
    steps = 0
    with pytest.raises(hc.CollectiveError, match=match) as info:
        for x, y in ld:
            hc.allreduce(np.ones(3))
            steps += 1
    same_message_everywhere(comm, info.value)
    all_ranks(comm, len(set(comm.allgather(steps))) == 1, "same step everywhere")
    # the loader stays usable: a clean dataset after a failed epoch agrees again
    clean = os.path.join(shared_dir, what + "-clean")
    if comm.Get_rank() == 0:
        indexed_dataset(clean, [300, 200])
    comm.Barrier()
    rows = np.concatenate([x[:, 0] for x, _ in ShardedDataset(clean, comm).loader(
        16, shuffle=shuffle, agree_errors=True)])
    every = np.sort(np.concatenate(comm.allgather(rows)))
    all_ranks(comm, np.array_equal(every, np.arange(500)), "every row once")


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_rank_parallel_convert_matches_serial(comm, shared_dir, suffix):
    from hpcml.data import convert
    src = os.path.join(shared_dir, "table" + suffix)
    if comm.Get_rank() == 0:
        rng = np.random.default_rng(5)
        a = np.hstack([rng.standard_normal((3001, 3)), rng.integers(0, 4, (3001, 1))])
        if suffix == ".csv":
            np.savetxt(src, a, delimiter=",", header="a,b,c,label", comments="")
        else:
            np.save(src, a)
    comm.Barrier()
    par = convert(src, os.path.join(shared_dir, "par" + suffix), shards=2, test_fraction=0.2,
                  seed=9, chunk_rows=250, comm=comm)
    ser = None
    if comm.Get_rank() == 0:
        ser = convert(src, os.path.join(shared_dir, "ser" + suffix), shards=2,
                      test_fraction=0.2, seed=9, chunk_rows=999)
    ser = comm.bcast(ser)

    def rows(folder):
        ds = ShardedDataset(folder, comm)
        xs = [np.column_stack([x, y]) for x, y in ds.loader(10_000, shuffle=False)]
        mine = np.concatenate(xs) if xs else np.empty((0, 4))
        allrows = np.concatenate(comm.allgather(mine))
        return allrows[np.lexsort(allrows.T[::-1])]
    for split in ("train", "test"):
        all_ranks(comm, par[split]["rows"] == ser[split]["rows"], f"{split} row counts")
        all_ranks(comm, len(par[split]["shards"]) == max(2 if split == "train" else 1,
                                                         comm.Get_size()), "shard count")
        same = np.array_equal(rows(os.path.join(shared_dir, "par" + suffix, split)),
                              rows(os.path.join(shared_dir, "ser" + suffix, split)))
        all_ranks(comm, same, f"{split}: the same rows as the serial conversion")


def test_rank_parallel_convert_error_names_the_line(comm, shared_dir):
    from hpcml.data import convert
    src = os.path.join(shared_dir, "bad.csv")
    if comm.Get_rank() == 0:
        lines = [f"{i},{i % 2}\n" for i in range(400)]
        lines[350] = "350,oops\n"  # line 351, in the last rank's part
        open(src, "w").write("".join(lines))
    comm.Barrier()
    with pytest.raises(hc.CollectiveError, match="line 351: malformed CSV row"):
        convert(src, os.path.join(shared_dir, "bad-out"), chunk_rows=64, comm=comm)
    comm.Barrier()  # every rank has removed its own shards
    left = [f for f in os.listdir(os.path.join(shared_dir, "bad-out"))
            if f.endswith(".h5") or f == "manifest.json"]
    all_ranks(comm, left == [], f"no shard or manifest of a failed conversion: {left}")
