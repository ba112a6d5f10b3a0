"""Convert CSV, .npy/.npz or HDF5 to a sharded dataset, streaming in bounded memory.

CSV is read twice: a fast byte scan counts the rows (to size the shards), then blocks of
`chunk_rows` lines are parsed with NumPy and appended to the shard being written. Memory is
bounded by one block, whatever the file size. A malformed line is reported with its line
number. The label column is chosen by index (negative counts from the end) or by header name;
integer labels make a classification dataset, anything else needs task="regression".
`test_fraction` sends each row to a separate test dataset (OUTPUT/test, its own shards) with
that probability, deterministically from `seed`; the training split goes to OUTPUT/train.
"""
import hashlib
import io
import os
import tempfile

import h5py
import numpy as np

from .format import DataError, write_manifest, shard_name, CHUNK_ROWS


class ShardWriter:
    """Appends row blocks to one shard (resizable datasets), checksumming as it goes;
    close() fsyncs and renames it into place and returns the manifest entry."""

    def __init__(self, folder, index, features, x_dtype, y_dtype):
        self.folder, self.name = folder, shard_name(index)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        self.file = h5py.File(self.tmp, "w")
        self.x = self.file.create_dataset("x", (0, features), x_dtype, maxshape=(None, features),
                                          chunks=(CHUNK_ROWS, features))
        self.y = self.file.create_dataset("y", (0,), y_dtype, maxshape=(None,),
                                          chunks=(CHUNK_ROWS,))
        self.rows = 0

    def append(self, x, y):
        n = len(x)
        if n:
            self.x.resize(self.rows + n, axis=0)
            self.y.resize(self.rows + n, axis=0)
            self.x[self.rows:] = x
            self.y[self.rows:] = y
            self.rows += n

    def close(self):
        self.file.close()
        with h5py.File(self.tmp, "r") as f:  # checksum what is on disk, block by block
            h = hashlib.sha256()
            for name in ("x", "y"):
                d = f[name]
                for s in range(0, d.shape[0], CHUNK_ROWS * 16):
                    h.update(np.ascontiguousarray(d[s:s + CHUNK_ROWS * 16]).tobytes())
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, os.path.join(self.folder, self.name))
        return {"file": self.name, "rows": self.rows, "sha256": h.hexdigest()}

    def abort(self):
        try:
            self.file.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def count_lines(path, block=1 << 24):
    """Number of lines (a last line without newline counts)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            n += b.count(b"\n")
            last = b[-1:]
    return n + (last != b"\n")


def _is_header(line):
    try:
        [float(v) for v in line.split(",")]
        return False
    except ValueError:
        return True


def _parse(lines, first_line_no, path, ncols):
    """Parse CSV lines into a float64 array; a bad line raises naming its line number."""
    try:
        a = np.loadtxt(io.StringIO("".join(lines)), delimiter=",", dtype=np.float64, ndmin=2)
        if a.shape[1] == ncols and a.shape[0] == len(lines):
            return a
    except ValueError:
        pass
    for i, line in enumerate(lines):  # slow path, only to name the bad line
        fields = line.rstrip("\r\n").split(",")
        try:
            if len(fields) != ncols:
                raise ValueError(f"{len(fields)} fields, expected {ncols}")
            [float(v) for v in fields]
        except ValueError as e:
            raise DataError(f"{path}: line {first_line_no + i}: malformed CSV row ({e}): "
                            f"{line.strip()[:80]!r}") from None
    raise DataError(f"{path}: lines {first_line_no}-{first_line_no + len(lines) - 1}: "
                    f"could not parse")


def _csv_blocks(path, chunk_rows, label_column):
    """(row count, feature count, label index, iterator of (first line number, float64 block))."""
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    if not first.strip():
        raise DataError(f"{path}: empty file")
    header = _is_header(first)
    names = [c.strip() for c in first.rstrip("\r\n").split(",")]
    ncols = len(names)
    if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
        if not header:
            raise DataError(f"{path}: label column {label_column!r} given by name, but the "
                            f"file has no header line")
        if label_column not in names:
            raise DataError(f"{path}: no column named {label_column!r} (columns: "
                            f"{', '.join(names[:10])}{'...' if ncols > 10 else ''})")
        label = names.index(label_column)
    else:
        label = int(label_column)
        if not -ncols <= label < ncols:
            raise DataError(f"{path}: label column {label} outside the {ncols} columns")
        label %= ncols
    if ncols < 2:
        raise DataError(f"{path}: need at least one feature column and a label column")
    rows = count_lines(path) - header

    def blocks():
        with open(path, encoding="utf-8") as f:
            line_no = 1
            if header:
                f.readline()
                line_no = 2
            while True:
                lines = [ln for ln in (f.readline() for _ in range(chunk_rows)) if ln]
                if not lines:
                    return
                keep = [ln for ln in lines if ln.strip()]
                if keep:
                    yield line_no, _parse(keep, line_no, path, ncols)
                line_no += len(lines)
    return rows, ncols - 1, label, blocks()


def _array_blocks(path, chunk_rows, label_column):
    """.npy (rows x columns, label column inside) or .npz/.h5 with arrays x and y."""
    if path.endswith(".npy"):
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        if a.ndim != 2 or a.shape[1] < 2:
            raise DataError(f"{path}: expected a 2-D array with features and a label column")
        label = int(label_column) % a.shape[1]

        def blocks():
            for s in range(0, a.shape[0], chunk_rows):
                yield s + 1, np.asarray(a[s:s + chunk_rows], np.float64)
        return a.shape[0], a.shape[1] - 1, label, blocks()
    if path.endswith(".npz"):
        z = np.load(path, allow_pickle=False)
        x, y = z["x"], z["y"]
    else:
        f = h5py.File(path, "r")
        x, y = f["x"], f["y"]
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: x must be rows x features and y (rows,), got {x.shape}, "
                        f"{y.shape}")

    def blocks():
        for s in range(0, x.shape[0], chunk_rows):
            xb = np.asarray(x[s:s + chunk_rows], np.float64)
            yield s + 1, np.concatenate([xb, np.asarray(y[s:s + chunk_rows],
                                                         np.float64)[:, None]], axis=1)
    return x.shape[0], x.shape[1], x.shape[1], blocks()


def convert(input, output, shards=1, label_column=-1, dtype="float32", test_fraction=0.0,
            seed=0, task=None, chunk_rows=65536, progress=False):
    """Convert `input` into OUTPUT (or OUTPUT/train and OUTPUT/test); returns manifests."""
    if not os.path.exists(input):
        raise DataError(f"{input}: no such file")
    if shards < 1 or not 0 <= test_fraction < 1:
        raise DataError("shards must be >= 1 and test_fraction in [0, 1)")
    if task not in (None, "classification", "regression"):
        raise DataError(f"task must be classification or regression, got {task!r}")
    reader = _csv_blocks if input.endswith((".csv", ".txt")) else _array_blocks
    rows, features, label, blocks = reader(input, chunk_rows, label_column)
    if rows < 1:
        raise DataError(f"{input}: no data rows")
    splits = {"train": 1 - test_fraction}
    if test_fraction:
        splits["test"] = test_fraction
    ydt = np.int64 if task != "regression" else np.dtype(dtype)
    state = {}
    for name, frac in splits.items():
        folder = os.path.join(output, name) if test_fraction else output
        os.makedirs(folder, exist_ok=True)
        n = max(1, round(shards * frac)) if name == "test" else shards
        state[name] = {"folder": folder, "n": n, "expected": max(1, int(rows * frac)),
                       "entries": [], "writer": None, "seen": 0}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=rows, unit="rows", desc=f"convert {os.path.basename(input)}")
    max_label = -1
    try:
        for line_no, a in blocks:
            y = a[:, label]
            x = np.delete(a, label, axis=1).astype(dtype)
            bad = ~np.isfinite(y)
            if bad.any():
                raise DataError(f"{input}: row at line {line_no + int(np.argmax(bad))}: label "
                                f"is NaN or Inf")
            if task != "regression":
                frac = y != np.round(y)
                if frac.any():
                    raise DataError(f"{input}: line {line_no + int(np.argmax(frac))}: label "
                                    f"{float(y[np.argmax(frac)])!r} is not an integer (pass "
                                    f"task='regression' / --regression for real targets)")
                if (y < 0).any():
                    raise DataError(f"{input}: line {line_no + int(np.argmax(y < 0))}: "
                                    f"negative class label")
                max_label = max(max_label, int(y.max()))
            yv = y.astype(ydt)
            if test_fraction:
                to_test = np.random.default_rng([seed, line_no]).random(len(a)) < test_fraction
                parts = {"train": ~to_test, "test": to_test}
            else:
                parts = {"train": slice(None)}
            for name, sel in parts.items():
                _append(state[name], x[sel], yv[sel], features, dtype, ydt)
            if bar is not None:
                bar.update(len(a))
        manifests = {}
        for name, st in state.items():
            if st["writer"] is not None:
                st["entries"].append(st["writer"].close())
                st["writer"] = None
            kind = "regression" if task == "regression" else "classification"
            manifests[name] = write_manifest(
                st["folder"], st["entries"], features, dtype, ydt, kind,
                max_label + 1 if kind == "classification" else None,
                extra={"source": os.path.basename(input), "split": name,
                       "test_fraction": test_fraction, "seed": seed})
        return manifests
    except BaseException:
        for st in state.values():
            if st["writer"] is not None:
                st["writer"].abort()
        raise
    finally:
        if bar is not None:
            bar.close()


def _append(st, x, y, features, dtype, ydt):
    """Append rows to the split's current shard, starting the next shard when it is full."""
    per_shard = -(-st["expected"] // st["n"])
    while len(x):
        if st["writer"] is None:
            st["writer"] = ShardWriter(st["folder"], len(st["entries"]), features, dtype, ydt)
        w = st["writer"]
        last = len(st["entries"]) == st["n"] - 1
        room = len(x) if last else max(0, per_shard - w.rows)
        take = min(room, len(x))
        w.append(x[:take], y[:take])
        x, y = x[take:], y[take:]
        if not last and w.rows >= per_shard:
            st["entries"].append(w.close())
            st["writer"] = None
