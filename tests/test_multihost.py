"""Real multi-host runs (issue 21, item 3): two "hosts" that are network namespaces on a
private bridge (slurm/dev/fake-hosts.sh), each with its own address, MPICH over TCP
between them, started by `python -m hpcml.launch --netns` with a host list. Skipped,
saying why, when not root or when network namespaces cannot be made (a container without
CAP_SYS_ADMIN); CI runs as root."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from procs import finish, run, start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "slurm", "dev", "fake-hosts.sh")
PREFIX = f"hpcmlt{os.getpid() % 100000}h"
NET = f"10.231.{os.getpid() % 200 + 20}"
H1, H2 = PREFIX + "1", PREFIX + "2"


def train(epochs=6):
    return [sys.executable, "-m", "hpcml.train", "--hidden", "32", "--epochs", str(epochs),
            "--batch-size", "32", "--test-data", "none", "--progress", "false",
            "--dtype", "float64"]


def _why_not():
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None or shutil.which("mpiexec") is None:
        return "needs 'ip' (iproute2) and mpiexec"
    probe = f"{PREFIX}probe"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None if r.returncode == 0 else f"cannot make a network namespace: {r.stderr}"


WHY = _why_not()
pytestmark = [pytest.mark.skipif(WHY is not None, reason=str(WHY)),
              pytest.mark.xdist_group("netns")]  # one worker: the module's two hosts


@pytest.fixture(scope="module")
def env():
    """Two hosts for this module; taken down after it (also when a test failed)."""
    env = dict(os.environ, HPCML_NETNS_PREFIX=PREFIX, HPCML_NETNS_NET=NET,
               HPCML_TIMEOUT="60")
    try:
        r = subprocess.run(["bash", SCRIPT, "up", "2"], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        yield env
    finally:
        subprocess.run(["bash", SCRIPT, "down"], env=env, capture_output=True, timeout=60)


def _launch(env, n, hosts, command, *extra):
    return start([sys.executable, "-m", "hpcml.launch", "-n", str(n), "-H", hosts,
                  "--netns", "--timeout", "150", *extra, *command], env=env, cwd=ROOT)


def _link_bytes(env, host):
    out = run(["bash", SCRIPT, "bytes", host], env=env, limit=20).stdout.split()
    return int(out[0]) + int(out[1])


def test_collectives_across_hosts_equal_mpis_own(env):
    """Every hpcml collective (tests/mpi/test_allreduce.py and test_rooted_and_blocks.py:
    each algorithm against MPI's own collective, bit for bit, on exactly representable
    sums) with 2 ranks on each host; the traffic crossed the link."""
    before = _link_bytes(env, H2)
    rc, out, err = finish(_launch(env, 4, f"{H1}:2,{H2}:2", [
        sys.executable, "tests/pytest_rank.py", "--with-mpi", "-q", "-x",
        "-p", "no:cacheprovider", "tests/mpi/test_allreduce.py",
        "tests/mpi/test_rooted_and_blocks.py"]), limit=240)
    assert rc == 0, out[-3000:] + err[-3000:]
    assert " passed" in out and "failed" not in out, out[-2000:]
    crossed = _link_bytes(env, H2) - before
    assert crossed > 4 << 20, f"only {crossed} bytes crossed {H2}'s link"


def _summary(out):
    return json.loads(out.strip().splitlines()[-1])


def test_training_across_hosts_is_bit_identical_to_one_host(env, tmp_path):
    """python -m hpcml.train at 2 ranks, one per host, ends with the same parameters (the
    summary's SHA-256 of them) as the same 2 ranks on one machine."""
    one = start(["mpiexec", "-n", "2", *train(), "--checkpoint-dir", str(tmp_path / "one")],
                env=env, cwd=ROOT)
    rc, out, err = finish(one, limit=120)
    assert rc == 0, err[-3000:]
    here = _summary(out)
    rc, out, err = finish(_launch(env, 2, f"{H1}:1,{H2}:1",
                                  train() + ["--checkpoint-dir", str(tmp_path / "two")]),
                          limit=150)
    assert rc == 0, err[-3000:]
    there = _summary(out)
    assert there["step"] == here["step"] > 0
    assert there["params_sha256"] == here["params_sha256"]


def test_parameter_server_across_hosts_equals_one_host(env, tmp_path):
    """--parallel ps (bsp, one server) with 2 ranks on each host: the same parameters as
    on one machine. Over MPICH's UCX netmod (UCX_TLS=tcp) the servers' any-source
    receives were never matched across the namespaces and every rank waited until
    HPCML_TIMEOUT ended the job; hpcml.launch --netns now uses the OFI netmod."""
    ps = ["--parallel", "ps", "--servers", "1"]
    rc, out, err = finish(start(["mpiexec", "-n", "4", *train(3), *ps], env=env, cwd=ROOT),
                          limit=120)
    assert rc == 0, err[-3000:]
    here = _summary(out)
    rc, out, err = finish(_launch(env, 4, f"{H1}:2,{H2}:2", train(3) + ps), limit=150)
    assert rc == 0, err[-3000:]
    there = _summary(out)
    assert there["parameter_server"]["workers"] == 3 and there["step"] == here["step"] > 0
    assert there["params_sha256"] == here["params_sha256"]


def _ranks_in(host):
    """PIDs of python processes (the ranks) in the namespace `host`."""
    pids = subprocess.run(["ip", "netns", "pids", host], capture_output=True,
                          text=True).stdout.split()
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"hpcml.train" in argv and os.path.basename(argv[0].decode()).startswith("python"):
            out.append(int(pid))
    return out


def test_a_killed_rank_on_one_host_ends_every_rank_on_both(env, tmp_path):
    proc = _launch(env, 4, f"{H1}:2,{H2}:2",
                   train(100000) + ["--checkpoint-dir", str(tmp_path)])
    t = time.monotonic()
    while len(_ranks_in(H2)) < 2 or len(_ranks_in(H1)) < 2:
        assert proc.poll() is None, finish(proc, limit=10)
        assert time.monotonic() - t < 60, "the ranks did not start"
        time.sleep(0.2)
    time.sleep(2)  # well into training
    os.kill(_ranks_in(H2)[-1], signal.SIGKILL)
    t = time.monotonic()
    rc, out, err = finish(proc, limit=60)
    took = time.monotonic() - t
    assert rc not in (0, 124), (rc, err[-2000:])
    assert took < 30, took
    assert _ranks_in(H1) == [] and _ranks_in(H2) == []


@pytest.mark.parametrize("hosts, n, match", [
    ("{H1}:1,{PREFIX}9:1", 2, "unreachable host: {PREFIX}9: no network namespace"),
    ("{H1}:1,{H2}:1", 4, "-n 4 asks for more ranks than the host list .* has slots \\(2\\)"),
    ("{H1}:0", 1, "the slots of '{H1}' must be a whole number >= 1"),
    ("{H1},{H1}", 2, "listed twice"),
])
def test_bad_host_lists_are_one_message_before_any_rank_starts(env, hosts, n, match):
    import re
    fill = dict(H1=H1, H2=H2, PREFIX=PREFIX)
    t = time.monotonic()
    rc, out, err = finish(_launch(env, n, hosts.format(**fill), train()), limit=60)
    assert rc == 2 and time.monotonic() - t < 20, (rc, err)
    assert re.search(match.format(**fill), err), err
    assert err.count("hpcml.launch: error:") == 1 and "Traceback" not in err
