"""Hyperparameter search at scale (`python -m hpcml.tune`): search spaces, samplers (grid,
random, Sobol, TPE, GP-BO), pruners (median, ASHA, Hyperband), a journal that is the
study's state, and an asynchronous manager/worker protocol over MPI.

    from hpcml.tune import Space, Engine, run_serial, samplers, pruners
"""
from . import pruners, samplers
from .space import Param, Space, SpaceError
from .study import Engine, Pruned, StudyError, run_serial

__all__ = ["Param", "Space", "SpaceError", "Engine", "Pruned", "StudyError", "run_serial",
           "samplers", "pruners"]

# SciPy's own OpenBLAS gets the ranks' thread count if it was set before this import
# (see hpcml/ml/__init__.py)
from hpcml.kernels import threads as _threads  # noqa: E402

_threads.reapply()
