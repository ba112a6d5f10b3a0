"""python -m hpcml.fit MODEL DATA: a classic model fitted on a sharded dataset, on one rank
or many.

    python -m hpcml.fit ridge data/reg --alpha 1.0 --output out/ridge
    mpiexec -n 4 python -m hpcml.fit logistic data/blobs --C 0.5 --output out/logit
    mpiexec -n 4 python -m hpcml.fit kmeans data/blobs --clusters 16 --output out/km
    python -m hpcml.fit sgd digits --loss hinge --epochs 20 --output out/sgd

MODEL: linear (LinearRegression), ridge, logistic (LogisticRegression), sgd
(SGDClassifier), sgd-regressor, kmeans. Every rank reads its share of DATA's rows (the
loader splits them) and the ranks fit one model together (hpcml.ml: all-reduced normal
equations, losses and gradients, cluster sums); DATA:test (or the folder's test/ split),
when there is one, is scored too. Rank 0 writes, each file atomically:
* OUTPUT/model.h5: the fitted arrays (coef, intercept, classes or cluster_centers) as
  datasets, the model's parameters as JSON in the `params` attribute (no pickle:
  `hpcml.fit.load(path)` rebuilds the estimator);
* OUTPUT/summary.json: the scores (train and test: R^2, accuracy or inertia), rows,
  ranks, seconds and settings;
* OUTPUT/fit.png: predicted against true (regressors), the confusion matrix (classifiers)
  or rows per cluster (k-means).
Rank 0 then prints the summary as one JSON line. Bad settings exit 2 with one message,
bad data exit 1 (on every rank, no hang).
"""
import json
import os
import sys
import time

import h5py
import numpy as np

from hpcml import comm as hc
from hpcml import config
from hpcml.atomic import atomic_h5, atomic_savefig, atomic_write_json, writable_folder
from hpcml.comm.guard import CollectiveError
from hpcml.config import ConfigError
from hpcml.data import DataError, ShardedDataset

MODELS = ("linear", "ridge", "logistic", "sgd", "sgd-regressor", "kmeans")
ARRAYS = ("coef_", "intercept_", "classes_", "cluster_centers_")

SETTINGS = {
    "model": ("ridge", str, "linear, ridge, logistic, sgd, sgd-regressor or kmeans"),
    "data": ("", str, "a sharded dataset or a built-in name (digits)"),
    "alpha": (1.0, float, "ridge: L2 strength; sgd models: regularisation (default 1e-4 "
                          "there when left at 1.0)"),
    "C": (1.0, float, "logistic: inverse regularisation strength"),
    "solver": ("auto", str, "linear/ridge: auto, normal or qr; logistic: lbfgs or newton"),
    "loss": ("", str, "sgd models: the loss (default hinge / squared_error)"),
    "optimizer": ("sgd", str, "sgd models: sgd, momentum, adagrad, rmsprop, adam"),
    "batch_size": (256, int, "sgd models: rows per step (global)"),
    "epochs": (20, int, "sgd models: epochs at most; logistic/kmeans: iterations at most "
                        "x 5 / x 15"),
    "clusters": (8, int, "kmeans: k"),
    "init": ("k-means||", str, "kmeans: k-means||, k-means++ or random"),
    "seed": (0, int, "seed (sgd shuffling, k-means initialisation)"),
    "output": ("fit-out", str, "output folder: model.h5, summary.json, fit.png"),
    "plot": (True, bool, "write fit.png"),
}


def parse_args(argv=None):
    cfg = config.parse("python -m hpcml.fit", __doc__, SETTINGS, argv,
                       positional=("model", "data"))
    if cfg["model"] not in MODELS:
        config.bad(cfg, "model", f"must be one of {', '.join(MODELS)}")
    if not cfg["data"]:
        config.bad(cfg, "data", "give a dataset folder or a built-in name")
    for key in ("batch_size", "epochs", "clusters"):
        if cfg[key] < 1:
            config.bad(cfg, key, "must be >= 1")
    try:
        make(cfg, None)._check_params()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def make(cfg, comm):
    from hpcml import ml
    m, seed = cfg["model"], cfg["seed"]
    if m in ("linear", "ridge"):
        solver = cfg["solver"]
        return ml.LinearRegression(solver=solver, comm=comm) if m == "linear" else \
            ml.Ridge(cfg["alpha"], solver=solver, comm=comm)
    if m == "logistic":
        solver = "lbfgs" if cfg["solver"] == "auto" else cfg["solver"]
        return ml.LogisticRegression(C=cfg["C"], solver=solver, max_iter=5 * cfg["epochs"],
                                     comm=comm)
    if m == "kmeans":
        return ml.KMeans(cfg["clusters"], init=cfg["init"], random_state=seed,
                         max_iter=15 * cfg["epochs"], comm=comm)
    alpha = 1e-4 if cfg["alpha"] == SETTINGS["alpha"][0] else cfg["alpha"]
    kw = dict(alpha=alpha, optimizer=cfg["optimizer"], batch_size=cfg["batch_size"],
              max_iter=cfg["epochs"], random_state=seed, comm=comm)
    if m == "sgd":
        return ml.SGDClassifier(cfg["loss"] or "hinge", **kw)
    return ml.SGDRegressor(cfg["loss"] or "squared_error", **kw)


def _test_split(name, comm):
    """The dataset's test split (DATA:test for a built-in, DATA/../test for a train/
    folder), or None."""
    for cand in (name + ":test" if ":" not in name and not os.path.exists(name) else None,
                 os.path.join(os.path.dirname(os.path.normpath(name)), "test")
                 if os.path.basename(os.path.normpath(name)) == "train" else None):
        if cand is None:
            continue
        try:
            return ShardedDataset(cand, comm)
        except (DataError, CollectiveError, OSError):
            continue
    return None


