"""python -m hpcml.pca: principal components of a sharded dataset, on one rank or many.

    python -m hpcml.pca digits --components 10 --output results/pca
    mpiexec -n 4 python -m hpcml.pca data/blobs --components 0.95 --output results/blobs
    python -m hpcml.pca --help                                  # every setting

Every rank streams its share of the rows (the loader splits them) into hpcml.ml.PCA; the
ranks merge their statistics with all-reduces, and rank 0 writes, each file atomically:
* OUTPUT/pca.h5: components, explained_variance, explained_variance_ratio,
  singular_values, mean (float64 datasets); attributes n_samples, n_features,
  n_components, noise_variance, solver, and the settings as JSON (`settings`);
* OUTPUT/summary.json: the numbers, settings and timing;
* OUTPUT/explained_variance.png: per-component ratio (bars) and cumulative ratio (line).
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
from hpcml.config import ConfigError
from hpcml.data import DataError, ShardedDataset
from hpcml.ml.pca import PCA, SOLVERS

# name: (default, type, help)
SETTINGS = {
    "data": ("digits", str, "dataset: a sharded folder or a built-in name"),
    "components": ("all", str, "number of components (int), a fraction of the variance to "
                               "explain in (0, 1), or 'all' (min(rows, features))"),
    "solver": ("auto", str, "auto, covariance or randomized"),
    "whiten": (False, bool, "whitened model (saved with the results)"),
    "output": ("pca-out", str, "output folder: pca.h5, summary.json, explained_variance.png"),
    "batch_size": (65536, int, "rows per streamed batch"),
    "iterated_power": ("auto", str, "randomized solver: power iterations, 'auto' or an int"),
    "oversamples": (10, int, "randomized solver: random directions beyond the components"),
    "seed": (0, int, "randomized solver: seed of the random directions"),
    "plot": (True, bool, "write explained_variance.png"),
    "verbose": (True, bool, "progress from rank 0 (each pass over the rows)"),
    "log_every": (30.0, float, "seconds between progress lines when stderr is not a "
                               "terminal (mpiexec, Slurm; a bar when it is); 0: off"),
    "max_memory": ("auto", str, "memory a rank may use: 'auto' (what this node has "
                                "available / its ranks), GiB per rank, or 'off' (no check)"),
}


def parse_args(argv=None):
    cfg = config.parse("python -m hpcml.pca", __doc__, SETTINGS, argv, positional=("data",))
    validate(cfg)
    return cfg


def _components(text):
    t = text.strip().lower()
    if t in ("all", "none"):
        return None
    try:
        return int(t)
    except ValueError:
        return float(t)


def validate(cfg):
    def bad(key, why):
        config.bad(cfg, key, why)
    try:
        k = _components(cfg["components"])
    except ValueError:
        bad("components", "must be an int, a fraction in (0, 1) or 'all'")
    if isinstance(k, int) and k < 1:
        bad("components", "must be >= 1")
    if isinstance(k, float) and not 0 < k < 1:
        bad("components", "a fraction must be in (0, 1)")
    cfg["n_components"] = k
    if cfg["solver"] not in SOLVERS:
        bad("solver", f"must be one of {', '.join(SOLVERS)}")
    if cfg["solver"] == "randomized" and not isinstance(k, int):
        bad("components", "the randomized solver needs a number of components")
    for key in ("batch_size", "oversamples"):
        if cfg[key] < 1:
            bad(key, "must be >= 1")
    ip = cfg["iterated_power"].strip().lower()
    if ip != "auto" and not (ip.isascii() and ip.isdigit()):  # "²".isdigit() is True
        bad("iterated_power", "must be 'auto' or an int >= 0")
    cfg["power"] = ip if ip == "auto" else int(ip)
    if not cfg["output"].strip():
        bad("output", "must name a folder")
    config.validate_shared(cfg)  # log_every, max_memory
    return cfg


def _settings(cfg):
    return {k: cfg[k] for k in SETTINGS}


def write_h5(path, pca, cfg):
    """pca.h5, written atomically (temporary name, fsync, rename)."""
    with atomic_h5(path) as f:
        for name in ("components", "explained_variance", "explained_variance_ratio",
                     "singular_values", "mean"):
            f.create_dataset(name, data=np.asarray(getattr(pca, name + "_"), np.float64))
        f.attrs["n_samples"] = pca.n_samples_
        f.attrs["n_features"] = pca.n_features_in_
        f.attrs["n_components"] = pca.n_components_
        f.attrs["noise_variance"] = pca.noise_variance_
        f.attrs["solver"] = pca.solver_
        f.attrs["settings"] = json.dumps(_settings(cfg))
    return path


def plot(path, pca, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ratio = pca.explained_variance_ratio_
    k = np.arange(1, len(ratio) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(k, ratio, color="tab:blue", label="per component")
    ax.plot(k, np.cumsum(ratio), color="tab:orange", marker=".", label="cumulative")
    ax.set_xlabel("component")
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def run(cfg, comm):
    from hpcml.progress import Progress
    Progress.default_every = cfg["log_every"]
    """Fit on every rank; rank 0 writes the files. Returns the summary (every rank)."""
    ds = ShardedDataset(cfg["data"], comm)
    k = cfg["n_components"]
    if isinstance(k, int) and k > min(ds.rows, ds.features):
        raise ConfigError(f"components = {k}: {cfg['data']} has {ds.rows} rows x "
                          f"{ds.features} features, so at most {min(ds.rows, ds.features)}")
    P = comm.Get_size()
    solver = cfg["solver"] if cfg["solver"] != "auto" else PCA(k)._choose_solver(
        ds.rows, ds.features, False)
    memory.check(comm, cfg["max_memory"], f"PCA ({solver}) of {ds.rows:,} rows x "
                 f"{ds.features} features on {P} rank{'s' if P > 1 else ''}",
                 memory.pca_parts(ds.rows, ds.features, P, k if isinstance(k, int) else None,
                                  solver, cfg["batch_size"],
                                  np.dtype(ds.manifest["x_dtype"]).itemsize),
                 ["The randomized solver keeps each rank's rows in memory: more ranks "
                  "(on more nodes) divide them; the covariance solver streams the rows "
                  "(--solver covariance, memory F x F); a smaller --batch-size bounds the "
                  "streamed batches."])
    config.on_rank0(comm, lambda: writable_folder(cfg["output"], "--output"),
                    "checking --output")
    t0 = time.perf_counter()
    pca = PCA(k, solver=cfg["solver"], whiten=cfg["whiten"], comm=comm,
              iterated_power=cfg["power"], n_oversamples=cfg["oversamples"],
              random_state=cfg["seed"], batch_size=cfg["batch_size"],
              verbose=int(cfg["verbose"])).fit(ds)
    seconds = time.perf_counter() - t0
    out = cfg["output"]
    files = {"h5": os.path.abspath(os.path.join(out, "pca.h5")),
             "summary": os.path.abspath(os.path.join(out, "summary.json"))}
    if cfg["plot"]:
        files["png"] = os.path.abspath(os.path.join(out, "explained_variance.png"))
    ratio = pca.explained_variance_ratio_
    summary = {"job": "pca", "status": "done", "outputs": files, "seconds": seconds,
               "data": cfg["data"], "rows": pca.n_samples_,
               "features": pca.n_features_in_, "ranks": comm.Get_size(),
               "solver": pca.solver_, "n_components": pca.n_components_,
               "explained_variance_ratio": [float(r) for r in ratio],
               "cumulative_ratio": float(np.sum(ratio)),
               "noise_variance": float(pca.noise_variance_),
               "settings": _settings(cfg)}

    def write():  # the numbers first: a picture that fails to draw loses nothing else
        write_h5(files["h5"], pca, cfg)
        atomic_write_json(files["summary"], summary)
    config.on_rank0(comm, write, f"writing the results to {out}")
    if cfg["plot"]:
        config.on_rank0(comm, lambda: plot(
            files["png"], pca, f"PCA of {cfg['data']}: {pca.n_components_} components, "
            f"{100 * summary['cumulative_ratio']:.1f}% of variance"),
            f"drawing {files['png']} (pca.h5 and summary.json are written)")
    return summary


@hc.entry_point
def main(argv=None):
    return config.run_job(hc.world(), parse_args, run, argv,
                          failures=(CollectiveError, DataError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
