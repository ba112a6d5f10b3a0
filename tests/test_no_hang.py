"""No hangs: an exception or a stuck rank under `mpiexec -n 4 python -m ...` ends every rank.

These launch real MPI jobs (mpiexec from the mpich wheel or a site MPI) and time them.
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import procs

MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")


def launch(n, *args, env=None, limit=60, code=None):
    """Run `python -m hpcml.comm.selftest args` (or `python -c code`) on n ranks; the whole
    process group is killed if it outlives `limit` (then the test fails, it never hangs)."""
    prog = ["-c", code] if code else ["-m", "hpcml.comm.selftest", *map(str, args)]
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *prog]
    t0 = time.monotonic()
    proc = procs.start(cmd, env=dict(os.environ, **(env or {})))
    rc, out, err = procs.finish(proc, limit)
    return subprocess.CompletedProcess(cmd, rc, out, err), time.monotonic() - t0


def test_exception_on_one_rank_of_four_ends_all_four():
    proc, seconds = launch(4, "--fail-rank", 2)
    assert proc.returncode != 0
    assert seconds < 20, f"took {seconds:.1f} s"
    lines = proc.stderr.splitlines()
    assert "[rank 2] Traceback (most recent call last):" in lines
    assert "[rank 2] RuntimeError: injected failure on rank 2" in lines
    # the other ranks were blocked in an all-reduce and printed no traceback of their own
    assert not any(ln.startswith(("[rank 0] Traceback", "[rank 1] Traceback",
                                  "[rank 3] Traceback")) for ln in lines)


def test_stuck_rank_is_reported_and_job_aborted_by_timeout():
    proc, seconds = launch(4, "--hang-rank", 1, env={"HPCML_TIMEOUT": "2"})
    assert proc.returncode != 0
    assert seconds < 20, f"took {seconds:.1f} s"
    assert "timed out after 2 s (HPCML_TIMEOUT)" in proc.stderr
    assert "aborting all ranks" in proc.stderr
    # the stall inspector (attached by entry_point): rank 1 never entered
    assert "had entered" in proc.stderr and "3 of 4 had not" not in proc.stderr
    assert "1 of 4 had not" in proc.stderr, proc.stderr
    assert "  rank 1: in no hpcml call" in proc.stderr, proc.stderr
    # the stuck peer is named first, and the wait is the drill's all-reduce (not the set-up
    # of hpcml's state, which once named an unset HPCML_COMM_MODEL)
    assert "waiting for rank 1; " in proc.stderr and "setting up" not in proc.stderr
    assert "in allreduce(ring) step" in proc.stderr, proc.stderr


def test_stall_inspector_names_who_entered_and_what_the_others_do():
    """Horovod's stall inspector: ranks 0 and 3 wait in a ring all-reduce, rank 1 sleeps
    outside any call, rank 2 waits in a barrier (entered 1.5 s later, so that ranks 0 and 3
    time out first: the rank that times out first reports); the message tells them apart."""
    code = ("import time, numpy as np; from hpcml import comm as hc\n"
            "hc.allreduce(np.ones(2))  # attaches the inspector (first call on the world)\n"
            "r = hc.world().Get_rank()\n"
            "if r == 1: time.sleep(3600)\n"
            "if r == 2: time.sleep(1.5); hc.barrier()  # times out after ranks 0 and 3\n"
            "hc.allreduce(np.ones(1 << 16), algorithm='ring')\n")
    proc, seconds = launch(4, code=code, env={"HPCML_TIMEOUT": "2"})
    assert proc.returncode != 0 and seconds < 20
    err = proc.stderr
    assert ("hpcml stall inspector: waiting for ranks 1-2; ranks 0, 3 had entered "
            "allreduce(ring); 2 of 4 had not") in err, err
    assert "  rank 1: in no hpcml call (its last, MPI_Allreduce, ended" in err, err
    assert "  rank 2: in MPI_Barrier for" in err, err


def test_stall_report_lists_silent_ranks():
    from hpcml.comm.guard import _stall_report
    text = _stall_report("allreduce(tree)", {1: {"call": "allreduce(tree)"},
                                             3: {"call": None, "last": None}}, 0, 5, 1.5)
    assert text.splitlines() == [
        "hpcml stall inspector: waiting for ranks 2-4; ranks 0-1 had entered "
        "allreduce(tree); 3 of 5 had not",
        "  rank 3: in no hpcml call yet",
        "  ranks 2, 4: no answer within 1.5 s (busy outside Python's reach, or gone)"]


def test_watchdog_covers_plain_library_calls():
    """No entry_point: HPCML_TIMEOUT still bounds hpcml collectives in a user's own script."""
    code = ("import time, numpy as np; from mpi4py import MPI; from hpcml import comm as hc\n"
            "if MPI.COMM_WORLD.Get_rank() == 1: time.sleep(3600)\n"
            "hc.allreduce(np.ones(8))\n")
    proc, seconds = launch(3, code=code, env={"HPCML_TIMEOUT": "2"})
    assert proc.returncode != 0 and seconds < 20
    assert "timed out after 2 s (HPCML_TIMEOUT)" in proc.stderr


