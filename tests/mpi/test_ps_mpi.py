"""The parameter server under mpiexec (issue 17): bsp equals data-parallel training at the
same global batch, with the body of tests/test_param_server.py on the real MPI world
(n=2: 1+1, n=3: 1+2 and 2+1, n=4: 1+3, 2+2, 3+1 servers+workers)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_param_server import bsp_equals_data_parallel  # noqa: E402
from mpi_helpers import all_ranks  # noqa: E402


@pytest.mark.parametrize("servers", [1, 2, 3])
def test_bsp_equals_data_parallel_under_mpi(comm, servers):
    if servers >= comm.Get_size():
        pytest.skip(f"{servers} servers need more than {comm.Get_size()} ranks")
    out = bsp_equals_data_parallel(comm, servers)
    rel = out[0] if out is not None else 0.0
    all_ranks(comm, rel < 1e-12, f"{servers} servers: rel {rel:.2e}")
