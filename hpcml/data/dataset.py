"""ShardedDataset and its per-rank streaming loader.

Partitioning (exactly once per epoch, equal work): the dataset is cut into blocks of
`block_rows` rows (never across shards); the blocks are shuffled with
default_rng([seed, epoch]) (or kept in order), which defines one global stream of all N
rows; rank r takes rows [r*N//p, (r+1)*N//p) of that stream. Shards of different sizes
therefore still give every rank the same number of rows (+-1). Inside each block the rows
are shuffled with default_rng([seed, epoch, block]) so order is deterministic from
(seed, epoch) and independent of timing. Every rank makes the same number of steps per
epoch: the last batch of a rank can be smaller (even empty) unless drop_last.

I/O: one background thread per rank reads row blocks with h5py (which holds a global lock:
more threads do not help), checks and shuffles them, assembles whole batches and keeps at
most `prefetch` of them in a bounded queue, so memory is bounded by about
(prefetch + 1) x batch + one block, never the dataset size, and the consumer's thread does
no I/O work at all.
"""
import os
import queue
import threading

import h5py
import numpy as np

from hpcml.comm.guard import agree
from hpcml.kernels.cpu.elementwise import gather_rows_finite
from .format import read_manifest, DataError, CHUNK_ROWS


class ShardedDataset:
    """A sharded dataset folder (or a built-in one by name: "digits", "digits:test") opened
    on every rank of `comm` (collective when comm given).

    Opening checks the manifest and every shard's header (present, readable HDF5, x/y with
    the manifest's rows, features and dtypes); any problem on any rank raises the same
    DataError on every rank, naming the file."""

    def __init__(self, path, comm=None):
        from .builtin import resolve
        path = os.fspath(path)
        if not os.path.exists(path) and resolve(path):
            path = resolve(path)  # a built-in dataset by name, e.g. "digits"
        self.path = path
        self.comm = comm
        error = None
        try:
            self.manifest = read_manifest(self.path)
            self._check_shards()
            p = comm.Get_size() if comm is not None else 1
            if self.manifest["rows"] == 0:
                raise DataError(f"{self.path}: the dataset is empty")
            if self.manifest["rows"] < p:
                raise DataError(f"{self.path}: {self.manifest['rows']} rows for {p} ranks: "
                                f"every rank needs at least one row")
        except (DataError, OSError) as e:
            error = str(e)
        if comm is not None:
            agree(comm, error, what=f"opening dataset {self.path}")
        elif error:
            raise DataError(error)
        m = self.manifest
        self.rows, self.features = m["rows"], m["features"]
        self.classes = m.get("classes")
        self.task = m["task"]
        self.shard_rows = [s["rows"] for s in m["shards"]]
        self.files = [os.path.join(self.path, s["file"]) for s in m["shards"]]

    def _check_shards(self):
        m = self.manifest
        xdt, ydt, f = np.dtype(m["x_dtype"]), np.dtype(m["y_dtype"]), m["features"]
        for s in m["shards"]:
            path = os.path.join(self.path, s["file"])
            if not os.path.exists(path):
                raise DataError(f"{path}: shard listed in manifest.json is missing")
            try:
                with h5py.File(path, "r") as h:
                    x, y = h["x"], h["y"]
                    if x.shape != (s["rows"], f) or y.shape != (s["rows"],):
                        raise DataError(f"{path}: x is {x.shape} and y {y.shape}, but the "
                                        f"manifest says {s['rows']} rows x {f} features")
                    if x.dtype != xdt or y.dtype != ydt:
                        raise DataError(f"{path}: dtypes x {x.dtype}, y {y.dtype}; the "
                                        f"manifest says x {xdt}, y {ydt}")
            except DataError:
                raise
            except (OSError, KeyError) as e:
                raise DataError(f"{path}: not a readable shard ({type(e).__name__}: {e})") \
                    from None

    def loader(self, batch_size, shuffle=True, seed=0, drop_last=False, prefetch=2,
               block_rows=CHUNK_ROWS, nonfinite="error"):
        return Loader(self, batch_size, shuffle, seed, drop_last, prefetch, block_rows,
                      nonfinite)


