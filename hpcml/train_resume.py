"""What `python -m hpcml.train` checks and restores when it resumes, and how it writes
checkpoints: the data and model a checkpoint was written for, refused by name when they
differ; the run's state (parameters in the serial layout, optimizer state, loader position)
loaded on every rank; rank 0 writing, its failure agreed on by every rank."""
import hashlib

from hpcml import checkpoint as ckpt
from hpcml import config
from hpcml.comm.guard import agree


#: settings that shape the parameters or the optimizer state: a checkpoint written with
#: other values would load into the wrong layers (same parameter count) or fail later
MODEL_KEYS = ("hidden", "activation", "optimizer", "dtype")


def _model_differs(ck, cfg):
    """The message if checkpoint `ck` was written for another model or optimizer, else ''."""
    saved = ck.get("config") or {}
    differ = [k for k in MODEL_KEYS if k in saved and str(saved[k]) != str(cfg[k])]
    if not differ:
        return ""
    return (f"{ck['path']}: written with " + ", ".join(f"--{k} {saved[k]!r}" for k in differ)
            + "; this run has " + ", ".join(f"--{k} {cfg[k]!r}" for k in differ))


def dataset_identity(ds, name):
    """What a checkpoint records of its training data: name, shape and a digest of the
    shards' checksums (the manifest's), so a resume on other data is refused by name."""
    digest = hashlib.sha256("".join(sh.get("sha256", "") for sh in ds.manifest["shards"])
                            .encode()).hexdigest()
    return {"name": name, "rows": int(ds.rows), "features": int(ds.features),
            "classes": int(ds.classes or 0), "task": ds.task, "shards_sha256": digest}


def _data_differs(ck, identity):
    """The message if checkpoint `ck` was written for other training data, else ''."""
    saved = ck["state"].get("dataset")
    if not saved or all(saved.get(k) == identity[k] for k in
                        ("rows", "features", "classes", "shards_sha256")):
        return ""
    show = lambda d: (f"{d['name']}: {d['rows']:,} rows, {d['features']} features, "  # noqa
                      f"{d['classes']} classes")
    return (f"{ck['path']}: written for another dataset ({show(saved)}); this run trains on "
            f"{show(identity)}. Resume with the same --data, or start in a fresh "
            f"--checkpoint-dir")


def _checkpoint_problem(ck, cfg, model, P, log, identity=None, layout=None):
    """Why checkpoint `ck` cannot be resumed (or None); notes what differs but is fine."""
    if identity is not None and _data_differs(ck, identity):
        return _data_differs(ck, identity)
    if _model_differs(ck, cfg):  # by name (--hidden 64 vs 128), before the shapes
        return _model_differs(ck, cfg)
    if ck["params"].shape != (model.size,) or ck["params"].dtype != model.dtype:
        return (f"{ck['path']}: parameters {ck['params'].dtype} {ck['params'].shape}, this "
                f"model has {model.dtype} {(model.size,)}")
    layout = layout or {"dp": P, "pp": 1, "tp": 1}
    saved = ck.get("config") or {}
    horizon = [k for k in ("epochs", "max_steps", "schedule") if k in saved and saved[k] != cfg[k]]
    if horizon and cfg["schedule"] != "constant":
        log(f"note: {ck['path']} was written with " + ", ".join(
            f"--{k.replace('_', '-')} {saved[k]}" for k in horizon) + "; the learning rate "
            "now follows this run's schedule (--max-steps and --epochs set its length), so "
            "the run differs from one that was never stopped")
    was = ck["state"].get("layout") or {"dp": ck["state"]["ranks"], "pp": 1, "tp": 1}
    if ck["state"]["ranks"] != P or ck["state"]["algorithm"] != cfg["algorithm"] or \
            was != layout:
        log(f"note: {ck['path']} was written with {ck['state']['ranks']} ranks (dp x pp x "
            f"tp = {was['dp']} x {was['pp']} x {was['tp']}) and algorithm "
            f"{ck['state']['algorithm']}; this run has {P} (" + " x ".join(
                str(layout[k]) for k in ("dp", "pp", "tp")) + f") and "
            f"{cfg['algorithm']}: it continues from the same parameters and optimizer "
            f"state, but not bit for bit as it would have")
    return None


def _resume(cfg, comm, model, opt, strategy, loader, log, identity=None, total=None):
    """(step, checkpoint path or None): the run's state loaded from --resume, if asked."""
    if not cfg["resume"]:
        return 0, None
    rank, error, ck = comm.Get_rank(), None, None
    if rank == 0:
        try:
            ck = (ckpt.find_latest(cfg["checkpoint_dir"]) if cfg["resume"] == "auto"
                  else ckpt.load(cfg["resume"]))
        except ckpt.CheckpointError as e:
            error = str(e)
        if ck is not None and error is None:
            error = _checkpoint_problem(ck, cfg, model, comm.Get_size(), log, identity,
                                        getattr(strategy, "layout", None))
    agree(comm, error, what="loading the checkpoint")
    if not comm.bcast(ck is not None if rank == 0 else None):
        if rank == 0:
            log(f"no checkpoint in {cfg['checkpoint_dir']}: starting fresh")
        return 0, None
    ck = comm.bcast(ck if rank == 0 else None)
    strategy.load_serial_params(ck["params"])  # model parallel: each rank's part
    strategy.load_state_dict(opt, ck["optim"])
    loader.epoch, loader.batches_done = ck["state"]["epoch"], ck["state"]["batches_done"]
    if rank == 0:
        for s in ck.get("skipped", []):
            log(f"skipped unreadable checkpoint: {s}")
        log(f"resumed from {ck['path']} at step {ck['state']['step']}")
        if total is not None and ck["state"]["step"] >= total:
            log(f"note: the checkpoint is at step {ck['state']['step']}, at or past this "
                f"run's last step {total} (--epochs {cfg['epochs']}, --max-steps "
                f"{cfg['max_steps']}): nothing left to train; raise --epochs or --max-steps "
                f"to continue")
    return ck["state"]["step"], ck["path"]


def _checkpointer(cfg, comm, opt, strategy, identity=None, model_info=None, dims=None):
    """trainer -> None: rank 0 writes the run's state; a failure there (full disk,
    unwritable folder) is raised on every rank instead of leaving them in a barrier."""
    if not cfg["checkpoint_dir"]:
        return None

    def save(trainer):
        state = {"step": trainer.step, "epoch": trainer.loader.epoch,
                 "batches_done": trainer.loader.batches_done, "ranks": comm.Get_size(),
                 "algorithm": cfg["algorithm"], "dataset": identity,
                 "layout": dict(zip(("dp", "pp", "tp"), dims or (comm.Get_size(), 1, 1)))}
        optim_state = strategy.state_dict(opt)  # collective for sharded strategies
        params = strategy.serial_params()  # collective under model parallelism

        def write():
            save.last = ckpt.save(cfg["checkpoint_dir"], trainer.step, params, optim_state,
                      state, {k: v for k, v in cfg.items() if k != "hidden_sizes"},
                      cfg["keep"], model=model_info)
        config.on_rank0(comm, write, f"writing a checkpoint to {cfg['checkpoint_dir']}")
    save.last = None  # rank 0: the path of the last checkpoint written
    return save
