"""MPI tests: run under `mpiexec -n N python -m pytest --with-mpi tests/mpi` (N = 2, 3, 4).

mpi_helpers.all_ranks asserts collectively, so a check that fails on one rank fails the
test on every rank instead of leaving the others waiting in the next collective.
"""
import os
import shutil
import tempfile

import pytest
from mpi4py import MPI


HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def pytest_collection_modifyitems(items):
    for item in items:  # every test here (and only here: the hook sees every item) is MPI
        if str(item.path).startswith(HERE) and item.get_closest_marker("mpi") is None:
            item.add_marker(pytest.mark.mpi)


@pytest.fixture
def comm():
    return MPI.COMM_WORLD


@pytest.fixture
def shared_dir(comm):
    """A fresh folder every rank sees (made by rank 0, removed after the test)."""
    path = comm.bcast(tempfile.mkdtemp(prefix="hpcml-test-") if comm.Get_rank() == 0 else None)
    yield path
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
