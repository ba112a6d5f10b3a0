"""slurm/train.sbatch runs as written on a single-node Slurm (issue 15, item 14): a real
slurmctld + slurmd started by slurm/dev/local-slurm.sh (root; `apt-get install slurm-wlm
munge`, as .ci/run does). Skipped, saying why, where Slurm is not installed."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import procs
from procs import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [
    pytest.mark.skipif(
        shutil.which("sbatch") is None or shutil.which("slurmctld") is None or
        os.geteuid() != 0,
        reason="needs Slurm (apt-get install slurm-wlm munge) and root to start a local one"),
    pytest.mark.xdist_group("slurm")]  # one worker: one Slurm (its ports)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """One running single-node Slurm for this module's tests (starting one takes seconds);
    stopped, and waited for, after them. Started by plain subprocess.run without the
    tests' process tag (procs.run would kill the daemons with the script's process group,
    and the per-test leftover check would take them for leftovers); the jobs' processes
    carry the tag (sbatch exports the submitting environment), so a job still running
    after its test is still caught."""
    folder = str(tmp_path_factory.mktemp("slurm"))
    env = dict(os.environ, HPCML_SLURM_DIR=folder, SLURM_CONF=os.path.join(folder, "slurm.conf"))
    daemon_env = {k: v for k, v in env.items() if k != procs.TAG_VAR}
    script = os.path.join(ROOT, "slurm", "dev", "local-slurm.sh")
    try:
        r = subprocess.run(["bash", script, "start"], env=daemon_env, capture_output=True,
                           text=True, timeout=60, start_new_session=True)
        assert r.returncode == 0, r.stdout + r.stderr
        yield env
    finally:
        subprocess.run(["bash", script, "stop"], env=daemon_env, capture_output=True, timeout=30)


def _wait(job, env, limit=240):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                             env=env, timeout=30).stdout
        state = out.split("JobState=")[1].split()[0] if "JobState=" in out else "?"
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job], env=env, timeout=30)
    pytest.fail(f"job {job} did not end in {limit} s")


def test_train_sbatch_runs_as_written_on_one_node(slurm, tmp_path):
    r = run(["sbatch", "--parsable", os.path.join(ROOT, "slurm", "train.sbatch"),
             "--epochs", "3", "--hidden", "64"], limit=60, env=slurm, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    state = _wait(job, slurm)
    log = (tmp_path / f"hpcml-train-{job}.out").read_text()
    assert state == "COMPLETED", log
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["ranks"] == 2, summary
    assert summary["outputs"]["last_checkpoint"].startswith(str(tmp_path / "runs" / job))
    assert f"slurm{job}" in summary["run_id"]
    run_dir = tmp_path / "runs" / job  # monitoring: the textfile and the trace
    prom = (run_dir / "hpcml.prom").read_text()
    assert "hpcml_" in prom and prom.endswith("\n")
    trace = json.loads((run_dir / "trace-0.json").read_text())
    assert trace["traceEvents"] if isinstance(trace, dict) else trace


def test_plain_srun_is_one_line_and_srun_pmi2_is_one_world(slurm, tmp_path):
    """`srun -n 2` without --mpi=pmi2 starts two one-rank worlds: one line from task 0,
    exit 2, no traceback per task; with --mpi=pmi2 the same command is one world of 2."""
    cmd = [sys.executable, "-m", "hpcml.train", "--epochs", "1", "--hidden", "16",
           "--progress", "false"]
    r = run(["srun", "-n", "2", *cmd], limit=120, env=slurm, cwd=str(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("error: srun started 2 tasks but each is its own one-rank MPI "
                          "world") == 1 and "Traceback" not in r.stderr, r.stderr
    r = run(["srun", "--mpi=pmi2", "-n", "2", *cmd], limit=120, env=slurm, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["ranks"] == 2


def test_tune_array_tasks_share_one_study(slurm, tmp_path):
    """slurm/tune-array.sbatch: 3 array tasks on a real Slurm finish a 30-trial study on
    one journal: every trial started once and finished once, by more than one task, and
    the trials equal those one process proposes at the same lag (4)."""
    import collections
    space = tmp_path / "s.toml"
    space.write_text('[params.x]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n'
                     '[params.y]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n')
    env = dict(slurm, HPCML_STUDY_DIR=str(tmp_path / "study"),
               PYTHONPATH=os.path.join(ROOT, "tests"))
    args = ["--objective", "tune_objectives:slow", "--space", str(space), "--trials", "30",
            "--verbose", "false", "--plot", "false"]
    r = run(["sbatch", "--parsable", os.path.join(ROOT, "slurm", "tune-array.sbatch"),
             *args], limit=60, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    for task in range(3):
        assert _wait(f"{job}_{task}", env) == "COMPLETED", \
            (tmp_path / f"hpcml-tune-{job}_{task}.out").read_text()
    recs = [json.loads(x) for x in open(tmp_path / "study" / "journal.jsonl")]
    starts = collections.Counter(x["trial"] for x in recs if x["op"] == "start")
    done = collections.Counter(x["trial"] for x in recs if x["op"] == "finish")
    assert sorted(starts) == list(range(30)) and set(starts.values()) == {1}
    assert sorted(done) == list(range(30)) and set(done.values()) == {1}
    assert len({x["owner"] for x in recs if x["op"] == "start"}) >= 2
    r = run([sys.executable, "-m", "hpcml.tune", *args, "--lag", "4", "--output",
             str(tmp_path / "one")], limit=120, env=env)
    assert r.returncode == 0, r.stderr
    one = [json.loads(x)["params"] for x in open(tmp_path / "one" / "trials.jsonl")]
    shared = [json.loads(x)["params"]
              for x in open(tmp_path / "study" / "task-0" / "trials.jsonl")]
    assert one == shared


def test_fit_sbatch_runs_as_written_on_one_node(slurm, tmp_path):
    """slurm/fit.sbatch (issue 20): a k-means fit of digits by the allocation's 2 ranks."""
    r = run(["sbatch", "--parsable", os.path.join(ROOT, "slurm", "fit.sbatch"), "kmeans",
             "digits", "--clusters", "10"], limit=60, env=slurm, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    state = _wait(job, slurm)
    log = (tmp_path / f"hpcml-fit-{job}.out").read_text()
    assert state == "COMPLETED", log
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["ranks"] == 2, summary
    assert (tmp_path / "fits" / job / "model.h5").exists()


def _submit(script, args, env, cwd, extra=()):
    r = run(["sbatch", "--parsable", *extra, os.path.join(ROOT, "slurm", script), *args],
            limit=60, env=env, cwd=str(cwd))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def _last_json(log):
    return json.loads(log.strip().splitlines()[-1])


#: every job's script with quick settings: (script, arguments, the log's name)
QUICK = [
    ("pca.sbatch", ["--data", "digits", "--components", "5"], "pca"),
    ("tsne.sbatch", ["--data", "digits", "--max-iter", "250", "--plot", "false"], "tsne"),
    ("federated.sbatch", ["--clients", "10", "--rounds", "2", "--plot", "false"], "federated"),
    ("stream.sbatch", ["sgd", "digits", "--detector", "adwin", "--plot", "false"], "stream"),
    ("scaling.sbatch", ["--quick", "--ranks", "1,2,4", "--cases", "allreduce",
                        "--reps", "2"], "scaling"),
]


def test_every_job_script_runs_as_written(slurm, tmp_path):
    """pca, tsne, federated, stream and scaling's scripts (train, fit and tune have their
    own tests above) submitted together, quick settings: each job COMPLETED with a "done"
    summary from the ranks the script asked for (scaling: its JSON, each P a step)."""
    jobs = [(_submit(script, args, slurm, tmp_path), name) for script, args, name in QUICK]
    # written for 2 nodes x 4 ranks: here one node's 2 tasks, as its header says to
    jobs.append((_submit("allreduce-bench.sbatch", ["--sizes", "1024,65536", "--no-calibrate",
                                                    "--budget", "0.05", "--no-plot"],
                         slurm, tmp_path, extra=("-N", "1", "--ntasks-per-node", "2")),
                 "allreduce"))
    for job, name in jobs:
        state = _wait(job, slurm)
        log = (tmp_path / f"hpcml-{name}-{job}.out").read_text()
        assert state == "COMPLETED", log[-3000:]
        if name == "allreduce":  # the self-test, then the benchmark's JSON
            assert list((tmp_path / "results" / f"slurm-{job}").glob("*.json")), log
            continue
        if name == "scaling":  # each P one step of the job; the results in its folder
            res = json.loads((tmp_path / "scaling" / job / "scaling.json").read_text())
            assert sorted(res["runs"]["1"], key=int) == ["1", "2", "4"]
            assert res["networks"]["1"]["alpha_s"] > 0
            continue
        summary = _last_json(log)
        assert summary.get("status", "done") == "done", summary
        assert summary.get("ranks", 1) == (1 if name == "stream" else 2), summary


@pytest.mark.parametrize("script", ["pca.sbatch", "train.sbatch"])
def test_a_missing_dataset_fails_the_job_with_one_message(slurm, tmp_path, script):
    missing = str(tmp_path / "no-such-shards")
    job = _submit(script, ["--data", missing], slurm, tmp_path)
    t = time.monotonic()
    state = _wait(job, slurm, limit=120)
    name = script.split(".")[0]
    log = (tmp_path / f"hpcml-{name}-{job}.out").read_text()
    assert state == "FAILED", log
    assert time.monotonic() - t < 60
    assert log.count(missing) >= 1 and "Traceback" not in log, log
    errors = [x for x in log.splitlines() if "error" in x.lower() and missing in x]
    assert len(errors) == 1, log


def _scontrol(job, env):
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                          env=env, timeout=30).stdout


