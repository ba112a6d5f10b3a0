"""python -m hpcml.bench gpu's plumbing on the simulator (--smoke): every part runs, its
kernel result is checked against NumPy, missing anchors are recorded with their reason,
and simulator figures are refused where they could pass for GPU figures."""
import json
import os
import sys

import pytest

from hpcml.kernels.cuda import available, why_unavailable
from procs import run

pytestmark = pytest.mark.skipif(not available(), reason=str(why_unavailable()))


def _bench(*args, cwd=None):
    return run([sys.executable, "-m", "hpcml.bench", "gpu", *args], limit=240, cwd=cwd)


@pytest.mark.timeout(300)
def test_smoke_run_writes_its_json(tmp_path):
    r = _bench("--smoke", "--parts", "matmul,train", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert (tmp_path / "gpu.png").stat().st_size > 0
    assert res["simulator"] is True and res["device"] == "simulator"
    mm = res["matmul"][0]
    assert mm["max_rel_err"] < 1e-6 and mm["hpcml_gflops"] > 0
    from hpcml.kernels.cuda.matmul import TILES
    assert [t["tile"] for t in mm["tiles"]] == ["x".join(map(str, t)) for t in TILES]
    assert max(t["max_rel_err"] for t in mm["tiles"]) < 1e-6
    assert mm["best_tile"] in [t["tile"] for t in mm["tiles"]]
    assert "cupy_gflops" in mm or mm["cupy"].startswith("missing")
    tr = res["train"]
    assert tr["hpcml_samples_per_s"] > 0 and tr["mlp"] == [6, 5, 3]
    assert "torch_samples_per_s" in tr or tr["torch"].startswith("missing")


def test_simulator_figures_are_refused_outside_smoke_and_in_benchmarks(tmp_path):
    r = _bench("--out", str(tmp_path))
    assert r.returncode != 0 and "simulator is on" in r.stderr
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = _bench("--smoke", "--out", os.path.join("benchmarks", "results"), cwd=root)
    assert r.returncode != 0 and "not written to benchmarks/" in r.stderr
