"""Pipeline execution under mpiexec (issue 16): the bodies of tests/test_pipeline_exec.py
on the real MPI world of 2, 3 or 4 ranks, one stage per rank (interleaved: two)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_pipeline_exec import _pipeline, _serial  # noqa: E402
from mpi_helpers import all_ranks  # noqa: E402


@pytest.mark.parametrize("name,v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2),
                                    ("zb-h1", 1)])
@pytest.mark.parametrize("M", [1, 5])
@pytest.mark.parametrize("recompute", [False, True])
def test_schedules_equal_one_process_under_mpi(comm, name, v, M, recompute):
    ref = _serial()
    params, _ = _pipeline(comm, name, M, v, recompute)
    rel = np.abs(params - ref).max() / np.abs(ref).max()
    all_ranks(comm, rel < 1e-12, f"{name} M={M} recompute={recompute}: rel {rel:.2e}")
