"""The parameter server (issue 17): bsp equals data parallelism at the same global batch
(float64, 1+2, 1+3, 2+2 servers+workers, in-process; tests/mpi runs the same body under
mpiexec); ssp's bound holds under a 5x straggler and the fast workers are held; backup
drops late gradients; asp, ssp:2 and backup:1 learn digits under mpiexec; bad settings are
one message; an error on a worker or a server, or a killed rank, ends every rank."""
import json
import os
import shutil
import signal
import sys
import time

import numpy as np
import pytest

from hpcml import train
from hpcml.comm.inproc import run_ranks
from hpcml.config import ConfigError
import procs

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")


def _cfg(**kw):
    c = {k: v[0] for k, v in train.SETTINGS.items()}
    c.update(dict(test_data="none", hidden="24,16", epochs=2, max_steps=30, batch_size=32,
                  dtype="float64", progress=False, warmup=5), **kw)
    return train.validate(c)


def bsp_equals_data_parallel(comm, servers, **kw):
    """The body shared with tests/mpi: (rel difference of worker 0's final parameters
    from one process's, the run's parameter-server figures) on worker 0; None elsewhere."""
    from hpcml import comm as hc
    out = train.run(_cfg(parallel="ps", servers=servers, **kw), comm, log=lambda *a: None)
    if comm.Get_rank() != 0:
        return None
    ref = train.run(_cfg(**kw), hc.self_comm(), log=lambda *a: None)[1].params
    p = out[1].params
    return float(np.abs(p - ref).max() / np.abs(ref).max()), out[0]["parameter_server"]


