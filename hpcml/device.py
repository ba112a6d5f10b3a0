"""Where a job computes: `--device cpu` (default) or `--device cuda`.

    dev = device.select("cuda", comm, gpus_per_node=0, share=False, cuda_aware="auto")
    dev.summary()   # {"device": "cuda", "gpu": 0, "gpus_on_node": 4, "comm": "staged", ...}

With cuda, each rank takes the GPU of its local rank (its index among the ranks on its
node) modulo the GPUs it can see: all of the node's GPUs, or the ones Slurm or the user
listed in CUDA_VISIBLE_DEVICES (then numbered 0..n-1), or the first --gpus-per-node of
them. More ranks on a node than GPUs is refused unless sharing is allowed (--share-gpus:
ranks then share GPUs round-robin, as with MPS).

Communication from the GPU (`comm` in the summary):

* "staged": gradients are copied to pinned host memory, reduced by hpcml's collectives
  and copied back (the mpich wheel, and any MPI that is not CUDA-aware; Horovod's host
  staging);
* "cuda-aware": device buffers are passed to MPI directly. "auto" detects it by asking
  the MPI library (MPIX_Query_cuda_support, MPICH >= 4 and Open MPI); --cuda-aware yes
  forces it (an MPI that is not CUDA-aware then crashes in the first collective), no
  forces staging.

Every check is collective: a failure on any rank raises the same DeviceError, naming the
ranks and their hosts, on every rank (never a hang).
"""
import os
import socket

from hpcml.comm.guard import CollectiveError, agree

DEVICES = ("cpu", "cuda")
CUDA_AWARE = ("auto", "yes", "no")


class DeviceError(CollectiveError):
    """The device setting cannot be honoured (raised on every rank)."""


class Device:
    """The chosen device of this rank: name ("cpu"/"cuda"), gpu index (cuda), how many
    GPUs the node shows, and whether collectives get device buffers (cuda_aware)."""

    def __init__(self, name, gpu=None, gpus=0, cuda_aware=False, simulator=False,
                 shared=False, local_rank=0, local_ranks=1):
        self.name, self.gpu, self.gpus = name, gpu, gpus
        self.cuda_aware, self.simulator, self.shared = cuda_aware, simulator, shared
        self.local_rank, self.local_ranks = local_rank, local_ranks

    @property
    def is_cuda(self):
        return self.name == "cuda"

    def summary(self):
        if not self.is_cuda:
            return {"device": "cpu"}
        return {"device": "cuda", "gpu": self.gpu, "gpus_on_node": self.gpus,
                "gpu_shared": self.shared, "simulator": self.simulator,
                "comm": "cuda-aware" if self.cuda_aware else "staged"}

    def __repr__(self):
        return f"Device({self.summary()})"


def _visible_gpus():
    """(GPUs this process can see, why none or None, simulator?)."""
    from hpcml.kernels.cuda import available, why_unavailable
    if not available():
        return 0, why_unavailable(), False
    from numba import config, cuda
    return len(cuda.gpus), None, bool(config.ENABLE_CUDASIM)


def select(name, comm, gpus_per_node=0, share=False, cuda_aware="auto"):
    """Collective: this rank's Device, or the same DeviceError on every rank."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if cuda_aware not in CUDA_AWARE:
        raise ValueError(f"cuda-aware must be one of {', '.join(CUDA_AWARE)}, "
                         f"got {cuda_aware!r}")
    if name == "cpu":
        return Device("cpu")
    from hpcml import comm as hc
    local_rank, local_size = hc.node_rank(comm)
    seen, why, sim = _visible_gpus()
    n = min(seen, gpus_per_node) if gpus_per_node else seen
    _agree(comm, _problem(seen, why, gpus_per_node))
    gpu = local_rank % n
    ident = _identity(gpu, sim)
    idents = hc.node_objects(ident, comm)  # which physical GPU each rank of the node took
    shared = idents.count(ident) > 1
    error = None
    if shared and not share:
        error = (f"{local_size} ranks on {socket.gethostname()} but {len(set(idents))} "
                 f"GPU(s) for them{_visible()}: ranks would share GPU {ident}; start at "
                 f"most {len(set(idents))} rank(s) per node, or let ranks share GPUs with "
                 f"--share-gpus")
    _agree(comm, error)
    from numba import cuda
    if not sim:
        _per_thread_default_stream()
        cuda.select_device(gpu)
    return Device("cuda", gpu, n, _cuda_aware(cuda_aware, sim), sim, shared, local_rank,
                  local_size)


def _per_thread_default_stream():
    """Kernels on the per-thread default stream (unless NUMBA_CUDA_PER_THREAD_DEFAULT_STREAM
    says otherwise), set before the first launch or copy, as Numba's own PTDS test does:
    the legacy default stream would serialise the batch and gradient copies (on their own
    streams, ordered by events) with the compute instead of overlapping them."""
    if "NUMBA_CUDA_PER_THREAD_DEFAULT_STREAM" not in os.environ:
        from numba.core import config
        config.CUDA_PER_THREAD_DEFAULT_STREAM = 1


def _visible():
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""


def _identity(gpu, simulator):
    """The physical GPU behind this process's device `gpu`: its UUID where the driver
    gives one (Slurm's per-task CUDA_VISIBLE_DEVICES gives each rank a device 0 that is a
    different GPU), else the CUDA_VISIBLE_DEVICES entry or the index."""
    if not simulator:
        from numba import cuda
        try:
            uuid = getattr(cuda.gpus[gpu], "uuid", None)
            if uuid:
                return str(uuid)
        except Exception:  # an older numba: fall back on the visible list
            pass
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    return f"{'simulated ' if simulator else ''}{visible[gpu] if gpu < len(visible) else gpu}"


def _problem(seen, why, gpus_per_node):
    host = socket.gethostname()
    if why is not None:
        return f"--device cuda on {host}: {why}; or use --device cpu"
    if gpus_per_node and gpus_per_node > seen:
        return (f"--gpus-per-node {gpus_per_node} on {host}, which shows {seen} GPU(s)"
                f"{_visible()}")
    return None


def _agree(comm, error):
    try:
        agree(comm, error, what="choosing the device")
    except CollectiveError as e:
        raise DeviceError(str(e)) from None


def _cuda_aware(setting, simulator):
    if setting == "no" or simulator:  # the simulator's arrays are host memory: staged
        return False
    if setting == "yes":
        return True
    from hpcml import comm as hc
    return bool(hc.cuda_aware())
