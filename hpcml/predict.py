"""python -m hpcml.predict MODEL DATA: predictions of a trained model for a sharded dataset.

    python -m hpcml.predict model.h5 digits:test --output preds.h5
    mpiexec -n 4 python -m hpcml.predict ck/ data/blobs-test --output preds.h5 --probabilities true
    python -m hpcml.predict --help                                  # every setting

MODEL: what `python -m hpcml.train --save-model` wrote, a checkpoint file, or a checkpoint
folder (its newest readable checkpoint). The model carries its standardiser, so DATA holds
raw features, as for training. Each rank predicts its contiguous share of the rows; rank 0
gathers them in dataset order and writes OUTPUT atomically (HDF5):
* `prediction`: class labels (int64) or regression values (float64), one per row;
* `probability` (with --probabilities true, classification): rows x classes;
* attributes model, data, task, rows.
The dataset's own labels are compared on the way: the summary (one JSON line from rank 0)
gives the accuracy, or RMSE and R^2, which equal what `hpcml.train` printed for this model
on this data.
"""
import os
import sys
import time

import numpy as np

from hpcml import comm as hc
from hpcml import config
from hpcml.comm.guard import agree, CollectiveError
from hpcml.comm.rows import row_bounds
from hpcml.data import DataError, ShardedDataset
from hpcml.model import (ModelError, classification_metrics, classification_sums,
                         regression_metrics, regression_sums)

SETTINGS = {
    "model": ("", str, "model file (--save-model), checkpoint file or checkpoint folder"),
    "data": ("", str, "dataset: a sharded folder or a built-in name (e.g. digits:test)"),
    "output": ("predictions.h5", str, "HDF5 file of the predictions ('' : none, metrics "
                                      "only)"),
    "probabilities": (False, bool, "also write class probabilities (classification)"),
    "batch_size": (65536, int, "rows per batch"),
}


def parse_args(argv=None, prog="python -m hpcml.predict", doc=__doc__, settings=SETTINGS):
    cfg = config.parse(prog, doc, settings, argv, positional=("model", "data"))
    for key in ("model", "data"):
        if not cfg[key]:
            config.bad(cfg, key, f"missing: give {key.upper()} (see --help)")
    if not os.path.exists(cfg["model"]):
        config.bad(cfg, "model", "not found")
    if cfg["batch_size"] < 1:
        config.bad(cfg, "batch_size", "must be >= 1")
    return cfg


def open_model(cfg, comm):
    """The model on every rank (each reads the file); an unreadable model, or one that does
    not fit the data, is the same error on every rank."""
    from hpcml.model import load_model
    error, model = None, None
    try:
        model = load_model(cfg["model"])
    except ModelError as e:
        error = str(e)
    agree(comm, error, what="loading the model")
    ds = ShardedDataset(cfg["data"], comm)
    error = None
    if ds.features != model.features:
        error = (f"{cfg['data']}: {ds.features} features; the model {cfg['model']} takes "
                 f"{model.features}")
    elif ds.task != model.task:
        error = f"{cfg['data']}: a {ds.task} dataset; the model is for {model.task}"
    elif model.task == "classification" and ds.classes and ds.classes > model.outputs:
        error = (f"{cfg['data']}: {ds.classes} classes; the model knows {model.outputs}")
    agree(comm, error, what="checking the data against the model")
    return model, ds


def predict_rows(model, ds, comm, batch_rows, keep=True, proba=False):
    """This rank's rows [lo, hi) in dataset order: (sums for the metrics, predictions or
    None, probabilities or None)."""
    cls = model.task == "classification"
    sums = np.zeros(model.outputs ** 2 + 1 if cls else 5)
    preds, probs = [], []
    for x, y in ds.loader(batch_rows, shuffle=False, agree_errors=True):
        if not len(y):
            continue
        if cls:
            conf, logloss, p = classification_sums(model, x, y)
            sums += np.append(conf, logloss)
        else:
            s, p = regression_sums(model, x, y)
            sums += s
        if keep:
            preds.append(p)
            if proba and cls:
                probs.append(model.predict_proba(x))
    if comm.Get_size() > 1:
        sums = hc.reduce_array(sums, "sum", comm)
    dt = np.int64 if cls else np.float64
    pred = np.concatenate(preds).astype(dt) if preds else np.empty(0, dt)
    prob = (np.concatenate(probs) if probs else np.empty((0, model.outputs))) \
        if proba and cls else None
    return sums, pred if keep else None, prob


def metrics(model, sums):
    if model.task == "classification":
        return classification_metrics(sums[:-1], sums[-1])
    return regression_metrics(sums)


def _gather(local, n, comm):
    """Rank 0: the (n, ...) array of every rank's rows in rank order (row_bounds split);
    None elsewhere. NumPy buffers over hpcml.comm p2p, no pickle."""
    p, rank = comm.Get_size(), comm.Get_rank()
    if p == 1:
        return local
    if rank != 0:
        hc.send(np.ascontiguousarray(local), 0, tag=71, comm=comm)
        return None
    out = np.empty((n,) + local.shape[1:], local.dtype)
    out[:len(local)] = local
    for r in range(1, p):
        lo, hi = row_bounds(n, p, r)
        hc.recv(out[lo:hi], r, tag=71, comm=comm)
    return out


def run(cfg, comm):
    t0 = time.perf_counter()
    model, ds = open_model(cfg, comm)
    keep = bool(cfg["output"])
    sums, pred, prob = predict_rows(model, ds, comm, cfg["batch_size"], keep,
                                    cfg["probabilities"])
    outputs = {}
    if keep:
        pred = _gather(pred, ds.rows, comm)
        prob = _gather(prob, ds.rows, comm) if prob is not None else None
        out = cfg["output"]

        def write():
            from hpcml.atomic import atomic_h5
            with atomic_h5(out) as f:
                f.create_dataset("prediction", data=pred)
                if prob is not None:
                    f.create_dataset("probability", data=prob)
                f.attrs["model"] = os.path.abspath(cfg["model"])
                f.attrs["data"] = cfg["data"]
                f.attrs["task"] = model.task
                f.attrs["rows"] = int(ds.rows)
        config.on_rank0(comm, write, f"writing --output {out}")
        outputs["predictions"] = os.path.abspath(out)
    m = metrics(model, sums)
    summary = {"job": "predict", "status": "done", "outputs": outputs,
               "seconds": hc.slowest(time.perf_counter() - t0, comm), "ranks": comm.Get_size(),
               "model": os.path.abspath(cfg["model"]), "data": cfg["data"], "task": model.task}
    summary.update({k: v for k, v in m.items() if k not in ("per_class", "confusion")})
    return summary


@hc.entry_point
def main(argv=None):
    return config.run_job(hc.world(), parse_args, run, argv,
                          failures=(CollectiveError, DataError, ModelError))


if __name__ == "__main__":
    sys.exit(main())
