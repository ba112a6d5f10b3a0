"""Dimensionality reduction: hpcml's t-SNE and PCA against scikit-learn and openTSNE.

    python -m hpcml.bench dimred [--out results] [--ranks 1,2] [--scaling 10000,20000,50000]
    python -m hpcml.bench dimred --quick          # small sizes, for a smoke test

t-SNE, one tool after the other (never two at once), on the same float32 data:
* digits: scikit-learn's 1,797 x 64 handwritten digits;
* mix10k: a 10,000 x 50 ten-cluster Gaussian mixture (make_blobs, seed 0);
* hpcml.ml.TSNE at each --ranks (an `mpiexec -n P` job per P; its time is the slowest
  rank's, from the first rank's start to the last rank's end, neighbours included),
  scikit-learn's TSNE (Barnes-Hut, n_jobs=2) and openTSNE (n_jobs=2) with its defaults
  (250 + 500 iterations) and with scikit-learn's 250 + 750 ("openTSNE-1000");
* all with perplexity 30, early exaggeration 12, PCA init; hpcml and scikit-learn run
  1,000 iterations with scikit-learn's schedule;
* quality: the final KL each tool reports, and trustworthiness at 10 neighbours computed
  here from the embedding (scikit-learn's function);
* scaling: hpcml at each --ranks on mixtures of --scaling points (openTSNE alongside).
PCA: hpcml.bench.pca (in memory against scikit-learn; streaming against the loader).
Writes dimred.json and dimred.png (time per tool; scaling curve).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def datasets(quick):
    from sklearn.datasets import load_digits, make_blobs
    d = load_digits().data.astype(np.float32)
    n = 3000 if quick else 10000
    X, _ = make_blobs(n_samples=n, n_features=50, centers=10, random_state=0)
    return {"digits": (d, load_digits().target),
            f"mix{n // 1000}k": (X.astype(np.float32),
                                 make_blobs(n_samples=n, n_features=50, centers=10,
                                            random_state=0)[1])}


def mixture(n):
    from sklearn.datasets import make_blobs
    X, y = make_blobs(n_samples=n, n_features=50, centers=10, random_state=0)
    return X.astype(np.float32), y


# --- hpcml, one mpiexec job per world size --------------------------------------------

def worker(args):
    from hpcml import comm as hc
    from hpcml.comm import row_bounds
    from hpcml.ml import TSNE
    comm = hc.world()
    X = np.load(args.data, mmap_mode="r")
    lo, hi = row_bounds(len(X), comm.Get_size(), comm.Get_rank())
    mine = np.ascontiguousarray(X[lo:hi])
    comm.Barrier()
    t = hc.wtime()
    model = TSNE(random_state=0, max_iter=args.max_iter, comm=comm,
                 backend=args.backend or None)
    model.fit(mine)
    t_end = hc.reduce_value(hc.wtime(), "max", comm)
    if comm.Get_rank() == 0:
        np.save(args.emb, model.embedding_)
        with open(args.result, "w") as f:
            json.dump({"seconds": t_end - t, "kl": model.kl_divergence_,
                       "n_iter": model.n_iter_, "timings": model.timings_}, f)
    return 0


def run_hpcml(path, p, tmp, max_iter=1000, backend=""):
    emb, res = os.path.join(tmp, "emb.npy"), os.path.join(tmp, "res.json")
    cmd = ["mpiexec", "-n", str(p), sys.executable, "-m", "hpcml.bench", "dimred",
           "--worker", "--data", path, "--emb", emb, "--result", res,
           "--max-iter", str(max_iter)] + (["--backend", backend] if backend else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    with open(res) as f:
        out = json.load(f)
    out["embedding"] = np.load(emb)
    return out


# --- the anchors ----------------------------------------------------------------------

def run_sklearn(X):
    from sklearn.manifold import TSNE
    t = time.perf_counter()
    m = TSNE(perplexity=30, random_state=0, n_jobs=2, init="pca", max_iter=1000)
    E = m.fit_transform(X)
    return {"seconds": time.perf_counter() - t, "kl": float(m.kl_divergence_),
            "n_iter": int(m.n_iter_), "embedding": E}


def run_opentsne(X, n_iter=500):
    from openTSNE import TSNE
    t = time.perf_counter()
    E = TSNE(perplexity=30, n_jobs=2, random_state=0, n_iter=n_iter).fit(X)
    return {"seconds": time.perf_counter() - t, "kl": float(E.kl_divergence),
            "n_iter": 250 + n_iter, "embedding": np.asarray(E)}


def trust(X, E):
    from sklearn.manifold import trustworthiness
    return float(trustworthiness(X, E, n_neighbors=10))


def _row(name, tool, ranks, r, X):
    rec = {"data": name, "rows": int(X.shape[0]), "tool": tool, "ranks": ranks,
           "seconds": r["seconds"], "kl": r["kl"], "n_iter": r["n_iter"],
           "trustworthiness": trust(X, r["embedding"]) if X.shape[0] <= 20000 else None}
    if "timings" in r:
        rec["timings"] = r["timings"]
    t = rec["trustworthiness"]
    print(f"{name:8s} {tool:14s} ranks {ranks}  {r['seconds']:8.2f} s  KL {r['kl']:.4f}  "
          f"trust {'-' if t is None else f'{t:.4f}'}", flush=True)
    return rec


def plot(path, records, scaling):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # no scaling runs (--quick, --scaling ''): one panel, not an empty second one
    fig, axes = plt.subplots(1, 2 if scaling else 1, figsize=(12 if scaling else 6.5, 4.5),
                             squeeze=False)
    a1 = axes[0, 0]
    names = sorted({r["data"] for r in records}, key=lambda s: (len(s), s))
    tools = []
    for r in records:
        key = f"{r['tool']} x{r['ranks']}" if r["tool"] == "hpcml" else r["tool"]
        if key not in tools:
            tools.append(key)
    width = 0.8 / max(len(tools), 1)
    for i, tool in enumerate(tools):
        vals = []
        for nm in names:
            hit = [r["seconds"] for r in records if r["data"] == nm and
                   (f"{r['tool']} x{r['ranks']}" if r["tool"] == "hpcml" else r["tool"]) == tool]
            vals.append(hit[0] if hit else 0)
        a1.bar(np.arange(len(names)) + i * width, vals, width, label=tool)
    a1.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    a1.set_xticklabels(names)
    a1.set_ylabel("wall seconds (lower is better)")
    a1.set_title("t-SNE, 1,000 iterations (openTSNE default: 750)")
    a1.legend(fontsize=8)
    if not scaling:
        fig.tight_layout()
        from hpcml.atomic import atomic_savefig
        atomic_savefig(fig, path, dpi=110)
        plt.close(fig)
        return
    a2 = axes[0, 1]
    for tool in sorted({s["tool"] + (f" x{s['ranks']}" if s["tool"] == "hpcml" else "")
                        for s in scaling}):
        pts = sorted((s["rows"], s["seconds"]) for s in scaling if
                     s["tool"] + (f" x{s['ranks']}" if s["tool"] == "hpcml" else "") == tool)
        a2.plot(*zip(*pts), marker="o", label=tool)
    a2.set_xlabel("points")
    a2.set_ylabel("wall seconds")
    a2.set_title("t-SNE scaling (10-cluster mixture, 50 features)")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.tight_layout()
    from hpcml.atomic import atomic_savefig
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench dimred", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--scaling", default="10000,20000,50000",
                    help="mixture sizes for the scaling curve ('' for none)")
    ap.add_argument("--scaling-opentsne", type=int, default=1,
                    help="also time openTSNE on the scaling sizes (1/0)")
    ap.add_argument("--sklearn-max-rows", type=int, default=10000,
                    help="skip scikit-learn on data larger than this")
    ap.add_argument("--backend", default="", help="hpcml kernel backend (cuda on a GPU)")
    ap.add_argument("--drop-cache", action="store_true", help="PCA part: also time reads "
                    "from the disk, emptying the page cache before each (root)")
    ap.add_argument("--skip-pca", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--emb", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--max-iter", type=int, default=1000, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    ranks = [int(r) for r in args.ranks.split(",") if r]
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="hpcml-dimred-")
    records, scaling = [], []
    try:
        for name, (X, _) in datasets(args.quick).items():
            path = os.path.join(tmp, f"{name}.npy")
            np.save(path, X)
            for p in ranks:
                records.append(_row(name, "hpcml", p, run_hpcml(path, p, tmp,
                                                                backend=args.backend), X))
            records.append(_row(name, "openTSNE", 2, run_opentsne(X), X))
            records.append(_row(name, "openTSNE-1000", 2, run_opentsne(X, 750), X))
            if X.shape[0] <= args.sklearn_max_rows:
                records.append(_row(name, "scikit-learn", 2, run_sklearn(X), X))
        sizes = [int(s) for s in args.scaling.split(",") if s] if not args.quick else []
        for n in sizes:
            X, _ = mixture(n)
            path = os.path.join(tmp, f"mix{n}.npy")
            np.save(path, X)
            for p in ranks:
                scaling.append(_row(f"mix{n}", "hpcml", p, run_hpcml(path, p, tmp,
                                                                     backend=args.backend), X))
            if args.scaling_opentsne:
                scaling.append(_row(f"mix{n}", "openTSNE-1000", 2, run_opentsne(X, 750), X))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = {}
    for name in {r["data"] for r in records}:
        by = {(r["tool"], r["ranks"]): r for r in records if r["data"] == name}
        for (tool, p), r in by.items():
            if tool != "hpcml":
                continue
            for anchor in ("openTSNE", "openTSNE-1000", "scikit-learn"):
                a = by.get((anchor, 2))
                if a:
                    ratios[f"{name} hpcml x{p} speed-up vs {anchor}"] = a["seconds"] / r["seconds"]
                    if anchor == "scikit-learn":
                        ratios[f"{name} hpcml x{p} KL / scikit-learn"] = r["kl"] / a["kl"]
                        ratios[f"{name} hpcml x{p} trust - scikit-learn"] = \
                            r["trustworthiness"] - a["trustworthiness"]
    for k in sorted(ratios):
        print(f"{k:55s} {ratios[k]:.4f}")
    result = {"tsne": records, "tsne_scaling": scaling, "ratios": ratios}
    if not args.skip_pca:
        from hpcml.bench.pca import bench_pca
        result["pca"] = bench_pca(args.out, quick=args.quick, drop_cache=args.drop_cache)
    from hpcml.atomic import atomic_write_json
    meta = {"benchmark": "dimred", "config": {k: v for k, v in vars(args).items()
                                              if k not in ("data", "emb", "result")},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(os.path.join(args.out, "dimred.json"), {**meta, "result": result})
    plot(os.path.join(args.out, "dimred.png"), records, scaling)
    print(f"# wrote {args.out}/dimred.json and dimred.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
