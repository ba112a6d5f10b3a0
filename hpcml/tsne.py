"""python -m hpcml.tsne: a t-SNE embedding of a sharded dataset, on one rank or many.

    python -m hpcml.tsne digits --output results/tsne
    mpiexec -n 4 python -m hpcml.tsne data/blobs --perplexity 50 --output results/blobs
    python -m hpcml.tsne --help                                 # every setting

Every rank loads its share of the rows (the loader splits them), finds their neighbours
among all rows and optimises their part of the embedding (hpcml.ml.TSNE); the positions
are all-gathered each iteration. Rank 0 writes, each file atomically:
* OUTPUT/embedding.h5: `embedding` (rows x components, dataset order), `labels`;
  attributes kl_divergence, n_iter, learning_rate, and the settings as JSON (`settings`);
* OUTPUT/summary.json: the numbers, settings and timing;
* OUTPUT/embedding.png: the embedding, coloured by label.
Rank 0 then prints the summary as one JSON line. Settings come from defaults, a TOML file
(--config) and --key value flags; a bad setting exits 2 with one message, bad data exits 1.
"""
import json
import os
import sys
import time

import numpy as np

from hpcml import comm as hc
from hpcml import config, memory
from hpcml.atomic import atomic_h5, atomic_savefig, atomic_write_json, writable_folder
from hpcml.comm.guard import CollectiveError
from hpcml.data import DataError, ShardedDataset
from hpcml.ml.tsne import TSNE, METHODS

# name: (default, type, help)
SETTINGS = {
    "data": ("digits", str, "dataset: a sharded folder or a built-in name"),
    "output": ("tsne-out", str, "output folder: embedding.h5, summary.json, embedding.png"),
    "components": (2, int, "embedding dimensions"),
    "perplexity": (30.0, float, "perplexity (neighbours: 3 x perplexity + 1)"),
    "early_exaggeration": (12.0, float, "exaggeration of P during the first 250 iterations"),
    "learning_rate": ("auto", str, "'auto' (max(N / exaggeration / 4, 50)) or a number"),
    "max_iter": (1000, int, "iterations"),
    "method": ("auto", str, "auto, barnes_hut, fft or exact"),
    "angle": (0.5, float, "Barnes-Hut accuracy (smaller: more accurate, slower)"),
    "init": ("pca", str, "pca or random"),
    "backend": ("cpu", str, "cpu, or cuda (exact repulsion on the GPU)"),
    "seed": (0, int, "seed of the random init"),
    "every": (1, int, "embed every K-th row of the dataset only (a subsample: 1 keeps all)"),
    "log_every": (30.0, float, "seconds between progress lines when stderr is not a "
                               "terminal (mpiexec, Slurm; a bar when it is); 0: off"),
    "max_memory": ("auto", str, "memory a rank may use: 'auto' (what this node has "
                                "available / its ranks), GiB per rank, or 'off' (no check)"),
    "plot": (True, bool, "write embedding.png"),
    "verbose": (True, bool, "progress lines from rank 0"),
}


def parse_args(argv=None):
    cfg = config.parse("python -m hpcml.tsne", __doc__, SETTINGS, argv, positional=("data",))
    validate(cfg)
    return cfg


def validate(cfg):
    def bad(key, why):
        config.bad(cfg, key, why)
    if cfg["components"] < 1:
        bad("components", "must be >= 1")
    if not cfg["perplexity"] > 0:
        bad("perplexity", "must be > 0")
    if not cfg["early_exaggeration"] >= 1:
        bad("early_exaggeration", "must be >= 1")
    lr = cfg["learning_rate"].strip().lower()
    if lr != "auto":
        try:
            lr = float(lr)
        except ValueError:
            bad("learning_rate", "must be 'auto' or a number")
        if not lr > 0:
            bad("learning_rate", "must be > 0")
    cfg["lr"] = lr
    if cfg["max_iter"] < 1:
        bad("max_iter", "must be >= 1")
    if cfg["method"] not in METHODS:
        bad("method", f"must be one of {', '.join(METHODS)}")
    if cfg["method"] in ("barnes_hut", "fft") and cfg["components"] != 2:
        bad("method", f"embeds in 2 dimensions, not {cfg['components']} (use exact)")
    if not 0 <= cfg["angle"] <= 1:
        bad("angle", "must be in [0, 1]")
    if cfg["init"] not in ("pca", "random"):
        bad("init", "must be pca or random")
    if cfg["backend"] not in ("cpu", "cuda", "numpy"):
        bad("backend", "must be cpu, cuda or numpy")
    if not cfg["output"].strip() or "\0" in cfg["output"]:
        bad("output", "must name a folder")
    if cfg["every"] < 1:
        bad("every", "must be >= 1")
    config.validate_shared(cfg)  # log_every, max_memory
    return cfg


