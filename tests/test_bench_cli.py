"""The all-reduce benchmark's output format (not its speed: that is benchmarks/' job)."""
import json
import os
import shutil
import sys

import pytest

from procs import run

MPIEXEC = shutil.which("mpiexec")


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_allreduce_benchmark_writes_json_and_png(tmp_path):
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "hpcml.bench", "allreduce",
           "--sizes", "8,4K,1M", "--budget", "0.02", "--min-iters", "3", "--warmup", "1",
           "--out", str(tmp_path)]
    proc = run(cmd, limit=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "allreduce-p2.json").read_text())
    assert (tmp_path / "allreduce-p2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recs = result["records"]
    algs = {"mpi", "auto", "ring", "tree", "rhd"}
    assert {(r["algorithm"], r["bytes"]) for r in recs} == {(a, b) for a in algs
                                                            for b in (8, 4096, 1 << 20)}
    for r in recs:
        assert r["ranks"] == 2 and r["valid"] is True and r["median_s"] > 0
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 2 * (2 - 1) / 2)
        mpi = next(m for m in recs if m["algorithm"] == "mpi" and m["bytes"] == r["bytes"])
        assert r["ratio_vs_mpi"] == pytest.approx(mpi["median_s"] / r["median_s"])
    assert result["summary"]["all_valid"] is True
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_bench_help_lists_benchmarks():
    proc = run([sys.executable, "-m", "hpcml.bench", "--help"], limit=60)
    assert proc.returncode == 0 and "allreduce" in proc.stdout


def test_kernels_benchmark_writes_json_and_png(tmp_path):
    cmd = [sys.executable, "-m", "hpcml.bench", "kernels", "--sizes", "64,96", "--threads", "1",
           "--params", "50000", "--reps", "2", "--budget", "0.01", "--pause", "0",
           "--out", str(tmp_path)]
    proc = run(cmd, limit=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "kernels.json").read_text())
    assert (tmp_path / "kernels.png").read_bytes()[:4] == b"\x89PNG"
    recs = result["records"]
    mm = [r for r in recs if r["kernel"] == "matmul"]
    assert {(r["backend"], r["n"]) for r in mm} == {(b, n) for b in ("numpy", "cpu", "auto")
                                                    for n in (64, 96)}
    for r in mm:
        assert r["gflops"] == pytest.approx(2 * r["n"] ** 3 / r["median_s"] / 1e9)
    updates = {r["kernel"] for r in recs if "GBps" in r}
    assert updates == {"sgd_momentum_nesterov_wd", "adam", "adamw", "clip_grad_norm"}
    autos = [r for r in recs if r["backend"] == "auto"]
    assert autos and all(r["auto_vs_best"] > 0 for r in autos)
    assert result["summary"]["auto_vs_best_single_backend_worst"]["slowdown"] is not None


