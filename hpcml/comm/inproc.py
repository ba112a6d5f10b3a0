"""An in-process communicator: N ranks as threads of one process (Dask's `inproc` comm is
the model), so that collectives, estimators and strategies run under plain pytest at
several ranks with the same code that runs on MPI.

    from hpcml.comm.inproc import run_ranks
    results = run_ranks(4, lambda comm: hc.allreduce(np.ones(3) * comm.Get_rank(), comm=comm))

`InprocComm` implements the communicator methods hpcml calls (Get_rank/Get_size, Barrier,
the uppercase buffer collectives and point-to-point with MPI's buffer specifications, the
lowercase object collectives, Dup/Split/Split_type/Free, attribute caching). Messages are
copied (eager sends: a send never blocks). Every wait is bounded (HPCML_TIMEOUT, else 120
s) and ends with an error naming the operation; an exception on any rank makes every other
rank's current and next wait raise at once, so a failing test never hangs.

Threads share the GIL: this is for correctness, not speed.
"""
import collections
import itertools
import os
import threading

import numpy as np
from mpi4py import MPI

_NP = [(MPI.SUM, np.add), (MPI.MAX, np.maximum), (MPI.MIN, np.minimum),
       (MPI.PROD, np.multiply)]
_PY = [(MPI.SUM, lambda a, b: a + b), (MPI.MAX, max), (MPI.MIN, min),
       (MPI.PROD, lambda a, b: a * b)]


def _op(table, op):  # MPI.Op objects compare equal but do not hash
    for mpi_op, f in table:
        if op == mpi_op:
            return f
    raise ValueError(f"in-process communicator: unsupported op {op!r}")


class InprocError(RuntimeError):
    """A wait timed out, or another rank failed while this one waited."""


class _World:
    """State shared by the ranks of one run_ranks() call."""

    def __init__(self, size, timeout):
        self.size, self.timeout = size, timeout
        self.cond = threading.Condition()
        self.mail = collections.defaultdict(collections.deque)  # (cid, dst) -> messages
        self.slots = {}  # (cid, seq) -> [contributions, readers left]
        self.failed = None  # (rank, description) of the first rank that raised
        self.ids = itertools.count(1)

    def wait(self, ready, what, rank):
        """Wait (holding cond) until ready() is true; bounded, and broken by a failure.
        ready() may act (take a message) when it returns True: it is then not called
        again."""
        met = [False]

        def pred():
            if ready():
                met[0] = True
                return True
            return self.failed is not None
        if not self.cond.wait_for(pred, self.timeout):
            raise InprocError(f"in-process rank {rank}: {what} timed out after "
                              f"{self.timeout:g} s")
        if not met[0]:
            r, why = self.failed
            raise InprocError(f"in-process rank {rank}: {what} stopped: rank {r} failed "
                              f"({why})")


