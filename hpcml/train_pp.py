"""`python -m hpcml.train --pp P --tp T [--dp D]`: data x pipeline x tensor parallel training.

World rank w = (d P + p) T + t is tensor-parallel rank t of pipeline stage p of data-parallel
replica d (TP ranks adjacent, then pipelines, as Megatron-LM places them). Each stage's
Linear pairs are split over its T ranks (hpcml.parallel.tensor). Each replica streams its slice of every
global batch (the loader over the replica's data-parallel group); its P pipeline ranks run
the schedule over that slice as M micro-batches; each stage's gradients are then summed
over the D replicas of that stage (one all-reduce per stage and step), and every rank
steps the optimizer of its own stages. The loss is normalised by the global batch, so D x P
ranks follow one process at the same global batch.

Not yet here (issue 16 continues): ZeRO, overlap, clipping, dropout, checkpoints,
--metrics/--trace/--prometheus/--tensorboard and --save-model/--init-from under --pp; each
is refused by name (--accumulation: --micro-batches is the pipeline's accumulation).
"""
import hashlib
import time

import numpy as np

from hpcml import comm as hc
from hpcml import nn, optim
from hpcml.comm.guard import agree
from hpcml.config import ConfigError

from hpcml.parallel.pipe import PipelineError, PipelineRunner, split
from hpcml.parallel.pipeline import ScheduleError, make


def layout(cfg, comm):
    """(dp, pp): the factorisation of the ranks, checked (ConfigError naming it)."""
    W, pp, tp = comm.Get_size(), cfg["pp"], cfg["tp"]
    dp = cfg["dp"] or W // (pp * tp)
    if dp * pp * tp != W:
        raise ConfigError(f"dp x pp x tp = {cfg['dp'] or '(auto)'} x {pp} x {tp} does not "
                          f"match the {W} ranks (choose factors whose product is {W})")
    for key, why in (("zero", "ZeRO"), ("overlap", "--overlap"), ("clip", "--clip"),
                     ("checkpoint_dir", "checkpoints"), ("resume", "--resume"),
                     ("dropout", "--dropout"), ("metrics", "--metrics"),
                     ("trace", "--trace"), ("prometheus", "--prometheus"),
                     ("tensorboard", "--tensorboard"), ("save_model", "--save-model"),
                     ("init_from", "--init-from")):
        if cfg[key]:
            raise ConfigError(f"--pp {pp}: {why} is not supported with pipeline parallelism "
                              f"yet (issue 16 continues)")
    if tp > 1 and cfg["hidden_sizes"] and min(cfg["hidden_sizes"]) < tp:
        raise ConfigError(f"--tp {tp}: hidden layers of {min(cfg['hidden_sizes'])} units "
                          f"cannot be split over {tp} ranks")
    if cfg["accumulation"] != 1:
        raise ConfigError(f"--pp {pp}: use --micro-batches (the pipeline's own accumulation) "
                          f"instead of --accumulation {cfg['accumulation']}")
    return dp, pp, tp


