"""No hangs: abort the whole job on any rank's unhandled exception, agree on errors, watchdog.

* :func:`install` (used by every ``python -m hpcml.<job>``) makes an unhandled exception on
  any rank, in the main thread or another thread, print that rank's traceback with every
  line prefixed ``[rank N]`` and then ``MPI.COMM_WORLD.Abort(1)``, as ``python -m mpi4py``
  does, so the other ranks do not wait forever in a collective.
* :func:`agree` turns a per-rank validation result into the same exception on every rank.
* :class:`Watchdog` bounds waits when ``HPCML_TIMEOUT`` (seconds) is set: a rank blocked in
  one collective step longer than that reports the step and the peers it waits on, and
  aborts the job.
"""
import atexit
import hashlib
import json
import numbers
import os
import sys
import threading
import time
import traceback

import numpy as np

from mpi4py import MPI


class CollectiveError(RuntimeError):
    """Raised identically on every rank when validation failed on one or more ranks."""


def _world_rank():
    try:
        return MPI.COMM_WORLD.Get_rank()
    except Exception:  # MPI finalized or not initialised: still print something useful
        return "?"


#: seconds between printing an abort's message and MPI_Abort (stdio forwarding)
ABORT_GRACE_S = 0.3


def abort(message, code=1):
    """Print `message` (prefixed with the rank) to stderr and abort every rank."""
    rank = _world_rank()
    sys.stderr.write("".join(f"[rank {rank}] {ln}\n" for ln in str(message).splitlines()))
    sys.stderr.flush()
    try:
        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            # let mpiexec forward the message before MPI_Abort tears the job down: without
            # this pause, 1 run in 40 (2 ranks, busy node) ended with no message at all
            time.sleep(ABORT_GRACE_S)
        MPI.COMM_WORLD.Abort(code)
    finally:  # Abort does not return; if MPI is unusable, still end this process
        os._exit(code)


def _excepthook(etype, value, tb):
    abort("".join(traceback.format_exception(etype, value, tb)), 1)


def _thread_excepthook(args):
    if args.exc_type is SystemExit:
        return
    _excepthook(args.exc_type, args.exc_value, args.exc_traceback)


_installed = False


def install():
    """Make an unhandled exception on any rank (any thread) abort all ranks. Idempotent."""
    global _installed
    if not _installed:
        sys.excepthook = _excepthook
        threading.excepthook = _thread_excepthook
        _installed = True


def launch_problem(comm=None):
    """The message when srun started N separate one-rank MPI worlds instead of one world
    of N (srun's default --mpi=none with the mpich wheel; use srun --mpi=pmi2), else None."""
    comm = comm or MPI.COMM_WORLD
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")
    if (tasks.isdigit() and int(tasks) > 1 and comm.Get_size() == 1
            and "SLURM_PROCID" in os.environ):
        return (f"srun started {tasks} tasks but each is its own one-rank MPI world: "
                f"launch with `srun --mpi=pmi2 ...` for the mpich wheel (or your site "
                f"MPI's --mpi plugin), or use mpiexec inside the allocation")
    return None


def check_launch(comm=None):
    """A job's start under a wrong launch: one line from Slurm's task 0 (not a traceback
    per task), and every task exits 2."""
    problem = launch_problem(comm)
    if problem:
        if os.environ.get("SLURM_PROCID") == "0":
            sys.stderr.write(f"error: {problem}\n")
            sys.stderr.flush()
        raise SystemExit(2)


def local_ranks(comm=None):
    """How many ranks of `comm` share this node (collective)."""
    comm = comm or MPI.COMM_WORLD
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


