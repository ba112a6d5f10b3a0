"""python -m hpcml.train: data-parallel training of an MLP on a sharded dataset.

    mpiexec -n 8 python -m hpcml.train                      # MLP on built-in digits
    mpiexec -n 4 python -m hpcml.train --config examples/run.toml --epochs 5 --lr 0.1
    python -m hpcml.train --data /scratch/shards --test-data /scratch/shards-test \\
        --hidden 1024,512 --optimizer adamw --checkpoint-dir ck --resume auto

Every rank holds the whole model; each step, each rank runs forward and backward on its
slice of the global batch (the loader's partition="global"), the gradients are summed by
one all-reduce (hpcml.comm, --algorithm), and every rank makes the same optimizer step.
With the same global batch and seed, P ranks follow one process step for step (to
rounding).

Settings come from defaults, then a TOML file (--config), then --key value flags. Rank 0
prints a progress bar and one line per epoch, appends per-epoch metrics (averaged across
ranks) to --metrics (JSONL), and ends with a one-line JSON summary on stdout.
"""
import hashlib
import os
import sys
import time

import numpy as np

from hpcml import checkpoint as ckpt
from hpcml import config, startup
from hpcml.config import ConfigError  # noqa: F401  (train.ConfigError, as before)
from hpcml import comm as hc
from hpcml import kernels as K
from hpcml import nn, optim, train_pp, train_ps
from hpcml.train_resume import (MODEL_KEYS, dataset_identity, _resume,  # noqa: F401
                                 _checkpointer, _checkpoint_problem)
from hpcml.comm.guard import agree, CollectiveError
from hpcml.data import ShardedDataset, DataError
from hpcml.parallel import DataParallel, ZeRO
from hpcml.parallel.trace import Tracer, write_trace
from hpcml.parallel.trainer import Preemption, Trainer  # noqa: F401  (train.Preemption, as before)