def test_train_requeued_after_usr1_ends_with_an_uninterrupted_runs_parameters(slurm, tmp_path):
    """USR1 to the ranks (as --signal=USR1@120 sends it before the time limit): the job
    checkpoints, exits 0 with "stopped", requeues itself; the rerun (restart 1) resumes
    from the checkpoint and ends with the parameters of a run that was never stopped."""
    args = ["--epochs", "30", "--hidden", "64", "--checkpoint-every", "20"]
    full = dict(slurm, HPCML_RUN_DIR=str(tmp_path / "full"))
    job = _submit("train.sbatch", args, full, tmp_path)
    assert _wait(job, full) == "COMPLETED"
    want = _last_json((tmp_path / f"hpcml-train-{job}.out").read_text())
    env = dict(slurm, HPCML_RUN_DIR=str(tmp_path / "stopped"))
    job = _submit("train.sbatch", args, env, tmp_path)
    log = tmp_path / f"hpcml-train-{job}.out"
    t = time.monotonic()
    while "RUNNING" not in _scontrol(job, env) or not (tmp_path / "stopped" /
                                                        "checkpoints" / "latest").exists():
        assert time.monotonic() - t < 90, _scontrol(job, env)
        time.sleep(0.5)
    r = run(["scancel", "--signal=USR1", job], limit=30, env=env)  # the step's ranks
    assert r.returncode == 0, r.stderr
    t = time.monotonic()
    while "Restarts=1" not in _scontrol(job, env):
        assert time.monotonic() - t < 90, log.read_text() if log.exists() else "no log"
        time.sleep(0.5)
    assert _wait(job, env, limit=240) == "COMPLETED", log.read_text()
    text = log.read_text()
    assert '"status": "stopped"' in text and "requeueing job" in text, text
    got = _last_json(text)
    assert got["status"] == "done" and got["resumed_from"], got
    assert got["step"] == want["step"] and got["params_sha256"] == want["params_sha256"]