class Loader:
    """Iterates this rank's batches (x, y) of one epoch; the next iteration is the next epoch."""

    def __init__(self, ds, batch_size, shuffle, seed, drop_last, prefetch, block_rows,
                 nonfinite):
        if batch_size < 1 or prefetch < 1 or block_rows < 1:
            raise ValueError("batch_size, prefetch and block_rows must be >= 1")
        if nonfinite not in ("error", "drop"):
            raise ValueError(f"nonfinite must be 'error' or 'drop', got {nonfinite!r}")
        self.ds, self.batch_size, self.shuffle, self.seed = ds, batch_size, shuffle, seed
        self.drop_last, self.prefetch, self.block_rows = drop_last, prefetch, block_rows
        self.nonfinite = nonfinite
        comm = ds.comm
        self.rank, self.size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
        self.epoch, self.batches_done = 0, 0

    # --- the plan ----------------------------------------------------------------------
    def _blocks(self):
        blocks = []
        for s, n in enumerate(self.ds.shard_rows):
            for start in range(0, n, self.block_rows):
                blocks.append((s, start, min(n, start + self.block_rows)))
        return blocks

    def share(self, epoch):
        """This rank's pieces for `epoch`: [(block id, shard, start, stop), ...]."""
        blocks = self._blocks()
        order = np.arange(len(blocks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(blocks))
        n, p, r = self.ds.rows, self.size, self.rank
        lo, hi = n * r // p, n * (r + 1) // p
        pieces, pos = [], 0
        for b in order:
            s, start, stop = blocks[b]
            a, z = max(lo, pos), min(hi, pos + stop - start)
            if a < z:
                pieces.append((int(b), s, start + a - pos, start + z - pos))
            pos += stop - start
            if pos >= hi:
                break
        return pieces

    def __len__(self):
        n, p, b = self.ds.rows, self.size, self.batch_size
        fewest, most = n // p, -(-n // p)
        return fewest // b if self.drop_last else -(-most // b)

    # --- state -------------------------------------------------------------------------
    def state_dict(self):
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed,
                "ranks": self.size, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "block_rows": self.block_rows}

    def load_state_dict(self, state):
        for key in ("seed", "ranks", "batch_size", "shuffle", "block_rows"):
            mine = self.state_dict()[key]
            if state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has "
                                 f"{mine!r}: resuming needs the same configuration")
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])

    # --- reading ---------------------------------------------------------------------
    def _check_labels(self, s, start, y):
        if self.ds.classes is not None and y.size and (y.min() < 0 or
                                                       y.max() >= self.ds.classes):
            row = start + int(np.argmax((y < 0) | (y >= self.ds.classes)))
            raise DataError(f"{self.ds.files[s]}: row {row} has label outside "
                            f"0..{self.ds.classes - 1}")

    def _check(self, s, start, x, y):
        """Exact value check of a block (used when rows may be dropped, and to name the
        bad row once the one-pass check in the copy has failed): NaN/Inf features raise
        or are dropped, labels out of range raise."""
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            if self.nonfinite == "error":
                raise DataError(f"{self.ds.files[s]}: row {start + int(np.argmax(bad))} has "
                                f"a NaN or Inf feature (pass nonfinite='drop' to skip such "
                                f"rows)")
            x, y = x[~bad], y[~bad]
        self._check_labels(s, start, y)
        return x, y

    def _produce(self, epoch, skip, first_batch, out, stop):
        """Reader thread: read this rank's pieces, check, shuffle within blocks, assemble
        whole batches and queue them (at most `prefetch` batches ahead of the consumer).

        Each block is read once and copied once, into the batch buffer, by a Numba pass
        that also checks the values are finite (h5py's read_direct into the buffer, and a
        separate check pass, were measured slower here)."""
        files = {}
        steps = len(self)
        done = first_batch
        m = self.ds.manifest
        B, F = self.batch_size, self.ds.features
        xdt, ydt = np.dtype(m["x_dtype"]), np.dtype(m["y_dtype"])
        bx, by, fill = np.empty((B, F), xdt), np.empty(B, ydt), 0

        def put(item):
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False
        try:
            for b, s, start, end in self.share(epoch):
                if done >= steps or stop.is_set():
                    break
                h = files.get(s)
                if h is None:
                    h = files[s] = h5py.File(self.ds.files[s], "r")
                x, y = h["x"][start:end], h["y"][start:end]
                if self.nonfinite == "drop":  # rows may go: check (and drop) up front
                    x, y = self._check(s, start, x, y)
                else:
                    self._check_labels(s, start, y)
                n = len(x)
                order = (np.random.default_rng([self.seed, epoch, b]).permutation(n)
                         if self.shuffle else np.arange(n))
                o = min(skip, n)
                skip -= o
                while o < n and done < steps:
                    k = min(B - fill, n - o)
                    # one pass copies the rows into the batch and checks them (Numba)
                    if not gather_rows_finite(x, order[o:o + k], bx, fill):
                        self._check(s, start, x, y)  # names the first bad row, raises
                    np.take(y, order[o:o + k], axis=0, out=by[fill:fill + k])
                    fill += k
                    o += k
                    if fill == B:
                        done += 1
                        if not put((bx, by)):
                            return
                        bx, by, fill = np.empty((B, F), xdt), np.empty(B, ydt), 0
            while done < steps:  # the rank's last (smaller, possibly empty) batches
                done += 1
                if not put((bx[:fill], by[:fill])):
                    return
                bx, by, fill = bx[fill:fill], by[fill:fill], 0
            put(None)
        except BaseException as e:  # hand the error to the consumer, which raises it
            put(e)
        finally:
            for h in files.values():
                h.close()

    def __iter__(self):
        epoch, first = self.epoch, self.batches_done
        q = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        reader = threading.Thread(target=self._produce, daemon=True, name="hpcml-loader",
                                  args=(epoch, first * self.batch_size, first, q, stop))
        reader.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self.batches_done += 1
                yield item
        finally:
            stop.set()
            reader.join()
        self.epoch, self.batches_done = epoch + 1, 0
