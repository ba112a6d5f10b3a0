"""python -m hpcml.data convert: CSV / npy / npz / h5 to shards, bounded chunks, clear errors."""
import os
import re
import sys

import h5py
import numpy as np
import pytest

from hpcml.data import ShardedDataset, DataError, convert, verify
import procs


def table(rows=1000, seed=0):
    rng = np.random.default_rng(seed)
    return np.hstack([rng.standard_normal((rows, 4)), rng.integers(0, 3, (rows, 1))])


def read_all(folder):
    xs, ys = zip(*ShardedDataset(folder).loader(10_000, shuffle=False))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("header", [True, False])
def test_csv_roundtrip_in_small_chunks(tmp_path, header):
    a = table()
    path = str(tmp_path / "t.csv")
    np.savetxt(path, a, delimiter=",", header="a,b,c,d,label" if header else "", comments="")
    m = convert(path, str(tmp_path / "out"), shards=3, chunk_rows=97)["train"]
    assert m["rows"] == 1000 and len(m["shards"]) == 3 and m["classes"] == 3
    assert verify(str(tmp_path / "out")) == 3
    x, y = read_all(str(tmp_path / "out"))
    np.testing.assert_allclose(x, a[:, :4].astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(y, a[:, 4])


def test_label_by_name_and_test_split(tmp_path):
    a = table(2000)
    a = a[:, [4, 0, 1, 2, 3]]  # label first
    path = str(tmp_path / "t.csv")
    np.savetxt(path, a, delimiter=",", header="label,a,b,c,d", comments="")
    out = convert(path, str(tmp_path / "o"), shards=4, label_column="label",
                  test_fraction=0.25, seed=3, chunk_rows=300)
    assert out["train"]["rows"] + out["test"]["rows"] == 2000
    assert 350 < out["test"]["rows"] < 650
    again = convert(path, str(tmp_path / "o2"), shards=4, label_column="label",
                    test_fraction=0.25, seed=3, chunk_rows=300)
    assert [s["sha256"] for s in again["test"]["shards"]] == \
        [s["sha256"] for s in out["test"]["shards"]]
    xtr, _ = read_all(str(tmp_path / "o" / "train"))
    xte, _ = read_all(str(tmp_path / "o" / "test"))
    got = np.sort(np.concatenate([xtr[:, 0], xte[:, 0]]))
    np.testing.assert_allclose(got, np.sort(a[:, 1].astype(np.float32)))


def test_npy_npz_h5_inputs(tmp_path):
    a = table(500)
    np.save(tmp_path / "t.npy", a)
    np.savez(tmp_path / "t.npz", x=a[:, :4], y=a[:, 4].astype(int))
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["x"] = a[:, :4]
        f["y"] = a[:, 4].astype(int)
    for name in ("t.npy", "t.npz", "t.h5"):
        out = str(tmp_path / name.replace(".", "_"))
        convert(str(tmp_path / name), out, shards=2, chunk_rows=64)
        x, y = read_all(out)
        np.testing.assert_allclose(x, a[:, :4].astype(np.float32), rtol=1e-6)
        np.testing.assert_array_equal(y, a[:, 4])


def test_regression_targets(tmp_path):
    a = np.random.default_rng(1).standard_normal((300, 3))
    np.save(tmp_path / "r.npy", a)
    with pytest.raises(DataError, match="not an integer .*--regression"):
        convert(str(tmp_path / "r.npy"), str(tmp_path / "o"))
    m = convert(str(tmp_path / "r.npy"), str(tmp_path / "o2"), task="regression")["train"]
    assert m["task"] == "regression" and m["y_dtype"] == "float32"


@pytest.mark.parametrize("text,match", [
    ("a,b,label\n1,2,0\n3,x,1\n5,6,1\n", "line 3: malformed CSV row"),
    ("a,b,label\n1,2,0\n3,4\n", "line 3: malformed CSV row .*2 fields, expected 3"),
    ("1,2,0\n3,4,1.5\n", "line 2: label 1.5 is not an integer"),
    ("1,2,0\n3,4,-1\n", "line 2: negative class label"),
    ("", "empty file"),
    ("a,b,label\n", "no data rows"),
])
def test_bad_csv_is_named_with_its_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        convert(str(path), str(tmp_path / "out"), chunk_rows=2)
    left = [f for f in os.listdir(tmp_path / "out")] if (tmp_path / "out").exists() else []
    assert not [f for f in left if f.endswith(".h5") or f == "manifest.json"]


def test_label_column_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,0\n")
    with pytest.raises(DataError, match="no column named 'y'"):
        convert(str(path), str(tmp_path / "o"), label_column="y")
    with pytest.raises(DataError, match="label column 5 outside the 3 columns"):
        convert(str(path), str(tmp_path / "o"), label_column=5)


def test_cli_convert_info_verify(tmp_path):
    a = table(300)
    np.savetxt(tmp_path / "t.csv", a, delimiter=",")
    run = lambda *args: procs.run([sys.executable, "-m", "hpcml.data", *args], limit=60)  # noqa
    p = run("convert", str(tmp_path / "t.csv"), str(tmp_path / "o"), "--shards", "2")
    assert p.returncode == 0, p.stderr
    assert f"wrote {tmp_path / 'o'}: 300 rows in 2 shards" in p.stdout
    p = run("info", str(tmp_path / "o"))
    assert "300 rows x 4 features" in p.stdout
    p = run("verify", str(tmp_path / "o"))
    assert p.returncode == 0 and "all checksums match" in p.stdout
    (tmp_path / "bad.csv").write_text("1,2,0\n1,zz,0\n")
    p = run("convert", str(tmp_path / "bad.csv"), str(tmp_path / "o3"))
    assert p.returncode != 0 and "line 2: malformed CSV row" in p.stderr


@pytest.mark.skipif(__import__("shutil").which("mpiexec") is None, reason="mpiexec not found")
def test_cli_errors_end_every_rank_cleanly(tmp_path):
    """Under mpiexec -n 2: one message, exit status 1, no traceback, no hang."""
    import shutil
    (tmp_path / "bad.csv").write_text("1,2,0\n1,2,0\n1,zz,0\n")
    folder = tmp_path / "ds"
    # a dataset holding a NaN (convert refuses them now, so written shard by shard)
    from hpcml.data import write_manifest, write_shard
    x = np.arange(50, dtype=np.float32).reshape(50, 1)
    x[29, 0] = np.nan  # 25 rows per shard: shard 1, row 4
    y = np.arange(50) % 3
    folder.mkdir()
    shards = [write_shard(str(folder), i, x[25 * i:25 * i + 25], y[25 * i:25 * i + 25])
              for i in range(2)]
    write_manifest(str(folder), shards, 1, "float32", "int64", "classification", 3)
    for args, msg in [(["convert", str(tmp_path / "bad.csv"), str(tmp_path / "o")],
                       "line 3: malformed CSV row"),
                      (["verify", str(folder)],
                       "shard-00001.h5: row 4 (row 29 of the dataset, from 0) has a NaN or Inf"),
                      (["verify", str(tmp_path / "nowhere")],
                       "nowhere: not found (no such folder")]:
        p = procs.run([shutil.which("mpiexec"), "-n", "2", sys.executable, "-m",
                       "hpcml.data", *args], limit=60)
        assert p.returncode == 1, p.stdout + p.stderr
        assert p.stderr.count("error: ") == 1 and msg in p.stderr, p.stderr
        assert "Traceback" not in p.stderr


def test_an_existing_dataset_is_refused_unless_overwrite_replaces_it_whole(tmp_path):
    """convert/synth into a folder that holds a dataset: refused (the old one intact);
    with --overwrite the new dataset replaces the folder whole: no stale shard of the old
    one, no temporary folder left; a failed overwrite leaves the old dataset as it was."""
    run = lambda *args: procs.run([sys.executable, "-m", "hpcml.data", *args], limit=60)  # noqa
    out = tmp_path / "d"
    p = run("synth", str(out), "--rows", "600", "--features", "4", "--classes", "3",
            "--shards", "3")
    assert p.returncode == 0, p.stderr
    before = (out / "manifest.json").read_text()
    p = run("synth", str(out), "--rows", "100", "--features", "4", "--classes", "3")
    assert p.returncode == 1 and p.stderr.count("error: ") == 1, p.stderr
    assert f"{out} already holds a dataset (manifest.json, 3 shard file(s)): pass " \
           f"--overwrite" in p.stderr, p.stderr
    assert (out / "manifest.json").read_text() == before
    p = run("convert", str(tmp_path / "missing.npy"), str(out), "--overwrite")
    assert p.returncode == 1 and "no such file" in p.stderr, p.stderr
    assert (out / "manifest.json").read_text() == before
    np.save(tmp_path / "a.npy", np.column_stack([np.random.default_rng(0).random((50, 4)),
                                                 np.arange(50) % 2]))
    p = run("convert", str(tmp_path / "a.npy"), str(out), "--overwrite")
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == ["manifest.json", "shard-00000.h5"]
    assert ShardedDataset(str(out)).rows == 50
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "d"]  # no .d.new-* / .d.old-* left