def run(cfg, comm, log, history, helpers):
    """Train per cfg on comm with --pp; returns (summary, None) like train.run.
    helpers: train.py's (_data, _standardizer, _optimizer) functions."""
    _data, _standardizer, _optimizer_for = helpers
    t_start = time.perf_counter()
    dp, pp, tp = layout(cfg, comm)
    w = comm.Get_rank()
    # tp fastest, then pp, then dp: rank w = (d * pp + p) * tp + t
    t_i, p_i, d_i = w % tp, (w // tp) % pp, w // (tp * pp)
    pp_comm = hc.split(comm, d_i * tp + t_i, p_i)   # this replica's pipeline (same t)
    dp_comm = hc.split(comm, p_i * tp + t_i, d_i)   # this stage's (and shard's) replicas
    tp_comm = hc.split(comm, d_i * pp + p_i, t_i)   # this stage's tensor-parallel ranks
    dtype = np.dtype(cfg["dtype"])
    G = cfg["batch_size"]
    if G < dp * cfg["micro_batches"]:
        raise ConfigError(f"batch-size {G} is smaller than dp x micro-batches = {dp} x "
                          f"{cfg['micro_batches']}: every micro-batch needs a row")
    ds, test = _data(cfg, dp_comm)
    if ds.task != "classification":
        raise ConfigError("--pp trains classifiers so far (issue 16 continues)")
    arrays = _standardizer(ds, dp_comm, dtype, cfg["nonfinite"]) if cfg["standardize"] else {}
    mean, inv = arrays.get("x_mean"), arrays.get("x_inv")
    tf = (lambda x: (x - mean) * inv) if mean is not None else (lambda x: x)  # noqa: E731
    model = nn.mlp(ds.features, cfg["hidden_sizes"], ds.classes, cfg["activation"],
                   dtype=dtype, seed=cfg["seed"], init=cfg["init"])
    size = model.size
    error, runner = None, None
    try:
        sched = make(cfg["pipeline_schedule"], pp, cfg["micro_batches"],
                     cfg["virtual_stages"])
        runner = PipelineRunner(model, split(model, pp * cfg["virtual_stages"]), sched,
                                pp_comm, recompute=cfg["recompute"], tp_comm=tp_comm)
    except (PipelineError, ScheduleError, ValueError) as e:
        error = str(e)
    agree(comm, error, what="building the pipeline")
    opts = runner.optimizers(lambda m: _optimizer_for(cfg, m, G))
    from hpcml.startup import check_rank_memory
    check_rank_memory(cfg, comm, sum(st.params.nbytes + st.grads.nbytes for st in
                                     runner.stages.values()) +
                      sum(v.nbytes for o in opts.values() for v in o.state_dict().values()
                          if isinstance(v, np.ndarray)), f"dp {dp} x pp {pp} x tp {tp}")
    loader = ds.loader(-(-G // dp), shuffle=True, seed=cfg["seed"], partition="global",
                       global_batch=G, nonfinite=cfg["nonfinite"])
    total = len(loader) * cfg["epochs"]
    total = min(total, cfg["max_steps"]) if cfg["max_steps"] else total
    lr0 = next(iter(opts.values())).lr
    sched_lr = optim.Schedule(lr0, cfg["warmup"], cfg["schedule"], total=total,
                              step_size=cfg["step_size"] or None, gamma=cfg["gamma"])
    last = runner.S - 1 in runner.mine and t_i == 0  # counts each row once
    step, hist = _epochs(cfg, comm, dp_comm, runner, opts, loader, test, tf, sched_lr,
                         total, last, log)
    if history is not None:
        history.extend(hist)
    params = runner.serial_params(size)
    summary = {"job": "train", "status": "done", "outputs": {},
               "seconds": time.perf_counter() - t_start, "task": ds.task, "step": step,
               "ranks": comm.Get_size(), "layout": {"dp": dp, "pp": pp, "tp": tp},
               "pipeline_schedule": cfg["pipeline_schedule"],
               "micro_batches": cfg["micro_batches"],
               "peak_activation_bytes": runner.peak_bytes,
               "params_sha256": hashlib.sha256(params.tobytes()).hexdigest()}
    if hist:
        summary.update({k: hist[-1][k] for k in ("train_loss", "test_accuracy",
                                                 "samples_per_s") if k in hist[-1]})
    model_out = nn.mlp(ds.features, cfg["hidden_sizes"], ds.classes, cfg["activation"],
                       dtype=dtype, seed=cfg["seed"], init=cfg["init"])
    model_out.params[...] = params
    return summary, model_out


def _epochs(cfg, comm, dp_comm, runner, opts, loader, test, tf, sched_lr, total, last, log):
    """The training loop: steps until `total`, an epoch line from rank 0 each epoch;
    returns (steps done, per-epoch metrics)."""
    G, dp, w = cfg["batch_size"], dp_comm.Get_size(), comm.Get_rank()
    step, hist, epoch = 0, [], 0
    test_ds = None
    if test is not None:  # every rank reads the (small) test set itself
        from hpcml.data import ShardedDataset
        test_ds = ShardedDataset(test.path)
    while step < total:
        t0, sums = time.perf_counter(), np.zeros(3)
        loader.epoch, loader.batches_done = epoch, 0
        for x, y in loader:
            if step >= total:
                break
            loss = runner.step(tf(x), y, denom=G)
            if dp > 1:
                for st in runner.stages.values():
                    hc.allreduce(st.grads, "sum", comm=dp_comm)
            for o in opts.values():
                o.step(sched_lr(step))
            step += 1
            if last:
                sums += (loss, 0.0, len(y))
        epoch += 1
        g = hc.reduce_array(sums, "sum", comm)
        entry = {"epoch": epoch, "step": step, "train_loss": g[0] / max(g[2], 1),
                 "samples_per_s": g[2] / (time.perf_counter() - t0),
                 "lr": sched_lr(max(step - 1, 0))}
        if test_ds is not None:
            entry["test_accuracy"] = _accuracy(runner, test_ds, tf, comm, last)
        hist.append(entry)
        if w == 0:
            log(f"epoch {entry['epoch']:3d}  step {step:6d}  loss {entry['train_loss']:.4f}"
                + (f"  test acc {entry['test_accuracy']:.4f}" if "test_accuracy" in entry
                   else "") + f"  lr {entry['lr']:.3g}  {entry['samples_per_s']:,.0f} "
                f"samples/s")
    return step, hist


def _accuracy(runner, test, tf, comm, last):
    """Test accuracy through the pipeline (forward only); the same on every rank."""
    s = np.zeros(2)
    for x, y in test.loader(1024, shuffle=False):
        out = runner.predict(tf(x))
        if last:
            s += ((out.argmax(axis=1) == y).sum(), len(y))
    s = hc.reduce_array(s, "sum", comm)
    return float(s[0] / max(s[1], 1))
