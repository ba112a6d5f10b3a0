"""python -m hpcml.evaluate MODEL DATA: a trained model's metrics on a sharded dataset.

    python -m hpcml.evaluate model.h5 digits:test
    mpiexec -n 4 python -m hpcml.evaluate ck/ data/blobs-test

MODEL: what `python -m hpcml.train --save-model` wrote, a checkpoint file or folder.
Classification: accuracy, log loss, macro F1, and per class precision, recall, F1 and
support (as scikit-learn's classification_report), with the confusion matrix in the JSON;
regression: RMSE, MAE and R^2. Each rank scores its share of the rows; the sums are added
across ranks. Rank 0 prints the report, then the summary as one JSON line.
"""
import sys
import time

from hpcml import comm as hc
from hpcml import config
from hpcml.comm.guard import CollectiveError
from hpcml.data import DataError
from hpcml.model import ModelError
from hpcml.predict import metrics, open_model, parse_args as _parse, predict_rows

SETTINGS = {
    "model": ("", str, "model file (--save-model), checkpoint file or checkpoint folder"),
    "data": ("", str, "dataset: a sharded folder or a built-in name (e.g. digits:test)"),
    "batch_size": (65536, int, "rows per batch"),
    "report": (True, bool, "print the human-readable report before the JSON summary"),
}


def parse_args(argv=None):
    return _parse(argv, "python -m hpcml.evaluate", __doc__, SETTINGS)


def report(m, task):
    if task != "classification":
        return (f"rows {m['rows']:,}  RMSE {m['rmse']:.6g}  MAE {m['mae']:.6g}  "
                f"R2 {m['r2']:.4f}")
    lines = [f"{'class':>8} {'precision':>10} {'recall':>10} {'f1':>10} {'support':>10}"]
    for c in m["per_class"]:
        lines.append(f"{c['class']:>8} {c['precision']:>10.4f} {c['recall']:>10.4f} "
                     f"{c['f1']:>10.4f} {c['support']:>10,}")
    lines.append(f"accuracy {m['accuracy']:.4f} of {m['rows']:,} rows  log loss "
                 f"{m['log_loss']:.4f}  macro F1 {m['macro_f1']:.4f}")
    return "\n".join(lines)


def run(cfg, comm):
    t0 = time.perf_counter()
    model, ds = open_model(cfg, comm)
    sums, _, _ = predict_rows(model, ds, comm, cfg["batch_size"], keep=False)
    m = metrics(model, sums)
    if cfg["report"] and comm.Get_rank() == 0:
        print(report(m, model.task), flush=True)
    return {"job": "evaluate", "status": "done", "outputs": {},
            "seconds": hc.slowest(time.perf_counter() - t0, comm), "ranks": comm.Get_size(),
            "model": cfg["model"], "data": cfg["data"], "task": model.task, **m}


@hc.entry_point
def main(argv=None):
    return config.run_job(hc.world(), parse_args, run, argv,
                          failures=(CollectiveError, DataError, ModelError))


if __name__ == "__main__":
    sys.exit(main())