# name: (default, type, help)
SETTINGS = {
    "data": ("digits", str, "training dataset: a sharded folder (or one holding train/ and "
                            "test/), or a built-in name"),
    "test_data": ("auto", str, "test dataset: folder, built-in name, 'auto' (NAME:test for a "
                               "built-in, the test/ beside a train/) or 'none'"),
    "hidden": ("256,128", str, "hidden layer widths, comma-separated ('' for none)"),
    "activation": ("relu", str, "relu, tanh or gelu"),
    "dropout": (0.0, float, "dropout after each hidden layer"),
    "init": ("torch", str, "weight initialisation: torch, he, xavier"),
    "optimizer": ("sgd", str, "sgd, adam or adamw"),
    "lr": (0.05, float, "peak learning rate (before --scale-lr)"),
    "momentum": (0.9, float, "SGD momentum"),
    "nesterov": (True, bool, "SGD Nesterov momentum"),
    "weight_decay": (1e-4, float, "weight decay (decoupled for adamw)"),
    "clip": (0.0, float, "clip the global gradient norm to this (0: off)"),
    "schedule": ("cosine", str, "constant, step or cosine (after warm-up)"),
    "warmup": (20, int, "warm-up steps"),
    "step_size": (0, int, "steps between rate drops (step schedule)"),
    "gamma": (0.1, float, "rate factor per drop (step schedule)"),
    "scale_lr": (0, int, "linear scaling: lr * global_batch / this (0: off)"),
    "epochs": (30, int, "epochs"),
    "batch_size": (64, int, "global batch size (all ranks, all accumulation steps)"),
    "accumulation": (1, int, "micro-steps per optimizer step (no communication between)"),
    "algorithm": ("auto", str, "gradient all-reduce: auto, ring, tree, rhd, mpi"),
    "zero": (0, int, "ZeRO: 0 off, 1 optimizer state sharded, 2 gradients too (ring/tree)"),
    "overlap": (False, bool, "all-reduce each layer's gradients in a background thread "
                             "while the backward pass goes on (see benchmarks/README.md)"),
    "parallel": ("dp", str, "dp (data parallel; with --pp/--tp/--zero), ps (parameter "
                            "server: --servers, --consistency) or hogwild (lock-free "
                            "updates of parameters in shared memory, one node)"),
    "hogwild_lock": (False, bool, "with --parallel hogwild: hold an exclusive lock from "
                                  "each step's forward to its update (the comparison)"),
    "servers": (1, int, "with --parallel ps: server ranks (the last ranks; the others are "
                        "workers)"),
    "consistency": ("bsp", str, "with --parallel ps: bsp, asp, ssp:S (at most S steps "
                                "ahead of the slowest worker) or backup:B (each step "
                                "applies the first W-B gradients)"),
    "straggler": ("", str, "RANK:FACTOR: rank RANK runs FACTOR times slower (sleeps "
                           "after each step's compute; experiments)"),
    "pp": (1, int, "pipeline-parallel ranks per model replica (stages of layers)"),
    "tp": (1, int, "tensor-parallel ranks per stage (Megatron column/row Linear pairs)"),
    "dp": (0, int, "data-parallel replicas (0: ranks / (pp x tp))"),
    "pipeline_schedule": ("1f1b", str, "with --pp: gpipe, 1f1b, interleaved or zb-h1"),
    "micro_batches": (0, int, "with --pp: micro-batches per step (0: 2 x pp)"),
    "virtual_stages": (1, int, "with --pp interleaved: model chunks per pipeline rank"),
    "pipeline_split": ("params", str, "with --pp: stages as equal in parameters ('params'), "
                                      "balanced by measured layer time + parameters "
                                      "('time'), or the first Linear layer (0-based) of "
                                      "each stage after the first, e.g. '2,4'"),
    "recompute": (False, bool, "with --pp: keep only each stage's input per micro-batch and "
                               "recompute its forward during backward"),
    "dtype": ("float32", str, "float32 or float64"),
    "device": ("cpu", str, "cpu, or cuda: parameters, gradients, optimizer state and the "
                           "forward/backward on the GPU (Numba CUDA kernels), every "
                           "strategy; gradients staged through pinned host memory "
                           "unless the MPI is CUDA-aware, pipeline stage messages "
                           "through the host, hogwild's shared copy kept on the host"),
    "gpus_per_node": (0, int, "with --device cuda: GPUs each node gives its ranks (0: all "
                              "it shows; CUDA_VISIBLE_DEVICES, as Slurm sets it, is "
                              "honoured); each rank takes GPU local-rank mod this"),
    "share_gpus": (False, bool, "with --device cuda: allow more ranks per node than GPUs "
                                "(ranks then share GPUs round-robin, e.g. under MPS)"),
    "cuda_aware": ("auto", str, "with --device cuda: pass device buffers to MPI: auto "
                                "(ask the MPI library), yes, or no (stage through pinned "
                                "host memory; the mpich wheel)"),
    "gpu_memory": (0.0, float, "with --device cuda: GiB of GPU memory a rank may use (0: "
                               "what the GPU reports free); a model + optimizer + batch "
                               "that needs more is refused before training"),
    "nonfinite": ("error", str, "a training or test row with a NaN or Inf feature: 'error' "
                                "(stop, naming the file and row) or 'drop' (skip it)"),
    "standardize": (True, bool, "scale features to zero mean, unit variance (train stats)"),
    "seed": (0, int, "seed for initialisation, data order and dropout"),
    "checkpoint_dir": ("", str, "folder for checkpoints ('' : none)"),
    "checkpoint_every": (0, int, "checkpoint every N optimizer steps (0: each epoch end)"),
    "keep": (3, int, "checkpoints kept"),
    "resume": ("", str, "'auto' (latest good checkpoint in --checkpoint-dir, if any), a "
                        "checkpoint file, or '' (start fresh)"),
    "max_steps": (0, int, "stop after this many optimizer steps (0: run all epochs)"),
    "trace": ("", str, "write a Chrome trace (per-rank spans) to this JSON file ('': none)"),
    "prometheus": ("", str, "node_exporter textfile of live metrics, refreshed each epoch"),
    "metrics": ("", str, "append per-epoch metrics to this JSONL file ('': none)"),
    "save_model": ("", str, "write the trained model here at the end (HDF5: architecture, "
                            "weights, standardiser; for hpcml.predict and hpcml.load_model)"),
    "init_from": ("", str, "start from the weights of this model or checkpoint (file or "
                           "folder): fine-tuning; the optimizer, step and data order start "
                           "fresh, and the architecture must match"),
    "max_rank_memory": (0.0, float, "GiB of parameters + gradients + optimizer state one "
                                    "rank may hold, measured from its arrays (0: no limit); "
                                    "more is refused, naming --pp/--tp/--zero"),
    "max_memory": ("auto", str, "memory a rank may use: 'auto' (what this node has "
                                "available / its ranks), GiB per rank, or 'off' (no check)"),
    "tensorboard": ("", str, "write TensorBoard event files (each epoch's figures) to this "
                             "folder ('': none; needs pip install 'hpcml[tensorboard]')"),
    "progress": (True, bool, "progress bar on rank 0 (when stderr is a terminal)"),
    "log_every": (30.0, float, "seconds between progress lines on rank 0 when stderr is not "
                  "a terminal (mpiexec, Slurm); 0: off"),
}


