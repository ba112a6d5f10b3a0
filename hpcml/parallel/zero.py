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

Stage 1 shards the optimizer state. Stage 2 also shards the gradients, as DeepSpeed's
does: there is no full gradient buffer. Each layer's backward writes its gradients into one
staging buffer (as large as the largest layer), and as soon as the layer is done
(``Sequential.backward``'s per-layer hook) they are reduced into their owners' shards: a
ring reduce-scatter of the layer with the owners of the whole buffer (so every element is
summed in the order the whole buffer's ring all-reduce sums it: the same bytes), or with
--algorithm tree a recursive-doubling all-reduce of the layer (its order does not depend on
the message either). Gradient memory per rank: its shard (about n/P) plus the largest layer,
against n for data parallelism. With accumulation, every micro-batch is reduced and added
to the shard (DeepSpeed's way: the same sum, in another order than data parallelism's, so
not bit for bit). With --algorithm rhd or mpi, whose summation order depends on the
message, stage 2 keeps the full buffer (stage 1's path) to stay bit-identical to data
parallelism; so it does when the shard plus the largest layer would not be smaller than the
whole buffer (a model dominated by one layer: sharding would cost memory and time, measured
0.86x data parallelism's samples/s on a 64-1024-1024-10 MLP at 2 ranks). `grad_bytes()`
and the job summary say which.

The update is element-wise, so every parameter gets the arithmetic DataParallel gives it:
the parameters end bit-identical to DataParallel with the same reduction algorithm (global
norm clipping aside with reduce-scatter, whose norm is summed from the shards in another
order).
On a GPU (a model moved with `to_device()`), stage 1 stages the whole gradient buffer
through pinned host memory for the reduce-scatter and updates its shard on the device.
Stage 2 keeps no full gradient buffer on the GPU either: the layers write into a device
staging buffer (the largest layer), each layer's gradients are copied to a pinned host
buffer as soon as it is done and reduce-scattered there, and the rank's part is added to
its gradient shard, which lives on the GPU with its parameters and optimizer state.

Checkpoints hold the optimizer state in the serial layout (gathered), so a ZeRO checkpoint
resumes without ZeRO, with another stage, or on another rank count, and back.
"""
import numpy as np

from hpcml import comm as hc
from hpcml import kernels as K

from .base import StepFlags
from .data_parallel import DataParallel


class _Shard:
    """Parameters [lo, hi) of a model, as an optimizer sees a model."""

    def __init__(self, strategy):
        self.strategy, model = strategy, strategy.model
        self.params = model.params[strategy.lo:strategy.hi]
        self.size, self.dtype = strategy.hi - strategy.lo, model.dtype

    @property
    def grads(self):
        return self.strategy.shard_grads()


def _largest_layer(model):
    return max((hi - lo for lo, hi in model.layer_regions().values()), default=0)


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
        #: stage 2 without a full gradient buffer (ring or tree, and only where the shard
        #: plus the largest layer is smaller than the whole; see the module docstring)
        self.sharded = (stage == 2 and p > 1 and algorithm in ("ring", "tree", "auto")
                        and self.hi - self.lo + _largest_layer(model) < n)
        if self.sharded:
            self._shard_gradients(b)

    def _shard_gradients(self, owners):
        """Layers write their gradients into one staging buffer; the rank keeps its shard."""
        model, n = self.model, self.model.size
        self.reduce_with = "tree" if self.algorithm == "tree" else "ring"
        regions = self._regions = model.layer_regions()  # layer -> [lo, hi) of the layout
        # each layer's owners: the whole buffer's blocks, cut to the layer
        self._owners = {i: tuple(min(max(int(x), lo), hi) - lo for x in owners)
                        for i, (lo, hi) in regions.items()}
        largest = max(hi - lo for lo, hi in regions.values())
        self.staging = np.zeros(largest, model.dtype)  # what the reduction works on
        self.gshard = np.zeros(self.hi - self.lo, model.dtype)
        self.dev_staging = None
        if model.device == "cuda":  # layers write on the GPU; a pinned copy is reduced
            from numba import cuda
            self.staging = cuda.pinned_array(largest, model.dtype)
            self.staging[...] = 0
            self.dev_staging = K.fill(cuda.device_array(largest, model.dtype), 0)
            self.gshard = K.fill(cuda.device_array(self.hi - self.lo, model.dtype), 0)
        target = self.staging if self.dev_staging is None else self.dev_staging
        views = [[] for _ in model.layers]
        for i, _, shape, off in model.layout:
            lo = regions[i][0]
            views[i].append(target[off - lo:off - lo + int(np.prod(shape))].reshape(shape))
        for layer, g in zip(model.layers, views):
            layer.g = g
        model.grads = None  # no full gradient buffer (on a GPU: freed): a use fails loudly
        self.buffer = np.zeros(2, model.dtype)  # the two step flags
        self._first = True

    def optimizer(self, factory):
        """factory(model-like) -> optimizer: built over this rank's shard only."""
        return factory(_Shard(self))

    def shard_grads(self):
        """This rank's shard of the summed gradients (after sync)."""
        return self.gshard if self.sharded else self.model.grads[self.lo:self.hi]

    def grad_bytes(self):
        """Bytes of gradient buffers this rank holds (DataParallel: the whole buffer)."""
        if self.sharded:  # (on a GPU: the device shard and staging, and the pinned copy)
            return self.gshard.nbytes + self.staging.nbytes + self.buffer.nbytes + \
                (self.dev_staging.nbytes if self.dev_staging is not None else 0)
        return self.buffer.nbytes

    def backward(self, dy, accumulate=False, last=True, error=False, stop=False):
        if not self.sharded:
            return super().backward(dy, accumulate, last, error, stop)
        self._first = not accumulate
        self.model.backward(dy, False, input_grad=False, on_layer=self._reduce_layer)

    def skip_backward(self, micro_steps, first, stop=False):
        """This rank has no gradients for `micro_steps` micro-batches (its data failed):
        it takes part in the per-layer reductions the others make, with zeros."""
        if not self.sharded:
            return super().skip_backward(micro_steps, first, stop)
        for k in range(micro_steps):
            self._first = first and k == 0
            for i in range(len(self.model.layers) - 1, -1, -1):
                K.fill(self.staging if self.dev_staging is None else self.dev_staging, 0)
                self._reduce_layer(i)

    def _reduce_layer(self, i):
        """Layer i's gradients (in staging) summed into their owners' shards."""
        if i not in self._regions:
            return
        lo, hi = self._regions[i]
        b = self._owners[i]
        a, z = b[self.rank], b[self.rank + 1]
        view = self.staging[:hi - lo]
        if self.dev_staging is not None:  # the layer's gradients off the GPU (after its
            self.dev_staging[:hi - lo].copy_to_host(view)  # kernels: the same stream)
        t = hc.wtime()
        if self.reduce_with == "ring":
            hc.reduce_scatter(view, "sum", comm=self.comm, algorithm="ring", bounds=b)
        else:
            hc.allreduce(view, "sum", comm=self.comm, algorithm="tree")
        self.comm_seconds += hc.wtime() - t
        dst = self.gshard[lo + a - self.lo:lo + z - self.lo]
        if z <= a:
            return
        if self.dev_staging is None:
            if self._first:
                dst[...] = view[a:z]
            else:
                dst += view[a:z]
        elif self._first:
            K.assign(dst, view[a:z])
        else:  # the shard's sum on the GPU (as the CPU's +=: one addition per element)
            from numba import cuda
            K.reduce_into(dst, cuda.to_device(view[a:z]), "sum")

    def _scatters(self):
        """Reduce-scatter (ring) instead of all-reduce: the first half of the ring
        all-reduce, so the owned shard gets the same bytes with half the traffic (stage 2
        without a full buffer: its gradients are already in the shards)."""
        return (self.algorithm == "ring" or self.sharded) and self.size > 1

    def sync(self, error=False, stop=False):
        if self.sharded:  # the gradients were reduced layer by layer: the flags only
            t = hc.wtime()
            flags = np.array([1.0 if error else 0.0, 1.0 if stop else 0.0])
            hc.allreduce(flags, "sum", comm=self.comm, algorithm="mpi")
            self.comm_seconds += hc.wtime() - t
            return StepFlags(int(round(flags[0])), int(round(flags[1])))
        if not self._scatters():
            return super().sync(error, stop)
        n = self.model.size
        self._set_flags(error, stop)
        flags = self.buffer[n:].copy()
        t = hc.wtime()
        if self.staging is not None:  # gradients on the GPU: staged in the pinned buffer
            self.staging.all_to_host()
        hc.reduce_scatter(self.buffer, "sum", comm=self.comm, algorithm="ring")
        hc.allreduce(flags, "sum", comm=self.comm, algorithm="mpi")
        if self.staging is not None:  # this rank's summed shard back, for its update
            K.assign(self.model.grads[self.lo:self.hi], self.buffer[self.lo:self.hi])
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
            g[self.lo:self.hi] = K.to_host(self.model.params[self.lo:self.hi])
            hc.allgather(g, comm=self.comm, algorithm="ring")
            K.assign(self.model.params, g[:n])  # (one copy to the GPU there)
            self.comm_seconds += hc.wtime() - t

    def _clip_shards(self, max_norm):
        g = self.shard_grads()
        local = float(np.sum(K.to_host(g).astype(np.float64) ** 2))
        norm = float(np.sqrt(hc.reduce_value(local, "sum", self.comm)))
        coef = max_norm / (norm + 1e-6)  # PyTorch's rule, as hpcml.kernels.clip_grad_norm
        if np.isfinite(norm) and coef < 1:
            K.scale(g, coef)

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
