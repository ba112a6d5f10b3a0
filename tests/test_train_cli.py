"""python -m hpcml.train as users run it: settings, exact resume after a kill, preemption,
errors on every rank. The MPI jobs run under mpiexec with a hard time limit."""
import json
import os
import re
import shutil
import signal
import sys
import time

import h5py
import numpy as np
import pytest

from hpcml import train
from data_helpers import indexed_dataset
from procs import finish, run, start

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
FAST = ["--hidden", "32", "--epochs", "40", "--batch-size", "32", "--test-data", "none",
        "--progress", "false", "--dtype", "float64"]


def _launch(n, args):
    return start([MPIEXEC, "-n", str(n), sys.executable, "-m", "hpcml.train", *args])


def _finish(proc, limit=90):
    return finish(proc, limit)


def _summary(out):
    return json.loads(out.strip().splitlines()[-1])


def _rank_pids(marker):
    """PIDs of the python ranks whose command line contains `marker`."""
    out = run(["pgrep", "-f", f"hpcml.train.*{marker}"], limit=10).stdout.split()
    pids = []
    for pid in map(int, out):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0].decode()).startswith("python"):
            pids.append(pid)
    return sorted(pids)


def _wait_for_checkpoint(folder, proc, at_least, limit=60):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        try:
            with open(os.path.join(folder, "latest")) as f:
                if json.load(f)["step"] >= at_least:
                    return
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            pytest.fail("the run ended before its first checkpoint")
        time.sleep(0.01)
    pytest.fail("no checkpoint appeared")


# --- settings --------------------------------------------------------------------------
def test_toml_config_then_flags(tmp_path):
    cfgfile = tmp_path / "run.toml"
    cfgfile.write_text('hidden = "64,32"\nlr = 0.2\nepochs = 2\noptimizer = "adamw"\n')
    cfg = train.parse_args(["--config", str(cfgfile), "--lr", "0.3"])
    assert cfg["hidden_sizes"] == [64, 32] and cfg["lr"] == 0.3 and cfg["epochs"] == 2
    assert cfg["optimizer"] == "adamw" and cfg["batch_size"] == 64  # default kept


def test_toml_lists_are_taken_as_lists(tmp_path):
    """`hidden = [256, 128]` is how TOML writes a list: taken as --hidden 256,128."""
    cfgfile = tmp_path / "run.toml"
    cfgfile.write_text("hidden = [256, 128]\n")
    assert train.parse_args(["--config", str(cfgfile)])["hidden_sizes"] == [256, 128]
    cfgfile.write_text("hidden = [256, 1.5]\n")
    with pytest.raises(train.ConfigError, match="hidden = \\[256, 1.5\\]: expected str"):
        train.parse_args(["--config", str(cfgfile)])


@pytest.mark.parametrize("args,match", [
    (["--lr", "-1"], "lr = -1.0: must be > 0"),
    (["--epochs", "two"], "--epochs = 'two': expected int"),
    (["--optimizer", "lamb"], "optimizer = 'lamb': must be one of sgd, adam, adamw"),
    (["--hidden", "64,x"], "hidden = '64,x': must be comma-separated integers"),
    (["--resume", "auto"], "'auto' needs --checkpoint-dir"),
    (["--nesterov", "maybe"], "--nesterov = 'maybe': expected bool"),
    (["--log-every", "-1"], "log-every = -1.0: must be a number of seconds >= 0"),
    (["--log-every", "inf"], "log-every = inf: must be a number of seconds >= 0"),
])
def test_bad_settings_are_named(args, match):
    with pytest.raises(train.ConfigError, match=match):
        train.parse_args(args)


