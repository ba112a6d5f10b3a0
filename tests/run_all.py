#!/usr/bin/env python
"""Run the whole hpcml test suite: serial tests, CUDA kernel tests on the Numba simulator,
then the MPI tests at 2, 3 and 4 ranks.

    python tests/run_all.py            # everything (what CI runs)
    python tests/run_all.py --serial   # only the serial tests
    python tests/run_all.py --mpi 3    # only the MPI tests at 3 ranks
    python tests/run_all.py --cuda     # only the CUDA kernel tests (simulator unless
                                       # HPCML_CUDA_REAL=1, for a machine with a GPU)

Each MPI run is `mpiexec -n N python tests/pytest_rank.py --with-mpi tests/mpi` under a wall-clock
limit (the whole process group is killed past it), with HPCML_TIMEOUT set so that a rank
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serial", action="store_true", help="only the serial tests")
    ap.add_argument("--mpi", type=int, action="append", help="only MPI tests at N ranks")
    ap.add_argument("--cuda", action="store_true", help="only the CUDA kernel tests")
    ap.add_argument("--limit", type=int, default=600, help="seconds per MPI run")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = ap.parse_args()
    results = {}
    only = args.serial or args.mpi or args.cuda
    if args.serial or not only:
        results["serial"] = run([sys.executable, "-m", "pytest", "-q", "tests",
                                 "--ignore", os.path.join("tests", "mpi"),
                                 "--ignore", os.path.join("tests", "cuda")] + args.pytest_args,
                                args.limit * 2)
    if args.cuda or not only:
        real = os.environ.get("HPCML_CUDA_REAL", "") == "1"
        env = dict(os.environ, **({} if real else {"NUMBA_ENABLE_CUDASIM": "1"}))
        results["cuda (gpu)" if real else "cuda (simulator)"] = run(
            [sys.executable, "-m", "pytest", "-q", os.path.join("tests", "cuda")]
            + args.pytest_args, args.limit, env)
    if args.mpi or not only:
        for n in args.mpi or (2, 3, 4):
            results[f"mpi n={n}"] = mpi_run(n, args.limit, args.pytest_args)
    print("\nsummary: " + ", ".join(f"{k}: {'ok' if v == 0 else f'FAILED ({v})'}"
                                    for k, v in results.items()))
    return 0 if all(v == 0 for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
