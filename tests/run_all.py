#!/usr/bin/env python
"""Run the whole hpcml test suite: serial tests, the MPI tests at 2, 3 and 4 ranks, CUDA
kernel tests on the Numba simulator and the mutation check (tests/mutations.py: deliberate
faults the tests must catch). Afterwards no process started by the suite may be running.

    python tests/run_all.py              # everything (what CI runs)
    python tests/run_all.py --serial     # only the serial tests
    python tests/run_all.py --mpi 3      # only the MPI tests at 3 ranks
    python tests/run_all.py --cuda       # only the CUDA kernel tests (simulator unless
                                         # HPCML_CUDA_REAL=1, for a machine with a GPU)
    python tests/run_all.py --mutations  # only the mutation check

The CUDA tests run beside the mutation check (both are mostly one busy thread, and CI's
machine has 2 cores). Each MPI run is `mpiexec -n N python tests/pytest_rank.py --with-mpi
tests/mpi` under a wall-clock limit (the whole process group is killed past it), with
HPCML_TIMEOUT set so that a rank
stuck in an hpcml collective aborts the job. Ranks other than 0 write their pytest output
to a log that is printed only when the run fails.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import procs  # noqa: E402

#: inherited by every process this run starts; checked for after the run
RUN_TAG_VAR = "HPCML_TEST_RUN_TAG"
RUN_TAG = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
os.environ[RUN_TAG_VAR] = RUN_TAG


def run(cmd, limit, env=None):
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"!! killed after {limit} s (wall-clock limit)", flush=True)
        rc = 124
    print(f"-- exit {rc} in {time.monotonic() - t0:.1f} s", flush=True)
    return rc


class Background:
    """A stage run beside another: started now, its output kept in a file and printed
    when finish() is called (its exit status, 124 past the wall-clock limit)."""

    def __init__(self, cmd, limit, env):
        print("$ " + " ".join(cmd) + "   (in the background)", flush=True)
        self.t0, self.limit = time.monotonic(), limit
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def finish(self):
        left = max(1.0, self.limit - (time.monotonic() - self.t0))
        try:
            rc = self.proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = 124
        self.log.seek(0)
        print(f"$ {' '.join(self.proc.args)}\n{self.log.read()}", end="", flush=True)
        print(f"-- exit {rc} in {time.monotonic() - self.t0:.1f} s"
              + (" (killed: wall-clock limit)" if rc == 124 else ""), flush=True)
        return rc


def _workers():
    """pytest-xdist over the cores (2 on CI: 813 s -> 424 s measured, the tests spend much
    of their time waiting on subprocesses); a file's tests stay in one worker, in order
    (--dist loadfile: a module's Slurm or namespaces are set up once). HPCML_TEST_WORKERS=0
    runs them in this process."""
    try:
        import xdist  # noqa: F401
    except ImportError:
        return []
    n = int(os.environ.get("HPCML_TEST_WORKERS", str(min(4, max(2, os.cpu_count() or 1)))))
    return ["-n", str(n), "--dist", "loadfile"] if n > 0 else []


def mpi_run(n, limit, extra):
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        print("mpiexec not found: install the `mpich` extra or a site MPI", flush=True)
        return 1
    logs = tempfile.mkdtemp(prefix=f"hpcml-tests-n{n}-")
    env = dict(os.environ, HPCML_TIMEOUT=os.environ.get("HPCML_TIMEOUT", "60"),
               HPCML_TEST_LOGDIR=logs)
    rc = run([mpiexec, "-n", str(n), sys.executable, os.path.join("tests", "pytest_rank.py"),
              "--with-mpi", "-q", os.path.join("tests", "mpi")] + extra, limit, env)
    if rc != 0:
        for name in sorted(os.listdir(logs)):
            print(f"==== {name} ====")
            with open(os.path.join(logs, name), errors="replace") as f:
                print(f.read()[-20000:])
    shutil.rmtree(logs, ignore_errors=True)
    return rc


def leftovers():
    """Processes carrying this run's tag (started by a test, directly or not) still alive
    after everything has finished; they are killed and named."""
    return procs.reap(RUN_TAG, exclude={os.getpid()}, grace=5.0, var=RUN_TAG_VAR)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serial", action="store_true", help="only the serial tests")
    ap.add_argument("--mpi", type=int, action="append", help="only MPI tests at N ranks")
    ap.add_argument("--cuda", action="store_true", help="only the CUDA kernel tests")
    ap.add_argument("--mutations", action="store_true", help="only the mutation check")
    ap.add_argument("--limit", type=int, default=600, help="seconds per MPI run")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = ap.parse_args()
    results = {}
    only = args.serial or args.mpi or args.cuda or args.mutations
    if args.serial or not only:
        results["serial"] = run([sys.executable, "-m", "pytest", "-q", "--durations=25",
                                 *_workers(), "tests",
                                 "--ignore", os.path.join("tests", "mpi"),
                                 "--ignore", os.path.join("tests", "cuda")] + args.pytest_args,
                                args.limit * 2)
    if args.mpi or not only:
        for n in args.mpi or (2, 3, 4):
            results[f"mpi n={n}"] = mpi_run(n, args.limit, args.pytest_args)
    cuda = None
    if args.cuda or not only:
        real = os.environ.get("HPCML_CUDA_REAL", "") == "1"
        env = dict(os.environ, **({} if real else {"NUMBA_ENABLE_CUDASIM": "1"}))
        cmd = [sys.executable, "-m", "pytest", "-q", os.path.join("tests", "cuda")] + \
            args.pytest_args
        name = "cuda (gpu)" if real else "cuda (simulator)"
        if args.mutations or not only:  # the two share the 2 cores: run side by side
            cuda = (name, Background(cmd, args.limit, env))
        else:
            results[name] = run(cmd, args.limit, env)
    if args.mutations or not only:
        # after the serial and MPI tests passed on this tree, the faults' tests (serial or
        # MPI tests) are known to pass unmodified: the mutation check skips its own run
        green = not only and not args.pytest_args and all(v == 0 for v in results.values())
        results["mutations"] = run([sys.executable, os.path.join("tests", "mutations.py")]
                                   + (["--no-baseline"] if green else []), args.limit)
    if cuda is not None:
        results[cuda[0]] = cuda[1].finish()
    left = leftovers()
    if left:
        print("!! processes started by the suite were still running (killed):\n  "
              + "\n  ".join(left), flush=True)
        results["no process left behind"] = 1
    print("\nsummary: " + ", ".join(f"{k}: {'ok' if v == 0 else f'FAILED ({v})'}"
                                    for k, v in results.items()))
    return 0 if all(v == 0 for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
