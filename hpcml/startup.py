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
