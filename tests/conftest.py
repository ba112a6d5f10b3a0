"""Shared by every test folder.

- `python -m pytest tests` runs the serial suite and skips tests/mpi with a reason that says
  how to run them (tests/cuda skips itself unless NUMBA_ENABLE_CUDASIM=1 or a GPU is
  there, and says so); tests/run_all.py runs everything.
- No test leaves a process behind: every process a test execs inherits a tag in its
  environment (forked children are found as descendants of pytest); after each test, such
  processes still running are killed and the test errors, naming them (procs.py).
"""
import os
import uuid

import pytest

import procs

HERE = os.path.dirname(os.path.abspath(__file__))
MPI_DIR = os.path.join(HERE, "mpi") + os.sep

#: this pytest process's tag, inherited by everything it starts (a fresh one per process:
#: under mpiexec each rank checks only for its own children)
TAG = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
os.environ[procs.TAG_VAR] = TAG


def pytest_collection_modifyitems(config, items):
    with_mpi = bool(config.getoption("with_mpi", default=False))
    for item in items:
        path = str(item.path)
        if path.startswith(MPI_DIR) and not with_mpi:
            item.add_marker(pytest.mark.skip(
                reason="MPI test: run `python tests/run_all.py --mpi 2` (or `mpiexec -n 2 "
                       "python tests/pytest_rank.py --with-mpi tests/mpi`; also 3 and 4)"),
                append=False)  # first, so that this reason is the one shown


def _timeout_of(item):
    """The test's pytest-timeout (marker, --timeout, PYTEST_TIMEOUT or the ini), as the
    plugin itself resolves it; 0 when there is none."""
    try:
        from pytest_timeout import _get_item_settings
        return float(_get_item_settings(item).timeout or 0)
    except Exception:  # noqa: BLE001 (another pytest-timeout: the ini setting)
        try:
            return float(item.config.getini("timeout") or 0)
        except (ValueError, TypeError):
            return 0.0


@pytest.fixture(autouse=True)
def _no_process_left_behind(request):
    procs.begin_test(_timeout_of(request.node))
    yield
    running = procs.end_test()
    left = procs.reap(TAG, exclude={os.getpid()}, parent=os.getpid())
    problems = ([f"still running at the end of the test (group killed): {d}" for d in running]
                + [f"left behind (killed): {d}" for d in left])
    if problems:
        pytest.fail("processes outlived the test:\n  " + "\n  ".join(problems))
