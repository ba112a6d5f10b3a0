"""Hogwild! (Niu et al. 2011): the ranks of one node share one copy of the parameters and
apply their updates to it without locks.

    strategy = Hogwild(model, comm, locked=False)   # model.params now in shared memory
    opt = strategy.optimizer(lambda m: optim.SGD(m, 0.05))

Every rank's `model.params` is a view of one MPI shared-memory window (hpcml.comm.shared):
a rank reads the parameters as they are while it computes its gradient (other ranks may be
writing them), then updates them in place with its own mini-batch's gradient (rescaled to a
mean over its rows) and its own optimizer state (momentum, Adam moments stay per rank).

* Sparse updates: with plain SGD (no momentum, no weight decay), only the coordinates whose
  gradient is non-zero are written (a linear model on sparse features touches a few rows of
  its weights per step, the case Hogwild's analysis covers); otherwise the optimizer's
  dense update.
* `locked=True`, the comparison: an exclusive lock is held from the start of a step's
  forward pass to the end of its update, so every step reads and writes the parameters
  alone (consistent, serialised SGD: the ranks take turns).

No gradient is communicated; the step's two flags stay local (an error on a rank ends the
job, as with a parameter server's workers); the per-epoch metrics are all-reduced.

On a GPU (a model moved with `to_device()`, --device cuda), the shared copy stays in the
node's memory and the GPU computes: before each forward pass the rank copies the shared
parameters (as they are at that moment) onto its GPU, and its gradient comes back to a
host buffer, from which the update is written into the shared copy as above (sparse or
the optimizer's, whose state then lives on the host). This is Hogwild's contract with a
GPU per rank: one copy, read and written without locks; the copies are the price.
"""
import numpy as np

from hpcml import comm as hc
from hpcml import kernels as K

from .base import StepFlags, Strategy


class _HostSide:
    """The shared parameters and a host gradient buffer, as an optimizer sees a model
    (a GPU rank's optimizer updates the shared copy from here)."""

    device = "cpu"

    def __init__(self, params, dtype):
        self.params, self.dtype, self.size = params, np.dtype(dtype), params.size
        self.grads = np.zeros(params.size, dtype)


class Hogwild(Strategy):
    def __init__(self, model, comm, locked=False, sparse=True):
        from hpcml.comm.shared import SharedArray
        self.model, self.comm, self.locked, self.sparse = model, comm, bool(locked), sparse
        self.shared = SharedArray(model.size, model.dtype, comm)
        if comm.Get_rank() == 0:
            self.shared.array[...] = K.to_host(model.params)
        self.shared.sync()
        hc.barrier(comm)
        self.on_gpu = getattr(model, "device", "cpu") == "cuda"
        if self.on_gpu:  # the GPU computes; the shared copy stays in the node's memory
            self.host = _HostSide(self.shared.array, model.dtype)
        else:
            model.rebind_params(self.shared.array)
            self.host = model
        self.rows, self.denom = 1, 1
        self._held = None
        self.updates = 0
        self.sparse_steps = 0  # updates that wrote only their non-zero coordinates

    def fail(self, error, step, epoch):
        from .param_server import WorkerError
        raise WorkerError(f"hogwild rank {self.comm.Get_rank()}, training step {step} "
                          f"(epoch {epoch}): {error}") from error

    def optimizer(self, factory):
        """The optimizer over the shared parameters (a GPU rank's: over the host side)."""
        return factory(self.host)

    def before_forward(self):
        """The locked variant takes the lock before the step reads the parameters; a GPU
        rank copies the shared parameters, as they are now, onto its GPU."""
        if self.locked and self._held is None:
            self._held = self.shared.lock()
            self._held.__enter__()
        if self.on_gpu:
            K.assign(self.model.params, self.shared.array)

    def predict(self, x):
        """The model's outputs (host) with the shared parameters as they are now."""
        if self.on_gpu:
            K.assign(self.model.params, self.shared.array)
        return K.to_host(self.model.forward(x, train=False))

    def backward(self, dy, accumulate=False, last=True, error=False, stop=False):
        self.model.backward(dy, accumulate, input_grad=False)

    def set_rows(self, rows, denom):
        self.rows, self.denom = rows, denom

    def sync(self, error=False, stop=False):
        return StepFlags(1 if error else 0, 1 if stop else 0)

    def step(self, optimizer, lr, clip=0.0):
        """This rank's update, written into the shared parameters (the lock released after
        it in the locked variant)."""
        g = self.host.grads
        if self.on_gpu:  # the rank's gradient off its GPU, into the host buffer
            self.model.grads.copy_to_host(g)
        if self.rows and self.rows != self.denom:  # a mean over this rank's own rows
            g *= g.dtype.type(self.denom / self.rows)
        try:
            if clip:
                from hpcml import optim
                optim.clip_grad_norm(g, clip)
            if self.sparse and self._plain(optimizer):
                idx = np.flatnonzero(g)
                p = self.host.params
                p[idx] -= p.dtype.type(lr) * g[idx]
                optimizer.steps += 1
                self.sparse_steps += 1
            else:
                optimizer.step(lr=lr)
            self.updates += 1
        finally:
            if self._held is not None:
                self._held.__exit__(None, None, None)
                self._held = None

    @staticmethod
    def _plain(optimizer):
        return (type(optimizer).__name__ == "SGD" and not getattr(optimizer, "momentum", 0)
                and not getattr(optimizer, "weight_decay", 0))

    def close(self):
        if self._held is not None:
            self._held.__exit__(None, None, None)
            self._held = None
        hc.barrier(self.comm)  # every rank's last update is in, then the same copy
        if self.on_gpu:
            K.assign(self.model.params, self.shared.array)
        else:
            self.model.rebind_params(self.shared.array.copy())
        self.shared.free()

    def serial_params(self):
        """The shared parameters (a copy), wherever the rank computes."""
        return self.shared.array.copy()

    def load_serial_params(self, params):
        """Every rank writes the same values into the shared copy (and its GPU's)."""
        self.shared.array[...] = params
        if self.on_gpu:
            K.assign(self.model.params, params)

    def grad_bytes(self):
        return self.model.grads.nbytes + (self.host.grads.nbytes if self.on_gpu else 0)
