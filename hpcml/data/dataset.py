"""ShardedDataset and its per-rank streaming loader.

Partitioning (exactly once per epoch, equal work): the dataset is cut into blocks of
`block_rows` rows (never across shards); the blocks are shuffled with
default_rng([seed, epoch]) (or kept in order), which defines one global stream of all N
rows; rank r takes rows [r*N//p, (r+1)*N//p) of that stream. Shards of different sizes
therefore still give every rank the same number of rows (+-1). Inside each block the rows
are shuffled by keyed_permutation(seed, epoch, block) (a splitmix64 Fisher-Yates), so
order is deterministic from (seed, epoch) and independent of timing. Every rank makes the
same number of steps per epoch: the last batch of a rank can be smaller (even empty) unless
drop_last.

I/O: one background thread per rank reads row blocks (shardio: raw preads located through
HDF5's chunk index when the shard is stored plainly, h5py otherwise), checks and shuffles
them with GIL-free Numba kernels, assembles whole batches and keeps at most `prefetch` of
them in a bounded queue, so memory is bounded by about (prefetch + 1) x batch + one block,
never the dataset size, and the consumer's thread does no I/O work at all.
"""
import bisect
import collections
import os
import queue
import threading

import h5py
import numpy as np

from hpcml.comm.guard import agree, raise_agreed, same_everywhere, watching, CollectiveError
from hpcml.kernels.cpu.elementwise import gather_block, check_block, keyed_permutation_into
from .format import read_manifest, DataError, CHUNK_ROWS
from . import blockio
from .shardio import ShardReader


def _u64(v):
    return np.uint64(int(v) & 0xFFFFFFFFFFFFFFFF)


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

    def _reader(self, s):
        """A ShardReader of shard s. The file's layout (HDF5's chunk index, read through
        h5py: about a millisecond per shard) is kept for the dataset's life and reused
        while the file keeps its size, inode and mtime, so a new epoch opens a plainly
        stored shard with a bare os.open instead of stalling its first batch."""
        path = self.files[s]
        cache = self.__dict__.setdefault("_layouts", {})
        st = os.stat(path)
        key = (st.st_size, st.st_ino, st.st_mtime_ns)
        hit = cache.get(s)
        reader = ShardReader(path, hit[1] if hit is not None and hit[0] == key else None)
        if reader.raw:
            cache[s] = (key, reader.layouts())
        return reader

    def loader(self, batch_size, shuffle=True, seed=0, drop_last=False, prefetch=2,
               block_rows=CHUNK_ROWS, nonfinite="error", agree_errors=False, partition="contiguous", rank=None,
               ranks=None, global_batch=None):
        """This rank's batch iterator (see Loader). partition="contiguous" gives rank r
        the stream rows [r*N/p, (r+1)*N/p) (the fewest reads); "global" gives it the r-th
        slice of each global batch of batch_size*p consecutive stream rows, so p ranks see
        per step exactly the rows one process sees at batch batch_size*p (what
        data-parallel training needs to match a serial run). global_batch (partition
        "global" only): the global batch instead of batch_size*p, any size >= p; rank r
        then gets rows [r*M/p, (r+1)*M/p) of each (slices differ by one row at most).
        rank/ranks: one rank's view of a run on `ranks` ranks, for a dataset opened
        without a communicator."""
        return Loader(self, batch_size, shuffle, seed, drop_last, prefetch, block_rows,
                      nonfinite, agree_errors, partition, rank, ranks, global_batch)