def test_bad_toml_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = [\n")
    with pytest.raises(train.ConfigError, match="bad.toml: not valid TOML"):
        train.parse_args(["--config", str(bad)])
    bad.write_text("learning_rate = 0.1\n")
    with pytest.raises(train.ConfigError, match="unknown setting 'learning_rate'"):
        train.parse_args(["--config", str(bad)])


@needs_mpi
def test_cli_error_exits_2_with_one_message():
    rc, out, err = _finish(_launch(2, ["--batch-size", "0"]), limit=60)
    assert rc != 0 and err.count("error: batch-size = 0: must be >= 1") == 1, err


@needs_mpi
def test_mistyped_flag_is_one_message_with_a_suggestion():
    """`--epoch 3` is not taken as `--epochs` (no abbreviations); under mpiexec -n 4 the
    error is printed once, by rank 0, with the closest flag, and no usage dump per rank."""
    rc, out, err = _finish(_launch(4, ["--epoch", "3"]), limit=60)
    assert rc == 2, (rc, err)
    assert err.count("unrecognized arguments: --epoch 3 (did you mean --epochs?)") == 1, err
    assert "usage:" not in err, err


def test_defaults_reach_97_percent_on_digits():
    summary, _ = train.run(train.validate({k: v[0] for k, v in train.SETTINGS.items()}),
                           log=lambda *a: None)
    assert summary["test_accuracy"] >= 0.97, summary


@needs_mpi
@pytest.mark.parametrize("ranks", [3, 5])
def test_defaults_on_an_odd_rank_count(ranks):
    """`mpiexec -n 3|5 python -m hpcml.train` with the defaults (global batch 64): runs,
    and learns as one process does."""
    rc, out, err = _finish(_launch(ranks, ["--progress", "false"]), limit=90)
    assert rc == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ranks"] == ranks and summary["test_accuracy"] >= 0.97, summary


@needs_mpi
def test_progress_lines_when_output_is_not_a_terminal():
    """Under mpiexec stderr is a pipe (no bar): rank 0 logs step, epoch %, samples/s, loss,
    lr, elapsed and ETA every --log-every seconds, before the first epoch ends."""
    rc, out, err = _finish(_launch(2, ["--hidden", "1024,1024", "--epochs", "1",
                                       "--batch-size", "16", "--log-every", "0.1"]), limit=90)
    assert rc == 0, err
    lines = out.splitlines()
    first_epoch = next(i for i, ln in enumerate(lines) if ln.startswith("epoch   1"))
    ticks = [ln for ln in lines[:first_epoch] if ln.startswith("step ")]
    assert len(ticks) >= 2, out
    assert all(re.search(r"step \d+/90  epoch 1 \d+%  [\d,]+ samples/s  loss [\d.]+ \(rank 0\)"
                         r"  lr [\d.e-]+  elapsed \d+:\d\d  ETA \d+:\d\d$", ln)
               for ln in ticks), ticks
    assert "it/s" not in err and "\r" not in out + err  # no tqdm bar in a log


# --- faults ------------------------------------------------------------------------------
@needs_mpi
def test_kill_one_rank_then_resume_is_bit_identical(tmp_path):
    full_dir, ck = str(tmp_path / "full"), str(tmp_path / "ck")
    rc, out, err = _finish(_launch(2, FAST + ["--checkpoint-dir", full_dir]))
    assert rc == 0, err
    uninterrupted = _summary(out)
    marker = str(tmp_path / "ck")
    proc = _launch(2, FAST + ["--checkpoint-dir", ck, "--checkpoint-every", "25"])
    _wait_for_checkpoint(ck, proc, 50)
    pids = _rank_pids(marker)
    assert len(pids) == 2, pids
    os.kill(pids[1], signal.SIGKILL)
    t = time.monotonic()
    rc, _, _ = _finish(proc, limit=60)
    assert rc != 0 and time.monotonic() - t < 30
    rc, out, err = _finish(_launch(2, FAST + ["--checkpoint-dir", ck, "--resume", "auto"]))
    assert rc == 0, err
    resumed = _summary(out)
    assert resumed["resumed_from"] and resumed["step"] == uninterrupted["step"]
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]


@needs_mpi
def test_sigterm_on_one_rank_checkpoints_everywhere_and_exits_0(tmp_path):
    ck = str(tmp_path / "pre")
    rc, out, _ = _finish(_launch(2, FAST))
    uninterrupted = _summary(out)
    proc = _launch(2, FAST + ["--checkpoint-dir", ck, "--checkpoint-every", "1000"])
    _wait_for_checkpoint(ck, proc, 1)  # the first epoch's checkpoint: running
    os.kill(_rank_pids(ck)[0], signal.SIGTERM)
    rc, out, err = _finish(proc, limit=60)
    assert rc == 0, err
    stopped = _summary(out)
    assert stopped["status"] == "stopped" and 0 < stopped["step"] < uninterrupted["step"]
    rc, out, err = _finish(_launch(2, FAST + ["--checkpoint-dir", ck, "--resume", "auto"]))
    assert rc == 0, err
    assert _summary(out)["params_sha256"] == uninterrupted["params_sha256"]