def test_data_tools_accept_the_built_in_names_jobs_accept():
    """`info digits` and `verify digits` work, as `python -m hpcml.train --data digits` does."""
    run = lambda *args: procs.run([sys.executable, "-m", "hpcml.data", *args], limit=60)  # noqa
    p = run("info", "digits:test")
    assert p.returncode == 0 and "359 rows x 64 features" in p.stdout, p.stderr
    p = run("verify", "digits")
    assert p.returncode == 0, p.stderr
    assert "digits: 1 shards, all checksums match; 1,438 rows, all values valid" in p.stdout


def test_synth_test_rows_come_from_the_training_distribution(tmp_path):
    """`synth --test-rows`: OUT/train and OUT/test share class centres (another --seed gives
    other centres: a model trained on one scored 0.026 on the other). Oracle: a nearest-
    class-mean classifier fitted on train/ scores on test/ as on train/."""
    run = lambda *args: procs.run([sys.executable, "-m", "hpcml.data", *args], limit=60)  # noqa
    out = tmp_path / "blobs"
    p = run("synth", str(out), "--rows", "3000", "--features", "8", "--classes", "5",
            "--shards", "2", "--test-rows", "600", "--seed", "4")
    assert p.returncode == 0, p.stderr
    assert f"wrote {out / 'train'}: 3,000 rows in 2 shards" in p.stdout, p.stdout
    assert f"wrote {out / 'test'}: 600 rows" in p.stdout, p.stdout
    summary = __import__("json").loads(p.stdout.strip().splitlines()[-1])
    assert summary["job"] == "data synth" and summary["status"] == "done"
    assert summary["rows"] == {str(out / "train"): 3000, str(out / "test"): 600}
    xtr, ytr = read_all(str(out / "train"))
    xte, yte = read_all(str(out / "test"))
    assert len(xte) == 600 and not np.isin(xte[:, 0], xtr[:, 0]).any()  # other rows
    means = np.stack([xtr[ytr == c].mean(axis=0) for c in range(5)])
    acc = lambda x, y: (((x[:, None] - means) ** 2).sum(-1).argmin(1) == y).mean()  # noqa
    assert acc(xte, yte) > 0.95 and abs(acc(xte, yte) - acc(xtr, ytr)) < 0.03


