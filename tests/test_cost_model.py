"""The alpha-beta cost model behind algorithm='auto'."""
import json

import pytest

from hpcml.comm.model import (CostModel, DEFAULT, choose_allreduce, allreduce_choices, load,
                              _piecewise)

SEG = 1 << 20


def test_default_model_latency_vs_bandwidth_regimes():
    own = CostModel(DEFAULT.alpha, DEFAULT.beta, DEFAULT.gamma)  # mpi_below=0: hpcml's only
    for p in (2, 3, 4, 8, 64):
        assert choose_allreduce(own, 8, p, SEG) == "tree"
        assert choose_allreduce(own, 256 << 20, p, SEG) in ("ring", "rhd")
        assert choose_allreduce(DEFAULT, 256 << 20, p, SEG) in ("ring", "rhd")


def test_small_messages_go_to_mpi_below_the_threshold():
    m = CostModel(DEFAULT.alpha, DEFAULT.beta, DEFAULT.gamma, mpi_below=4096)
    assert choose_allreduce(m, 8, 4, SEG) == "mpi"
    assert choose_allreduce(m, 4095, 4, SEG) == "mpi"
    assert choose_allreduce(m, 4096, 4, SEG) == "tree"
    assert choose_allreduce(DEFAULT, 8, 2, SEG) == "mpi"
    assert choose_allreduce(DEFAULT, DEFAULT.mpi_below, 2, SEG) != "mpi"
    # a measured MPI curve for the world size replaces the threshold, both ways
    curves = (("tree", 2, ((8, 2.0), (1 << 30, 2.0))), ("rhd", 2, ((8, 3.0), (1 << 30, 3.0))),
              ("ring", 2, ((8, 3.0), (1 << 30, 3.0))), ("mpi", 2, ((8, 1.0), (1 << 30, 5.0))))
    m = CostModel(1e-6, 1e-10, 1e-10, curves=curves, mpi_below=1 << 40)
    assert choose_allreduce(m, 8, 2, SEG) == "mpi"
    assert choose_allreduce(m, 1 << 29, 2, SEG) == "tree"   # measured 3.0 > 2.0
    assert choose_allreduce(m, 1 << 29, 3, SEG) == "mpi"    # p=3 not measured: threshold


def test_formulas_follow_the_textbook_terms():
    m = CostModel(alpha=1.0, beta=0.0, gamma=0.0)
    assert m.tree_allreduce(100, 8) == 3.0           # lg p latency terms
    assert m.tree_allreduce(100, 6) == 2.0 + 2.0     # + fold in / out
    assert m.ring_allreduce(100, 8, SEG) == 14.0     # 2(p-1)
    m = CostModel(alpha=0.0, beta=1.0, gamma=0.0)
    assert m.ring_allreduce(800, 8, SEG) == pytest.approx(2 * 7 / 8 * 800)
    assert m.tree_allreduce(800, 8) == pytest.approx(3 * 800)


def test_measured_curves_override_and_interpolate():
    pts = ((8, 10e-6), (1024, 20e-6), (1 << 20, 1e-3))
    assert _piecewise(pts, 1) == 10e-6
    assert _piecewise(pts, 516) == pytest.approx(15e-6)
    assert _piecewise(pts, 2 << 20) > 1e-3          # extrapolates along the last line
    m = CostModel(1e-6, 1e-10, 1e-10, curves=(("ring", 4, ((8, 1.0), (1 << 30, 1.0))),
                                              ("tree", 4, ((8, 2.0), (1 << 30, 2.0))),
                                              ("rhd", 4, ((8, 3.0), (1 << 30, 3.0)))))
    assert choose_allreduce(m, 8, 4, SEG) == "ring"  # measured for p=4
    assert choose_allreduce(m, 8, 2, SEG) == "tree"  # other sizes: the formulas
    assert allreduce_choices(m, 4, SEG) == [(1, "ring")]


def test_save_and_load_roundtrip(tmp_path):
    m = CostModel(2e-6, 3e-10, 1e-10, curves=(("tree", 2, ((8, 1e-5), (64, 2e-5))),
                                              ("mpi", 2, ((8, 1e-6), (64, 3e-5)))),
                  mpi_below=1024)
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"model": json.loads(m.to_json())}))
    assert load(str(path)) == m


def test_load_names_the_bad_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load(str(path))


@pytest.mark.parametrize("curves,match", [
    ([["ring", 2, [[8, 1e-5]]]], "needs >= 2 points"),
    ([["ring", 2, [[8, 1e-5], [8, 2e-5]]]], "increasing sizes"),
    ([["ring", 2, []]], "needs >= 2 points"),
    ([["ring", 2, [[8, 1e-5], [16, -1.0]]]], "non-positive"),
    ([["nccl", 2, [[8, 1e-5], [16, 2e-5]]]], "unknown algorithm"),
])
def test_load_rejects_bad_curves_when_loading(tmp_path, curves, match):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"alpha": 1e-6, "beta": 1e-10, "gamma": 1e-10,
                                "curves": curves}))
    with pytest.raises(ValueError, match=match):
        load(str(path))
