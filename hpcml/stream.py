"""python -m hpcml.stream MODEL DATA: online learning on a stream, evaluated test-then-train
(prequential), with a drift detector watching the errors.

    python -m hpcml.data synth data/s --rows 60000 --features 10 --classes 4 --drift 20000,40000
    python -m hpcml.stream sgd data/s --output out/stream
    python -m hpcml.stream ridge data/reg --forgetting 0.99 --detector page-hinkley
    cat rows.csv | python -m hpcml.stream sgd - --output out/csv        # CSV on stdin

The rows come in order, --block at a time (a sharded dataset or a built-in name in its
row order, or CSV lines on stdin, "-", the label in --label-column). Each block is first
predicted by the current model (test), its per-row errors (0/1 for a classifier, the
absolute error for a regressor) go to the detector (but for the --warmup rows after a
start), then the model learns the block (train: partial_fit). When the detector signals
a drift at row r, --on-drift reset starts a fresh model and detector from the next block
(keep: the model goes on). MODEL: sgd
(SGDClassifier: --loss, --optimizer, --learning-rate, --eta0, --alpha), sgd-regressor,
ridge (Ridge.partial_fit; --forgetting < 1 weighs old rows down). Detectors: adwin,
page-hinkley, ddm (classifiers), none.

Rank 0 writes OUTPUT/summary.json (prequential accuracy or mean absolute error overall and
between drifts, the detected drift rows, the stream's true drift points when its manifest
records them, with each one's detection delay) and OUTPUT/prequential.png (the metric
over a --window of rows, detected drifts in red, true ones dashed), and prints the
summary as one JSON line. A stream is replayed in order by one process: run it without
mpiexec.
"""
import io
import os
import sys
import time

import numpy as np

from hpcml import comm as hc
from hpcml import config
from hpcml.atomic import atomic_savefig, atomic_write_json, writable_folder
from hpcml.comm.guard import CollectiveError
from hpcml.config import ConfigError
from hpcml.data import DataError

MODELS = ("sgd", "sgd-regressor", "ridge")
DETECTORS = ("adwin", "page-hinkley", "ddm", "none")

SETTINGS = {
    "model": ("sgd", str, "sgd (classifier), sgd-regressor or ridge (regressor)"),
    "data": ("", str, "a sharded dataset or built-in name, or - for CSV lines on stdin"),
    "block": (100, int, "rows per test-then-train step"),
    "detector": ("adwin", str, "adwin, page-hinkley, ddm (classifiers) or none"),
    "on_drift": ("reset", str, "reset (a fresh model after a drift) or keep"),
    "loss": ("log_loss", str, "sgd: the loss (hinge, log_loss, ...; sgd-regressor: "
                              "squared_error unless given)"),
    "optimizer": ("sgd", str, "sgd models: sgd, momentum, adagrad, rmsprop, adam"),
    "learning_rate": ("constant", str, "sgd models: constant, optimal, invscaling, adaptive"),
    "eta0": (0.01, float, "sgd models: the initial learning rate"),
    "alpha": (1e-4, float, "regularisation (sgd models; ridge's alpha)"),
    "forgetting": (1.0, float, "ridge: weight of the rows seen so far at each block"),
    "classes": ("", str, "classifier: every class, comma-separated (default: the dataset's "
                         "0..classes-1; for stdin, needed)"),
    "label_column": (-1, int, "CSV on stdin: the label's column"),
    "warmup": (1000, int, "rows after a (re)start whose errors the detector does not see "
                          "(a fresh model's learning curve is no drift)"),
    "window": (1000, int, "rows in the plotted moving metric"),
    "seed": (0, int, "seed of the models' shuffling"),
    "output": ("stream-out", str, "output folder: summary.json, prequential.png"),
    "plot": (True, bool, "write prequential.png"),
}


