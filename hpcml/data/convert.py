"""Convert CSV, .npy/.npz or HDF5 to a sharded dataset, streaming in bounded memory.

CSV is read twice: a fast byte scan counts the rows (to size the shards), then blocks of
`chunk_rows` lines are parsed with NumPy and appended to the shard being written. Memory is
bounded by one block, whatever the file size. A malformed line is reported with its line
number. The label column is chosen by index (negative counts from the end) or by header name;
integer labels make a classification dataset, anything else needs task="regression".
`test_fraction` sends each row to a separate test dataset (OUTPUT/test, its own shards) with
that probability, decided by a hash of (seed, line number), so the split does not depend on
chunking or ranks; the training split goes to OUTPUT/train. Under MPI every rank converts its
own byte range (CSV) or row range (arrays).
"""
import hashlib
import io
import os
import sys

import h5py
import numpy as np

from hpcml import comm as hc
from hpcml.atomic import atomic_write_bytes, h5_image, memory_h5

from .format import DataError, write_manifest, shard_name, CHUNK_ROWS


class ShardWriter:
    """Appends row blocks to one shard (resizable datasets), checksumming as it goes;
    close() fsyncs and renames it into place and returns the manifest entry."""

    def __init__(self, folder, index, features, x_dtype, y_dtype):
        self.folder, self.name = folder, shard_name(index)
        # built in memory and written as one image, space reserved first (hpcml.atomic):
        # HDF5 never meets a full disk (it crashes closing a file after a failed write)
        self.file = memory_h5(self.name)
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
        try:
            h = hashlib.sha256()  # checksum what the file holds, block by block
            for name in ("x", "y"):
                d = self.file[name]
                for s in range(0, d.shape[0], CHUNK_ROWS * 16):
                    h.update(np.ascontiguousarray(d[s:s + CHUNK_ROWS * 16]).tobytes())
            image = h5_image(self.file)
        finally:
            self.file.close()
        atomic_write_bytes(os.path.join(self.folder, self.name), image)
        return {"file": self.name, "rows": self.rows, "sha256": h.hexdigest()}

    def abort(self):
        self.file.close()  # nothing was written to disk


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


def _csv_header(path, label_column):
    """(has header, column count, label index) from the first line."""
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
    return header, ncols, label


def _line_start(f, pos):
    """Offset of the first line that starts at or after byte `pos`."""
    if pos == 0:
        return 0
    f.seek(pos - 1)
    f.readline()  # the rest of the line holding byte pos - 1
    return f.tell()