def parse_args(argv=None):
    cfg = config.parse("python -m hpcml.train", __doc__, SETTINGS, argv)
    validate(cfg)
    return cfg


def validate(cfg):
    def bad(key, why):
        config.bad(cfg, key, why)
    choices = {"activation": ("relu", "tanh", "gelu"), "init": nn.INITS,
               "optimizer": ("sgd", "adam", "adamw"), "schedule": optim.Schedule.DECAYS,
               "nonfinite": ("error", "drop"),
               "pipeline_schedule": ("gpipe", "1f1b", "interleaved", "zb-h1"),
               "algorithm": hc.ALGORITHMS, "dtype": ("float32", "float64")}
    for key, ok in choices.items():
        if cfg[key] not in ok:
            bad(key, f"must be one of {', '.join(ok)}")
    for key in ("epochs", "batch_size", "accumulation", "keep"):
        if cfg[key] < 1:
            bad(key, "must be >= 1")
    for key in ("warmup", "checkpoint_every", "max_steps", "scale_lr", "step_size"):
        if cfg[key] < 0:
            bad(key, "must be >= 0")
    if cfg["max_rank_memory"] < 0:
        bad("max_rank_memory", "must be >= 0 GiB (0: no limit)")
    if not cfg["lr"] > 0:
        bad("lr", "must be > 0")
    config.validate_shared(cfg)  # log_every, max_memory
    if cfg["tensorboard"]:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            bad("tensorboard", "needs tensorboardX: pip install 'hpcml[tensorboard]'")
    if cfg["zero"] not in (0, 1, 2):
        bad("zero", "must be 0, 1 or 2")
    if cfg["zero"] and cfg["overlap"]:
        bad("zero", "--zero does not overlap its communication with the backward pass; "
                    "leave --overlap false")
    if not 0 <= cfg["dropout"] < 1:
        bad("dropout", "must be in [0, 1)")
    if not 0 <= cfg["momentum"] < 1:
        bad("momentum", "must be in [0, 1)")
    if cfg["schedule"] == "step" and not cfg["step_size"]:
        bad("step_size", "the step schedule needs --step-size > 0")
    config.hidden_sizes(cfg)
    if cfg["resume"] and cfg["resume"] != "auto" and not os.path.exists(cfg["resume"]):
        bad("resume", "no such checkpoint file")
    train_pp.validate(cfg, bad)  # --pp, --tp, --dp, the pipeline's settings
    train_ps.validate(cfg, bad)  # --parallel ps, --servers, --consistency, --straggler
    _validate_device(cfg, bad)
    if cfg["init_from"] and not os.path.exists(cfg["init_from"]):
        bad("init_from", "no such model file or checkpoint folder")
    if cfg["resume"] == "auto" and not cfg["checkpoint_dir"]:
        bad("resume", "'auto' needs --checkpoint-dir")
    return cfg


