"""ZeRO sharding (Rajbhandari et al. 2020; DeepSpeed's stages 1 and 2) as a Strategy.

    strategy = ZeRO(model, comm, algorithm="ring", stage=1)
    opt = strategy.optimizer(lambda m: optim.Adam(m, lr=1e-3))  # state for this shard only

Each rank owns one contiguous shard of the flat parameters (the blocks
``chunk_bounds(n + 2, P)`` of the gradient buffer, which carries the two step flags after
the n gradients) and keeps the optimizer state (velocity, Adam moments) for that shard
only: 1/P of data parallelism's. A step:

* with --algorithm ring, the gradients are reduce-scattered (the first half of a ring
  all-reduce, so each shard holds the bytes the all-reduce would give) and only the two
  flags are all-reduced; with another algorithm they are all-reduced as DataParallel does
  (the same call on the same buffer, so the same bytes);
* each rank updates its shard with its shard of the optimizer state;
* the parameters are all-gathered (ring).

Stage 1 shards the optimizer state. Stage 2 also shards the gradients in DeepSpeed; here
the backward pass still fills the whole flat gradient buffer (one buffer, reused every
step), so stage 2 differs from stage 1 only in name: a known gap.

The update is element-wise, so every parameter gets the arithmetic DataParallel gives it:
the parameters end bit-identical to DataParallel with the same reduction algorithm (global
norm clipping aside with reduce-scatter, whose norm is summed from the shards in another
order).
Checkpoints hold the optimizer state in the serial layout (gathered), so a ZeRO checkpoint
resumes without ZeRO, with another stage, or on another rank count, and back.
"""
import numpy as np

from hpcml import comm as hc

from .base import StepFlags
from .data_parallel import DataParallel


class _Shard:
    """Parameters [lo, hi) of a model, as an optimizer sees a model."""

    def __init__(self, model, lo, hi):
        self.model, self.lo, self.hi = model, lo, hi
        self.params = model.params[lo:hi]
        self.size, self.dtype = hi - lo, model.dtype

    @property
    def grads(self):
        return self.model.grads[self.lo:self.hi]


class ZeRO(DataParallel):
    def __init__(self, model, comm=None, algorithm="auto", stage=1):
        if stage not in (1, 2):
            raise ValueError(f"ZeRO: stage must be 1 or 2, got {stage!r}")
        super().__init__(model, comm, algorithm, overlap=False)
        self.stage = stage
        n, p = model.size, self.size
        b = hc.chunk_bounds(n + 2, p)
        self.lo, self.hi = min(int(b[self.rank]), n), min(int(b[self.rank + 1]), n)
        self._gather = np.empty(n + 2, model.dtype)  # parameters, all-gathered in blocks

    def optimizer(self, factory):
        """factory(model-like) -> optimizer: built over this rank's shard only."""
        return factory(_Shard(self.model, self.lo, self.hi))

    def _scatters(self):
        """Reduce-scatter (ring) instead of all-reduce: the first half of the ring
        all-reduce, so the owned shard gets the same bytes with half the traffic."""
        return self.algorithm == "ring" and self.size > 1

    def sync(self, error=False, stop=False):
        if not self._scatters():
            return super().sync(error, stop)
        n = self.model.size
        self._set_flags(error, stop)
        flags = self.buffer[n:].copy()
        t = hc.wtime()
        hc.reduce_scatter(self.buffer, "sum", comm=self.comm, algorithm="ring")
        hc.allreduce(flags, "sum", comm=self.comm, algorithm="mpi")
        self.comm_seconds += hc.wtime() - t
        return StepFlags(int(round(float(flags[0]))), int(round(float(flags[1]))))

    def step(self, optimizer, lr, clip=0.0):
        if clip:
            if not self._scatters():
                from hpcml import optim  # every rank holds the summed gradients: as DP
                optim.clip_grad_norm(self.model.grads, clip)
            else:
                self._clip_shards(clip)
        optimizer.step(lr=lr)
        if self.size > 1:  # every rank's updated shard to every rank
            t = hc.wtime()
            n, g = self.model.size, self._gather
            g[self.lo:self.hi] = self.model.params[self.lo:self.hi]
            hc.allgather(g, comm=self.comm, algorithm="ring")
            self.model.params[...] = g[:n]
            self.comm_seconds += hc.wtime() - t

    def _clip_shards(self, max_norm):
        g = self.model.grads[self.lo:self.hi]
        norm = float(np.sqrt(hc.reduce_value(float(np.sum(g.astype(np.float64) ** 2)), "sum",
                                             self.comm)))
        coef = max_norm / (norm + 1e-6)  # PyTorch's rule, as hpcml.kernels.clip_grad_norm
        if np.isfinite(norm) and coef < 1:
            g *= g.dtype.type(coef)

    def state_dict(self, optimizer):
        """The optimizer state in the serial layout (collective: the shards gathered)."""
        out = {}
        n = self.model.size
        for name, value in optimizer.state_dict().items():
            if isinstance(value, np.ndarray) and value.shape == (self.hi - self.lo,):
                full = np.zeros(n + 2, value.dtype)
                full[self.lo:self.hi] = value
                if self.size > 1:
                    hc.allgather(full, comm=self.comm, algorithm="ring")
                value = full[:n]
            out[name] = value
        return out

    def load_state_dict(self, optimizer, state):
        n = self.model.size
        mine = {k: (np.asarray(v)[self.lo:self.hi] if np.ndim(v) == 1 and np.shape(v) == (n,)
                    else v) for k, v in state.items()}
        optimizer.load_state_dict(mine)

    def state_bytes(self, optimizer):
        """Bytes of optimizer state this rank holds."""
        return sum(v.nbytes for v in optimizer.state_dict().values()
                   if isinstance(v, np.ndarray))
