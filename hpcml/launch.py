"""python -m hpcml.launch: start a job on ranks spread over several hosts, checked first.

    python -m hpcml.launch -n 4 -H node1:2,node2:2 python -m hpcml.train --epochs 10
    python -m hpcml.launch -n 4 -H hpcml-h1:2,hpcml-h2:2 --netns python -m hpcml.train

Horovod's `horovodrun -np N -H host:slots,...` for MPICH's `mpiexec`: ranks fill the hosts
in order (ranks 0-1 on node1, 2-3 on node2 above). Before any rank starts, each of these is
one clear message and exit status 2, never a hang:

* a malformed host list (HOST[:SLOTS],..., SLOTS >= 1, no host twice);
* -n larger than the slots the list offers (horovodrun's rule; fewer ranks is fine);
* a host that does not answer within --connect-timeout: `ssh -o BatchMode=yes HOST true`
  (Hydra's own launcher is ssh), or with --netns the network namespace HOST must exist
  and answer the first host (a refused TCP connection counts).

Then `mpiexec -hosts ... -n N COMMAND` runs with HPCML_TIMEOUT exported to every rank (a
rank stuck in a collective aborts the job; an exception on any rank ends all ranks) under
a wall-clock --timeout: past it the launcher kills the whole process group and exits 124.

--netns is for testing on one machine (slurm/dev/fake-hosts.sh makes the namespaces):
mpiexec runs in the first host, the others are reached through `ip netns exec` (a
throw-away rsh script), and MPICH's OFI netmod with libfabric's TCP provider carries the
messages (MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp), so traffic crosses the links. Its
default UCX netmod restricted to TCP (UCX_TLS=tcp) moved the collectives' bytes too, but
left the parameter server's any-source receives unmatched across namespaces: every rank
waited until HPCML_TIMEOUT ended the job.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RSH = """#!/bin/sh
host=$1
shift
exec ip netns exec "$host" sh -c "$*"
"""


# a TCP connection to a closed port that is refused proves the host answered (no ping)
_ANSWERS = """import socket, sys
try:
    socket.create_connection((sys.argv[1], 1), timeout=float(sys.argv[2])).close()
except ConnectionRefusedError:
    pass
except OSError:
    sys.exit(1)
"""


class LaunchError(ValueError):
    """A host list, rank count or host that cannot work; the message says which."""


def parse_hosts(text):
    """'a:2,b,c:1' -> [('a', 2), ('b', 1), ('c', 1)]."""
    out = []
    for item in text.split(","):
        name, _, slots = item.strip().partition(":")
        if not _HOST.match(name):
            raise LaunchError(f"-H: {item.strip()!r} is not HOST or HOST:SLOTS "
                              f"(in {text!r})")
        if slots and not (slots.isdigit() and int(slots) >= 1):
            raise LaunchError(f"-H: the slots of {name!r} must be a whole number >= 1, "
                              f"got {slots!r}")
        if name in [h for h, _ in out]:
            raise LaunchError(f"-H: host {name!r} is listed twice (give its slots once: "
                              f"{name}:N)")
        out.append((name, int(slots) if slots else 1))
    return out


def check_ranks(n, hosts):
    slots = sum(s for _, s in hosts)
    if n > slots:
        spec = ",".join(f"{h}:{s}" for h, s in hosts)
        raise LaunchError(f"-n {n} asks for more ranks than the host list {spec} has slots "
                          f"({slots}): add hosts or slots, or use -n {slots}")


def _ssh_probe(host, timeout):
    if shutil.which("ssh") is None:
        return "ssh not found on this machine (Hydra starts remote ranks with ssh)"
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(timeout)}", host, "true"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return f"no answer to ssh within {timeout + 5:g} s"
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["ssh failed"])[-1]


def _netns_probe(host, first, address, timeout):
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if host not in [line.split()[0] for line in names.splitlines() if line.strip()]:
        return "no network namespace of that name (slurm/dev/fake-hosts.sh up N makes them)"
    r = subprocess.run(["ip", "netns", "exec", first, sys.executable, "-c", _ANSWERS,
                        address, str(timeout)], capture_output=True, text=True)
    return None if r.returncode == 0 else f"no answer from {first} to {address}"


def _netns_address(first, host):
    """host's address as the first host resolves it (its /etc/netns/FIRST/hosts)."""
    r = subprocess.run(["ip", "netns", "exec", first, "getent", "hosts", host],
                       capture_output=True, text=True)
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout.split() else host


