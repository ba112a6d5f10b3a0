"""Subprocesses in tests: each runs in its own process group under a time limit that ends
before the test's own pytest-timeout, and the whole group is killed when the test is over.

    from procs import run, start, finish
    proc = run([sys.executable, "-m", "hpcml.train", "--help"], limit=30)
    p = start(cmd); ...; rc, out, err = finish(p, limit=60)

Every process a test starts (and their children: mpiexec, its proxies, the ranks) carries
TAG_VAR in its environment; tests/conftest.py checks after each test that none is left and
tests/run_all.py checks again after the whole run.
"""
import os
import signal
import subprocess
import time

import pytest

#: set by tests/conftest.py to this pytest process's own tag; inherited by every child
TAG_VAR = "HPCML_TEST_PROC_TAG"
#: seconds kept between a subprocess limit and the test's own timeout, so that the
#: subprocess limit fires first: the group is killed and the test fails by itself
MARGIN = 10.0

_started = []          # Popen objects started during the current test
_deadline = [None]     # time.monotonic() at which pytest-timeout would end the test


def begin_test(timeout):
    """Called by the conftest fixture as a test starts (timeout: its pytest-timeout)."""
    _started.clear()
    _deadline[0] = time.monotonic() + timeout if timeout else None


def _limit(limit):
    """`limit`, capped so that it ends MARGIN seconds before the test's own timeout."""
    if _deadline[0] is None:
        return limit
    left = _deadline[0] - time.monotonic() - MARGIN
    if left <= 0:
        pytest.fail("no time left in this test's timeout to start a subprocess")
    return min(limit, left)


def start(cmd, env=None, cwd=None, text=True, **kw):
    """Popen in a new session (its own process group), stdout and stderr piped."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, text=text, start_new_session=True, **kw)
    _started.append(proc)
    return proc


def kill_group(proc):
    """SIGKILL proc's whole process group (it leads one: start_new_session); reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


def finish(proc, limit=90):
    """(returncode, stdout, stderr) of a process from start(); past `limit` seconds (capped
    below the test's timeout) the group is killed and the test fails: a hang. The group is
    killed in any case once the leader is done, so nothing it started outlives it."""
    limit = _limit(limit)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        done = proc.poll() is not None
        kill_group(proc)
        what = ("had exited, but a process it started still held its output open" if done
                else "still running")
        pytest.fail(f"{' '.join(map(str, proc.args))} {what} after {limit:.0f} s: a hang "
                    f"(process group killed)")
    finally:
        kill_group(proc)
    return proc.returncode, out, err


def run(cmd, limit=90, env=None, cwd=None, **kw):
    """subprocess.run's CompletedProcess, through start() and finish()."""
    proc = start(cmd, env=env, cwd=cwd, **kw)
    rc, out, err = finish(proc, limit)
    return subprocess.CompletedProcess(cmd, rc, out, err)


def end_test():
    """Kill the groups of every process the test started; describes those still running."""
    alive = [describe(p.pid) for p in _started if p.poll() is None]
    for p in _started:
        kill_group(p)
    _started.clear()
    _deadline[0] = None
    return alive


def tagged(tag, exclude=(), var=TAG_VAR):
    """PIDs of live processes whose environment holds var=tag (zombies have none)."""
    needle = b"\0" + f"{var}={tag}".encode() + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in b"\0" + f.read() + b"\0":
                    found.append(int(name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def descendants(pid):
    """PIDs of every live process below pid (children, theirs, ...), by parent PID: finds
    forked children that exec'd nothing (their /proc environ predates the tag)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":  # a zombie is dead, only not yet reaped
                parent[int(name)] = int(fields[1])
    below, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        below += kids
        todo += kids
    return below


def describe(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"{pid}: " + f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return f"{pid}: (gone)"


def reap(tag, exclude=(), grace=3.0, var=TAG_VAR, parent=None):
    """Wait up to `grace` s for tagged processes (and, with `parent`, its descendants) to
    exit, then SIGKILL the rest; returns descriptions of those still alive after that."""
    t = time.monotonic()
    while True:
        left = sorted(set(tagged(tag, exclude, var)) | set(
            descendants(parent) if parent is not None else ()) - set(exclude))
        if not left or time.monotonic() - t > grace:
            break
        time.sleep(0.1)
    names = [describe(pid) for pid in left]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return names