def _validate_device(cfg, bad):
    from hpcml.device import CUDA_AWARE, DEVICES
    if cfg["device"] not in DEVICES:
        bad("device", f"must be one of {', '.join(DEVICES)}")
    if cfg["cuda_aware"] not in CUDA_AWARE:
        bad("cuda_aware", f"must be one of {', '.join(CUDA_AWARE)}")
    if cfg["gpus_per_node"] < 0 or cfg["gpu_memory"] < 0:
        bad("gpus_per_node" if cfg["gpus_per_node"] < 0 else "gpu_memory", "must be >= 0")


# --- the run --------------------------------------------------------------------------
def _train_name(cfg):
    """--data: a dataset folder, a built-in name, or a folder `convert --test-fraction`
    wrote (its train/ split)."""
    d = cfg["data"]
    if os.path.isdir(d) and not os.path.exists(os.path.join(d, "manifest.json")) and \
            os.path.exists(os.path.join(d, "train", "manifest.json")):
        return os.path.join(d, "train")
    return d


def _test_name(cfg):
    """--test-data auto: NAME:test for a built-in NAME, or the test/ split beside a train/
    split (what `convert --test-fraction` writes); none otherwise."""
    t = cfg["test_data"]
    if t == "none":
        return None
    if t == "auto":
        from hpcml.data.builtin import resolve
        data = _train_name(cfg)
        if os.path.exists(data):
            parent, base = os.path.split(os.path.normpath(data))
            test = os.path.join(parent, "test")
            return test if base == "train" and os.path.exists(
                os.path.join(test, "manifest.json")) else None
        name = data.split(":")[0]
        return f"{name}:test" if resolve(f"{name}:test") else None
    return t


def _standardizer(ds, comm, dtype, nonfinite="error"):
    """Per-feature mean and 1/std of the training set, and the targets' (mean, std) for
    regression (one pass, sums all-reduced): {"x_mean", "x_inv"[, "y_mean", "y_std"]}."""
    F = ds.features
    s = np.zeros(F * 2 + 3)  # sum x, sum x^2, sum y, sum y^2, rows
    # agree_errors: a bad row or shard seen by one rank stops every rank (no rank is left
    # in the all-reduce below)
    for x, y in ds.loader(4096, shuffle=False, agree_errors=True, nonfinite=nonfinite):
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        s[:F] += x64.sum(axis=0)
        s[F:2 * F] += (x64 * x64).sum(axis=0)
        s[2 * F:] += (y64.sum(), (y64 * y64).sum(), len(x))
    if comm.Get_size() > 1:
        s[...] = hc.reduce_array(s, "sum", comm)
    n = max(s[-1], 1)
    mean = s[:F] / n
    var = np.maximum(s[F:2 * F] / n - mean * mean, 0.0)
    inv = np.where(var > 1e-12, 1 / np.sqrt(np.where(var > 1e-12, var, 1.0)), 1.0)
    out = {"x_mean": mean.astype(dtype), "x_inv": inv.astype(dtype)}
    if ds.task == "regression":
        y_mean = s[2 * F] / n
        y_var = max(s[2 * F + 1] / n - y_mean * y_mean, 0.0)
        out.update(y_mean=np.float64(y_mean), y_std=np.float64(np.sqrt(y_var) if y_var > 1e-24
                                                                else 1.0))
    return out


def _data(cfg, comm, test_comm=None):
    """(training set, test set or None), checked against each other. test_comm: the
    ranks that share the test set (default comm; a rank alone evaluates all of it)."""
    ds = ShardedDataset(_train_name(cfg), comm)
    test_name = _test_name(cfg)
    test = ShardedDataset(test_name, test_comm or comm) if test_name else None
    if test is not None and (test.features != ds.features or test.classes != ds.classes
                             or test.task != ds.task):
        agree(comm, f"{test_name}: {test.task}, {test.features} features / {test.classes} "
                    f"classes; the training data is {ds.task}, {ds.features} / {ds.classes}",
              what="opening the data")
    return ds, test