def entry_point(main):
    """Decorator for a job's main(): installs the guard, checks how the job was launched,
    sets up the watchdog and gives each rank cores / ranks-on-this-node compute threads
    (hpcml.kernels.threads; HPCML_NUM_THREADS overrides), then runs main."""
    def wrapped(*args, **kwargs):
        install()
        check_launch()
        Watchdog.from_env()
        _agree_timeout(MPI.COMM_WORLD)
        Watchdog.attach_inspector(MPI.COMM_WORLD)
        from hpcml.kernels import threads
        threads.configure(local_ranks())
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:  # `... | head`: the reader left; end quietly, no traceback
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail
            if MPI.COMM_WORLD.Get_size() > 1:  # the other ranks must not wait for this one
                abort("stdout was closed (broken pipe): ending the job", 1)
            return 0
    wrapped.__name__ = getattr(main, "__name__", "main")
    wrapped.__doc__ = main.__doc__
    wrapped.hpcml_entry_point = True  # tests check that every job's main has it
    return wrapped


def _agree_timeout(comm):
    """Collective: every rank must see the same HPCML_TIMEOUT (the stall inspector's set-up
    is collective)."""
    value = os.environ.get("HPCML_TIMEOUT", "").strip()
    agree(comm, None if same_everywhere(comm, {"HPCML_TIMEOUT": value}) else
          f"HPCML_TIMEOUT differs across ranks (here {value!r}): export it to every rank",
          what="checking HPCML_TIMEOUT")


def agree(comm, error=None, what="validation"):
    """Collective: if any rank passes an error message, every rank raises the same
    CollectiveError naming each failing rank and its message. Returns None otherwise.

    Uses buffer collectives only (they release the GIL, so the watchdog can fire while a
    rank waits here for a peer that never comes)."""
    p = comm.Get_size()
    text = str(error).encode("utf-8", "replace") if error else b""
    if p > 1:
        lengths = np.empty(p, np.int64)
        with watching(f"{what}: agreeing on errors (MPI_Allgather)"):
            comm.Allgather(np.array([len(text)], np.int64), lengths)
    else:
        lengths = np.array([len(text)], np.int64)
    raise_agreed(comm, lengths, text, what)


def raise_agreed(comm, lengths, text, what):
    """The second half of agree(), for callers that gathered the message lengths themselves
    (e.g. with a non-blocking MPI_Iallgather): returns if every length is 0, else gathers
    the messages and raises the same CollectiveError on every rank. Collective."""
    p = comm.Get_size()
    if not lengths.any():
        return
    if p > 1:
        blob = np.empty(int(lengths.sum()), np.uint8)
        displs = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        with watching(f"{what}: gathering error messages (MPI_Allgatherv)"):
            comm.Allgatherv(np.frombuffer(text, np.uint8) if text else np.empty(0, np.uint8),
                            [blob, (lengths, displs)])
        raw = blob.tobytes()
    else:
        raw = text
    errors, o = [], 0
    for n in lengths:
        errors.append(raw[o:o + n].decode("utf-8", "replace") or None)
        o += int(n)
    by_message = {}  # ranks that report the same problem are named together
    for r, e in enumerate(errors):
        if e:
            by_message.setdefault(e, []).append(r)
    lines = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {_ranks(rs)}: {e}"
                      for e, rs in by_message.items())
    raise CollectiveError(f"{what} failed on {sum(1 for e in errors if e)} of "
                          f"{len(errors)} ranks: {lines}")