def test_data_help_names_every_flag_with_its_default():
    run = lambda *args: procs.run([sys.executable, "-m", "hpcml.data", *args], limit=60)  # noqa
    for cmd, expect in (("synth", ["--shards SHARDS", "(default: 1)", "--test-rows"]),
                        ("convert", ["(default: -1)", "(default: 65536)", "header name"])):
        p = run(cmd, "--help")
        flat = " ".join(p.stdout.split())
        assert p.returncode == 0 and all(e in flat for e in expect), p.stdout
        options = p.stdout.split("options:")[1]
        entries = re.split(r"\n  (?=-)", options)[1:]  # one per flag, with its help lines
        for e in entries:  # the flag's spelling, then words of help
            text = re.sub(r"^(-\w, )?--[\w-]+( [A-Z_{},\d]+)?", "", e.strip())
            assert len(text.split()) >= 2, f"{cmd}: no help for {e.split()[0]}"
    p = run("synth", "out", "--rows", "5", "--features", "2", "--classes", "2", "--shard", "2")
    assert p.returncode == 2 and "did you mean --shards?" in p.stderr, p.stderr


def test_nonfinite_error_names_the_line_and_drop_leaves_rows_out(tmp_path):
    """convert: a NaN/Inf feature names its source line and column, and suggests the
    --nonfinite drop that convert and train accept; drop leaves those rows out, counted.
    Oracle: the finite rows of the CSV, read by NumPy."""
    path = tmp_path / "n.csv"
    path.write_text("a,b,label\n1,2,0\n3,nan,1\n4,5,1\n6,inf,0\n7,1e300,0\n8,9,1\n")
    with pytest.raises(DataError, match=r"n.csv: line 3: column 1 is nan in float32 \(pass "
                                        r"--nonfinite drop"):
        convert(str(path), str(tmp_path / "o"))
    m = convert(str(path), str(tmp_path / "o"), nonfinite="drop")["train"]
    assert m["dropped_nonfinite"] == 3 and m["dropped_lines"] == [3, 5, 6]  # 1e300: float32 Inf
    x, y = read_all(str(tmp_path / "o"))
    a = np.loadtxt(path, delimiter=",", skiprows=1)
    with np.errstate(over="ignore"):
        ok = np.isfinite(a[:, :2].astype(np.float32)).all(axis=1)
    assert np.array_equal(x, a[ok, :2].astype(np.float32)) and np.array_equal(y, a[ok, 2])
    p = procs.run([sys.executable, "-m", "hpcml.data", "convert", str(path),
                   str(tmp_path / "o2"), "--nonfinite", "drop", "--log-every", "0"], limit=60)
    assert "left out 3 rows with a NaN or Inf feature (lines 3, 5, 6)" in p.stdout, p.stdout