def _optimizer(cfg, model, G):
    lr = cfg["lr"] * (G / cfg["scale_lr"] if cfg["scale_lr"] else 1)
    if cfg["optimizer"] == "sgd":
        return optim.SGD(model, lr, cfg["momentum"], cfg["nesterov"] and cfg["momentum"] > 0,
                         cfg["weight_decay"])
    return optim.Adam(model, lr, weight_decay=cfg["weight_decay"],
                      decoupled=cfg["optimizer"] == "adamw")


def _evaluator(model, strategy, test, transform, target, nonfinite="error"):
    """evaluate() -> the test set's metrics (the same on every rank): test_loss and
    test_accuracy, or test_rmse and test_r2 for regression."""
    predict = getattr(strategy, "predict", None) or (
        lambda x: K.to_host(model.forward(x, train=False)))  # (logits from a GPU copied)
    def evaluate():
        s = np.zeros(5)  # loss*rows, correct, rows (, regression: sum y, sum y^2)
        for x, y in test.loader(1024, shuffle=False, agree_errors=True, nonfinite=nonfinite):
            out = predict(transform(x) if transform else x)
            if not len(y) or out is None:  # model parallel: the last stage's TP rank 0
                continue
            if target is None:
                lo, _ = nn.cross_entropy(out, y)
                s[:3] += (lo * len(y), float((out.argmax(axis=1) == y).sum()), len(y))
            else:
                y64 = y.astype(np.float64)
                lo, _ = nn.mse(out, (y64 - target[0]) / target[1])
                s += (lo * len(y), 0.0, len(y), y64.sum(), (y64 * y64).sum())
        s = strategy.allreduce_sums(list(s))
        n = max(s[2], 1)
        if target is None:
            return {"test_accuracy": s[1] / n, "test_loss": s[0] / n}
        from hpcml.parallel.trainer import regression_entry
        return {"test_loss": s[0] / n, **regression_entry("test", s[0], s[3], s[2], s[4],
                                                          target[1])}
    return evaluate if test is not None else None


def _batch_check(comm, G, K, dp=None, pipe=1):
    """Rows of one global micro-batch: any G >= replicas x accumulation (x the pipeline's
    micro-batches) that accumulation divides (replicas take slices that differ by one row
    at most; the loss is normalised by the global row count, so any split follows one
    process)."""
    P = comm.Get_size() if dp is None else dp
    need = P * K * pipe
    error = None
    if G < need:
        what = (f"ranks x accumulation = {P} x {K}" if pipe == 1 else
                f"dp x accumulation x micro-batches = {P} x {K} x {pipe}")
        error = (f"batch-size {G} is smaller than {what}: every "
                 f"{'rank' if pipe == 1 else 'pipeline micro-batch'} needs a row per "
                 f"micro-step; the smallest valid batch-size is {need}")
    elif G % K:
        near = [v for v in (G - G % K, G - G % K + K) if v >= need]
        error = (f"batch-size {G} is not a multiple of accumulation {K} (micro-batches "
                 f"must be equal): use {' or '.join(map(str, near))}")
    agree(comm, error, what="checking the configuration")
    return G // K  # rows of one global micro-batch


def _setup(cfg, comm):
    """(data comm, (dp, pp, tp) or None, rows of a global micro-batch, parameter-server
    role or None): the layout and the batch checked; under model parallelism the data is
    dealt over the replicas, under a parameter server over the workers."""
    P = comm.Get_size()
    if cfg["parallel"] == "ps":
        server, rcomm, W = train_ps.roles(cfg, comm)
        M = _batch_check(comm, cfg["batch_size"], cfg["accumulation"], W)
        return rcomm, None, M, ("server" if server else "worker", W)
    if cfg["straggler"] and int(cfg["straggler"].split(":")[0]) >= P:
        raise ConfigError(f"straggler = {cfg['straggler']!r}: there are {P} ranks")
    dims = train_pp.layout(cfg, comm) if train_pp.wanted(cfg, P) else None
    dp = dims[0] if dims else P
    M = _batch_check(comm, cfg["batch_size"], cfg["accumulation"], dp,
                     cfg["micro_batches"] if dims else 1)
    return (train_pp.data_comm(comm, *dims[1:]) if dims else comm), dims, M, None