def plot(path, emb, labels, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.6, 6.5))
    kw = dict(s=max(0.5, min(8, 20000 / max(len(emb), 1))), linewidths=0)
    if emb.shape[1] == 1:
        emb = np.column_stack([emb[:, 0], np.zeros(len(emb))])
    classes = np.unique(labels) if labels is not None else []
    integral = labels is not None and np.asarray(labels).dtype.kind in "iu"
    if labels is not None and integral and len(classes) <= 20:
        # classes are categories: one colour each, named in a legend (not a colour scale)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            pick = labels == c
            ax.scatter(emb[pick, 0], emb[pick, 1], color=cmap(i), label=str(c), **kw)
        ax.legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5),
                  markerscale=max(1.0, 6 / kw["s"] ** 0.5), frameon=False, fontsize=9)
    elif labels is not None:  # many classes or a real-valued target: a colour scale
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="viridis", **kw)
        fig.colorbar(sc, ax=ax, label="label" if integral else "target")
    else:
        ax.scatter(emb[:, 0], emb[:, 1], c="tab:blue", **kw)
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def _every(ds, every, comm):
    """(x, y) of this rank's contiguous share of the rows, keeping global rows i with
    i % every == 0: every rank together holds the subsample in dataset order."""
    from hpcml.comm.rows import row_bounds
    lo, _ = row_bounds(ds.rows, comm.Get_size(), comm.Get_rank())
    xs, ys, at = [], [], lo
    for x, y in ds.loader(65536, shuffle=False):
        keep = (np.arange(at, at + len(x)) % every) == 0
        xs.append(x[keep])
        ys.append(y[keep])
        at += len(x)
    return (np.concatenate(xs) if xs else np.empty((0, ds.features), np.float32),
            np.concatenate(ys) if ys else np.empty(0, np.int64))


def run(cfg, comm):
    from hpcml.progress import Progress
    Progress.default_every = cfg["log_every"]
    """Fit on every rank; rank 0 writes the files. Returns the summary (every rank)."""
    ds = ShardedDataset(cfg["data"], comm)
    n, P = -(-ds.rows // cfg["every"]), comm.Get_size()
    memory.check(comm, cfg["max_memory"], f"t-SNE of {n:,} rows x {ds.features} features "
                 f"on {P} rank{'s' if P > 1 else ''}", memory.tsne_parts(
                     n, ds.features, P, cfg["perplexity"], cfg["components"],
                     np.dtype(ds.manifest["x_dtype"]).itemsize),
                 ["Every rank holds the neighbour graph of all rows, so more ranks on one "
                  "node do not help: run fewer ranks per node (on more nodes), lower "
                  "--perplexity (3 x perplexity + 1 neighbours per row), or embed a "
                  "subsample (--every K keeps every K-th row)."])
    config.on_rank0(comm, lambda: writable_folder(cfg["output"], "--output"),
                    "checking --output")
    model = TSNE(n_components=cfg["components"], perplexity=cfg["perplexity"],
                 early_exaggeration=cfg["early_exaggeration"], learning_rate=cfg["lr"],
                 max_iter=cfg["max_iter"], init=cfg["init"], method=cfg["method"],
                 angle=cfg["angle"], random_state=cfg["seed"], comm=comm,
                 verbose=int(cfg["verbose"]),
                 backend=None if cfg["backend"] == "cpu" else cfg["backend"])
    comm.Barrier()
    t0 = time.perf_counter()
    if cfg["every"] > 1:  # this rank's share of the rows, every K-th (dataset order)
        x, y = _every(ds, cfg["every"], comm)
        model.fit(x)
        emb, labels = model.embedding_, hc.allgather_rows(y, comm)
    else:
        emb = model.fit_transform(ds)
        labels = model.labels_
    seconds = hc.slowest(time.perf_counter() - t0, comm)
    settings = {k: cfg[k] for k in SETTINGS}
    out = cfg["output"]
    outputs = {"h5": os.path.abspath(os.path.join(out, "embedding.h5")),
               "summary": os.path.abspath(os.path.join(out, "summary.json"))}
    if cfg["plot"]:
        outputs["png"] = os.path.abspath(os.path.join(out, "embedding.png"))
    summary = {"job": "tsne", "status": "done", "outputs": outputs, "seconds": seconds,
               "data": ds.path, "rows": int(emb.shape[0]), "features": ds.features,
               "ranks": comm.Get_size(), "kl_divergence": model.kl_divergence_,
               "n_iter": model.n_iter_, "learning_rate": model.learning_rate_,
               "every": cfg["every"], "settings": settings}

    def write():
        with atomic_h5(os.path.join(out, "embedding.h5")) as f:
            f.create_dataset("embedding", data=emb)
            if labels is not None:
                f.create_dataset("labels", data=labels)
            f.attrs["kl_divergence"] = model.kl_divergence_
            f.attrs["n_iter"] = model.n_iter_
            f.attrs["learning_rate"] = model.learning_rate_
            f.attrs["settings"] = json.dumps(settings)
        atomic_write_json(os.path.join(out, "summary.json"), summary)
    config.on_rank0(comm, write, f"writing the results to {out}")
    if cfg["plot"]:  # after the numbers: a picture that fails to draw loses nothing else
        config.on_rank0(comm, lambda: plot(
            outputs["png"], emb, labels, f"t-SNE of {cfg['data']}: {emb.shape[0]:,} rows, "
            f"KL {model.kl_divergence_:.3f}"), f"drawing {outputs['png']} (embedding.h5 "
            "and summary.json are written)")
    return summary


@hc.entry_point
def main(argv=None):
    return config.run_job(hc.world(), parse_args, run, argv,
                          failures=(CollectiveError, DataError, ValueError),
                          show_settings=lambda cfg: ({k: cfg[k] for k in SETTINGS}
                                                     if cfg["verbose"] else None))


if __name__ == "__main__":
    sys.exit(main())