def parse_args(argv=None):
    cfg = config.parse("python -m hpcml.stream", __doc__, SETTINGS, argv,
                       positional=("model", "data"))
    for key, choices in (("model", MODELS), ("detector", DETECTORS),
                         ("on_drift", ("reset", "keep"))):
        if cfg[key] not in choices:
            config.bad(cfg, key, f"must be one of {', '.join(choices)}")
    if not cfg["data"]:
        config.bad(cfg, "data", "give a dataset, a built-in name or - (stdin)")
    for key in ("block", "window"):
        if cfg[key] < 1:
            config.bad(cfg, key, "must be >= 1")
    if cfg["warmup"] < 0:
        config.bad(cfg, "warmup", "must be >= 0")
    if cfg["detector"] == "ddm" and cfg["model"] != "sgd":
        config.bad(cfg, "detector", "ddm watches 0/1 errors: a classifier's (model sgd)")
    if not 0 < cfg["forgetting"] <= 1:
        config.bad(cfg, "forgetting", "must be in (0, 1]")
    if cfg["data"] == "-" and cfg["model"] == "sgd" and not cfg["classes"]:
        config.bad(cfg, "classes", "a classifier on stdin needs every class up front "
                                   "(e.g. --classes 0,1,2)")
    return cfg


def make_model(cfg):
    from hpcml.ml import Ridge, SGDClassifier, SGDRegressor
    if cfg["model"] == "ridge":
        return Ridge(cfg["alpha"], forgetting=cfg["forgetting"])
    kw = dict(optimizer=cfg["optimizer"], learning_rate=cfg["learning_rate"],
              eta0=cfg["eta0"], alpha=cfg["alpha"], batch_size=cfg["block"],
              random_state=cfg["seed"])
    if cfg["model"] == "sgd":
        return SGDClassifier(cfg["loss"], **kw)
    loss = "squared_error" if cfg["loss"] == SETTINGS["loss"][0] else cfg["loss"]
    return SGDRegressor(loss, **kw)


def make_detector(name):
    from hpcml.ml.drift import ADWIN, DDM, PageHinkley
    return {"adwin": ADWIN, "page-hinkley": PageHinkley, "ddm": DDM}[name]() \
        if name != "none" else None


def blocks(cfg):
    """(x, y) blocks in stream order, and the stream's metadata (manifest or {})."""
    if cfg["data"] == "-":
        return _csv_blocks(sys.stdin, cfg["block"], cfg["label_column"]), {}
    from hpcml.data import ShardedDataset
    ds = ShardedDataset(cfg["data"])
    return ((x, y) for x, y in ds.loader(cfg["block"], shuffle=False)), ds.manifest


def _csv_blocks(f, block, label_column):
    first, lines = True, []
    for number, line in enumerate(f, 1):
        if first:
            first = False
            if any(c.isalpha() for c in line.replace("e", "").replace("E", "")):
                continue  # a header
        lines.append(line)
        if len(lines) == block:
            yield _parse(lines, label_column, number)
            lines = []
    if lines:
        yield _parse(lines, label_column, "the end")


def _parse(lines, label_column, where):
    try:
        a = np.loadtxt(io.StringIO("".join(lines)), delimiter=",", ndmin=2)
    except ValueError as e:
        raise DataError(f"stdin: the CSV lines before line {where} are not numbers: {e}") \
            from None
    y = a[:, label_column]
    return np.delete(a, label_column % a.shape[1], axis=1), y


def run(cfg, comm):
    if comm.Get_size() > 1:
        raise ConfigError("python -m hpcml.stream replays one stream in order on one "
                          "process: run it without mpiexec (or with -n 1)")
    writable_folder(cfg["output"], "--output")
    gen, manifest = blocks(cfg)
    classes = _classes(cfg, manifest)
    t0 = time.perf_counter()
    trace = _replay(cfg, gen, classes)
    seconds = time.perf_counter() - t0
    truth = (manifest.get("generator") or {}).get("drift_points", [])
    summary = _summary(cfg, trace, truth, seconds)
    atomic_write_json(os.path.join(cfg["output"], "summary.json"), summary)
    if cfg["plot"]:
        _plot(os.path.join(cfg["output"], "prequential.png"), trace, truth, cfg)
    return summary