def _spec(spec):
    """An MPI buffer specification -> (uint8 view of the buffer, counts, displs) with
    counts and displacements in bytes (None when not given)."""
    if isinstance(spec, np.ndarray):
        if not spec.flags.c_contiguous:  # as mpi4py refuses it
            raise BufferError("ndarray is not C-contiguous")
        return spec.reshape(-1).view(np.uint8), None, None
    items = list(spec)
    buf, rest = items[0], items[1:]
    item = buf.dtype.itemsize
    counts = displs = None
    if rest and isinstance(rest[-1], MPI.Datatype):
        item = rest.pop().Get_size()
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)) and len(rest[0]) == 2:
        counts, displs = rest[0]
    elif len(rest) >= 1:
        counts = rest[0]
        displs = rest[1] if len(rest) > 1 else None
    if counts is not None and np.ndim(counts) > 0:
        counts = np.asarray(counts, np.int64) * item
        displs = (np.asarray(displs, np.int64) * item if displs is not None else
                  np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
    view = buf.reshape(-1).view(np.uint8) if buf is not None else None
    return view, counts, displs


class _Done:
    """A request that completed when it was made (eager sends, blocking collectives)."""

    def Wait(self, status=None):
        return None

    def Test(self, status=None):
        return True


class _RecvRequest:
    def __init__(self, comm, buf, source, tag):
        self.args, self.done = (comm, buf, source, tag), False

    def Wait(self, status=None):
        if not self.done:
            comm, buf, source, tag = self.args
            comm.Recv(buf, source, tag, status)
            self.done = True

    def Test(self, status=None):
        comm, buf, source, tag = self.args
        with comm._w.cond:
            ready = comm._match(source, tag, peek=True) is not None
            failed = comm._w.failed
        if failed is not None and not ready and not self.done:  # a polling loop ends too
            raise InprocError(f"in-process rank {comm.Get_rank()}: a test of a receive from "
                              f"{source} (tag {tag}) stopped: rank {failed[0]} failed "
                              f"({failed[1]})")
        if not self.done and ready:
            self.Wait(status)
        return self.done


class InprocComm:
    """One rank's view of an in-process communicator."""

    def __init__(self, world, cid, members, rank):
        self._w, self._cid, self._members, self._rank = world, cid, members, rank
        self._seq = 0
        self._attrs = {}

    # --- basics ----------------------------------------------------------------------
    def Get_rank(self):
        return self._rank

    def Get_size(self):
        return len(self._members)

    def __repr__(self):
        return f"<InprocComm {self._cid} rank {self._rank} of {self.Get_size()}>"

    def Get_attr(self, keyval):
        return self._attrs.get(keyval)

    def Set_attr(self, keyval, value):
        self._attrs[keyval] = value

    def Free(self):
        self._attrs.clear()

    # --- the one collective everything else is made of --------------------------------
    def _exchange(self, value, what):
        """Every rank's `value` (rank order) on every rank."""
        w, p = self._w, self.Get_size()
        if p == 1:
            return [value]
        key = (self._cid, self._seq)
        self._seq += 1
        with w.cond:
            slot = w.slots.setdefault(key, [[None] * p, 0, p])
            slot[0][self._rank] = (value,)
            slot[1] += 1
            w.cond.notify_all()
            w.wait(lambda: slot[1] == p, what, self._rank)
            out = [v[0] for v in slot[0]]
            slot[2] -= 1
            if slot[2] == 0:
                del w.slots[key]
        return out

    def Barrier(self):
        self._exchange(None, "Barrier")

    # --- object collectives ----------------------------------------------------------
    def bcast(self, obj, root=0):
        return self._exchange(obj if self._rank == root else None, "bcast")[root]

    def allgather(self, obj):
        return self._exchange(obj, "allgather")

    def gather(self, obj, root=0):
        every = self._exchange(obj, "gather")
        return every if self._rank == root else None

    def allreduce(self, obj, op=MPI.SUM):
        every = self._exchange(obj, "allreduce")
        f = _op(_PY, op)
        out = every[0]
        for v in every[1:]:
            out = f(out, v)
        return out

    # --- buffer collectives ----------------------------------------------------------
    def Bcast(self, buf, root=0):
        view = _spec(buf)[0]
        data = self._exchange(view.copy() if self._rank == root else None, "Bcast")[root]
        view[...] = data

    def Allreduce(self, sendbuf, recvbuf, op=MPI.SUM):
        src = recvbuf if sendbuf is MPI.IN_PLACE else sendbuf
        every = self._exchange(np.array(src, copy=True), "Allreduce")
        out = every[0].copy()
        for v in every[1:]:
            _op(_NP, op)(out, v, out=out)
        recvbuf[...] = out

    def Reduce(self, sendbuf, recvbuf, op=MPI.SUM, root=0):
        src = recvbuf if sendbuf is MPI.IN_PLACE else sendbuf
        every = self._exchange(np.array(src, copy=True), "Reduce")
        if self._rank == root:
            out = every[0].copy()
            for v in every[1:]:
                _op(_NP, op)(out, v, out=out)
            recvbuf[...] = out

    def Reduce_scatter(self, sendbuf, recvbuf, recvcounts, op=MPI.SUM):
        every = self._exchange(np.array(sendbuf, copy=True).reshape(-1), "Reduce_scatter")
        out = every[0].copy()
        for v in every[1:]:
            _op(_NP, op)(out, v, out=out)
        lo = int(np.sum(recvcounts[:self._rank]))
        recvbuf.reshape(-1)[...] = out[lo:lo + int(recvcounts[self._rank])]

    def Allgather(self, sendbuf, recvbuf):
        mine = _spec(sendbuf)[0].copy()
        every = self._exchange(mine, "Allgather")
        _spec(recvbuf)[0][...] = np.concatenate(every)

    def Allgatherv(self, sendbuf, recvbuf):
        view, counts, displs = _spec(recvbuf)
        if sendbuf is MPI.IN_PLACE:
            mine = view[displs[self._rank]:displs[self._rank] + counts[self._rank]].copy()
        else:
            mine = _spec(sendbuf)[0].copy()
        every = self._exchange(mine, "Allgatherv")
        for r, part in enumerate(every):
            view[displs[r]:displs[r] + part.size] = part

    def Iallgather(self, sendbuf, recvbuf):
        self.Allgather(sendbuf, recvbuf)
        return _Done()

    def Gatherv(self, sendbuf, recvbuf, root=0):
        every = self._exchange(_spec(sendbuf)[0].copy(), "Gatherv")
        if self._rank == root:
            view, counts, displs = _spec(recvbuf)
            for r, part in enumerate(every):
                view[displs[r]:displs[r] + part.size] = part

    # --- communicators ---------------------------------------------------------------
    def Dup(self):
        cid = self._exchange(next(self._w.ids) if self._rank == 0 else None, "Dup")[0]
        return InprocComm(self._w, cid, self._members, self._rank)

    def Split(self, color=0, key=0):
        every = self._exchange((color, key, next(self._w.ids)), "Split")
        if color == MPI.UNDEFINED or color is None:
            return MPI.COMM_NULL
        group = sorted((k, r) for r, (c, k, _) in enumerate(every) if c == color)
        ranks = [r for _, r in group]
        cid = every[ranks[0]][2]  # the id drawn by the group's lowest old rank
        return InprocComm(self._w, ("split", self._cid, cid), [self._members[r] for r in ranks],
                          ranks.index(self._rank))

    def Split_type(self, split_type, key=0):
        return self.Split(0, key)  # one process: every rank shares the node

    # --- point-to-point (eager) ------------------------------------------------------
    def _match(self, source, tag, peek=False):
        box = self._w.mail[(self._cid, self._rank)]
        for i, (src, t, data) in enumerate(box):
            if (source == MPI.ANY_SOURCE or src == source) and (tag == MPI.ANY_TAG or t == tag):
                if not peek:
                    del box[i]
                return src, t, data
        return None

    def Send(self, buf, dest, tag=0):
        data = _spec(buf)[0].copy()
        with self._w.cond:
            self._w.mail[(self._cid, dest)].append((self._rank, tag, data))
            self._w.cond.notify_all()

    def Isend(self, buf, dest, tag=0):
        self.Send(buf, dest, tag)
        return _Done()

    def _status(self, status, src, t, nbytes):
        if status is not None:
            status.Set_source(src)
            status.Set_tag(t)
            status.Set_elements(MPI.BYTE, nbytes)

    def _take(self, source, tag, what, peek):
        found = []

        def ready():
            m = self._match(source, tag, peek)
            if m is not None:
                found.append(m)
            return m is not None
        with self._w.cond:
            self._w.wait(ready, what, self._rank)
        return found[0]

    def Recv(self, buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=None):
        src, t, data = self._take(source, tag, f"Recv from rank {source} (tag {tag})", False)
        view = _spec(buf)[0]
        if data.size > view.size:
            raise InprocError(f"in-process rank {self._rank}: message of {data.size} bytes "
                              f"from rank {src} truncated to {view.size}")
        view[:data.size] = data
        self._status(status, src, t, data.size)

    def Irecv(self, buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG):
        return _RecvRequest(self, buf, source, tag)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=MPI.ANY_SOURCE,
                 recvtag=MPI.ANY_TAG, status=None):
        self.Send(sendbuf, dest, sendtag)
        self.Recv(recvbuf, source, recvtag, status)

    def Probe(self, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=None):
        src, t, data = self._take(source, tag, f"Probe for rank {source} (tag {tag})", True)
        self._status(status, src, t, data.size)


def run_ranks(n, fn, timeout=None):
    """fn(comm) on n in-process ranks (threads); returns the n results in rank order. An
    exception on any rank stops the others' waits and is raised here (the first one,
    naming its rank)."""
    if timeout is None:
        value = os.environ.get("HPCML_TIMEOUT", "").strip()
        timeout = float(value) if value else 120.0
    world = _World(n, timeout)
    comms = [InprocComm(world, 0, list(range(n)), r) for r in range(n)]
    results, errors = [None] * n, [None] * n

    def body(r):
        try:
            results[r] = fn(comms[r])
        except BaseException as e:  # noqa: BLE001 - reported below, and to the others
            errors[r] = e
            with world.cond:
                if world.failed is None:
                    world.failed = (r, f"{type(e).__name__}: {e}")
                world.cond.notify_all()

    threads = [threading.Thread(target=body, args=(r,), name=f"hpcml-inproc-rank-{r}",
                                daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    if any(t.is_alive() for t in threads):
        alive = [r for r, t in enumerate(threads) if t.is_alive()]
        raise InprocError(f"in-process ranks {alive} still running {timeout + 30:g} s "
                          f"after the others")
    if world.failed is not None:
        r = world.failed[0]
        raise errors[r]
    return results
