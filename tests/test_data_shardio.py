"""shardio: raw chunk reads must equal h5py's reads, and fall back where they cannot apply."""
import os

import h5py
import numpy as np
import pytest

from hpcml.data import DataError, ShardedDataset
from hpcml.data.shardio import ShardReader
from hpcml.kernels.cpu.elementwise import keyed_permutation, check_block, gather_block
from data_helpers import indexed_dataset


def _shard(path, x, y, **kw):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, **kw)
        f.create_dataset("y", data=y, **{k: (v[:1] if k == "chunks" else v)
                                          for k, v in kw.items()})
    return path


LAYOUTS = {
    "chunked": dict(chunks=(64, 5)),
    "contiguous": dict(),
    "gzip": dict(chunks=(64, 5), compression="gzip"),  # filtered: h5py fallback
    "split-rows": dict(chunks=(64, 2)),  # a chunk holds part of a row: fallback
    "shuffle-filter": dict(chunks=(64, 5), shuffle=True),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reads_equal_h5py_at_every_boundary(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 5)).astype(np.float32)
    y = rng.integers(0, 9, 1000)
    path = _shard(str(tmp_path / "s.h5"), x, y, **LAYOUTS[layout])
    r = ShardReader(path)
    try:
        assert r.raw == (layout in ("chunked", "contiguous"))
        bx, by = np.empty((300, 5), np.float32), np.empty(300, np.int64)
        for a, b in [(0, 64), (0, 1), (63, 65), (1, 300), (640, 940), (936, 1000), (999, 1000),
                     (5, 5)]:
            bx[:] = -7
            r.read(a, b, bx[:b - a], by[:b - a])
            np.testing.assert_array_equal(bx[:b - a], x[a:b])
            np.testing.assert_array_equal(by[:b - a], y[a:b])
            assert (bx[b - a:] == -7).all()  # nothing written past the rows asked for
    finally:
        r.close()


def test_big_endian_shard_falls_back(tmp_path):
    x = np.arange(50, dtype=">f4").reshape(10, 5)
    path = _shard(str(tmp_path / "s.h5"), x, np.arange(10, dtype=">i8"), chunks=(4, 5))
    r = ShardReader(path)
    assert not r.raw
    bx, by = np.empty((10, 5), np.float32), np.empty(10, np.int64)
    r.read(0, 10, bx, by)
    r.close()
    np.testing.assert_array_equal(bx, x)


def test_file_truncated_while_open_is_named(tmp_path):
    folder = indexed_dataset(str(tmp_path / "d"), [5000], features=8)
    path = os.path.join(folder, "shard-00000.h5")
    r = ShardReader(path)
    assert r.raw
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    bx, by = np.empty((5000, 8), np.float32), np.empty(5000, np.int64)
    with pytest.raises(DataError, match=r"shard-00000.h5: short read .* truncated"):
        r.read(0, 5000, bx, by)
    r.close()


def test_loader_over_fallback_shards_matches_raw(tmp_path):
    """The same rows through the raw path and through h5py (gzip shards) give the same
    batches, shuffled or not."""
    raw = indexed_dataset(str(tmp_path / "raw"), [700, 333])
    gz = str(tmp_path / "gz")
    os.makedirs(gz)
    import json
    import shutil
    shutil.copy(os.path.join(raw, "manifest.json"), gz)
    for name in ("shard-00000.h5", "shard-00001.h5"):
        with h5py.File(os.path.join(raw, name)) as f:
            _shard(os.path.join(gz, name), f["x"][:], f["y"][:], chunks=(128, 3),
                   compression="gzip")
    assert json.load(open(os.path.join(gz, "manifest.json")))["rows"] == 1033
    for shuffle in (False, True):
        a = [b for b in ShardedDataset(raw).loader(100, shuffle=shuffle, seed=3)]
        b = [b for b in ShardedDataset(gz).loader(100, shuffle=shuffle, seed=3)]
        assert len(a) == len(b) == 11
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_keyed_permutation():
    u = np.uint64
    p = keyed_permutation(1000, u(1), u(2), u(3))
    assert sorted(p.tolist()) == list(range(1000))
    np.testing.assert_array_equal(p, keyed_permutation(1000, u(1), u(2), u(3)))
    assert (p != keyed_permutation(1000, u(1), u(2), u(4))).any()
    assert (p != np.arange(1000)).sum() > 900
    assert keyed_permutation(0, u(0), u(0), u(0)).size == 0
    # each of 8 positions equally likely for element 0 (chi-square, 7 dof, p ~ 1e-4)
    counts = np.bincount([int(np.flatnonzero(keyed_permutation(8, u(k), u(0), u(0)) == 0)[0])
                          for k in range(8000)], minlength=8)
    assert ((counts - 1000) ** 2 / 1000).sum() < 30


def test_block_checks_name_the_first_bad_row():
    x = np.zeros((50, 7), np.float32)
    y = np.arange(50) % 4
    rows = np.arange(50)[::-1].copy()
    bx, by = np.empty((60, 7), np.float32), np.empty(60, np.int64)
    assert check_block(x, y, 4) == -1 and gather_block(x, y, rows, bx, by, 10, 4) == -1
    np.testing.assert_array_equal(by[10:], y[::-1])
    for v in (np.nan, np.inf, -np.inf):
        x[:] = 0
        x[31, 6], x[40, 0] = v, v
        assert check_block(x, y, 4) == 31
        assert gather_block(x, y, rows, bx, by, 0, 4) == 9  # rows[9] == 40
    x[:] = 0
    y[12] = 4
    assert check_block(x, y, 4) == 12 and check_block(x, y, 0) == -1  # 0: no label check


def test_fallback_path_names_the_right_row_after_a_drop(tmp_path):
    """Through h5py (gzip shard), nonfinite='drop': a NaN row dropped before a bad label
    must not shift the row the error names."""
    raw = indexed_dataset(str(tmp_path / "raw"), [300])
    gz = str(tmp_path / "gz")
    os.makedirs(gz)
    import shutil
    shutil.copy(os.path.join(raw, "manifest.json"), gz)
    with h5py.File(os.path.join(raw, "shard-00000.h5")) as f:
        x, y = f["x"][:], f["y"][:]
    x[100, 1] = np.nan
    y[105] = 9  # classes = 4
    _shard(os.path.join(gz, "shard-00000.h5"), x, y, chunks=(128, 3), compression="gzip")
    with pytest.raises(DataError, match=r"row 105 \(row 105 of the dataset\) has label outside"):
        for _ in ShardedDataset(gz).loader(50, shuffle=False, nonfinite="drop"):
            pass
