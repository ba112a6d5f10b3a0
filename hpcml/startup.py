"""What `python -m hpcml.train` checks and sets up before its first step, on every layout:
the memory estimate, the per-rank array budget (--max-rank-memory), the output paths, the
run id, and the weights of --init-from."""
import os
import time

import numpy as np

from hpcml import comm as hc
from hpcml import memory
from hpcml.comm.guard import agree


def check_memory(cfg, comm, ds, M):
    """Refuse (every rank, one message) a run whose estimated peak per rank exceeds the
    memory a rank may use (--max-memory)."""
    P, dtype = comm.Get_size(), np.dtype(cfg["dtype"])
    outputs = ds.classes if ds.task == "classification" else 1
    slots = {"sgd": 1 if cfg["momentum"] > 0 else 0, "adam": 2, "adamw": 2}[cfg["optimizer"]]
    if cfg["zero"]:
        slots = slots / P
    memory.check(comm, cfg["max_memory"], f"training an MLP {ds.features}-" + "-".join(
        map(str, [*cfg["hidden_sizes"], outputs])) + f" ({cfg['dtype']}, batch {-(-M // P)} "
        f"rows per rank)", memory.train_parts(ds.features, cfg["hidden_sizes"], outputs,
                                              -(-M // P), dtype.itemsize, slots),
        ["Narrower --hidden layers, a smaller --batch-size with --accumulation (the same "
         "global batch in smaller micro-batches), --zero 1 or 2 (optimizer state and "
         "gradients sharded over the ranks), or fewer ranks per node."])


def init_from(path, comm, model, spec, log):
    """Fine-tuning: this run's parameters from a model or checkpoint (weights only), after
    checking the architecture by name. Rank 0 reads; every rank gets the same bytes
    (in model.params, or, for an unallocated model, in the array returned)."""
    from hpcml.model import load_model, ModelError
    error, params = None, None
    if comm.Get_rank() == 0:
        try:
            m = load_model(path)
            mine = {k: spec[k] for k in ("features", "hidden", "outputs", "activation")}
            theirs = {k: m.spec[k] for k in mine}
            if [str(v) for v in mine.values()] != [str(v) for v in theirs.values()]:
                error = (f"--init-from {path}: " + ", ".join(
                    f"{k} {theirs[k]}" for k in mine if str(mine[k]) != str(theirs[k]))
                    + "; this run has " + ", ".join(
                    f"{k} {mine[k]}" for k in mine if str(mine[k]) != str(theirs[k])))
            params = m.net.params.astype(model.dtype)
        except ModelError as e:
            error = f"--init-from: {e}"
    agree(comm, error, what="loading --init-from")
    out = model.params if model.params is not None else np.empty(model.size, model.dtype)
    if comm.Get_rank() == 0:
        out[...] = params
    if comm.Get_size() > 1:
        hc.broadcast(out, root=0, comm=comm)
    if comm.Get_rank() == 0:
        log(f"initialised the weights from {path} (optimizer and schedule start fresh)")
    return out


def check_rank_memory(cfg, comm, nbytes, layout):
    """--max-rank-memory: refuse (every rank, one message) when this rank's parameters,
    gradients and optimizer state (bytes measured from its arrays) exceed the limit."""
    limit = cfg["max_rank_memory"] * 2 ** 30
    worst = hc.reduce_value(float(nbytes), "max", comm) if comm.Get_size() > 1 else nbytes
    error = None
    if limit and worst > limit:
        error = (f"parameters + gradients + optimizer state need {worst / 2 ** 20:,.1f} MiB on "
                 f"the fullest rank ({layout}); --max-rank-memory allows "
                 f"{limit / 2 ** 20:,.1f} MiB: split the model with --pp and/or --tp, or "
                 f"shard the optimizer state with --zero")
    agree(comm, error, what="checking --max-rank-memory")


def run_id():
    """This run's id: the time it started, the Slurm job (when there is one) and 6 random
    hex digits; in every --metrics line, the summary and the TensorBoard file name."""
    job = os.environ.get("SLURM_JOB_ID")
    return (time.strftime("%Y%m%d-%H%M%S") + (f"-slurm{job}" if job else "") + "-"
            + os.urandom(3).hex())


def check_outputs(cfg):
    """Rank 0, before any training: every output path can be written (a bad one found
    after hours of training loses them)."""
    from hpcml.atomic import writable_folder
    for key in ("checkpoint_dir", "tensorboard"):
        if cfg[key]:
            writable_folder(cfg[key], "--" + key.replace("_", "-"))
    for key in ("metrics", "trace", "prometheus", "save_model"):
        path, flag = cfg[key], "--" + key.replace("_", "-")
        if not path:
            continue
        parent = os.path.dirname(os.path.abspath(path))
        try:  # as for --checkpoint-dir: a missing folder is made (mkdir -p)
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise OSError(f"{flag} {path}: cannot make the folder {parent} ({e.strerror})") \
                from None
        if os.path.isdir(path) or not os.access(parent, os.W_OK) or (
                os.path.exists(path) and not os.access(path, os.W_OK)):
            raise OSError(f"{flag} {path}: cannot write this file")


def device(cfg, comm, model, rows):
    """--device: the rank's Device (hpcml.device.select: every rank, one message on a
    failure); with cuda, the GPU memory the run needs checked against what the GPU has
    free (or --gpu-memory), then the model's buffers moved there (an allocation failure
    on any rank: the same message on every rank, no hang)."""
    from hpcml import device as devmod
    dev = devmod.select(cfg["device"], comm, cfg["gpus_per_node"], cfg["share_gpus"],
                        cfg["cuda_aware"])
    if not dev.is_cuda:
        return dev
    need = gpu_bytes_needed(model, rows, cfg["optimizer"], cfg["momentum"])
    split = cfg["pp"] * cfg["tp"]
    if model.params is None:  # model parallel: this rank holds about 1/(pp x tp) of it
        need /= split  # (ModelParallel moves its stages; a failure there is agreed too)
    free = gpu_free_bytes()
    limit = min(free, cfg["gpu_memory"] * 2 ** 30) if cfg["gpu_memory"] else free
    error = None
    if need > limit:
        part = f" (1/{split} of them)" if model.params is None else ""
        error = (f"GPU {dev.gpu}: the model, its gradients, optimizer state and a batch of "
                 f"{rows} rows{part} need about {need / 2 ** 20:,.4g} MiB; "
                 f"{'--gpu-memory allows' if cfg['gpu_memory'] else 'the GPU has free'} "
                 f"{limit / 2 ** 20:,.4g} MiB: use a smaller --batch-size or model, more "
                 f"GPUs, or --device cpu")
    elif model.params is not None:
        try:
            model.to_device()
        except MemoryError as e:
            error = f"GPU {dev.gpu}: {e}"
    agree(comm, error, what="placing the model on the GPU")
    return dev


def gpu_free_bytes():
    """Free bytes on the current GPU (the simulator reports none: unbounded)."""
    from numba import cuda
    free = cuda.current_context().get_memory_info()[0]
    return float(free)


def gpu_bytes_needed(model, rows, optimizer="sgd", momentum=0.9):
    """Parameters + gradients + optimizer state + one batch's activations (each layer's
    pre-activation, output and gradient) + the two staged input batches, in bytes."""
    item = model.dtype.itemsize
    state = 2 if optimizer in ("adam", "adamw") else (1 if momentum else 0)
    widths = [model.layers[0].fan_in] + [getattr(layer, "fan_out", 0) for layer in
                                         model.layers]
    return float(model.size * item * (2 + state) + rows * sum(widths) * item * 3
                 + 2 * rows * widths[0] * item)