def _csv_blocks(path, chunk_rows, label_column, part=0, parts=1, lines_before=None):
    """This part's lines of the CSV (the lines that start in its 1/parts of the bytes):
    (row count, feature count, label index, blocks) where blocks(first line number) yields
    (line number, float64 block). With parts > 1, lines_before(count) must return the
    number of data lines in the parts before this one (a collective)."""
    header, ncols, label = _csv_header(path, label_column)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head_end = _line_start(f, 1) if header else 0
        lo = max(head_end, _line_start(f, size * part // parts))
        hi = max(lo, _line_start(f, size * (part + 1) // parts)) if part < parts - 1 else size
        rows, pos = 0, lo
        f.seek(lo)
        while pos < hi:
            block = f.read(min(1 << 24, hi - pos))
            rows += block.count(b"\n")
            pos += len(block)
            last = block[-1:]
        if hi > lo and hi == size and last != b"\n":
            rows += 1  # a last line without newline
    first_line = 1 + header + (lines_before(rows) if lines_before else 0)

    def blocks():
        with open(path, "rb") as f:
            f.seek(lo)
            line_no = first_line
            while f.tell() < hi:
                lines = []
                while len(lines) < chunk_rows and f.tell() < hi:
                    lines.append(f.readline().decode("utf-8"))
                keep = [ln for ln in lines if ln.strip()]
                if keep:
                    yield line_no, _parse(keep, line_no, path, ncols)
                line_no += len(lines)
    return rows, ncols - 1, label, blocks()


def _array_blocks(path, chunk_rows, label_column, part=0, parts=1, lines_before=None):
    """.npy (rows x columns, label column inside) or .npz/.h5 with arrays x and y; this
    part's rows [N*part/parts, N*(part+1)/parts)."""
    if path.endswith(".npy"):
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        if a.ndim != 2 or a.shape[1] < 2:
            raise DataError(f"{path}: expected a 2-D array with features and a label column")
        label = int(label_column) % a.shape[1]
        lo, hi = a.shape[0] * part // parts, a.shape[0] * (part + 1) // parts

        def blocks():
            for s in range(lo, hi, chunk_rows):
                yield s + 1, np.asarray(a[s:min(hi, s + chunk_rows)], np.float64)
        return hi - lo, a.shape[1] - 1, label, blocks()
    if path.endswith(".npz"):
        z = np.load(path, allow_pickle=False)
        x, y = z["x"], z["y"]
    else:
        f = h5py.File(path, "r")
        x, y = f["x"], f["y"]
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: x must be rows x features and y (rows,), got {x.shape}, "
                        f"{y.shape}")
    lo, hi = x.shape[0] * part // parts, x.shape[0] * (part + 1) // parts

    def blocks():
        for s in range(lo, hi, chunk_rows):
            e = min(hi, s + chunk_rows)
            xb = np.asarray(x[s:e], np.float64)
            yield s + 1, np.concatenate([xb, np.asarray(y[s:e], np.float64)[:, None]], axis=1)
    return hi - lo, x.shape[1], x.shape[1], blocks()


def _uniform(seed, ids):
    """A uniform [0, 1) number per row id (splitmix64): the same for a row whatever the
    chunking or the number of ranks."""
    z = (np.uint64(seed & 0xFFFFFFFF) << np.uint64(32)) ^ ids.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def convert(input, output, shards=1, label_column=-1, dtype="float32", test_fraction=0.0,
            seed=0, task=None, chunk_rows=65536, progress=False, comm=None,
            nonfinite="error"):
    """Convert `input` into OUTPUT (or OUTPUT/train and OUTPUT/test); returns the manifests
    (on every rank). With `comm`, every rank converts its own part of the input (a byte
    range of a CSV, a row range of an array) into its own shards; rank 0 writes the
    manifests. Each split gets max(shards, ranks) shards then. Errors are agreed: every
    rank raises the same DataError/CollectiveError, and no shard of a failed run is left.
    nonfinite: a row with a NaN or Inf feature (or one float32 cannot hold) is an error
    naming its line ("error"), or is left out and counted ("drop": the manifests'
    `dropped_nonfinite`, with the first lines in `dropped_lines`)."""
    rank, p = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    error, written, result = None, [], None
    try:
        if not os.path.exists(input):
            raise DataError(f"{input}: no such file")
        if shards < 1 or not 0 <= test_fraction < 1:
            raise DataError("shards must be >= 1 and test_fraction in [0, 1)")
        if nonfinite not in ("error", "drop"):
            raise DataError(f"nonfinite must be 'error' or 'drop', got {nonfinite!r}")
        if task not in (None, "classification", "regression"):
            raise DataError(f"task must be classification or regression, got {task!r}")
        reader = _csv_blocks if input.endswith((".csv", ".txt")) else _array_blocks
        before = None
        if comm is not None:
            before = lambda n: sum(comm.allgather(n)[:rank])  # noqa: E731 (collective)
        rows, features, label, blocks = reader(input, chunk_rows, label_column, rank, p, before)
    except DataError as e:
        error = str(e)
    except (OSError, ValueError) as e:  # e.g. bytes that are not UTF-8: agreed on too
        error = f"{input}: {type(e).__name__}: {e}"
    _agree(comm, error, input)
    total = comm.allreduce(rows) if comm is not None else rows
    if total < 1:
        _agree(comm, f"{input}: no data rows", input)
    try:
        result = _convert_part(input, output, shards, features, label, blocks, rows, dtype,
                               test_fraction, seed, task, progress if rank == 0 else False,
                               rank, p, written, nonfinite)
    except DataError as e:
        error = str(e)
    except (OSError, ValueError) as e:  # e.g. bytes that are not UTF-8: agreed on too
        error = f"{input}: {type(e).__name__}: {e}"
    try:
        _agree(comm, error, input)
    except (DataError, RuntimeError):  # the run failed somewhere: remove this rank's shards
        for path in written:
            if os.path.exists(path):
                os.unlink(path)
        raise
    state, max_label, dropped = result
    n_dropped, lines = len(dropped), sorted(dropped[:20])
    if comm is not None:
        max_label = hc.reduce_value(max_label, "max", comm)
        n_dropped = hc.reduce_value(n_dropped, "sum", comm)
        lines = sorted(x for part in comm.allgather(dropped[:20]) for x in part)[:20]
        parts = comm.gather({k: v["entries"] for k, v in state.items()}, root=0)
    else:
        parts = [{k: v["entries"] for k, v in state.items()}]
    manifests = None
    if rank == 0:
        manifests = {}
        for name, st in state.items():
            entries = sorted((e for part in parts for e in part[name]),
                             key=lambda e: e["file"])
            kind = "regression" if task == "regression" else "classification"
            manifests[name] = write_manifest(
                st["folder"], entries, features, dtype, st["ydt"], kind,
                max_label + 1 if kind == "classification" else None,
                extra={"source": os.path.basename(input), "split": name,
                       "test_fraction": test_fraction, "seed": seed,
                       "dropped_nonfinite": int(n_dropped), "dropped_lines": lines})
    return comm.bcast(manifests) if comm is not None else manifests


def _agree(comm, error, input):
    if comm is not None:
        from hpcml.comm.guard import agree
        agree(comm, error, what=f"converting {input}")
    elif error:
        raise DataError(error)


def _convert_part(input, output, shards, features, label, blocks, rows, dtype, test_fraction,
                  seed, task, progress, rank, p, written, nonfinite="error"):
    """This rank's rows into this rank's shards; returns (per-split state, max label, the
    source lines of the rows left out for a NaN or Inf feature)."""
    splits = {"train": 1 - test_fraction}
    if test_fraction:
        splits["test"] = test_fraction
    ydt = np.int64 if task != "regression" else np.dtype(dtype)
    state = {}
    for name, frac in splits.items():
        folder = os.path.join(output, name) if test_fraction else output
        os.makedirs(folder, exist_ok=True)
        n = max(1, round(shards * frac)) if name == "test" else shards
        n = max(n, p)  # every rank writes at least one shard of each split
        mine = n * (rank + 1) // p - n * rank // p
        state[name] = {"folder": folder, "n": mine, "offset": n * rank // p, "ydt": ydt,
                       "expected": max(1, int(rows * frac)), "entries": [], "writer": None,
                       "written": written}
    bar = None
    if progress:  # a bar on a terminal, else a line every `progress` seconds
        from hpcml.progress import Progress
        bar = Progress(rows, f"convert {os.path.basename(input)}" + (
            f" (rank 0 of {p})" if p > 1 else ""), every=30.0 if progress is True else progress)
    max_label, dropped = -1, []
    where = "line" if input.endswith((".csv", ".txt")) else "row"
    try:
        for line_no, a in blocks:
            y = a[:, label]
            with np.errstate(over="ignore"):  # 1e300 in float32: Inf, caught below
                x = np.delete(a, label, axis=1).astype(dtype)
            badx = ~np.isfinite(x).all(axis=1)
            if badx.any():
                first = int(np.argmax(badx))
                if nonfinite == "error":
                    col = int(np.argmax(~np.isfinite(x[first])))
                    col += col >= label  # the source column
                    raise DataError(f"{input}: {where} {line_no + first}: column {col} is "
                                    f"{float(a[first, col])!r} in {dtype} (pass --nonfinite drop / "
                                    f"nonfinite='drop' to leave such rows out)")
                dropped += [int(line_no + i) for i in np.flatnonzero(badx)]
                if bar is not None:
                    bar.update(int(badx.sum()))
                a, x, y = a[~badx], x[~badx], y[~badx]
                line_ids = np.arange(line_no, line_no + len(badx), dtype=np.int64)[~badx]
            else:
                line_ids = None

            def ln(i, line_ids=line_ids, line_no=line_no):  # source line of block row i
                return int(line_ids[i]) if line_ids is not None else line_no + int(i)
            bad = ~np.isfinite(y)
            if bad.any():
                raise DataError(f"{input}: row at line {ln(np.argmax(bad))}: label "
                                f"is NaN or Inf")
            if task != "regression":
                frac = y != np.round(y)
                if frac.any():
                    raise DataError(f"{input}: line {ln(np.argmax(frac))}: label "
                                    f"{float(y[np.argmax(frac)])!r} is not an integer (pass "
                                    f"task='regression' / --regression for real targets)")
                if (y < 0).any():
                    raise DataError(f"{input}: line {ln(np.argmax(y < 0))}: "
                                    f"negative class label")
                max_label = max(max_label, int(y.max()))
            yv = y.astype(ydt)
            if test_fraction:  # by source line: the split does not depend on dropped rows
                ids = line_ids if line_ids is not None else np.arange(
                    line_no, line_no + len(a), dtype=np.int64)
                to_test = _uniform(seed, ids) < test_fraction
                parts = {"train": ~to_test, "test": to_test}
            else:
                parts = {"train": slice(None)}
            for name, sel in parts.items():
                _append(state[name], x[sel], yv[sel], features, dtype, ydt)
            if bar is not None:
                bar.update(len(a))
        for st in state.values():
            while len(st["entries"]) < st["n"]:  # close the current shard, and write any
                if st["writer"] is None:         # this rank's share left empty (tiny input)
                    st["writer"] = ShardWriter(st["folder"], st["offset"] + len(st["entries"]),
                                               features, dtype, ydt)
                st["entries"].append(st["writer"].close())
                written.append(os.path.join(st["folder"], st["entries"][-1]["file"]))
                st["writer"] = None
        return state, max_label, dropped
    except BaseException:
        for st in state.values():
            if st["writer"] is not None:
                st["writer"].abort()
        raise
    finally:
        if bar is not None:
            if sys.exc_info()[0] is None:
                bar.close()  # the closing line
            else:
                bar.__exit__(*sys.exc_info())  # a failure: the bar ends, no closing line


def _append(st, x, y, features, dtype, ydt):
    """Append rows to the split's current shard, starting the next shard when it is full."""
    per_shard = -(-st["expected"] // st["n"])
    while len(x):
        if st["writer"] is None:
            st["writer"] = ShardWriter(st["folder"], st["offset"] + len(st["entries"]),
                                       features, dtype, ydt)
        w = st["writer"]
        last = len(st["entries"]) == st["n"] - 1
        room = len(x) if last else max(0, per_shard - w.rows)
        take = min(room, len(x))
        w.append(x[:take], y[:take])
        x, y = x[take:], y[take:]
        if not last and w.rows >= per_shard:
            st["entries"].append(w.close())
            st["written"].append(os.path.join(st["folder"], st["entries"][-1]["file"]))
            st["writer"] = None