def _classes(cfg, manifest):
    if cfg["model"] != "sgd":
        return None
    if cfg["classes"]:
        return np.array([float(c) if "." in c else int(c) for c in cfg["classes"].split(",")])
    k = manifest.get("classes")
    if not k:
        raise ConfigError(f"{cfg['data']} records no class count: give --classes")
    return np.arange(int(k))


def _replay(cfg, gen, classes):
    """Per-row errors, the rows' positions of detected drifts."""
    model, det = make_model(cfg), make_detector(cfg["detector"])
    errors, drifts, seen, fitted, start = [], [], 0, False, 0
    for x, y in gen:
        if fitted:
            p = model.predict(x)
            err = (p != y).astype(np.float64) if classes is not None else np.abs(p - y)
            errors.append(err)
            skip = max(0, min(len(err), start + cfg["warmup"] - seen))
            if det is not None and skip < len(err):
                hits = det.update_many(err[skip:]) + skip
                drifts += [seen + int(h) for h in hits]
                if len(hits) and cfg["on_drift"] == "reset":
                    model, fitted, start = make_model(cfg), False, seen + len(x)
                    det = make_detector(cfg["detector"])
        else:
            errors.append(np.full(len(x), np.nan))  # no model yet: not scored
        if classes is not None:
            model.partial_fit(x, y, classes=classes)
        else:
            model.partial_fit(x, y)
        fitted = True
        seen += len(x)
    e = np.concatenate(errors) if errors else np.zeros(0)
    return {"errors": e, "drifts": drifts, "classifier": classes is not None}


def _summary(cfg, trace, truth, seconds):
    e, drifts = trace["errors"], trace["drifts"]
    scored = ~np.isnan(e)
    metric = "accuracy" if trace["classifier"] else "mean_absolute_error"

    def value(part):
        ok = part[~np.isnan(part)]
        if not len(ok):
            return None
        return float(1 - ok.mean()) if trace["classifier"] else float(ok.mean())
    cuts = [0] + drifts + [len(e)]
    delays = []
    for t in truth:
        after = [d for d in drifts if d >= t]
        delays.append(after[0] - t if after else None)
    return {"job": "stream", "status": "done",
            "outputs": {"summary": os.path.abspath(os.path.join(cfg["output"], "summary.json"))},
            "seconds": seconds, "rows": int(len(e)), "rows_per_s": len(e) / max(seconds, 1e-9),
            "model": cfg["model"], "detector": cfg["detector"], "metric": metric,
            "prequential": value(e), "scored_rows": int(scored.sum()),
            "between_drifts": [value(e[a:b]) for a, b in zip(cuts, cuts[1:])],
            "drifts_detected": drifts, "true_drift_points": truth,
            "detection_delays": delays,
            "false_alarms": sum(1 for d in drifts if not any(0 <= d - t < 2000 for t in truth))
            if truth else None,
            "settings": {k: cfg[k] for k in SETTINGS}}


def _plot(path, trace, truth, cfg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    e = trace["errors"]
    w = min(cfg["window"], max(1, len(e)))
    ok = np.where(np.isnan(e), 0.0, e)
    n = np.where(np.isnan(e), 0.0, 1.0)
    c = np.convolve(ok, np.ones(w), "valid") / np.maximum(np.convolve(n, np.ones(w), "valid"), 1)
    m = 1 - c if trace["classifier"] else c
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(np.arange(w - 1, len(e)), m, lw=1, label=f"prequential, last {w} rows")
    for i, t in enumerate(truth):
        ax.axvline(t, color="gray", ls="--", lw=1, label="true drift" if i == 0 else None)
    for i, d in enumerate(trace["drifts"]):
        ax.axvline(d, color="red", lw=0.8, label=f"detected ({cfg['detector']})"
                   if i == 0 else None)
    ax.set_xlabel("row")
    ax.set_ylabel("accuracy" if trace["classifier"] else "mean absolute error")
    ax.set_title(f"{cfg['model']} on {cfg['data']}: test-then-train, on drift: "
                 f"{cfg['on_drift']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