def _ranks(rs):
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], rs[0]
    for a, b in zip(rs, rs[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}-{a}" if a > start else f"{start}")
            start = b
    return ", ".join(out)


class Watchdog:
    """Bounds every blocking wait of the collectives (``HPCML_TIMEOUT`` seconds).

    The executor calls :meth:`enter` before a blocking step and :meth:`leave` after the
    collective; a daemon thread aborts the job if one wait lasts longer than the timeout.
    mpi4py releases the GIL inside blocking MPI calls, so the thread runs meanwhile.
    With a stall inspector attached (:meth:`attach_inspector`, done by ``entry_point`` and
    by the first collective on COMM_WORLD), the message also says which ranks had entered
    the same call and what the others were doing (Horovod's stall inspector).
    """

    active = None  # the process-wide watchdog, or None when waits are unbounded

    def __init__(self, timeout):
        self.timeout = float(timeout)
        self._since = None
        self._what = None
        self._last = None  # (what, monotonic time) of the last wait that ended
        self.inspector = None
        self._thread = threading.Thread(target=self._run, name="hpcml-watchdog", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls):
        """Start the watchdog if HPCML_TIMEOUT is set to a positive number of seconds."""
        value = os.environ.get("HPCML_TIMEOUT", "").strip()
        if not value or cls.active is not None:
            return cls.active
        try:
            timeout = float(value)
        except ValueError:
            raise ValueError(f"HPCML_TIMEOUT must be a number of seconds, got {value!r}") from None
        if timeout > 0:
            cls.active = cls(timeout)
        return cls.active

    @classmethod
    def attach_inspector(cls, comm):
        """Collective over `comm` (COMM_WORLD): give the active watchdog a stall inspector
        on a private duplicate of `comm`. Every rank must call it, with the same
        HPCML_TIMEOUT; a no-op without a watchdog, without MPI_THREAD_MULTIPLE (the
        watchdog thread makes MPI calls) or when one is attached already."""
        wd = cls.active
        if wd is None or wd.inspector is not None or comm.Get_size() == 1:
            return
        if MPI.Query_thread() != MPI.THREAD_MULTIPLE:
            return
        wd.inspector = _Inspector(comm.Dup())

    def enter(self, where):
        """Start timing a wait; `where` is a description or, from the executor, a tuple
        (collective, step, steps, send peer, recv peer) formatted only on timeout."""
        self._what = where
        self._since = time.monotonic()

    def leave(self):
        self._last = (self._what, time.monotonic())
        self._since = None

    def status(self):
        """What this rank is doing now (JSON-safe), for the stall inspector."""
        what, since, now = self._what, self._since, time.monotonic()
        if since is not None:
            return {"call": _label(what), "where": _where(what), "for_s": now - since}
        last = self._last
        if last is None:
            return {"call": None, "last": None}
        return {"call": None, "last": _where(last[0]), "ago_s": now - last[1]}

    def _run(self):
        period = min(1.0, self.timeout / 4)
        while True:
            time.sleep(period)
            since, what = self._since, self._what
            if since is not None and time.monotonic() - since > self.timeout:
                message = (f"hpcml: timed out after {self.timeout:g} s (HPCML_TIMEOUT) in "
                           f"{_where(what)}; aborting all ranks")
                if self.inspector is not None:
                    wait = min(5.0, 2 * period + 0.5)
                    answers = self.inspector.ask(self.status, wait)
                    message += "\n" + _stall_report(_label(what), answers,
                                                     self.inspector.rank,
                                                     self.inspector.size, wait)
                abort(message, 3)
            if self.inspector is not None:
                self.inspector.serve(self.status)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.leave()


class _Inspector:
    """Asks every other rank what it is doing, over a private communicator, from the
    watchdog threads: each watchdog answers questions once per period, and the rank whose
    wait timed out asks and waits a bounded time for the answers. Non-blocking point-to-point
    on small byte buffers only; closed before MPI_Finalize."""

    REQUEST, REPLY = 1, 2

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._lock = threading.Lock()
        self._closed = False
        self._sends = []  # (buffer, request) pairs kept alive until the job ends
        atexit.register(self.close)  # runs before mpi4py's MPI_Finalize

    def close(self):
        with self._lock:
            self._closed = True

    def serve(self, status):
        """Answer every pending question with status() (JSON bytes)."""
        with self._lock:
            if self._closed:
                return
            st = MPI.Status()
            while self.comm.Iprobe(MPI.ANY_SOURCE, self.REQUEST, st):
                src = st.Get_source()
                self.comm.Recv(np.empty(1, np.int64), src, self.REQUEST)
                data = np.frombuffer(json.dumps(status()).encode(), np.uint8)
                self._sends.append((data, self.comm.Isend(data, src, self.REPLY)))

    def ask(self, status, wait):
        """{rank: status} of every rank that answered within `wait` seconds."""
        with self._lock:
            if self._closed:
                return {}
            q = np.array([self.rank], np.int64)
            self._sends += [(q, self.comm.Isend(q, r, self.REQUEST))
                            for r in range(self.size) if r != self.rank]
        answers, st = {}, MPI.Status()
        deadline = time.monotonic() + wait
        while len(answers) < self.size - 1 and time.monotonic() < deadline:
            self.serve(status)  # another rank may be asking at the same moment
            with self._lock:
                while self.comm.Iprobe(MPI.ANY_SOURCE, self.REPLY, st):
                    src, n = st.Get_source(), st.Get_count(MPI.BYTE)
                    buf = np.empty(n, np.uint8)
                    self.comm.Recv(buf, src, self.REPLY)
                    answers[src] = json.loads(buf.tobytes().decode())
            time.sleep(0.01)
        return answers


def _stall_report(label, answers, rank, size, wait):
    """Which ranks had entered `label` and what the others were doing."""
    inside, outside, silent = [rank], [], []
    for r in range(size):
        if r == rank:
            continue
        a = answers.get(r)
        if a is None:
            silent.append(r)
        elif a.get("call") == label:
            inside.append(r)
        elif a.get("call") is not None:
            outside.append(f"rank {r}: in {a['where']} for {a['for_s']:.1f} s")
        elif a.get("last") is not None:
            outside.append(f"rank {r}: in no hpcml call (its last, {a['last']}, ended "
                           f"{a['ago_s']:.1f} s ago)")
        else:
            outside.append(f"rank {r}: in no hpcml call yet")
    late = [r for r in range(size) if r not in inside]
    lines = [f"hpcml stall inspector: waiting for rank{'s' if len(late) > 1 else ''} "
             f"{_ranks(late)}; rank{'s' if len(inside) > 1 else ''} "
             f"{_ranks(sorted(inside))} had entered {label}; "
             f"{size - len(inside)} of {size} had not"]
    lines += [f"  {o}" for o in outside]
    if silent:
        lines.append(f"  rank{'s' if len(silent) > 1 else ''} {_ranks(silent)}: no answer "
                     f"within {wait:.1f} s (busy outside Python's reach, or gone)")
    return "\n".join(lines)


def _label(what):
    """The call a wait belongs to (a collective's name, without its step)."""
    return what[0] if isinstance(what, tuple) else what


class _Unwatched:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_UNWATCHED = _Unwatched()


def watching(what):
    """Context manager bounding one blocking MPI call by HPCML_TIMEOUT (no-op when unset)."""
    wd = Watchdog.active
    if wd is None:
        return _UNWATCHED
    wd.enter(what)
    return wd


def _where(what):
    if isinstance(what, str):
        return what
    name, step, steps, send, recv = what
    peers = ", ".join(x for x in (f"sending to rank {send}" if send >= 0 else "",
                                  f"receiving from rank {recv}" if recv >= 0 else "") if x)
    return f"{name} step {step} of {steps}, {peers}"


def _digest_value(v):
    if isinstance(v, (bool, np.bool_)) or v is None or isinstance(v, str):
        return repr(bool(v) if isinstance(v, np.bool_) else v)
    if isinstance(v, numbers.Integral):
        return repr(int(v))
    if isinstance(v, numbers.Real):
        return float(v).hex()
    if isinstance(v, np.ndarray):
        return f"{v.dtype.str}{v.shape}" + hashlib.sha256(np.ascontiguousarray(v)).hexdigest()
    return repr(v)


def same_everywhere(comm, params):
    """Collective: True on every rank if every rank passed equal params (a dict; ints
    compare by value whatever their integer type (2 == np.int64(2)), floats likewise, but
    2 and 2.0 differ, as they can mean different things (PCA's n_components); arrays by
    dtype, shape and bytes). One all-reduce of a 56-bit digest."""
    text = repr(sorted((k, _digest_value(v)) for k, v in params.items()))
    h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")
    both = np.array([h, -h], np.int64)
    if comm is not None and comm.Get_size() > 1:
        with watching("comparing settings across ranks (MPI_Allreduce)"):
            comm.Allreduce(MPI.IN_PLACE, both, op=MPI.MAX)
    return bool(both[0] == h and -both[1] == h)
