"""python -m hpcml.tune: hyperparameter search (grid, random, Sobol, TPE, GP-BO) over MPI
ranks, resumable from an append-only journal.

    python -m hpcml.tune --objective branin --sampler gp --trials 50
    mpiexec -n 5 python -m hpcml.tune --objective train --space space.toml \\
        --pruner asha --trials 40                     # rank 0 manages, 4 workers
    mpiexec -n 5 python -m hpcml.tune --objective mymod:f --space s.toml --ranks-per-trial 2
    python -m hpcml.tune ... --journal study.jsonl    # run again: resumes the study

The search space is a TOML file with a [params] table (see hpcml/tune/space.py); the
built-in functions bring their own. Outputs in --output: summary.json (best parameters and
value), trials.csv and trials.jsonl, history.png (best so far) and params.png.
"""
import csv
import json
import os

from hpcml import comm as hc
from hpcml import config
from hpcml.atomic import atomic_write_json, atomic_write_bytes
from hpcml.config import ConfigError

from . import objectives, pruners, samplers
from .journal import JournalError
from .space import Space, SpaceError
from .study import Engine, StudyError, run_serial, run_shared

SETTINGS = {
    "objective": ("branin", str, "branin, hartmann6, rosenbrock, train (an hpcml.train "
                                 "run), or module:function"),
    "space": ("", str, "TOML file with a [params] table (built-ins bring their own)"),
    "sampler": ("tpe", str, "grid, random, sobol, tpe or gp"),
    "trials": (50, int, "trials in the study"),
    "direction": ("auto", str, "minimize, maximize, or auto (the objective's own: train "
                               "maximizes test accuracy)"),
    "seed": (0, int, "seed of the sampler: the study's trials are a function of it"),
    "pruner": ("none", str, "none, median, asha or hyperband (on reported values)"),
    "min_resource": (1, int, "asha/hyperband: the first rung's step"),
    "eta": (3, int, "asha/hyperband: the reduction factor"),
    "max_resource": (0, int, "asha/hyperband: the last step (0: train's epochs)"),
    "ranks_per_trial": (1, int, "ranks that run one trial together (a data-parallel "
                                "hpcml.train); rank 0 manages the study"),
    "lag": (-1, int, "trials proposed without the results of the last LAG trials (-1: "
                     "2 x (workers - 1)): the same seed and lag give the same trials"),
    "metric": ("test_accuracy", str, "--objective train: test_accuracy or test_loss"),
    "train_config": ("", str, "--objective train: TOML of the runs' fixed settings"),
    "grid_points": (5, int, "grid sampler: values per numeric parameter"),
    "journal": ("", str, "the study's journal (default OUTPUT/journal.jsonl): an existing "
                         "one is resumed"),
    "array": (False, bool, "this process is one of --workers sharing --journal (Slurm job "
                           "array tasks on a shared file system, file locks): each takes "
                           "the next trial; none is run twice"),
    "workers": (0, int, "--array: processes sharing the journal (0: "
                        "SLURM_ARRAY_TASK_COUNT); the lag follows from it"),
    "stale": (60.0, float, "--array: seconds without a heartbeat after which another "
                           "process re-runs a trial (its owner is taken for dead)"),
    "output": ("tune-out", str, "folder for summary.json, trials.csv/.jsonl and the PNGs"),
    "plot": (True, bool, "write history.png and params.png"),
    "verbose": (True, bool, "a line per finished trial (rank 0)"),
}


def parse_args(argv=None):
    cfg = config.parse("python -m hpcml.tune", __doc__, SETTINGS, argv)
    validate(cfg)
    return cfg


def validate(cfg):
    def bad(key, why):
        config.bad(cfg, key, why)
    if cfg["sampler"] not in samplers.SAMPLERS:
        bad("sampler", f"one of {', '.join(samplers.SAMPLERS)}")
    if cfg["pruner"] not in pruners.PRUNERS:
        bad("pruner", f"one of {', '.join(pruners.PRUNERS)}")
    if cfg["direction"] not in ("auto", "minimize", "maximize"):
        bad("direction", "minimize, maximize or auto")
    for k in ("trials", "ranks_per_trial", "grid_points", "min_resource"):
        if cfg[k] < 1:
            bad(k, "must be >= 1")
    if cfg["eta"] < 2:
        bad("eta", "must be >= 2")
    return cfg


def _build(cfg, workers, shared=False):
    """(engine, objective) from the settings; every error names what is wrong."""
    try:
        space = Space.from_toml(cfg["space"]) if cfg["space"] else None
        objective, own_space, own_dir = objectives.make(
            cfg["objective"], cfg["metric"], cfg["train_config"] or None, space)
    except (SpaceError, objectives.ObjectiveError) as e:
        raise ConfigError(str(e)) from None
    space = space or own_space
    if space is None:
        raise ConfigError(f"--objective {cfg['objective']}: give --space (a TOML file with "
                          f"a [params] table)")
    direction = cfg["direction"] if cfg["direction"] != "auto" else (own_dir or "minimize")
    sampler = samplers.make(cfg["sampler"], space, seed=cfg["seed"],
                            grid_points=cfg["grid_points"])
    trials = min(cfg["trials"], len(sampler)) if cfg["sampler"] == "grid" else cfg["trials"]
    max_res = cfg["max_resource"] or (_train_epochs(cfg) if cfg["objective"] == "train"
                                      else None)
    pruner = pruners.make(cfg["pruner"], cfg["min_resource"], cfg["eta"], max_res)
    lag = cfg["lag"] if cfg["lag"] >= 0 else 2 * (workers - 1)
    definition = {"objective": cfg["objective"], "space": space.describe(),
                  "sampler": cfg["sampler"], "seed": cfg["seed"], "direction": direction,
                  "pruner": cfg["pruner"], "lag": lag, "metric": cfg["metric"],
                  "train_config": cfg["train_config"]}
    os.makedirs(cfg["output"], exist_ok=True)
    journal = cfg["journal"] or os.path.join(cfg["output"], "journal.jsonl")
    try:
        engine = Engine(journal, space, sampler, pruner, definition, trials, lag, direction,
                        cfg["seed"], shared=shared, stale=cfg["stale"])
    except (StudyError, JournalError) as e:
        raise ConfigError(str(e)) from None
    return engine, objective


