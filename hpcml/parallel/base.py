"""The Strategy protocol: how gradients and parameters move between ranks.

The Trainer (trainer.py) owns the loop; a Strategy owns the communication:

    strategy.backward(dy, accumulate, last, error, stop)  # the model's backward pass
    flags = strategy.sync(error, stop)      # gradients (and the two flags) across ranks
    strategy.step(optimizer, lr, clip)      # apply the update (clip first)
    strategy.allreduce_sums(values)         # metrics: a few float64 sums
    strategy.state_dict() / load_state_dict(state)   # optimizer state, serial layout
    strategy.close()

`sync` carries, for free, how many ranks failed this step and how many were asked to stop:
every rank learns both in the same call, so an error or a preemption signal on one rank
ends or checkpoints every rank at the same step.
"""
from dataclasses import dataclass

import numpy as np

from hpcml import comm as hc


@dataclass
class StepFlags:
    failed: int  # ranks that reported an error this step
    stop: int  # ranks asked to stop (signal, or a callback)


class Strategy:
    """Base class: replicated parameters and optimizer (subclasses may shard them)."""

    comm = None
    comm_seconds = 0.0  # seconds spent waiting for gradient communication

    def backward(self, dy, accumulate=False, last=True, error=False, stop=False):
        raise NotImplementedError

    def sync(self, error=False, stop=False):
        raise NotImplementedError

    def skip_backward(self, micro_steps, first, stop=False):
        """This rank has no gradients for the step's remaining `micro_steps` micro-batches
        (its data failed; `first`: none was done yet). A strategy that communicates during
        the backward pass takes part with zeros here, so no rank waits; the step's error is
        then agreed on in sync()."""
        from hpcml import kernels as K
        K.fill(self.model.grads, 0)

    def optimizer(self, factory):
        """factory(model-like) -> the optimizer this strategy steps (a sharding strategy
        passes the rank's shard, so the optimizer state is allocated for it only)."""
        return factory(self.model)

    def step(self, optimizer, lr, clip=0.0):
        """Clip the (summed) gradients' global norm if asked, then the optimizer step."""
        if clip:
            from hpcml import optim
            optim.clip_grad_norm(optimizer.grads, clip)
        optimizer.step(lr=lr)

    def param_bytes(self):
        """Bytes of parameters this rank holds."""
        return self.model.params.nbytes

    def serial_params(self):
        """The model's flat parameters in the serial layout (a model-parallel strategy
        joins them from the ranks: collective there); a host copy of parameters on a GPU."""
        from hpcml import kernels as K
        return K.to_host(self.model.params)

    def load_serial_params(self, params):
        """This rank's parameters from the serial layout."""
        if params is not self.model.params:
            from hpcml import kernels as K
            K.assign(self.model.params, params)

    def grad_bytes(self):
        """Bytes of gradient buffers this rank holds."""
        return self.model.grads.nbytes

    def state_bytes(self, optimizer):
        """Bytes of optimizer state this rank holds."""
        return sum(v.nbytes for v in optimizer.state_dict().values()
                   if isinstance(v, np.ndarray))

    def allreduce_sums(self, values):
        """Sum a few float64 numbers over ranks (metrics): one MPI_Allreduce."""
        v = np.asarray(values, np.float64).copy()
        if self.comm is not None and self.comm.Get_size() > 1:
            hc.allreduce(v, "sum", comm=self.comm, algorithm="mpi")
        return v

    def state_dict(self, optimizer):
        """The optimizer's state in the serial layout (what a checkpoint holds)."""
        return optimizer.state_dict()

    def load_state_dict(self, optimizer, state):
        optimizer.load_state_dict(state)

    def close(self):
        pass