class Loader:
    """Iterates this rank's batches (x, y) of one epoch; the next iteration is the next epoch."""

    def __init__(self, ds, batch_size, shuffle, seed, drop_last, prefetch, block_rows,
                 nonfinite, agree_errors=False, partition="contiguous", rank=None,
                 ranks=None, global_batch=None):
        error = None
        if partition not in ("contiguous", "global"):
            error = f"partition must be 'contiguous' or 'global', got {partition!r}"
        elif batch_size < 1 or prefetch < 1 or block_rows < 1:
            error = "batch_size, prefetch and block_rows must be >= 1"
        elif nonfinite not in ("error", "drop"):
            error = f"nonfinite must be 'error' or 'drop', got {nonfinite!r}"
        if ds.comm is not None and ds.comm.Get_size() > 1:
            # the ranks share one plan of the epoch: a rank with another seed or batch size
            # would visit rows twice or never, or wait in a collective for a missing batch
            same = same_everywhere(ds.comm, {
                "batch_size": batch_size, "shuffle": bool(shuffle), "seed": seed,
                "drop_last": bool(drop_last), "block_rows": block_rows,
                "nonfinite": nonfinite, "agree_errors": bool(agree_errors),
                "partition": partition, "global_batch": global_batch})
            if error is None and not same:
                error = ("loader settings differ across ranks: every rank must pass the same "
                         "batch_size, shuffle, seed, drop_last, block_rows, nonfinite, "
                         "agree_errors, partition and global_batch")
            try:
                agree(ds.comm, error, what="creating a loader")
            except CollectiveError as e:
                raise ValueError(str(e)) from None
        elif error is not None:
            raise ValueError(error)
        self.ds, self.batch_size, self.shuffle, self.seed = ds, batch_size, shuffle, seed
        self.drop_last, self.prefetch, self.block_rows = drop_last, prefetch, block_rows
        self.nonfinite, self.agree_errors = nonfinite, agree_errors
        self.partition = partition
        comm = ds.comm
        self.rank, self.size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
        if ranks is not None:  # one rank's view of a run on `ranks` ranks, without MPI
            if comm is not None or not 0 <= rank < ranks:
                raise ValueError("rank/ranks are for a dataset opened without a communicator")
            self.rank, self.size = int(rank), int(ranks)
        self.global_batch = None
        if global_batch is not None:
            if partition != "global" or isinstance(global_batch, bool) or \
                    int(global_batch) != global_batch or global_batch < self.size:
                raise ValueError(f"global_batch must be an integer >= the {self.size} ranks, "
                                 f"with partition='global'; got {global_batch!r}")
            self.global_batch = int(global_batch)
            self.batch_size = -(-self.global_batch // self.size)  # the largest slice
        self.epoch, self.batches_done = 0, 0

    def _global(self):
        """Rows of one global batch (partition "global")."""
        return self.global_batch or self.batch_size * self.size

    # --- the plan ----------------------------------------------------------------------
    def _blocks(self):
        blocks = []
        for s, n in enumerate(self.ds.shard_rows):
            for start in range(0, n, self.block_rows):
                blocks.append((s, start, min(n, start + self.block_rows)))
        return blocks

    def stream(self, epoch):
        """The epoch's stream of all rows as blocks in order: [(block id, shard, start,
        stop), ...] (rows inside a block are further shuffled when shuffle)."""
        return [tuple(int(v) for v in row) for row in self._stream_array(epoch)]

    def _stream_array(self, epoch):
        """stream(epoch) as an (n blocks, 4) int64 array, without a Python loop per block
        (the reader thread builds it at each epoch's start, before the first batch)."""
        if getattr(self, "_block_table", None) is None:
            self._block_table = np.array(self._blocks(), np.int64).reshape(-1, 3)
        nb = len(self._block_table)
        order = np.arange(nb)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(nb)
        out = np.empty((nb, 4), np.int64)
        out[:, 0] = order
        out[:, 1:] = self._block_table[order]
        return out

    def interval(self, step):
        """Stream positions [p0, p1) of this rank's batch `step`."""
        n, p, r, b = self.ds.rows, self.size, self.rank, self.batch_size
        if self.partition == "contiguous":
            lo, hi = n * r // p, n * (r + 1) // p
            return min(hi, lo + step * b), min(hi, lo + (step + 1) * b)
        big = self._global()
        g0 = step * big
        m = min(big, n - g0)  # the global batch's rows (fewer in the last one)
        return g0 + r * m // p, g0 + (r + 1) * m // p

    def share(self, epoch):
        """This rank's rows for `epoch` as pieces [(block id, shard, start, stop), ...] in
        stream order (contiguous partition)."""
        if self.partition != "contiguous":
            raise ValueError("share() describes the contiguous partition only")
        n, p, r = self.ds.rows, self.size, self.rank
        lo, hi = n * r // p, n * (r + 1) // p
        pieces, pos = [], 0
        for b, s, start, stop in self.stream(epoch):
            a, z = max(lo, pos), min(hi, pos + stop - start)
            if a < z:
                pieces.append((b, s, start + a - pos, start + z - pos))
            pos += stop - start
            if pos >= hi:
                break
        return pieces

    def __len__(self):
        n, p, b = self.ds.rows, self.size, self.batch_size
        if self.partition == "global":
            big = self._global()
            return n // big if self.drop_last else -(-n // big)
        fewest, most = n // p, -(-n // p)
        return fewest // b if self.drop_last else -(-most // b)

    # --- state -------------------------------------------------------------------------
    def state_dict(self):
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed,
                "ranks": self.size, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "block_rows": self.block_rows, "partition": self.partition,
                "global_batch": self.global_batch}

    def load_state_dict(self, state):
        for key in ("seed", "ranks", "batch_size", "shuffle", "block_rows", "partition",
                    "global_batch"):
            mine = self.state_dict()[key]
            default = {"partition": "contiguous"}.get(key)
            if state.get(key, default) != mine:
                raise ValueError(f"loader state has {key}={state.get(key)!r} but this loader "
                                 f"has {mine!r}: resuming needs the same configuration")
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])

    # --- reading ---------------------------------------------------------------------
    def _global_row(self, s, row):
        return sum(int(sh["rows"]) for sh in self.ds.manifest["shards"][:s]) + int(row)

    def _bad_row(self, s, row):
        return DataError(f"{self.ds.files[s]}: row {row} (row {self._global_row(s, row):,} of "
                         f"the dataset, from 0) has a NaN or Inf feature (pass --nonfinite "
                         f"drop to hpcml.train, or nonfinite='drop' to the loader, to skip "
                         f"such rows)")

    def _bad_label(self, s, row):
        return DataError(f"{self.ds.files[s]}: row {row} (row {self._global_row(s, row):,} "
                         f"of the dataset) has label outside "
                         f"0..{self.ds.classes - 1}")

    def _bad(self, s, row, x_row):
        """The error for a row that failed the one-pass check."""
        finite = x_row.dtype.kind != "f" or np.isfinite(x_row).all()
        return self._bad_label(s, row) if finite else self._bad_row(s, row)

    def _produce(self, epoch, first_step, out, stop):
        """Reader thread: assemble this rank's batches from `first_step` on and queue them
        (at most `prefetch` ahead of the consumer).

        Batch k holds the stream positions interval(k). In order (shuffle=False) those
        rows are read straight into the batch buffer and checked there in one pass: one
        copy, from the page cache. Shuffled, each block is read once into a scratch buffer
        and its rows copied into batches in the block's permuted order by a pass that also
        checks them. For plainly stored shards the whole batch is one GIL-free Numba call
        (blockio.assemble: pread, permute, copy, check); other shards (and a failed pread)
        go piece by piece through ShardReader (h5py or os.preadv) and the same kernels, so
        the consumer computes meanwhile either way. nonfinite='drop' leaves rows with
        NaN/Inf out of their batch (which is then smaller)."""
        readers = {}
        m = self.ds.manifest
        F = self.ds.features
        xdt, ydt = np.dtype(m["x_dtype"]), np.dtype(m["y_dtype"])
        classes = self.ds.classes if self.ds.classes and ydt.kind in "iu" else 0
        drop = self.nonfinite == "drop" and xdt.kind == "f"
        k_seed, k_epoch = _u64(self.seed), _u64(epoch)
        blocks = self._stream_array(epoch)
        stream = blocks
        starts = np.zeros(len(blocks) + 1, np.int64)
        np.cumsum(blocks[:, 3] - blocks[:, 2], out=starts[1:])
        ns = len(self.ds.files)
        mode = np.full(ns, blockio.M_CLOSED, np.int64)
        pread = blockio.libc_pread()
        fds, xc, xbase, yc, ybase = (np.zeros(ns, np.int64) for _ in range(5))
        tabs = {"x": [], "y": []}
        xtab = ytab = np.zeros(1, np.int64)
        st = np.zeros(8, np.int64)
        st[blockio.S_CACHED] = -1
        scratch = self.block_rows if self.shuffle else 0
        tx, ty = np.empty((scratch, F), xdt), np.empty(scratch, ydt)
        order = np.empty(scratch, np.int64)

        def put(item):
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def open_shard(s):
            """Open shard s; record its layout for assemble() when it is stored plainly."""
            nonlocal xtab, ytab
            r = readers[s] = self.ds._reader(s)
            if not (r.raw and pread is not None):
                mode[s] = blockio.M_PYTHON
                return
            fds[s] = r.fd
            for key, lay, c, base in (("x", r.lx, xc, xbase), ("y", r.ly, yc, ybase)):
                base[s] = sum(t.size for t in tabs[key])
                if lay.contiguous is not None:
                    c[s], t = lay.rows, np.array([lay.contiguous], np.int64)
                else:
                    c[s], t = lay.chunk_rows, lay.offsets
                tabs[key].append(t)
            xtab, ytab = np.concatenate(tabs["x"]), np.concatenate(tabs["y"])
            mode[s] = blockio.M_RAW

        def python_piece(bx, by):
            """The piece at st's position, through ShardReader (h5py or os.preadv)."""
            p0, fill, bi = (int(v) for v in st[[blockio.S_POS, blockio.S_FILL,
                                                   blockio.S_BLOCK]])
            b, s, start, _ = (int(v) for v in stream[bi])
            q0 = p0 - int(starts[bi])
            q1 = min(p1, int(starts[bi + 1])) - int(starts[bi])
            k = q1 - q0
            if not self.shuffle:
                readers[s].read(start + q0, start + q1, bx[fill:], by[fill:])
                xs, ys = bx[fill:fill + k], by[fill:fill + k]
                bad = check_block(xs, ys, classes)
                rows = None  # after a drop: the original position of each kept row
                if bad >= 0 and drop:
                    keep = np.isfinite(xs).all(axis=1)
                    rows = np.flatnonzero(keep)
                    kept = rows.size
                    xs[:kept], ys[:kept] = xs[keep], ys[keep]
                    xs, ys, k = xs[:kept], ys[:kept], kept
                    bad = check_block(xs, ys, classes)
                if bad >= 0:
                    at = bad if rows is None else int(rows[bad])
                    raise self._bad(s, start + q0 + at, xs[bad])
            else:
                if st[blockio.S_CACHED] != bi:
                    n = int(starts[bi + 1] - starts[bi])
                    st[blockio.S_CACHED] = -1
                    readers[s].read(start, start + n, tx, ty)
                    keyed_permutation_into(order, n, k_seed, k_epoch, _u64(b))
                    st[blockio.S_CACHED] = bi
                rows = order[q0:q1]
                if drop:
                    rows = rows[np.isfinite(tx[rows]).all(axis=1)]
                    k = rows.size
                bad = gather_block(tx, ty, rows, bx, by, fill, classes)
                if bad >= 0:
                    raise self._bad(s, start + int(rows[bad]), tx[rows[bad]])
            st[blockio.S_POS], st[blockio.S_FILL] = int(starts[bi]) + q1, fill + k

        try:
            for step in range(first_step, len(self)):
                if stop.is_set():
                    return
                p0, p1 = self.interval(step)
                bx, by = np.empty((p1 - p0, F), xdt), np.empty(p1 - p0, ydt)
                st[blockio.S_POS], st[blockio.S_FILL] = p0, 0
                if p0 < p1:
                    st[blockio.S_BLOCK] = max(int(st[blockio.S_BLOCK]),
                                              bisect.bisect_right(starts, p0) - 1)
                while True:
                    blockio.assemble(pread, blocks, starts, p1, mode, fds, xc, xbase, xtab,
                                     yc, ybase, ytab, tx, ty, order, bx, by, classes, drop,
                                     self.shuffle, k_seed, k_epoch, st)
                    status, s = int(st[blockio.S_STATUS]), int(st[blockio.S_SHARD])
                    if status == blockio.ST_DONE:
                        break
                    if status == blockio.ST_OPEN:
                        open_shard(s)
                    elif status == blockio.ST_BAD:
                        row = int(st[blockio.S_ROW])
                        raise (self._bad_label(s, row) if st[blockio.S_KIND] == blockio.K_LABEL
                               else self._bad_row(s, row))
                    else:  # not stored plainly, or a pread failed or came up short
                        python_piece(bx, by)
                fill = int(st[blockio.S_FILL])
                if not put((bx[:fill], by[:fill])):
                    return
            put(None)
        except BaseException as e:  # hand the error to the consumer, which raises it
            put(e)
        finally:
            for r in readers.values():
                r.close()

    def __iter__(self):
        """This rank's batches of the current epoch.

        An error while reading (NaN/Inf row, label out of range, a shard truncated while
        in use) is raised on the rank that read it, naming the file and row; under hpcml's
        entry point that ends every rank (MPI_Abort) with the message printed once.

        agree_errors=True (with a communicator of 2+ ranks) makes the loader itself agree:
        no rank hands out batch k before every rank has read batch k without error, so an
        error raises the same CollectiveError, naming the rank, file and row, on every rank
        at the same step. Each batch's status (8 bytes) goes into a non-blocking
        MPI_Iallgather, posted as soon as the consumer sees the reader has it (up to
        `prefetch` batches ahead) and waited for when the batch is asked for, on a
        duplicate of hpcml's private communicator made for the epoch. It is off by
        default because it ties the ranks together at every step: on the 2-core test
        machine, with a sleeping (GIL-free) compute step and no other synchronisation,
        it cut the I/O hidden behind compute from about 80% to under 30% at 2 ranks
        (benchmarks/README.md); a training step that all-reduces gradients is already
        tied that way."""
        epoch, first = self.epoch, self.batches_done
        q = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        comm = self.ds.comm
        epoch_comm = None
        if self.agree_errors and comm is not None and comm.Get_size() > 1:
            from hpcml.comm import private_dup
            epoch_comm = private_dup(comm)
        reader = threading.Thread(target=self._produce, daemon=True, name="hpcml-loader",
                                  args=(epoch, first, q, stop))
        reader.start()
        posted = collections.deque()  # (item, agreement in flight), oldest first
        last_posted = False  # the end marker or an error was posted: nothing follows

        def post(block):
            nonlocal last_posted
            item = q.get(block)
            last_posted = item is None or isinstance(item, BaseException)
            agreement = None
            if epoch_comm is not None:
                text = b""
                if isinstance(item, BaseException):
                    text = (str(item) if isinstance(item, DataError)
                            else f"{type(item).__name__}: {item}").encode("utf-8", "replace")
                mine = np.array([len(text)], np.int64)
                lengths = np.empty(epoch_comm.Get_size(), np.int64)
                agreement = (epoch_comm.Iallgather(mine, lengths), mine, lengths, text)
            posted.append((item, agreement))

        def settle(item, agreement):
            if agreement is not None:
                request, _, lengths, text = agreement
                what = f"loading batch {self.batches_done} of epoch {epoch}"
                with watching(f"{what}: agreeing that every rank has it (MPI_Iallgather)"):
                    request.Wait()
                try:
                    raise_agreed(epoch_comm, lengths, text, what)
                except CollectiveError as e:
                    raise e from (item if isinstance(item, BaseException) else None)
            if isinstance(item, BaseException):
                raise item
            return item

        try:
            while True:
                if not posted:
                    post(block=True)
                while epoch_comm is not None and not last_posted and \
                        len(posted) <= self.prefetch:
                    try:
                        post(block=False)  # whatever the reader already has
                    except queue.Empty:
                        break
                item = settle(*posted.popleft())
                if item is None:
                    break
                self.batches_done += 1
                yield item
        finally:
            stop.set()
            reader.join()
            if epoch_comm is not None:
                # at the epoch's end every rank posted and completed the same statuses;
                # after an error or an early exit some may stay pending: they are never
                # waited for, and MPI frees the communicator once they complete
                epoch_comm.Free()
        self.epoch, self.batches_done = epoch + 1, 0