def _train_epochs(cfg):
    from hpcml import train
    return train.parse_args(["--config", cfg["train_config"]] if cfg["train_config"]
                            else [])["epochs"]


def run(cfg, comm=None, log=print):
    """The study on `comm` (one rank: in this process; more: rank 0 manages, the others
    work in teams of --ranks-per-trial). Returns the summary on rank 0."""
    from . import parallel
    comm = comm if comm is not None else hc.world()
    size, rank = comm.Get_size(), comm.Get_rank()
    show = (lambda t: _log_trial(t, log)) if cfg["verbose"] else (lambda t: None)
    if cfg["array"]:
        if size != 1:
            raise ConfigError("--array runs one process per array task (no mpiexec)")
        workers = cfg["workers"] or int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "0"))
        if workers < 1:
            raise ConfigError("--array needs --workers N (or SLURM_ARRAY_TASK_COUNT)")
        engine, objective = _build(cfg, workers, shared=True)
        run_shared(engine, objective, on_finish=show)
        return _finish(cfg, engine, None, size)
    if size == 1:
        engine, objective = _build(cfg, 1)
        run_serial(engine, objective, on_finish=show)
        return _finish(cfg, engine, None, size)
    try:
        team_of, leaders = parallel.teams(size, cfg["ranks_per_trial"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    error, engine, objective = None, None, None
    try:  # rank 0 checks everything first; the others hear its verdict
        engine, objective = _build(cfg, len(leaders)) if rank == 0 else (None, None)
    except ConfigError as e:
        error = str(e)
    error = hc.bcast_object(error, root=0, comm=comm)
    if error:
        raise ConfigError(error)
    if rank != 0:
        objective = _build_objective(cfg)
    team = hc.split(comm, team_of.get(rank, -1), rank)
    if rank == 0:
        util = parallel.manager(engine, comm, leaders, log=show)
        return _finish(cfg, engine, util, size)
    parallel.worker(objective, comm, team, leaders[team_of[rank]])
    return {"job": "tune", "status": "done"}


def _build_objective(cfg):
    space = Space.from_toml(cfg["space"]) if cfg["space"] else None
    return objectives.make(cfg["objective"], cfg["metric"], cfg["train_config"] or None,
                           space)[0]


def _log_trial(t, log):
    v = "-" if t.value is None else f"{t.value:.6g}"
    log(f"trial {t.number:4d}  {t.state:8s}  value {v}  "
        f"{json.dumps(t.params, sort_keys=True)}" + (f"  ({t.error})" if t.error else ""))


def _finish(cfg, engine, util, size):
    best = engine.best()
    rows = [t.row() for _, t in sorted(engine.trials.items())]
    summary = {"job": "tune", "status": "done", "objective": cfg["objective"],
               "sampler": cfg["sampler"], "trials": len(rows),
               "complete": sum(r["state"] == "complete" for r in rows),
               "failed": sum(r["state"] == "failed" for r in rows),
               "pruned": sum(r["state"] == "pruned" for r in rows),
               "best_value": None if best is None else best.value,
               "best_params": None if best is None else best.params,
               "best_trial": None if best is None else best.number,
               "worker_utilisation": util, "ranks": size,
               "journal": engine.journal.path, "settings": {k: cfg[k] for k in SETTINGS}}
    out = cfg["output"]
    _write_tables(out, rows, engine.space)
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    if cfg["plot"]:
        from .plots import plot_study
        plot_study(out, rows, engine.space, engine.sign)
    return summary


def _write_tables(out, rows, space):
    import io
    names = [p.name for p in space.params]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "state", "value", "seconds"] + names + ["error"])
    for r in rows:
        w.writerow([r["trial"], r["state"], "" if r["value"] is None else r["value"],
                    "" if r["seconds"] is None else f"{r['seconds']:.4f}"]
                   + [r["params"].get(n, "") for n in names] + [r["error"] or ""])
    atomic_write_bytes(os.path.join(out, "trials.csv"), buf.getvalue().encode())
    atomic_write_bytes(os.path.join(out, "trials.jsonl"), "".join(
        json.dumps(r, sort_keys=True, allow_nan=False, default=str) + "\n"
        for r in rows).encode())


def _show(cfg):
    return {k: cfg[k] for k in SETTINGS}


@hc.entry_point
def main(argv=None):
    return config.run_job(hc.world(), parse_args, run, argv,
                          failures=(ValueError,), show_settings=_show)