@needs_mpi
def test_ctrl_c_checkpoints_and_exits_130_without_a_traceback(tmp_path):
    """SIGINT to mpiexec (what Ctrl-C does): every rank stops at the same step, the
    checkpoint is written, one line, exit 130, no KeyboardInterrupt traceback; the run
    resumes from it to the uninterrupted run's bytes."""
    ck = str(tmp_path / "int")
    rc, out, _ = _finish(_launch(2, FAST))
    uninterrupted = _summary(out)
    proc = _launch(2, FAST + ["--checkpoint-dir", ck, "--checkpoint-every", "1000"])
    _wait_for_checkpoint(ck, proc, 1)
    os.kill(proc.pid, signal.SIGINT)
    rc, out, err = _finish(proc, limit=60)
    assert rc == 130, (rc, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    stopped = _summary(out)
    assert stopped["status"] == "interrupted" and 0 < stopped["step"] < uninterrupted["step"]
    # the ranks see the signal a step apart at most: 1 or 2 ask at the agreed step
    assert re.search(r"stop requested \((Ctrl-C|signal)\) on [12] rank\(s\): checkpointed "
                     r"at step \d+, exiting", out), out
    rc, out, err = _finish(_launch(2, FAST + ["--checkpoint-dir", ck, "--resume", "auto"]))
    assert rc == 0, err
    assert _summary(out)["params_sha256"] == uninterrupted["params_sha256"]


@needs_mpi
@pytest.mark.parametrize("overlap", ["false", "true"])
def test_bad_row_on_one_rank_stops_every_rank_with_its_name(tmp_path, overlap):
    err = _bad_row_run(tmp_path, 2, ["--hidden", "8", "--overlap", overlap])
    assert "failed on 1 of 2 ranks" in err


def _bad_row_run(tmp_path, ranks, args):
    """Train on 800 rows with an Inf at row 523 under `ranks` ranks; the job's stderr,
    after checking it names the file and row once and the exit status is 1."""
    folder = indexed_dataset(str(tmp_path / "d"), [400, 400], features=4, classes=4)
    with h5py.File(os.path.join(folder, "shard-00001.h5"), "r+") as f:
        f["x"][123, 2] = np.inf
    rc, out, err = _finish(_launch(ranks, ["--data", folder, "--test-data", "none",
                                           "--standardize", "false", "--epochs", "2",
                                           "--batch-size", "20", "--progress", "false",
                                           *args]), 90)
    assert rc == 1, err
    assert "shard-00001.h5: row 123 (row 523 of the dataset, from 0) has a NaN or Inf feature" in err
    assert err.count("error: ") == 1, err
    return err


@needs_mpi
def test_bad_row_under_pipeline_parallelism_stops_every_rank_with_its_name(tmp_path):
    """dp 2 x pp 2: the replica whose slice holds the bad row fails on both of its stages
    (each reads the rows; the first stage the features, the last the labels); the other
    replica is told at the step's sync; one message, no hang."""
    err = _bad_row_run(tmp_path, 4, ["--hidden", "8,8", "--pp", "2", "--dp", "2"])
    assert "failed on 2 of 4 ranks" in err


def test_test_data_auto_finds_the_split_convert_wrote(tmp_path):
    """`convert --test-fraction` writes OUT/train and OUT/test: --data OUT or OUT/train
    trains on train/ and --test-data auto evaluates on test/."""
    from hpcml.data import convert
    rng = np.random.default_rng(0)
    x = rng.random((400, 4))
    np.save(tmp_path / "s.npy", np.column_stack([x, (x[:, 0] > 0.5).astype(int)]))
    convert(str(tmp_path / "s.npy"), str(tmp_path / "out"), test_fraction=0.25)
    for data in ("out", os.path.join("out", "train")):
        cfg = train.validate({**{k: v[0] for k, v in train.SETTINGS.items()},
                              "data": str(tmp_path / data), "epochs": 2, "progress": False})
        summary, _ = train.run(cfg, log=lambda *a: None)
        assert "test_accuracy" in summary, (data, summary)


def test_resume_checks_what_it_resumes(tmp_path):
    """A checkpoint of digits resumed on another dataset of the same shape is refused by
    name; another --hidden is refused by name (not as a parameter-count mismatch); a
    checkpoint already past this run's last step says so."""
    from hpcml.comm import CollectiveError
    from hpcml.data import synth
    ck = str(tmp_path / "ck")
    base = {**{k: v[0] for k, v in train.SETTINGS.items()}, "progress": False,
            "checkpoint_dir": ck, "hidden": "24,16"}
    train.run(train.validate(dict(base, max_steps=10)), log=lambda *a: None)
    other = str(tmp_path / "other")
    synth(other, rows=300, features=64, classes=10, seed=3)
    with pytest.raises(CollectiveError, match=r"written for another dataset \(digits: 1,438 "
                                              r"rows, 64 features, 10 classes\); this run "
                                              r"trains on .*other: 300 rows"):
        train.run(train.validate(dict(base, data=other, test_data="none", resume="auto")),
                  log=lambda *a: None)
    with pytest.raises(CollectiveError, match="written with --hidden '24,16'; this run has "
                                              "--hidden '32'"):
        train.run(train.validate(dict(base, hidden="32", resume="auto")), log=lambda *a: None)
    lines = []
    summary, _ = train.run(train.validate(dict(base, max_steps=5, resume="auto")),
                           log=lines.append)
    assert any("at or past this run's last step 5" in ln for ln in lines), lines
    assert summary["step"] == 10


@needs_mpi
def test_unwritable_outputs_are_refused_before_training(tmp_path):
    """A --checkpoint-dir or --metrics that cannot be written ends the job before the
    first step (one message naming the setting), not after the training it would lose."""
    (tmp_path / "afile").write_text("")
    for args, msg in ((["--checkpoint-dir", str(tmp_path / "afile" / "ck")],
                       "--checkpoint-dir"),
                      (["--metrics", str(tmp_path / "afile" / "sub" / "m.jsonl")],
                       "cannot make the folder " + str(tmp_path / "afile" / "sub"))):
        rc, out, err = _finish(_launch(2, ["--progress", "false", *args]), limit=60)
        assert rc == 1 and err.count("error: ") == 1 and msg in err, (rc, err)
        assert "epoch" not in out, out