def test_point_to_point_wait_is_bounded_by_timeout():
    """A receive whose sender never sends: HPCML_TIMEOUT names the call and the peer."""
    code = ("import time, numpy as np; from hpcml import comm as hc\n"
            "hc.allreduce(np.ones(2))  # starts the watchdog\n"
            "if hc.world().Get_rank() == 1: time.sleep(3600)\n"
            "hc.recv(np.empty(4), source=1, tag=7)\n")
    proc, seconds = launch(2, code=code, env={"HPCML_TIMEOUT": "2"})
    assert proc.returncode != 0 and seconds < 20
    assert "timed out after 2 s (HPCML_TIMEOUT) in MPI_Recv from rank 1 (tag 7)" in \
        proc.stderr, proc.stderr


def test_selftest_passes_at_three_ranks():
    proc, _ = launch(3, limit=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout and "FAIL" not in proc.stdout


def test_srun_without_pmi_is_refused_loudly():
    """srun --mpi=none gives each task a world of 1: the job says so in one line (from
    Slurm's task 0, not a traceback per task) and every task exits 2."""
    outs = []
    for procid in ("0", "2"):
        env = dict(os.environ, SLURM_STEP_NUM_TASKS="4", SLURM_PROCID=procid)
        for job in ("hpcml.comm.selftest", "hpcml.train"):
            outs.append(procs.run([sys.executable, "-m", job], limit=60, env=env))
    assert [p.returncode for p in outs] == [2, 2, 2, 2]
    assert [p.stderr for p in outs[2:]] == ["", ""]
    for p in outs[:2]:
        assert p.stderr == ("error: srun started 4 tasks but each is its own one-rank MPI "
                            "world: launch with `srun --mpi=pmi2 ...` for the mpich wheel (or "
                            "your site MPI's --mpi plugin), or use mpiexec inside the "
                            "allocation\n"), p.stderr


def test_bad_row_met_while_training_ends_the_job(tmp_path):
    """A NaN row that only rank 1 reads, in the middle of an epoch, while every rank
    all-reduces after each batch: rank 1 names the file and row, the job ends non-zero."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import h5py
    from data_helpers import indexed_dataset
    folder = indexed_dataset(str(tmp_path / "d"), [400, 400])
    with h5py.File(os.path.join(folder, "shard-00001.h5"), "r+") as f:
        f["x"][250, 1] = np.nan  # global row 650: rank 1's half
    code = ("import numpy as np; from mpi4py import MPI; from hpcml import comm as hc\n"
            "from hpcml.data import ShardedDataset\n"
            "@hc.entry_point\n"
            "def main():\n"
            f"    ds = ShardedDataset({folder!r}, MPI.COMM_WORLD)\n"
            "    for x, y in ds.loader(50, shuffle=False):\n"
            "        hc.allreduce(np.ones(4))\n"
            "main()\n")
    proc, seconds = launch(2, code=code)
    assert proc.returncode != 0 and seconds < 30, (proc.returncode, seconds)
    assert "[rank 1] hpcml.data.format.DataError: " in proc.stderr or \
        "[rank 1] DataError: " in proc.stderr, proc.stderr
    assert ("shard-00001.h5: row 250 (row 650 of the dataset, from 0) has a NaN or Inf "
            "feature") in proc.stderr


def test_every_job_installs_the_guard_and_its_threads():
    """Every console script's job (and `python -m hpcml.<job>`) runs through
    hc.entry_point: the guard that ends every rank on one rank's exception, the watchdog,
    and cores / ranks-per-node compute threads. hpcml.federated's main lacked it: under
    mpiexec -n 2 each rank ran two BLAS threads on a 2-core node (8x slower per round) and
    an exception on one rank was not an abort of all."""
    import importlib
    import re
    text = open(os.path.join(os.path.dirname(__file__), "..", "setup.py")).read()
    scripts = re.findall(r'"(hpcml-[a-z]+)=([\w.]+):(\w+)"', text)
    assert len(scripts) >= 8
    for name, module, func in scripts:
        if name == "hpcml-bench":  # a dispatcher: each benchmark has its own main
            continue
        if name == "hpcml-launch":  # starts mpiexec, is no rank: its wall-clock limit
            continue  # and HPCML_TIMEOUT are tested in tests/test_multihost.py
        mod = importlib.import_module(module)
        f = getattr(mod, func)
        inner = getattr(mod, "_main", None)  # hpcml.data: main() wraps _main()
        assert getattr(f, "hpcml_entry_point", False) or \
            getattr(inner, "hpcml_entry_point", False), f"{name}: {module}:{func}"