def check_hosts(hosts, netns, timeout):
    """Every host at once; raises LaunchError naming each that does not answer."""
    local = {"localhost", "127.0.0.1", os.uname().nodename}
    names = [h for h, _ in hosts]
    if netns:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise LaunchError("--netns needs root and 'ip' (iproute2)")
        first = names[0]
        probe = [(h, lambda h=h: _netns_probe(h, first, _netns_address(first, h), timeout))
                 for h in names]
    else:
        probe = [(h, lambda h=h: _ssh_probe(h, timeout)) for h in names if h not in local]
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(probe)))) as pool:
        failed = [(h, why) for (h, _), why in zip(probe, pool.map(lambda p: p[1](), probe))
                  if why]
    if failed:
        raise LaunchError("unreachable host" + ("s" if len(failed) > 1 else "") + ": " +
                          "; ".join(f"{h}: {why}" for h, why in failed))


def mpiexec_command(n, hosts, command, netns, rsh=None):
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise LaunchError("mpiexec not found (pip install -e \".[mpich]\" provides it)")
    spec = ",".join(f"{h}:{s}" for h, s in hosts)
    cmd = [mpiexec, "-hosts", spec, "-n", str(n)]
    if netns:
        cmd = (["ip", "netns", "exec", hosts[0][0], "env", "MPIR_CVAR_CH4_NETMOD=ofi",
                "FI_PROVIDER=tcp"] + cmd +
               ["-launcher", "rsh", "-launcher-exec", rsh])
    return cmd + list(command)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    from hpcml import __version__
    ap.add_argument("--version", action="version", version=f"hpcml {__version__}")
    ap.add_argument("-n", "--np", dest="n", type=int, required=True, help="ranks in all")
    ap.add_argument("-H", "--hosts", required=True, help="HOST[:SLOTS],... (slots: 1)")
    ap.add_argument("--netns", action="store_true",
                    help="hosts are network namespaces on this machine (testing)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="wall-clock limit in seconds for the whole job (0: none)")
    ap.add_argument("--connect-timeout", type=float, default=10.0,
                    help="seconds each host has to answer before the start")
    ap.add_argument("--rank-timeout", default=os.environ.get("HPCML_TIMEOUT", "300"),
                    help="HPCML_TIMEOUT for the ranks: seconds a collective may wait")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the job, e.g. python -m ...")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"-n must be >= 1, got {args.n}")
    if not args.command:
        ap.error("give the command to run, e.g. python -m hpcml.train")
    return args


def _run(cmd, timeout):
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout or None)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"hpcml.launch: killed after --timeout {timeout:g} s", file=sys.stderr)
        return 124
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)
        return 130


def main(argv=None):
    args = parse_args(argv)
    try:
        hosts = parse_hosts(args.hosts)
        check_ranks(args.n, hosts)
        check_hosts(hosts, args.netns, args.connect_timeout)
        with tempfile.TemporaryDirectory(prefix="hpcml-launch-") as tmp:
            rsh = None
            if args.netns:
                rsh = os.path.join(tmp, "netns-rsh")
                with open(rsh, "w") as f:
                    f.write(RSH)
                os.chmod(rsh, 0o700)
            cmd = mpiexec_command(args.n, hosts, args.command, args.netns, rsh)
            os.environ["HPCML_TIMEOUT"] = str(args.rank_timeout)
            print("hpcml.launch: " + " ".join(cmd), file=sys.stderr, flush=True)
            return _run(cmd, args.timeout)
    except LaunchError as e:
        print(f"hpcml.launch: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
