"""The all-reduce benchmark's output format (not its speed: that is benchmarks/' job)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

MPIEXEC = shutil.which("mpiexec")


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_allreduce_benchmark_writes_json_and_png(tmp_path):
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "hpcml.bench", "allreduce",
           "--sizes", "8,4K,1M", "--budget", "0.02", "--min-iters", "3", "--warmup", "1",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
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
    proc = subprocess.run([sys.executable, "-m", "hpcml.bench", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "allreduce" in proc.stdout