def test_train_nonfinite_drop_skips_the_rows_the_error_names(tmp_path):
    from hpcml import train
    from data_helpers import indexed_dataset
    folder = indexed_dataset(str(tmp_path / "d"), [200, 200], features=4, classes=4)
    with h5py.File(os.path.join(folder, "shard-00001.h5"), "r+") as f:
        f["x"][7, 0] = np.nan
    base = ["--data", folder, "--test-data", "none", "--epochs", "1", "--progress", "false",
            "--hidden", "8"]
    p = procs.run([sys.executable, "-m", "hpcml.train", *base], limit=60)
    assert p.returncode == 1 and "row 7 (row 207 of the dataset, from 0) has a NaN" in p.stderr
    assert "--nonfinite drop" in p.stderr
    p = procs.run([sys.executable, "-m", "hpcml.train", *base, "--nonfinite", "drop"],
                  limit=60)
    assert p.returncode == 0, p.stderr
    assert train.parse_args(["--nonfinite", "drop"])["nonfinite"] == "drop"


def test_every_file_of_a_dataset_gets_the_umask_mode(tmp_path):
    """Shards were once written 0600 (mkstemp) beside a 0644 manifest: on shared storage
    other users could list a dataset but not read it. Every writer goes through
    hpcml.atomic, which gives the mode a plain open() would (0666 less the umask)."""
    from hpcml.data import synth
    a = table(200)
    np.savetxt(tmp_path / "t.csv", a, delimiter=",")
    old = os.umask(0o022)
    try:
        synth(str(tmp_path / "s"), rows=300, features=3, classes=2, shards=3, test_rows=50)
        convert(str(tmp_path / "t.csv"), str(tmp_path / "c"), shards=2, test_fraction=0.2)
    finally:
        os.umask(old)
    files = [os.path.join(d, f) for d in (tmp_path / "s" / "train", tmp_path / "s" / "test",
                                          tmp_path / "c" / "train", tmp_path / "c" / "test")
             for f in os.listdir(d)]
    assert len(files) >= 10
    assert {oct(os.stat(f).st_mode & 0o777) for f in files} == {oct(0o644)}, files