@pytest.mark.parametrize("servers,ranks", [(1, 3), (1, 4), (2, 4)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_bsp_equals_data_parallel_training(servers, ranks, optimizer):
    kw = dict(optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05)
    rel, stats = run_ranks(ranks, lambda c: bsp_equals_data_parallel(c, servers, **kw))[0]
    assert rel < 1e-12, rel  # measured 1.7e-16 to 2.5e-16 (SGD)
    assert stats["updates"] == 30 and stats["staleness"] == {"0": 30 * (ranks - servers)}


def _saved_model(tmp_path):
    """A model file to start from (one process, 10 steps of its own seed)."""
    from hpcml import comm as hc
    path = str(tmp_path / "start.h5")
    train.run(_cfg(max_steps=10, seed=7, save_model=path), hc.self_comm(),
              log=lambda *a: None)
    return path


def test_bsp_clip_and_init_from_equal_data_parallel(tmp_path):
    """2 servers + 2 workers, --clip binding (the round's norm summed over both servers'
    shards) and --init-from (the servers read the weights too): worker 0's final
    parameters equal one process's with the same settings."""
    kw = dict(clip=0.05, init_from=_saved_model(tmp_path))
    rel, stats = run_ranks(4, lambda c: bsp_equals_data_parallel(c, 2, **kw))[0]
    assert rel < 1e-12, rel  # measured 9.9e-17
    from hpcml import comm as hc
    one = train.run(_cfg(**kw), hc.self_comm(), log=lambda *a: None)[1].params
    unclipped = train.run(_cfg(init_from=kw["init_from"]), hc.self_comm(),
                          log=lambda *a: None)[1].params
    assert np.abs(one - unclipped).max() > 1e-3 * np.abs(unclipped).max()  # it binds


def test_async_clip_bounds_every_push_and_init_from_reaches_the_servers(tmp_path,
                                                                       monkeypatch):
    """asp, 1 server + 2 workers: with --clip every applied gradient (a worker's mean)
    has norm <= clip, without it some exceed it; with --init-from and lr 1e-30 (every
    update below an ulp) the final parameters are the file's (the server started from
    them, not from its seed)."""
    from hpcml.model import load_model
    from hpcml.parallel import param_server
    norms, real = [], param_server.Server._apply

    def apply(self, ws):
        real(self, ws)
        norms.append(float(np.linalg.norm(self.grads)))
    monkeypatch.setattr(param_server.Server, "_apply", apply)
    for clip in (0.0, 0.05):
        del norms[:]
        run_ranks(3, lambda c: train.run(_cfg(parallel="ps", consistency="asp", clip=clip),
                                         c, log=lambda *a: None))
        assert len(norms) == 60
        if clip:
            assert max(norms) <= clip * (1 + 1e-9), max(norms)
        else:
            assert max(norms) > 0.1, max(norms)
    path = _saved_model(tmp_path)
    out = run_ranks(3, lambda c: train.run(_cfg(parallel="ps", consistency="asp",
                                                 lr=1e-30, init_from=path), c,
                                           log=lambda *a: None))  # steps below an ulp
    np.testing.assert_array_equal(out[0][1].params, load_model(path).net.params)


@pytest.mark.parametrize("bound", [0, 2])
def test_ssp_bound_holds_with_a_5x_straggler_and_fast_workers_wait(bound):
    """1 server + 3 workers, worker 2 five times slower: no applied update is staler than
    the bound (the histogram of every update), and the fast workers' replies were held;
    asp under the same straggler goes far past it."""
    def stats(mode):
        return run_ranks(4, lambda c: train.run(
            _cfg(parallel="ps", consistency=mode, straggler="2:5"), c,
            log=lambda *a: None))[0][0]["parameter_server"]
    s = stats(f"ssp:{bound}")
    assert s["updates"] == 90 and sum(s["staleness"].values()) == 90
    assert max(int(k) for k in s["staleness"]) <= bound, s
    assert s["held"] > 0, s
    a = stats("asp")
    assert max(int(k) for k in a["staleness"]) > 2 * bound + 5 and a["held"] == 0, a


def test_backup_drops_the_stragglers_late_gradients():
    s = run_ranks(4, lambda c: train.run(
        _cfg(parallel="ps", consistency="backup:1", straggler="2:5"), c,
        log=lambda *a: None))[0][0]["parameter_server"]
    assert s["dropped"] > 0 and set(s["staleness"]) == {"0"}, s


@pytest.mark.parametrize("kw,msg", [
    (dict(consistency="sync"), "consistency = 'sync': must be bsp, asp, ssp:S or backup:B"),
    (dict(consistency="ssp:-1"), "the staleness bound must be >= 0"),
    (dict(consistency="asp:3"), "asp takes no bound"),
    (dict(zero=1), "--zero is not supported with --parallel ps yet")])
def test_bad_settings_are_refused_by_name(kw, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        _cfg(parallel="ps", **kw)


@pytest.mark.parametrize("kw,msg", [
    (dict(servers=3), "--servers 3 with 3 ranks: need 1 <= servers < ranks (at least one "
                      "worker)"),
    (dict(consistency="backup:2"), "backup workers B must be >= 1 and fewer than the 2 "
                                   "workers"),
    (dict(straggler="2:3"), "rank 2 is not a worker")])
def test_layouts_that_cannot_run_are_one_message_on_every_rank(kw, msg):
    errors = []

    def body(c):
        try:
            train.run(_cfg(parallel="ps", **kw), c, log=lambda *a: None)
        except ConfigError as e:
            errors.append(str(e))
    run_ranks(3, body)
    assert len(errors) == 3 and all(msg in e for e in errors), errors


def test_an_error_on_a_worker_or_a_server_ends_every_rank(monkeypatch):
    """In-process: a worker's callback raising at step 3, or a server's update raising at
    its 5th: run_ranks raises it (every other rank's wait ends at once)."""
    from hpcml.parallel import param_server

    class Boom:
        def on_step(self, trainer, step):
            if trainer.comm.Get_rank() == 1 and step == 3:
                raise RuntimeError("worker boom")
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="worker boom"):
        run_ranks(4, lambda c: train.run(_cfg(parallel="ps", consistency="asp"), c,
                                         log=lambda *a: None, callbacks=[Boom()]), timeout=30)
    real = param_server.Server._apply

    def apply(self, ws):
        if self.updates == 4:
            raise RuntimeError("server boom")
        return real(self, ws)
    monkeypatch.setattr(param_server.Server, "_apply", apply)
    with pytest.raises(RuntimeError, match="server boom"):
        run_ranks(4, lambda c: train.run(_cfg(parallel="ps"), c, log=lambda *a: None),
                  timeout=30)
    assert time.monotonic() - t < 20


def _launch(n, args, limit=120):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "hpcml.train", "--progress", "false",
           *args]
    proc = procs.start(cmd)
    return proc, cmd


@needs_mpi
def test_async_modes_learn_digits_under_mpiexec():
    """1 server + 3 workers: asp, ssp:2 and backup:1 reach >= 97% test accuracy, each in a
    few seconds. An asynchronous run's result depends on timing: 15 runs here gave
    97.5-98.9% (five per mode), and CI once 96.94% for ssp:2 (348 of 359 rows), so a mode
    below the bar gets a second run (a fault that costs accuracy fails both)."""
    for mode in ("asp", "ssp:2", "backup:1"):
        accs = []
        for _ in range(2):
            proc, _ = _launch(4, ["--parallel", "ps", "--consistency", mode])
            rc, out, err = procs.finish(proc, 120)
            assert rc == 0, err
            s = json.loads(out.strip().splitlines()[-1])
            assert s["parameter_server"]["workers"] == 3, s
            accs.append(s["test_accuracy"])
            if accs[-1] >= 0.97:
                break
        assert accs[-1] >= 0.97, (mode, accs)


def _ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _pids_by_rank(proc, n, deadline):
    """{world rank: pid} of an mpiexec job's ranks (their PMI_RANK), once all n run: the
    grandchildren of mpiexec (hydra's proxy starts them, each in a session of its own)."""
    while time.monotonic() < deadline:
        found = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if _ppid(_ppid(int(pid))) != proc.pid:
                    continue
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            for item in env:
                if item.startswith(b"PMI_RANK="):
                    found[int(item[9:])] = int(pid)
        if len(found) == n:
            return found
        time.sleep(0.2)
    raise AssertionError(f"the {n} ranks did not all start")


@needs_mpi
@pytest.mark.parametrize("victim", [1, 3], ids=["worker", "server"])
def test_a_killed_worker_or_server_ends_the_job_within_30_s(victim):
    proc, _ = _launch(4, ["--parallel", "ps", "--consistency", "asp", "--epochs", "100000",
                          "--data", "digits"])
    pids = _pids_by_rank(proc, 4, time.monotonic() + 60)
    time.sleep(2.0)  # training
    os.kill(pids[victim], signal.SIGKILL)
    t = time.monotonic()
    rc, out, err = procs.finish(proc, 60)
    assert rc != 0 and time.monotonic() - t < 30, (rc, err[-2000:])


def test_each_epochs_staleness_goes_to_the_metrics(tmp_path):
    """--metrics lines of worker 0 carry the epoch's staleness of its own updates (the
    servers' measure, seen from the worker): under ssp:1 with a 3x straggler at most 1."""
    m = str(tmp_path / "m.jsonl")
    run_ranks(4, lambda c: train.run(_cfg(parallel="ps", consistency="ssp:1",
                                          straggler="2:3", metrics=m, max_steps=0,
                                          epochs=2, batch_size=256), c,
                                     log=lambda *a: None))
    lines = [json.loads(x) for x in open(m)]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert all(x["staleness_max"] <= 1 and x["dropped"] == 0 for x in lines), lines
    assert any(x["staleness_max"] == 1 for x in lines), lines  # the bound was reached


def test_trace_shows_each_push_and_pull(tmp_path):
    trace = str(tmp_path / "t.json")
    run_ranks(3, lambda c: train.run(_cfg(parallel="ps", consistency="asp", trace=trace,
                                          max_steps=5), c, log=lambda *a: None))
    names = {(e["pid"], e["name"]) for e in json.load(open(trace))["traceEvents"]
             if e["ph"] == "X"}
    for worker in (0, 1):  # the trace is the workers' (the servers write none)
        assert (worker, "push step 0 (read v0)") in names and (worker, "pull step 4") in names


def test_bsp_checkpoints_resume_bit_identical_and_under_data_parallelism(tmp_path):
    """Worker 0 gathers the servers' shards, optimizer state and clocks into one checkpoint
    in the serial layout; bsp resumed at step 10 of 30 ends with the bytes of the run never
    stopped (SGD and Adam); the same file resumes under plain data parallelism."""
    q = lambda *a: None  # noqa: E731
    for opt in ("sgd", "adam"):
        d = str(tmp_path / opt)
        kw = dict(optimizer=opt, lr=0.01 if opt == "adam" else 0.05)
        full = run_ranks(3, lambda c: train.run(_cfg(parallel="ps", checkpoint_dir=d,
                                                     checkpoint_every=10, keep=5, **kw), c,
                                                log=q))
        at10 = os.path.join(d, "step-00000010.h5")
        res = run_ranks(3, lambda c: train.run(_cfg(parallel="ps", resume=at10, **kw), c,
                                               log=q))
        assert res[0][0]["params_sha256"] == full[0][0]["params_sha256"], opt
        dp = run_ranks(2, lambda c: train.run(_cfg(resume=at10, **kw), c, log=q))
        p, ref = dp[0][1].params, full[0][1].params
        assert np.abs(p - ref).max() / np.abs(ref).max() < 1e-12


@needs_mpi
@pytest.mark.parametrize("victim", [0, 2], ids=["worker", "server"])
def test_sigterm_checkpoints_every_worker_and_exits_0_then_resumes_bit_identical(tmp_path,
                                                                                victim):
    """1 server + 2 workers, bsp: SIGTERM to worker 0 (it asks in its next push) or to the
    server (it tells in its replies): every worker stops at the same step after a
    checkpoint, the job exits 0, and resuming ends with the uninterrupted run's bytes."""
    args = ["--parallel", "ps", "--hidden", "32", "--epochs", "25", "--batch-size", "32",
            "--test-data", "none", "--dtype", "float64"]
    proc, _ = _launch(3, args)
    rc, out, err = procs.finish(proc, 120)
    assert rc == 0, err
    whole = json.loads(out.strip().splitlines()[-1])
    ck = str(tmp_path / "ck")
    proc, _ = _launch(3, args + ["--checkpoint-dir", ck, "--checkpoint-every", "1000"])
    pids = _pids_by_rank(proc, 3, time.monotonic() + 60)
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(ck, "latest")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the first epoch's checkpoint: training
    os.kill(pids[victim], signal.SIGTERM)
    rc, out, err = procs.finish(proc, 60)
    assert rc == 0, err
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["status"] == "stopped" and 0 < stopped["step"] < whole["step"], stopped
    proc, _ = _launch(3, args + ["--checkpoint-dir", ck, "--resume", "auto"])
    rc, out, err = procs.finish(proc, 120)
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["params_sha256"] == whole["params_sha256"]