def _rows(ds, comm):
    """This rank's rows of a dataset (its share, as the loader splits them)."""
    xs, ys = [], []
    loader = ds.loader(65536, shuffle=False) if ds.comm is not None else ds.loader(
        65536, shuffle=False, rank=comm.Get_rank(), ranks=comm.Get_size())
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0, ds.features)), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


def _score(model, kind, X, y, comm):
    """The score over all ranks' rows: R^2 (regressors), accuracy (classifiers) or
    inertia (k-means)."""
    buf = np.zeros(3)
    if kind == "clusterer":
        buf[0] = -model.score(X) if len(X) else 0.0
    elif kind == "classifier":
        buf[:2] = (np.sum(model.predict(X) == y) if len(X) else 0), len(X)
    else:
        p = model.predict(X) if len(X) else np.zeros(0)
        buf[:3] = np.sum((y - p) ** 2), np.sum(y), len(X)
    hc.allreduce(buf, "sum", comm=comm)
    if kind == "clusterer":
        return {"inertia": float(buf[0])}
    if kind == "classifier":
        return {"accuracy": float(buf[0] / max(buf[1], 1))}
    mean = buf[1] / max(buf[2], 1)
    tot = np.array([np.sum((y - mean) ** 2)])
    hc.allreduce(tot, "sum", comm=comm)
    return {"r2": float(1 - buf[0] / tot[0]) if tot[0] else 0.0}


def run(cfg, comm):
    ds = ShardedDataset(cfg["data"], comm)
    model = make(cfg, comm)
    kind = model._kind
    if kind in ("classifier",) and ds.manifest.get("task") == "regression":
        raise ConfigError(f"model {cfg['model']} classifies, but {cfg['data']} is a "
                          f"regression dataset: use linear, ridge or sgd-regressor")
    config.on_rank0(comm, lambda: writable_folder(cfg["output"], "--output"),
                    "checking --output")
    X, y = _rows(ds, comm)
    t0 = time.perf_counter()
    model.fit(X) if kind == "clusterer" else model.fit(X, y)
    seconds = time.perf_counter() - t0
    scores = {"train": _score(model, kind, X, y, comm)}
    test = _test_split(cfg["data"], comm)
    if test is not None:
        Xt, yt = _rows(test, comm)
        scores["test"] = _score(model, kind, Xt, yt, comm)
    out = cfg["output"]
    files = {"h5": os.path.abspath(os.path.join(out, "model.h5")),
             "summary": os.path.abspath(os.path.join(out, "summary.json"))}
    summary = {"job": "fit", "status": "done", "outputs": files, "seconds": seconds,
               "model": repr(model.set_params(comm=None)), "data": cfg["data"],
               "rows": ds.rows, "features": ds.features, "ranks": comm.Get_size(),
               "scores": scores, "settings": {k: cfg[k] for k in SETTINGS}}
    config.on_rank0(comm, lambda: (save(files["h5"], model),
                                   atomic_write_json(files["summary"], summary)),
                    f"writing the results to {out}")
    if cfg["plot"]:
        files["png"] = os.path.abspath(os.path.join(out, "fit.png"))
        config.on_rank0(comm, lambda: _plot(files["png"], model, kind, X, y, cfg),
                        f"drawing {files['png']} (model.h5 and summary.json are written)")
    return summary


def save(path, model):
    """The fitted arrays as datasets and the parameters as JSON (no pickle)."""
    params = {k: v for k, v in model.get_params().items() if k != "comm"}
    with atomic_h5(path) as f:
        f.attrs["estimator"] = type(model).__name__
        f.attrs["params"] = json.dumps(params, default=str)
        for name in ARRAYS:
            if hasattr(model, name):
                v = np.asarray(getattr(model, name))
                f.create_dataset(name, data=v.astype(str).astype("S") if v.dtype.kind in
                                 "UO" else v)
        f.attrs["n_features_in_"] = model.n_features_in_


def load(path):
    """The estimator save() wrote, ready to predict."""
    from hpcml import ml
    with h5py.File(path, "r") as f:
        est = getattr(ml, f.attrs["estimator"])(**json.loads(f.attrs["params"]))
        for name in ARRAYS:
            if name in f:
                v = f[name][()]
                setattr(est, name, v.astype(str) if v.dtype.kind == "S" else v)
        est.n_features_in_ = int(f.attrs["n_features_in_"])
    return est


def _plot(path, model, kind, X, y, cfg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if kind == "regressor":
        ax.scatter(y[:5000], model.predict(X[:5000]), s=3, alpha=0.4)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
    elif kind == "classifier":
        classes = list(model.classes_)
        pred = model.predict(X)
        m = np.zeros((len(classes), len(classes)))
        for i, a in enumerate(classes):
            for j, b in enumerate(classes):
                m[i, j] = np.sum((y == a) & (pred == b))
        ax.imshow(m, cmap="Blues")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    else:
        ax.bar(np.arange(cfg["clusters"]), np.bincount(model.labels_,
                                                         minlength=cfg["clusters"]))
        ax.set_xlabel("cluster")
        ax.set_ylabel("rows (rank 0's)")
    ax.set_title(f"{cfg['model']} on {cfg['data']}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


@hc.entry_point
def main(argv=None):
    return config.run_job(hc.world(), parse_args, run, argv,
                          failures=(CollectiveError, DataError, ValueError),
                          show_settings=lambda cfg: {k: cfg[k] for k in SETTINGS})


if __name__ == "__main__":
    sys.exit(main())
