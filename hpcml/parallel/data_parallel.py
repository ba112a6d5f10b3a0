"""Synchronous data parallelism over one flat gradient buffer.

    dp = DataParallel(model, comm, algorithm="auto")   # broadcasts rank 0's parameters
    for micro in range(K):                             # gradient accumulation: no
        loss, d = cross_entropy(model(x), y, denom=global_rows)   # communication until
        model.backward(d, accumulate=micro > 0)                   # the last micro-step
    flags = dp.sync(error=..., stop=...)                # one all-reduce: gradients + flags
    opt.step()

Each rank's loss is normalised by the *global* number of rows of the step (denom), so the
all-reduced sum of gradients is exactly the gradient of the global mean loss: P ranks at
per-rank batch b follow one process at batch P*b (with the loader's partition="global",
which gives them the same rows).

The all-reduce carries two more numbers after the gradients: how many ranks failed this
step (a data error, say) and how many were asked to stop (SIGTERM/SIGUSR1). Every rank
learns both in the same call, for free, so a bad row on one rank raises the same error on
every rank at the same step, and a preemption signal makes every rank checkpoint at the
same step boundary.
"""
import queue
import threading

import numpy as np

from hpcml import comm as hc

from .base import StepFlags, Strategy


class DataParallel(Strategy):
    """Wraps an hpcml.nn.Sequential: its gradient buffer becomes the head of a buffer with
    two flag slots, all-reduced in one call per optimizer step."""

    def __init__(self, model, comm=None, algorithm="auto", overlap=False, cuda_aware=False):
        """A model on a GPU (model.to_device()) keeps its gradients there: they are
        staged through pinned host memory for the all-reduce (staging.py), or, with
        cuda_aware=True (an MPI that takes device buffers), all-reduced in place."""
        if algorithm not in hc.ALGORITHMS:
            raise ValueError(f"DataParallel: algorithm must be one of "
                             f"{', '.join(hc.ALGORITHMS)}, got {algorithm!r}")
        self.model, self.algorithm = model, algorithm
        self.comm = comm if comm is not None else hc.world()
        self.size, self.rank = self.comm.Get_size(), self.comm.Get_rank()
        n = model.size
        self.staging = None
        if getattr(model, "device", "cpu") == "cuda":
            from .staging import GradStaging
            self.staging = GradStaging(model, cuda_aware)
            self.buffer = self.staging.host  # gradients (a copy) and the two flags
        else:
            self.buffer = np.zeros(n + 2, model.dtype)
            self.buffer[:n] = model.grads
            model.rebind_grads(self.buffer[:n])
        self.comm_seconds = 0.0
        self._broadcast_params()
        # overlap: each layer's gradients are all-reduced by a background thread, on a
        # communicator of their own, while the backward pass goes on to earlier layers
        self.overlap = bool(overlap) and self.size > 1
        self._worker = None
        if self.overlap:
            if not hc.thread_multiple():
                raise RuntimeError("DataParallel(overlap=True) needs MPI_THREAD_MULTIPLE")
            self.bucket_comm = hc.dup(self.comm)
            self._todo, self._done = queue.Queue(), queue.Queue()
            self._worker = threading.Thread(target=self._reduce_buckets, daemon=True,
                                            name="hpcml-grad-allreduce")
            self._worker.start()
            self._pending = 0
            self.regions = model.layer_regions()  # layer -> [lo, hi) of the flat buffer

    def _broadcast_params(self):
        """Every rank starts from rank 0's parameters (through the host from a GPU)."""
        if self.staging is None:
            hc.broadcast(self.model.params, root=0, comm=self.comm)
        elif self.size > 1:
            from hpcml import kernels as K
            host = self.model.host_params()
            hc.broadcast(host, root=0, comm=self.comm)
            K.assign(self.model.params, host)

    def _reduce_buckets(self):
        while True:
            item = self._todo.get()
            if item is None:
                return
            lo, hi = item
            try:
                hc.allreduce(self.buffer[lo:hi], "sum", comm=self.bucket_comm,
                             algorithm=self.algorithm)
                self._done.put(None)
            except BaseException as e:  # handed to the main thread
                self._done.put(e)

    def backward(self, dy, accumulate=False, last=True, error=False, stop=False):
        """model.backward without the input gradient; with overlap and on the last
        micro-step, each layer's gradients (and, with the last layer, the flags) start
        their all-reduce as soon as they are complete. sync() then waits for them."""
        model = self.model
        if not (self.overlap and last):
            model.backward(dy, accumulate, input_grad=False)
            return
        self._set_flags(error, stop)
        model.backward(dy, accumulate, input_grad=False, on_layer=self._submit)

    def _set_flags(self, error, stop):
        n = self.model.size
        self.buffer[n] = 1 if error else 0
        self.buffer[n + 1] = 1 if stop else 0

    def _submit(self, i):
        """Queue layer i's gradient region for the all-reduce thread; the first region
        queued in a step also carries the two flags after the gradients."""
        if i in self.regions:
            lo, hi = self.regions[i]
            item = (lo, self.model.size + 2 if self._pending == 0 else hi)
            self._pending += 1
            if self.staging is None:
                self._todo.put(item)
            else:  # the region's gradients to pinned memory first, then its all-reduce
                self.staging.region_to_host(lo, hi, then=lambda: self._todo.put(item))

    def sync(self, error=False, stop=False):
        """All-reduce (sum) the gradients and the flags; returns the summed StepFlags.
        The gradients are left as received even when a rank failed (callers stop then)."""
        n = self.model.size
        if self.overlap:
            if not self._pending:  # no backward on this rank this step (it failed, say):
                self._set_flags(error, stop)  # the same buckets, in the same order
                for i in range(len(self.model.layers) - 1, -1, -1):
                    self._submit(i)
            t = hc.wtime()
            failure = None
            while self._pending:
                e = self._done.get()
                self._pending -= 1
                failure = failure or e
            if self.staging is not None:
                self.staging.all_to_device()
            self.comm_seconds += hc.wtime() - t
            if failure is not None:
                raise failure
            return StepFlags(int(round(float(self.buffer[n]))),
                             int(round(float(self.buffer[n + 1]))))
        t = hc.wtime()  # the whole sync, as a trace's span around it sees it
        self._set_flags(error, stop)
        if self.staging is not None and self.size > 1:
            self._sync_device()
        elif self.size > 1:
            hc.allreduce(self.buffer, "sum", comm=self.comm, algorithm=self.algorithm)
        flags = StepFlags(int(round(float(self.buffer[n]))),
                          int(round(float(self.buffer[n + 1]))))
        if self.size > 1:
            self.comm_seconds += hc.wtime() - t
        return flags

    def _sync_device(self):
        """Gradients on the GPU: all-reduced in place by a CUDA-aware MPI, or staged
        through the pinned host buffer (flags included) and copied back."""
        n = self.model.size
        if self.staging.cuda_aware:
            self.buffer[n:] = self.staging.allreduce_device(self.comm, self.buffer[n:])
            return
        self.staging.all_to_host()
        hc.allreduce(self.buffer, "sum", comm=self.comm, algorithm=self.algorithm)
        self.staging.all_to_device()

    def grad_bytes(self):
        """Bytes of gradient buffers this rank holds (on a GPU: the device gradients and
        the pinned host copy)."""
        if self.staging is not None:
            return self.buffer.nbytes + self.model.grads.nbytes
        return self.buffer.nbytes

    def close(self):
        if self._worker is not None:
            self._todo.put(None)
            self._worker.join()
            self._worker = None
            self.bucket_comm.Free()


