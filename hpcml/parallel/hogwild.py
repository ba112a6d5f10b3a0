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
"""
import numpy as np

from hpcml import comm as hc

from .base import StepFlags, Strategy


class Hogwild(Strategy):
    def __init__(self, model, comm, locked=False, sparse=True):
        from hpcml.comm.shared import SharedArray
        self.model, self.comm, self.locked, self.sparse = model, comm, bool(locked), sparse
        self.shared = SharedArray(model.size, model.dtype, comm)
        if comm.Get_rank() == 0:
            self.shared.array[...] = model.params
        self.shared.sync()
        hc.barrier(comm)
        model.rebind_params(self.shared.array)
        self.rows, self.denom = 1, 1
        self._held = None
        self.updates = 0
        self.sparse_steps = 0  # updates that wrote only their non-zero coordinates

    def fail(self, error, step, epoch):
        from .param_server import WorkerError
        raise WorkerError(f"hogwild rank {self.comm.Get_rank()}, training step {step} "
                          f"(epoch {epoch}): {error}") from error

    def before_forward(self):
        """The locked variant takes the lock before the step reads the parameters."""
        if self.locked and self._held is None:
            self._held = self.shared.lock()
            self._held.__enter__()

    def backward(self, dy, accumulate=False, last=True, error=False, stop=False):
        self.model.backward(dy, accumulate, input_grad=False)

    def set_rows(self, rows, denom):
        self.rows, self.denom = rows, denom

    def sync(self, error=False, stop=False):
        return StepFlags(1 if error else 0, 1 if stop else 0)

    def step(self, optimizer, lr, clip=0.0):
        """This rank's update, written into the shared parameters (the lock released after
        it in the locked variant)."""
        g = self.model.grads
        if self.rows and self.rows != self.denom:  # a mean over this rank's own rows
            g *= g.dtype.type(self.denom / self.rows)
        try:
            if clip:
                from hpcml import optim
                optim.clip_grad_norm(g, clip)
            if self.sparse and self._plain(optimizer):
                idx = np.flatnonzero(g)
                p = self.model.params
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
        self.model.rebind_params(self.shared.array.copy())
        self.shared.free()
