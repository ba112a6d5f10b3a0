"""What hpcml keeps per communicator, cached *on* the communicator (MPI attribute caching).

The state lives and dies with the communicator: when a communicator is freed, MPI calls the
delete callback, which frees hpcml's private duplicate and drops the cached plans and model.
A later communicator that reuses the freed handle starts clean (keying a dict by handle
would silently reuse stale plans of another size: a wrong result or a hang).

Creating the state is collective (it duplicates the communicator), and happens on the first
hpcml collective over that communicator, which every rank makes. It also loads the cost
model named by HPCML_COMM_MODEL and makes the ranks agree that it loaded, and starts the
HPCML_TIMEOUT watchdog if that is set.
"""
import os

from mpi4py import MPI

from .guard import Watchdog, agree, same_everywhere, watching
from .model import DEFAULT, load


class CommState:
    """private: hpcml's duplicate of the communicator (its point-to-point traffic never meets
    the user's messages); plans: per-call-signature plans; model: the cost model."""

    __slots__ = ("private", "plans", "model")

    def __init__(self, private, model):
        self.private = private
        self.plans = {}
        self.model = model


def _delete(comm, keyval, state):
    dup, state.private = state.private, None
    state.plans.clear()
    if dup is not None and not MPI.Is_finalized():
        dup.Free()


_KEYVAL = MPI.Comm.Create_keyval(delete_fn=_delete)


def state_of(comm):
    """The communicator's hpcml state (collective on first use)."""
    state = comm.Get_attr(_KEYVAL)
    if state is None:
        state = _create(comm)
    return state


def _create(comm):
    Watchdog.from_env()
    error, model = None, DEFAULT
    path = os.environ.get("HPCML_COMM_MODEL")
    if path:
        try:
            model = load(path)
        except ValueError as e:
            error = str(e)
    # the same label on every rank (it is part of the agreed message), set or not
    agree(comm, error, what="setting up hpcml on this communicator (its first collective; "
          "HPCML_COMM_MODEL if set)")
    # ranks started with different HPCML_COMM_MODEL / HPCML_RING_SEGMENT_BYTES / HPCML_CHECK
    # would pick different algorithms or segments for the same call: a truncation or hang
    from .collectives import config
    settings = {"HPCML_COMM_MODEL": model.to_json(),
                "HPCML_RING_SEGMENT_BYTES": config.segment_bytes, "HPCML_CHECK": config.check,
                "HPCML_TIMEOUT": os.environ.get("HPCML_TIMEOUT", "").strip()}
    differ = [k for k in settings if not same_everywhere(comm, {k: settings[k]})]
    agree(comm, None if not differ else
          f"{', '.join(differ)} differ across ranks: every rank must see the same "
          f"environment (export it to all ranks, e.g. mpiexec -genv)", what="checking hpcml's "
          f"environment")
    with watching("MPI_Comm_dup of hpcml's private communicator (collective)"):
        dup = comm.Dup()
    state = CommState(dup, model)
    comm.Set_attr(_KEYVAL, state)
    if isinstance(comm, MPI.Comm) and \
            MPI.Comm.Compare(comm, MPI.COMM_WORLD) in (MPI.IDENT, MPI.CONGRUENT):
        Watchdog.attach_inspector(comm)  # collective: every world rank is here
    return state


def model_for(comm=None):
    """The cost model `auto` uses on `comm`: calibrated, from HPCML_COMM_MODEL, or DEFAULT."""
    return state_of(comm if comm is not None else MPI.COMM_WORLD).model


def set_model(model, comm=None):
    """Use `model` on `comm` (every rank must pass the same model); drops cached plans."""
    state = state_of(comm if comm is not None else MPI.COMM_WORLD)
    state.model = model
    state.plans.clear()
