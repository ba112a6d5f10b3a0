"""The test suite's own process hygiene (tests/procs.py, tests/conftest.py): a subprocess
past its limit is killed with its whole group, and a process left behind is found."""
import os
import subprocess
import sys
import time

import pytest

import procs

TAG = os.environ[procs.TAG_VAR]  # set by tests/conftest.py for this pytest process


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_limit_kills_the_whole_group():
    """A hung command and the child it started both die when the limit passes."""
    code = ("import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            "print(c.pid, flush=True)\n"
            "time.sleep(300)\n")
    proc = procs.start([sys.executable, "-c", code])
    child = int(proc.stdout.readline())
    t = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="still running after 2 s: a hang"):
        procs.finish(proc, limit=2)
    assert time.monotonic() - t < 15
    assert proc.poll() is not None
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the grandchild outlived the limit"
    assert procs.tagged(TAG, exclude={os.getpid()}) == []


def test_limit_is_capped_below_the_tests_timeout():
    procs.begin_test(20)  # as if this test had a 20 s timeout
    assert procs._limit(600) <= 20 - procs.MARGIN
    assert procs._limit(3) == 3


def test_a_forked_child_left_behind_is_found():
    """A fork without exec has no tag in /proc/PID/environ: found as a descendant."""
    pid = os.fork()
    if pid == 0:  # the child: sleep, never return into pytest
        try:
            time.sleep(300)
        finally:
            os._exit(0)
    try:
        assert pid not in procs.tagged(TAG, exclude={os.getpid()})
        assert pid in procs.descendants(os.getpid())
        left = procs.reap(TAG, exclude={os.getpid()}, grace=0.2, parent=os.getpid())
        assert len(left) == 1 and left[0].startswith(f"{pid}: ")
        assert os.waitpid(pid, 0)[1] & 0x7F == 9  # SIGKILL
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except OSError:
            pass


def test_a_process_left_behind_is_found_and_killed():
    """Started outside procs (its own session, nobody waits for it): the end-of-test check
    sees it by the tag it inherited, and kills it."""
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                             start_new_session=True)
    try:
        time.sleep(0.2)
        assert stray.pid in procs.tagged(TAG, exclude={os.getpid()})
        left = procs.reap(TAG, exclude={os.getpid()}, grace=0.2)
        assert len(left) == 1 and left[0].startswith(f"{stray.pid}: ")
        assert stray.wait(timeout=10) == -9
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
