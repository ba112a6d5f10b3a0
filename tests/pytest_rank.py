"""pytest for one MPI rank: ranks other than 0 write their output to
$HPCML_TEST_LOGDIR/rank-N.log (tests/run_all.py prints those only when a run fails).

    mpiexec -n 4 python tests/pytest_rank.py --with-mpi -q tests/mpi
"""
import os
import sys

from mpi4py import MPI

rank = MPI.COMM_WORLD.Get_rank()
logdir = os.environ.get("HPCML_TEST_LOGDIR")
if rank and logdir:  # before pytest starts, so its output capture sees the log as stdout
    log = open(os.path.join(logdir, f"rank-{rank}.log"), "w")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)

import pytest  # noqa: E402

# a timed-out test ends this rank (and mpiexec the others) instead of leaving the ranks
# out of step in their next collective
sys.exit(pytest.main(["-o", "timeout_method=thread"] + sys.argv[1:]))
