"""python -m hpcml.launch without root or namespaces (issue 21): a host that cannot be
reached over ssh and a malformed list are each one message, exit 2, before any rank; the
host list is parsed as horovodrun's -H."""
import sys
import time

import pytest

from hpcml.launch import LaunchError, check_ranks, mpiexec_command, parse_hosts
from procs import run


def test_host_lists_parse_like_horovodrun():
    assert parse_hosts("a:2,b,c:1") == [("a", 2), ("b", 1), ("c", 1)]
    for bad, match in (("a:x", "whole number"), ("a,a:2", "listed twice"), ("-a", "HOST")):
        with pytest.raises(LaunchError, match=match):
            parse_hosts(bad)
    check_ranks(3, [("a", 2), ("b", 2)])  # fewer ranks than slots is fine
    with pytest.raises(LaunchError, match="-n 5 asks for more ranks"):
        check_ranks(5, [("a", 2), ("b", 2)])
    cmd = mpiexec_command(4, [("a", 2), ("b", 2)], ["python", "-V"], netns=False)
    assert cmd[1:5] == ["-hosts", "a:2,b:2", "-n", "4"] and cmd[-2:] == ["python", "-V"]


def test_an_unreachable_ssh_host_is_one_message_naming_it():
    t = time.monotonic()
    r = run([sys.executable, "-m", "hpcml.launch", "-n", "2", "-H",
             "localhost:1,no-such-host.invalid:1", "--connect-timeout", "5",
             sys.executable, "-c", "print('started')"], limit=60)
    assert r.returncode == 2 and time.monotonic() - t < 30, (r.returncode, r.stderr)
    assert "unreachable host: no-such-host.invalid:" in r.stderr, r.stderr
    assert r.stderr.count("hpcml.launch: error:") == 1 and "started" not in r.stdout
    assert "Traceback" not in r.stderr
