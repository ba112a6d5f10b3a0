"""Federated learning under mpiexec (issue 18): the global model a real MPI world computes
equals one process's, bit for bit (the clients dealt over 2, 3 or 4 ranks)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpi_helpers import all_ranks  # noqa: E402


@pytest.mark.parametrize("kw", [dict(partition="shards:2", dropout_rate=0.2),
                                dict(partition="dirichlet:0.5", strategy="fedadam",
                                     server_lr=0.01, secagg=True)])
def test_the_global_model_equals_one_process(comm, tmp_path_factory, kw):
    from hpcml import comm as hc
    from hpcml.federated import job
    c = {k: v[0] for k, v in job.SETTINGS.items()}
    c.update(dict(verbose=False, plot=False, hidden="16", rounds=3, clients=20,
                  fraction=0.3, output="unused"), **kw)
    c = job.validate(c)
    p = job.simulate(dict(c), comm).params
    one = job.simulate(dict(c), hc.self_comm()).params
    all_ranks(comm, np.array_equal(p, one), f"{kw}: differs from one process by "
                                            f"{np.abs(p - one).max():.2e}")
