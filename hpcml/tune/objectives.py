"""Objectives a study can tune. Each is called as objective(params, report, comm) and
returns the value (a float); report(step, value) records an intermediate value and raises
study.Pruned when the pruner stops the trial.

    branin | hartmann6 | rosenbrock   built-in test functions (hpcml.tune.functions)
    module:function                   a Python function called with the parameters (a
                                      dict), or with (params, report) if it takes two
    train                             an hpcml.train run: the parameters are train settings
                                      over --train-config's; the value is the last epoch's
                                      test accuracy (--metric test_accuracy) or test loss;
                                      each epoch's value is reported (ASHA/median on epochs)
"""
import importlib
import inspect

from .functions import BUILTIN


class ObjectiveError(ValueError):
    pass


def make(spec, metric="test_accuracy", train_config=None, space=None):
    """(objective, default space or None, default direction or None)."""
    if spec in BUILTIN:
        f, fspace, _ = BUILTIN[spec]
        return (lambda params, report, comm=None: f(params)), fspace, "minimize"
    if spec == "train":
        return _train_objective(metric, train_config, space), None, \
            "maximize" if metric == "test_accuracy" else "minimize"
    if ":" not in spec:
        raise ObjectiveError(f"--objective {spec!r}: a built-in ({', '.join(BUILTIN)}), "
                             f"'train', or module:function")
    mod, _, name = spec.partition(":")
    try:
        f = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ObjectiveError(f"--objective {spec}: cannot import it ({e})") from None
    try:
        two = len(inspect.signature(f).parameters) >= 2
    except (TypeError, ValueError):
        two = False
    if two:
        return (lambda params, report, comm=None: f(params, report)), None, None
    return (lambda params, report, comm=None: f(params)), None, None


def _train_objective(metric, train_config, space):
    from hpcml import train
    base = train.parse_args(["--config", train_config] if train_config else [])
    if space is not None:
        unknown = [p.name for p in space.params if p.name not in train.SETTINGS]
        if unknown:
            raise ObjectiveError(f"the search space names {', '.join(map(repr, unknown))}, "
                                 f"which {'is not an hpcml.train setting' if len(unknown) == 1 else 'are not hpcml.train settings'} "
                                 f"(see python -m hpcml.train --help)")
    if metric not in ("test_accuracy", "test_loss"):
        raise ObjectiveError(f"--metric {metric!r}: test_accuracy or test_loss")

    def objective(params, report, comm=None):
        from hpcml import config
        cfg = dict(base)
        for k, v in params.items():
            cfg[k] = config.coerce(train.SETTINGS, k, v, f"trial parameter {k}")
        cfg.update(progress=False, checkpoint_dir="", metrics="", save_model="",
                   trace="", resume="")
        train.validate(cfg)
        return _train_run(train, cfg, comm, metric, report)
    return objective


class _Reporter:
    """A Trainer callback: each epoch's metric to report(); a prune stops the run."""

    def __init__(self, metric, report):
        self.metric, self.report, self.pruned = metric, report, False

    def on_epoch(self, trainer, entry):
        from .study import Pruned
        if self.metric not in entry:
            return False
        try:
            self.report(int(entry["epoch"]), float(entry[self.metric]))
        except Pruned:
            self.pruned = True
            return True
        return False


def _train_run(train, cfg, comm, metric, report):
    from hpcml import comm as hc
    from .study import Pruned
    rep = _Reporter(metric, report)
    summary, _ = train.run(cfg, comm if comm is not None else hc.self_comm(),
                           log=lambda *a, **k: None, callbacks=[rep])
    if rep.pruned:
        raise Pruned()
    if metric not in summary:
        raise ObjectiveError(f"the run's summary has no {metric} (give a test set)")
    return float(summary[metric])
