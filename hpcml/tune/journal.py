"""The study's state: an append-only journal of JSON lines.

Each record is one line written by one os.write() on a file opened with O_APPEND, under an
exclusive fcntl lock, then fsynced, so a reader never sees half a record and several
processes (Slurm array tasks on a shared file system) can append to one journal. A line
that does not parse (a torn tail after a crash) is ignored with a warning, never
rewritten. Records:

    {"op": "study", ...}                            the study's definition (first line)
    {"op": "start", "trial": n, "params": {...}, "unit": [...], "owner": "..."}
    {"op": "report", "trial": n, "step": k, "value": v}
    {"op": "finish", "trial": n, "state": "complete|failed|pruned", "value": v, ...}
    {"op": "restart", "trial": n, "owner": "..."}   re-run after an interruption
    {"op": "beat", "trial": n, "owner": "..."}      its owner is alive (shared journals)
(each with "time", seconds since the epoch)

Trials are rebuilt by replaying the records: a trial with a start and no finish was
running when the study stopped; on resume it runs again with the same parameters.
"""
import contextlib
import fcntl
import json
import math
import os


class JournalError(ValueError):
    pass


def _clean(v):
    """JSON has no NaN/Infinity: non-finite floats are written as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class Journal:
    def __init__(self, path):
        self.path = path
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise JournalError(f"{path}: the folder {d} does not exist")

    @contextlib.contextmanager
    def locked(self):
        """An exclusive lock over the journal (a sidecar .lock file, so that readers of the
        journal itself are never blocked by a writer's fsync)."""
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append(self, *records, lock=True):
        data = "".join(json.dumps(_clean(r), sort_keys=True, allow_nan=False) + "\n"
                       for r in records).encode()
        ctx = self.locked() if lock else contextlib.nullcontext()
        with ctx:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                n = os.write(fd, data)
                if n != len(data):
                    raise JournalError(f"{self.path}: short write ({n} of {len(data)} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self):
        """Every whole record, in order ([] when the journal does not exist)."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        out = []
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                if i != len(lines) - 1:  # only a torn last line is expected
                    raise JournalError(f"{self.path}: line {i + 1} is not a JSON record")
        return out


class Trial:
    __slots__ = ("number", "params", "unit", "state", "value", "reports", "owner",
                 "seconds", "error", "seen")

    def __init__(self, number, params, unit, owner="", seen=0.0):
        self.number, self.params, self.unit, self.owner = number, params, unit, owner
        self.state, self.value, self.reports = "running", None, {}
        self.seconds, self.error, self.seen = None, None, seen

    def row(self):
        return {"trial": self.number, "state": self.state, "value": self.value,
                "seconds": self.seconds, "params": self.params, "error": self.error,
                "reports": {str(k): v for k, v in sorted(self.reports.items())}}


def replay(records):
    """(study definition or None, {number: Trial}) from a journal's records."""
    study, trials = None, {}
    for r in records:
        op = r.get("op")
        if op == "study":
            study = study or r
        elif op == "start":
            trials[r["trial"]] = Trial(r["trial"], r["params"], r.get("unit"),
                                       r.get("owner", ""), r.get("time", 0.0))
        elif op == "report" and r["trial"] in trials:
            trials[r["trial"]].reports[r["step"]] = r["value"]
            trials[r["trial"]].seen = r.get("time", 0.0)
        elif op == "beat" and r["trial"] in trials:  # its owner is alive
            trials[r["trial"]].seen = r.get("time", 0.0)
        elif op == "finish" and r["trial"] in trials:
            t = trials[r["trial"]]
            t.state, t.value = r["state"], r.get("value")
            t.seconds, t.error = r.get("seconds"), r.get("error")
        elif op == "restart" and r["trial"] in trials:  # re-run after an interruption
            t = trials[r["trial"]]
            t.state, t.value, t.reports, t.owner = "running", None, {}, r.get("owner", "")
            t.seen = r.get("time", 0.0)
    return study, trials