def _serve(cfg, comm, W, G, peers):
    """A parameter-server rank's run: the model's shape from the data's manifest; with
    --init-from, the weights the workers start from (read here too)."""
    ds = ShardedDataset(_train_name(cfg), hc.self_comm())
    outputs = ds.classes if ds.task == "classification" else 1
    spec = {"features": ds.features, "hidden": cfg["hidden_sizes"], "outputs": outputs,
            "activation": cfg["activation"]}
    init = (lambda model: startup.init_from(cfg["init_from"], hc.self_comm(), model, spec,
                                            lambda *a: None)) if cfg["init_from"] else None
    return train_ps.serve(cfg, comm, W, lambda: nn.mlp(
        ds.features, cfg["hidden_sizes"], outputs, cfg["activation"], cfg["dropout"],
        dtype=np.dtype(cfg["dtype"]), seed=cfg["seed"], init=cfg["init"]),
        lambda flat: _optimizer(cfg, flat, G), peers, init)


def run(cfg, comm=None, log=print, history=None, callbacks=()):
    """Train per cfg (validated) on comm; returns (summary dict, model) on every rank.
    history: a list that receives each epoch's metrics; callbacks: Trainer callbacks."""
    comm = comm if comm is not None else hc.world()
    P, t_start, dtype = comm.Get_size(), time.perf_counter(), np.dtype(cfg["dtype"])
    K, G = cfg["accumulation"], cfg["batch_size"]
    dcomm, dims, M, ps = _setup(cfg, comm)
    if ps is not None and ps[0] == "server":
        return _serve(cfg, comm, ps[1], G, dcomm)
    world = comm
    if ps is not None:  # a worker: everything below is among the workers
        comm = dcomm
    dp = dcomm.Get_size()
    ds, test = _data(cfg, dcomm, hc.self_comm() if ps and cfg["consistency"] != "bsp"
                     else None)
    if dims is None:
        startup.check_memory(cfg, comm, ds, M)
    arrays = _standardizer(ds, dcomm, dtype, cfg["nonfinite"]) if cfg["standardize"] else {}
    transform, target = _scalers(arrays, ds.task)
    outputs = ds.classes if ds.task == "classification" else 1
    def net(allocate=True):
        return nn.mlp(ds.features, cfg["hidden_sizes"], outputs, cfg["activation"],
                      cfg["dropout"], dtype=dtype, seed=cfg["seed"], init=cfg["init"],
                      allocate=allocate)
    # model parallel: the serial model's layout only; each rank allocates its stages
    model = net(allocate=dims is None)
    dev = startup.device(cfg, comm, model, -(-M // dp))  # --device cuda: model.to_device()
    strategy = train_ps.strategy(cfg, world, dcomm, model) if ps else \
        _strategy(cfg, comm, model, dims, ds.task, dcomm, dev)
    opt = strategy.optimizer(lambda m: _optimizer(cfg, m, G))
    startup.check_rank_memory(cfg, comm, strategy.param_bytes() + strategy.grad_bytes() +
                              strategy.state_bytes(opt), "data parallel" if dims is None
                              else "dp {} x pp {} x tp {}".format(*dims))
    loader = ds.loader(-(-M // dp), shuffle=True, seed=cfg["seed"], partition="global",
                       global_batch=M, nonfinite=cfg["nonfinite"])
    total, sched = _schedule(cfg, len(loader), opt.lr)
    config.on_rank0(comm, lambda: startup.check_outputs(cfg), "checking the output paths")
    identity = dataset_identity(ds, _train_name(cfg))
    spec = _spec(cfg, ds, outputs, identity)
    step, resumed_from = _resume(cfg, comm, model, opt, strategy, loader, log, identity, total)
    run_id = comm.bcast(startup.run_id() if comm.Get_rank() == 0 else None)
    callbacks, board = _callbacks(cfg, comm, run_id, callbacks)
    if cfg["init_from"] and resumed_from is None:
        strategy.load_serial_params(startup.init_from(cfg["init_from"], comm, model, spec,
                                                      log))
    tracer = Tracer(comm, keep_events=bool(cfg["trace"]))
    if dims is not None and cfg["trace"]:
        strategy.runner.tracer = tracer  # a span per pipeline action
    if ps is not None:
        strategy.tracer = tracer  # push and pull spans
    trainer = Trainer(
        model, strategy, opt, loader, sched, total=total, accumulation=K, step=step,
        global_rows=lambda m: max(0, min(M, ds.rows - m * M)), transform=transform,
        seed=cfg["seed"], dropout=bool(cfg["dropout"]), clip=cfg["clip"],
        checkpoint=_checkpointer(cfg, comm, opt, strategy, identity, (spec, arrays), dims),
        checkpoint_every=cfg["checkpoint_every"], target=target,
        evaluate=_evaluator(model, strategy, test, transform, target, cfg["nonfinite"]),
        metrics=cfg["metrics"], callbacks=callbacks, log=log, progress=cfg["progress"],
        on_rank0=lambda fn, what: config.on_rank0(comm, fn, what), tracer=tracer,
        prometheus=cfg["prometheus"], log_every=cfg["log_every"], run_id=run_id)
    try:
        history_, stopped = trainer.fit()
    finally:
        if board is not None:
            board.close()
    return _finish(cfg, comm, trainer, stopped, history_, history, dict(
        run_id=run_id, seconds=time.perf_counter() - t_start, task=ds.task, ranks=P,
        resumed_from=resumed_from, device=dev.summary()),
        (model, strategy, opt, spec, arrays, dims, net))


def _schedule(cfg, micro_batches, lr):
    """(optimizer steps of the run, the learning-rate schedule)."""
    total = -(-micro_batches // cfg["accumulation"]) * cfg["epochs"]
    total = min(total, cfg["max_steps"]) if cfg["max_steps"] else total
    return total, optim.Schedule(lr, cfg["warmup"], cfg["schedule"], total=total,
                                 step_size=cfg["step_size"] or None, gamma=cfg["gamma"])


def _spec(cfg, ds, outputs, identity):
    """The model's description a saved model or checkpoint carries (hpcml.model)."""
    return {"features": ds.features, "hidden": cfg["hidden_sizes"], "outputs": outputs,
            "task": ds.task, "activation": cfg["activation"], "dtype": cfg["dtype"],
            "dataset": identity, "settings": {k: cfg[k] for k in SETTINGS}}


def _scalers(arrays, task):
    """(feature transform or None, the targets' (mean, std) for regression or None)."""
    transform = None
    if "x_mean" in arrays:
        mean, inv = arrays["x_mean"], arrays["x_inv"]
        transform = lambda x: (x - mean) * inv  # noqa: E731
    target = (float(arrays.get("y_mean", 0.0)), float(arrays.get("y_std", 1.0))) \
        if task == "regression" else None
    return transform, target


def _callbacks(cfg, comm, run_id, callbacks):
    """(the run's Trainer callbacks, the TensorBoard writer or None)."""
    callbacks, board = list(callbacks), None
    if cfg["straggler"]:
        from hpcml.parallel.trainer import Straggler
        rank, factor = cfg["straggler"].split(":")
        if int(rank) == comm.Get_rank():  # workers are world ranks 0..W-1
            callbacks.append(Straggler(float(factor)))
    if cfg["tensorboard"]:
        from hpcml.parallel.trainer import TensorBoard
        board = TensorBoard(cfg["tensorboard"], comm.Get_rank(), run_id)
        callbacks.append(board)
    return callbacks, board


def _strategy(cfg, comm, model, dims, task, dcomm=None, dev=None):
    """The run's Strategy: model parallel (dims; dcomm: its data-parallel group), Hogwild,
    ZeRO, or data parallel."""
    if dims is not None:
        return train_pp.strategy(cfg, comm, model, dims,
                                 "ce" if task == "classification" else "mse", dcomm, dev)
    if cfg["parallel"] == "hogwild":
        from hpcml.parallel.hogwild import Hogwild
        return Hogwild(model, comm, locked=cfg["hogwild_lock"])
    if cfg["zero"]:
        return ZeRO(model, comm, cfg["algorithm"], stage=cfg["zero"])
    return DataParallel(model, comm, cfg["algorithm"], overlap=cfg["overlap"],
                        cuda_aware=dev is not None and dev.cuda_aware)


def _finish(cfg, comm, trainer, stopped, history_, history, facts, parts):
    """After the loop: --trace and --save-model written, the summary; (summary, model)."""
    model, strategy, opt, spec, arrays, dims, net = parts
    if cfg["trace"]:
        trace = trainer.tracer.gather()  # collective; rank 0 writes, its failure agreed
        config.on_rank0(comm, lambda: write_trace(cfg["trace"], trace),
                        f"writing --trace {cfg['trace']}")
    if dims is not None:  # the serial model (one copy of its parameters, on every rank)
        model = net()
        model.params[...] = strategy.serial_params()
    params = model.host_params()  # (a copy from the GPU)
    if cfg["save_model"]:
        from hpcml.model import Model
        config.on_rank0(comm, lambda: Model(spec, params, arrays).save(
            cfg["save_model"]), f"writing --save-model {cfg['save_model']}")
    if history is not None:
        history.extend(history_)
    summary = _summary(cfg, trainer, stopped, history_, facts, strategy, opt)
    if dims is not None:
        summary.update(train_pp.summary(strategy))
    if isinstance(strategy, train_ps.ParameterServer):
        summary.update(train_ps.summary(strategy))
        summary["ranks"] = strategy.world.Get_size()
    summary["params_sha256"] = hashlib.sha256(params.tobytes()).hexdigest()
    return summary, model


def _summary(cfg, trainer, stopped, history, facts, strategy, opt):
    """The run's one-line JSON summary (job, status, outputs, seconds and the figures)."""
    outputs = {k: os.path.abspath(cfg[k]) for k in ("save_model", "metrics", "trace",
                                                    "prometheus", "checkpoint_dir",
                                                    "tensorboard") if cfg[k]}
    if trainer.checkpoint is not None and trainer.checkpoint.last:
        outputs["last_checkpoint"] = os.path.abspath(trainer.checkpoint.last)
    summary = {"job": "train", "run_id": facts["run_id"],
               "status": ("interrupted" if trainer.preemption.interrupted
                          else "stopped") if stopped else "done",
               "outputs": outputs, "seconds": facts["seconds"], "task": facts["task"],
               "step": trainer.step, "ranks": facts["ranks"],
               "epochs_done": trainer.loader.epoch, "resumed_from": facts["resumed_from"],
               **facts["device"],
               "comm_seconds": strategy.comm_seconds,
               "span_seconds": {k: round(v, 6) for k, v in trainer.tracer.seconds.items()},
               "grad_bytes": strategy.grad_bytes(), "optimizer_state_bytes":
               strategy.state_bytes(opt)}  # this rank's (sharded: its shard)
    if history:
        summary.update({k: history[-1][k] for k in (
            "train_loss", "train_accuracy", "train_rmse", "train_r2", "test_loss",
            "test_accuracy", "test_rmse", "test_r2", "samples_per_s") if k in history[-1]})
    return summary


@hc.entry_point
def main(argv=None):
    return config.run_job(hc.world(), parse_args, lambda cfg, comm: run(cfg, comm)[0],
                          argv, failures=(CollectiveError, DataError, ckpt.CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
