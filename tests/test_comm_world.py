"""hpcml.comm is the only door to MPI: nothing else imports mpi4py; its world/p2p helpers on
one process (tests/mpi/test_p2p_mpi.py runs them on 2-4 ranks)."""
import ast
import os

import numpy as np
import pytest

from hpcml import comm as hc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports_mpi4py(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant)]
        if any(n == "mpi4py" or n.startswith("mpi4py.") for n in names):
            return node.lineno
    return None


def test_no_mpi4py_outside_hpcml_comm():
    found = []
    for top in ("hpcml", "kernels"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            rel = os.path.relpath(folder, ROOT)
            if rel == os.path.join("hpcml", "comm") or rel.startswith(
                    os.path.join("hpcml", "comm") + os.sep):
                continue
            for name in files:
                if name.endswith(".py"):
                    line = _imports_mpi4py(os.path.join(folder, name))
                    if line:
                        found.append(f"{os.path.join(rel, name)}:{line}")
    assert found == [], f"mpi4py imported outside hpcml/comm: {found}"


def test_the_check_sees_every_form_of_import(tmp_path):
    for text in ("import mpi4py\n", "from mpi4py import MPI\n", "import mpi4py.MPI as M\n",
                 "def f():\n    from mpi4py import MPI\n", "x = __import__('mpi4py')\n"):
        (tmp_path / "m.py").write_text(text)
        assert _imports_mpi4py(str(tmp_path / "m.py")), text
    (tmp_path / "m.py").write_text("# mpi4py in a comment\nimport numpy\n")
    assert _imports_mpi4py(str(tmp_path / "m.py")) is None


def test_world_helpers_on_one_process():
    comm = hc.world()
    assert comm.Get_size() >= 1 and hc.self_comm().Get_size() == 1
    t = hc.wtime()
    assert hc.wtime() >= t
    one = hc.self_comm()
    assert hc.reduce_value(3, "max", one) == 3 and hc.slowest(1.5, one) == 1.5
    np.testing.assert_array_equal(hc.reduce_array(np.arange(4.0), "sum", one), np.arange(4.0))
    with pytest.raises(ValueError, match="op must be one of"):
        hc.reduce_value(1, "avg", one)
    assert hc.bcast_object({"a": [1, 2]}, comm=one) == {"a": [1, 2]}
    assert hc.gather_objects("x", comm=one) == ["x"]
    assert hc.gather_objects({"k": 1}, root=None, comm=one) == [{"k": 1}]
    sub = hc.split(one, 0)
    assert sub.Get_size() == 1
    assert hc.split(one, -1) is None
    assert "MPICH" in hc.library_version() or hc.library_version()


def test_point_to_point_to_itself():
    one = hc.self_comm()
    out = np.arange(5, dtype=np.float64)
    into = np.zeros(5)
    r = hc.irecv(into, 0, tag=3, comm=one)
    s = hc.isend(out, 0, tag=3, comm=one)
    hc.wait_all([s, r])
    np.testing.assert_array_equal(into, out)
    got = np.zeros(5)
    hc.sendrecv(out * 2, 0, got, 0, sendtag=4, recvtag=4, comm=one)
    np.testing.assert_array_equal(got, out * 2)
    s = hc.isend(out[:3].copy(), 0, tag=9, comm=one)
    assert hc.probe(0, 9, one, np.float64) == (0, 9, 3)
    into = np.zeros(5)
    assert hc.recv(into, 0, 9, one) == (0, 9, 3)
    s.wait()
    with pytest.raises(ValueError, match="C-contiguous"):
        hc.send(np.zeros((4, 4))[:, ::2], 0, comm=one)
    for call in (lambda: hc.send(np.zeros(8)[::2], 0, comm=one),   # 1-D strided: MPI refuses
                 lambda: hc.isend(np.zeros(8)[::2], 0, comm=one),
                 lambda: hc.recv(np.zeros(8)[::2], 0, comm=one),
                 lambda: hc.irecv(np.zeros(8)[::2], 0, comm=one),
                 lambda: hc.send([1.0, 2.0], 0, comm=one)):
        with pytest.raises(ValueError, match="C-contiguous"):
            call()