def _shifted(img, dy, dx):
    """An independent shift of an 8x8 image by (dy, dx) pixels, zeros moved in."""
    out = np.zeros_like(img)
    src = img[max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def test_synth_like_digits_shifts_images_of_its_own_split(tmp_path):
    """synth --like digits (an MNIST-sized set made from digits): without noise and ink
    scaling every row is one of its split's digits images moved by at most a pixel each
    way (zeros moved in), with that image's label; a test row never comes from a training
    image; the CLI writes the rows make_shard gives, the same at 1 and 2 ranks."""
    from hpcml.data import augment
    from hpcml.data.builtin import resolve
    sources = {}
    for split, name in ((0, "digits:train"), (1, "digits:test")):
        ds = ShardedDataset(resolve(name))
        with h5py.File(ds.files[0], "r") as h:
            sources[split] = (h["x"][...].reshape(-1, 8, 8).astype(np.float64), h["y"][...])
    table = {}  # every shifted image's bytes -> (split, label, shift)
    for split, (imgs, labels) in sources.items():
        for img, lab in zip(imgs, labels):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    table.setdefault(_shifted(img, dy, dx).tobytes(), set()).add(
                        (split, int(lab), (dy, dx)))
    for split in (0, 1):
        x, y = augment.make_shard(3, 1, 300, split, "float64", noise=0.0, ink=(1.0, 1.0))
        shifts = set()
        for row, label in zip(x.reshape(-1, 8, 8), y):
            hits = table.get(row.tobytes(), set())
            assert (split, int(label)) in {h[:2] for h in hits}, \
                "a row is not a shifted image of its split with its label"
            shifts.update(h[2] for h in hits if h[0] == split)
        assert len(shifts) == 9  # every shift occurs in 300 rows
    run = lambda *a: procs.run(list(a), limit=90)  # noqa: E731
    out = {}
    for n in (1, 2):
        cmd = [sys.executable, "-m", "hpcml.data", "synth", str(tmp_path / f"d{n}"), "--like",
               "digits", "--rows", "3000", "--test-rows", "600", "--shards", "3"]
        r = run(*((["mpiexec", "-n", "2"] if n == 2 else []) + cmd))
        assert r.returncode == 0, r.stderr
        out[n] = ShardedDataset(str(tmp_path / f"d{n}" / "train"))
    with h5py.File(out[1].files[2], "r") as h:
        x, y = augment.make_shard(0, 2, 1000, 0, "float32")
        assert np.array_equal(h["x"][...], x) and np.array_equal(h["y"][...], y)
    for a, b in zip(out[1].files, out[2].files):
        with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb:
            assert np.array_equal(ha["x"][...], hb["x"][...])
    for args, msg in ((["--features", "32"], "--like digits makes 64 features"),
                      (["--federated", "1,1"], "--like and --federated"),
                      ([], None)):
        r = run(sys.executable, "-m", "hpcml.data", "synth", str(tmp_path / "bad"),
                "--rows", "10", *(["--like", "digits"] + args if msg else []))
        want = msg or "synth needs --features and one of --classes / --regression"
        assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, r.stderr