def _two_rank_bench(tmp_path, name, *args):
    """`mpiexec -n 2 python -m hpcml.bench NAME ARGS --out tmp_path`: its JSON, and a PNG."""
    proc = run([MPIEXEC, "-n", "2", sys.executable, "-m", "hpcml.bench", name, *args,
                "--out", str(tmp_path)], limit=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / f"{name}-p2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((tmp_path / f"{name}-p2.json").read_text())


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_p2p_benchmark_writes_json_and_png(tmp_path):
    result = _two_rank_bench(tmp_path, "p2p", "--sizes", "8,1K", "--iters", "50", "--blocks",
                             "3")
    recs = result["records"]
    assert [(r["kind"], r["bytes"]) for r in recs] == [("pingpong", 8), ("pingpong", 1024),
                                                       ("allreduce", 8)]
    for r in recs:
        assert r["mpi4py_us"] > 0 and r["hpcml_us"] > 0
        assert r["ratio"] == pytest.approx(r["hpcml_us"] / r["mpi4py_us"])


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_zero_benchmark_writes_json_and_png(tmp_path):
    result = _two_rank_bench(tmp_path, "zero", "--hidden", "32", "--epochs", "1",
                             "--repeats", "1")
    assert result["bit_identical"] is True
    assert set(result["median_samples_per_s"]) == {"data parallel", "ZeRO-1", "ZeRO-2"}
    assert result["ratio_vs_data_parallel"]["data parallel"] == 1.0


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not found")
def test_ps_benchmark_workers_write_their_figures(tmp_path):
    """The two kinds of run `python -m hpcml.bench ps` launches, small: a 1 + 2 asp run
    records its accuracy curve and staleness; the latency run times push+pull and a
    ping-pong for every size."""
    import json
    import sys
    from procs import run
    mpi = [shutil.which("mpiexec"), "-n"]
    out = str(tmp_path / "r.json")
    r = run(mpi + ["3", sys.executable, "-m", "hpcml.bench", "ps", "--worker", "run",
                   "--mode", "asp", "--servers", "1", "--epochs", "1", "--hidden", "32",
                   "--worker-out", out], limit=120)
    assert r.returncode == 0, r.stderr
    d = json.load(open(out))
    assert d["curve"] and d["parameter_server"]["workers"] == 2 and d["updates_per_s"] > 0
    # the copies kept during the run are evaluated after it: the last is the final model
    assert d["curve"][-1][1] == d["steps"] and d["curve"][-1][2] == d["test_accuracy"]
    assert all(0 < a <= 1 for _, _, a in d["curve"])
    r = run(mpi + ["2", sys.executable, "-m", "hpcml.bench", "ps", "--worker", "run",
                   "--mode", "hogwild-locked", "--servers", "1", "--epochs", "1", "--hidden", "32",
                   "--batch-size", "64", "--curve", "0", "--worker-out", out], limit=120)
    assert r.returncode == 0, r.stderr
    d = json.load(open(out))  # both ranks' updates over the job's span
    assert d["steps"] == 23 and d["updates_per_s"] > 0 and not d["curve"]
    r = run(mpi + ["2", sys.executable, "-m", "hpcml.bench", "ps", "--worker", "latency",
                   "--worker-out", out], limit=120)
    assert r.returncode == 0, r.stderr
    lat = json.load(open(out))
    assert len(lat) == 8 and all(x["push_pull_s"] > 0 and x["ping_pong_s"] > 0 for x in lat)


def test_federated_benchmark_writes_json_and_png(tmp_path):
    """Every part of `python -m hpcml.bench federated`, tiny (Flower's simulation needs
    the bench extra's Ray: left out here)."""
    import json
    import sys
    from procs import run
    r = run([sys.executable, "-m", "hpcml.bench", "federated", "--out", str(tmp_path),
             "--max-rounds", "3", "--max-rounds-full", "2", "--ranks", "1", "--table-rows",
             "2400", "--prox-rounds", "2", "--robust-rounds", "2",
             "--flower-rounds", "3", "--skip-flower", "--clients", "40", "--prox-rows",
             "1000"], limit=300)
    assert r.returncode == 0, r.stderr
    d = json.load(open(tmp_path / "federated.json"))
    assert len(d["table1"]) == 20 and d["rates"]["hpcml"]["steady_rounds_per_s"] > 0
    assert {r["max_rounds"] for r in d["table1"]} == {2, 3}
    assert set(d["fedprox"]) == {"fedavg", "fedprox"}
    assert len(d["robust"]["attacked"]) == 5 and (tmp_path / "federated.png").stat().st_size


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_pipeline_benchmark_writes_json_and_png(tmp_path):
    """python -m hpcml.bench pipeline, small (2 ranks, M = 2 and 4, no torch): every
    schedule's record, busy times no larger than the schedule's, and the replay given."""
    proc = run([sys.executable, "-m", "hpcml.bench", "pipeline", "--stages", "2", "--micro",
                "2,4", "--steps", "1", "--torch", "0", "--out", str(tmp_path)], limit=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "pipeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run0 = json.loads((tmp_path / "pipeline.json").read_text())["runs"][0]
    recs = run0["records"]
    assert {(r["schedule"], r["micro_batches"]) for r in recs if not r["recompute"]} == \
        {(s, m) for s in ("gpipe", "1f1b", "zb-h1", "interleaved") for m in (2, 4)}
    for r in recs:
        assert 0 < max(r["busy_s"]) <= r["schedule_s"] * 1.001
        assert 0 <= r["predicted_bubble"] < 1 and 0 <= r["measured_bubble"] < 1
        assert r["predicted_schedule_s"] > 0 and r["samples_per_s"] > 0
    assert run0["oversubscribed"] == (2 > run0["cores"])


def test_tune_benchmark_parts_are_sound():
    """python -m hpcml.bench tune's quality part, tiny: every sampler's best-so-far curve
    is non-increasing and its regret >= 0 (Optuna's part only when Optuna is installed)."""
    from hpcml.bench import tune
    for fname, fstar in tune.FUNCS.items():
        curve = tune._hpcml_curve(fname, "tpe", 0, 12)
        assert len(curve) == 12 and all(a >= b for a, b in zip(curve, curve[1:]))
        assert min(curve) >= fstar - 1e-5
    pytest.importorskip("optuna")
    curve = tune._optuna_curve("branin", "tpe", 0, 5)
    assert len(curve) == 5 and min(curve) >= 0.397887 - 1e-6


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_tune_benchmark_asha_part(tmp_path):
    """bench tune --parts asha, tiny: the unpruned search completes its trials, ASHA runs
    --asha-explore times as many from the same stream, and each search's time to the best
    accuracy is measured."""
    r = run([sys.executable, "-m", "hpcml.bench", "tune", "--parts", "asha", "--asha-trials",
             "4", "--asha-explore", "2", "--asha-seeds", "1", "--asha-epochs", "3", "--out",
             str(tmp_path)], limit=240)
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "tune.json").read_text())["asha"]
    run0 = a["runs"][0]
    assert run0["none"]["summary"]["complete"] == 4 and run0["none_time_to_best_s"] > 0
    assert run0["asha"]["summary"]["complete"] + run0["asha"]["summary"]["pruned"] == 8
    # the unpruned best is one of the unpruned trials' values, found at the time given
    assert run0["best_accuracy"] == max(v for _, v in run0["none"]["finishes"])
    assert [t for t, v in run0["none"]["finishes"] if v == run0["best_accuracy"]][0] == \
        run0["none_time_to_best_s"]
    assert (tmp_path / "tune.png").stat().st_size > 0
