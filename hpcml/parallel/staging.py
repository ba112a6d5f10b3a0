"""Gradients on the GPU, collectives on the host: what DataParallel does with a model
whose buffers live on a CUDA device (`model.to_device()`, `--device cuda`).

The mpich wheel's MPI is not CUDA-aware, so the gradients go through pinned host memory
(Horovod's host staging): each bucket (a layer's gradients, last layer first) is copied
device -> host on a copy stream as soon as the backward pass has written it, the host
buffer is all-reduced by hpcml's collectives, and the summed gradients go back host ->
device before the optimizer step. With --overlap the copies and the all-reduce of a
bucket run while the backward pass goes on to earlier layers: the copy stream waits on
an event recorded after the layer's kernels, and a stream callback hands the bucket to
the all-reduce thread when its copy is done (no CUDA call is made from that thread).

With a CUDA-aware MPI (`cuda_aware=True`), nothing is staged: the device buffer (the
gradients and the two step flags) is passed to MPI_Allreduce directly.
"""
import numpy as np

from hpcml import comm as hc


class GradStaging:
    """The host (pinned) or device buffer of n gradients + 2 flags, and the copies."""

    def __init__(self, model, cuda_aware=False):
        from numba import cuda
        self.model, self.n, self.cuda_aware = model, model.size, bool(cuda_aware)
        self.host = cuda.pinned_array(self.n + 2, model.dtype)  # flags live here too
        self.host[...] = 0
        self.stream = cuda.stream()
        self.device = None
        if self.cuda_aware:  # gradients + flags in one device buffer: one MPI call
            self.device = cuda.device_array(self.n + 2, model.dtype)
            model.rebind_grads(self.device[:self.n])  # (copies the gradients in)

    def region_to_host(self, lo, hi, then=None):
        """Copy gradients [lo, hi) (hi <= n) device -> host after the kernels queued so
        far; then() once the copy is done (from a driver thread where streams have
        callbacks, else here after waiting)."""
        from numba import cuda
        after = cuda.event()
        after.record()  # the layer's kernels, on the compute (default) stream
        after.wait(self.stream)
        self.model.grads[lo:hi].copy_to_host(self.host[lo:hi], stream=self.stream)
        if then is None:
            return
        add = getattr(self.stream, "add_callback", None)
        if add is None:  # the simulator: copies are synchronous
            self.stream.synchronize()
            then()
        else:
            add(lambda stream, status, arg: then(), None)

    def all_to_host(self):
        self.region_to_host(0, self.n)
        self.stream.synchronize()

    def all_to_device(self):
        """The summed gradients (host) back into the model's device buffer; the compute
        stream's next kernels wait for the copy."""
        self.model.grads.copy_to_device(self.host[:self.n], stream=self.stream)
        self.stream.synchronize()

    def allreduce_device(self, comm, flags):
        """CUDA-aware: the device buffer (gradients and flags) summed by MPI itself."""
        self.device[self.n:].copy_to_device(np.asarray(flags, self.model.dtype))
        hc.allreduce_device(self.device, comm)
        return self.device[self.n:].copy_to_host()


class BatchFeeder:
    """The loader's host batches on the GPU, one batch ahead: while the GPU runs batch k,
    batch k + 1 is read, transformed (standardised) on the host, written into a pinned
    buffer and copied on a copy stream; the compute stream waits for that copy only
    when it takes the batch. Two pinned and two device buffers alternate; a buffer is
    rewritten only after the copy and the compute that used it are done (events).

    Yields (x on the device, y on the host). A loader error is raised at the batch it
    belongs to (not one early), so the Trainer's failure handling sees the same step."""

    def __init__(self, it, transform, dtype):
        from numba import cuda
        self.it, self.transform, self.dtype = it, transform, np.dtype(dtype)
        self.stream = cuda.stream()
        self.slots = [{"host": None, "dev": None, "copied": None} for _ in range(2)]
        self.k, self.pending, self.error = 0, None, None
        self._prefetch()

    def __iter__(self):
        return self

    def _buffers(self, slot, shape):
        from numba import cuda
        if slot["host"] is None or slot["host"].shape != shape:
            slot["host"] = cuda.pinned_array(shape, self.dtype)
            slot["dev"] = cuda.device_array(shape, self.dtype)
        return slot["host"], slot["dev"]

    def _prefetch(self):
        from numba import cuda
        try:
            x, y = next(self.it)
        except StopIteration:
            self.pending = None
            return
        except Exception as e:  # raised when its batch is asked for
            self.pending, self.error = None, e
            return
        slot = self.slots[self.k % 2]
        if slot["copied"] is not None:
            slot["copied"].synchronize()  # its previous copy is done: host buffer free
        x = np.ascontiguousarray(self.transform(x), self.dtype)
        host, dev = self._buffers(slot, x.shape)
        host[...] = x
        consumed = cuda.event()
        consumed.record()  # the compute queued so far (it may still read this slot)
        consumed.wait(self.stream)
        dev.copy_to_device(host, stream=self.stream)
        slot["copied"] = cuda.event()
        slot["copied"].record(self.stream)
        self.pending = (dev, y, slot["copied"])
        self.k += 1

    def __next__(self):
        if self.pending is None:
            if self.error is not None:
                e, self.error = self.error, None
                raise e
            raise StopIteration
        dev, y, copied = self.pending
        copied.wait()  # the compute stream takes the batch once its copy is done
        self._prefetch()
        return dev, y

    def close(self):
        close = getattr(self.it, "close", None)
        if close is not None:
            close()
