"""python -m hpcml.bench ml: hpcml.ml's classic models against scikit-learn, and its drift
detectors against river, in the same run (issue 20).

    python -m hpcml.bench ml --out benchmarks/results        # ml.json and ml.png
    python -m hpcml.bench ml --rows 200000 --ranks 1          # smaller, quicker

For each rank count in --ranks (default 1,2; mpiexec -n R of this module's worker):
* Ridge (alpha 1, normal equations) on --rows x 64, LogisticRegression (binary, L2, C 1,
  L-BFGS, tol 1e-4) on --rows x 64, KMeans (k = 16, Lloyd, one init from the same given
  centres, tol 1e-4) on --rows x 32: each rank generates its share of the same float32
  rows (row blocks from their own seeds, so the data do not depend on R) and the fit is
  timed from a barrier to the last rank's end (median of --repeats fits; at R = 1 in
  rounds alternating with scikit-learn's, the ratio being the median of the rounds');
* SGDClassifier.partial_fit throughput (hinge, one row per step, as scikit-learn's):
  rows/s over one epoch of --sgd-rows x 64 on one rank;
* streaming from shards: Ridge.fit of a --rows x 64 sharded dataset written for the run
  (rows/s, the loader reading every rank's share).
At R = 1 the same worker times scikit-learn's Ridge (solver 'auto'), LogisticRegression
('lbfgs', same C and tol), KMeans (same centres, algorithm 'lloyd', n_init 1) and
SGDClassifier.partial_fit on the same rows, on the same cores (scikit-learn's threads
see both cores, as hpcml's do at one rank), and reports hpcml / scikit-learn speed ratios;
the quality beside each (R^2, objective, inertia) shows the fits are comparable.
Drift detectors: ADWIN and Page-Hinkley of river (per value: river has no batch call)
and of hpcml (update_many on the whole stream; and per value) on --drift-rows values,
alternating which runs first, median of 3; updates/s and ratios.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from hpcml.bench.common import timed

BLOCK = 65536


def _rows(n, d, seed, lo, hi, kind):
    """Rows lo..hi of a deterministic float32 set: X standard normal (kind 'ridge',
    'logistic') or 16 Gaussian blobs (kind 'kmeans'); y the targets."""
    xs, ys = [], []
    centres = np.random.default_rng([seed, 999]).standard_normal((16, d)) * 4
    beta = np.random.default_rng([seed, 998]).standard_normal(d)
    for b in range(lo // BLOCK, (hi + BLOCK - 1) // BLOCK):
        rng = np.random.default_rng([seed, b])
        m = min(BLOCK, n - b * BLOCK)
        x = rng.standard_normal((m, d))
        if kind == "kmeans":
            lab = rng.integers(0, 16, m)
            x += centres[lab]
            y = lab
        elif kind == "ridge":
            y = x @ beta + 0.5 * rng.standard_normal(m)
        else:
            y = (x @ beta + rng.logistic(size=m) > 0).astype(np.int64)
        a, z = max(lo - b * BLOCK, 0), min(hi - b * BLOCK, m)
        xs.append(x[a:z].astype(np.float32))
        ys.append(y[a:z])
    return np.concatenate(xs), np.concatenate(ys)


def _share(n, comm):
    p, r = comm.Get_size(), comm.Get_rank()
    return n * r // p, n * (r + 1) // p


def _paired(comm, ours, theirs, repeats):
    """hpcml's and scikit-learn's fits in rounds that alternate which goes first (this
    machine drifts by 10-20% within minutes): (hpcml's median seconds, its last model,
    scikit-learn's median seconds, its last model, the median of the rounds' ratios)."""
    t_o, t_t, ratios = [], [], []
    for k in range(repeats):
        pair = {}
        for side in ((0, 1) if k % 2 == 0 else (1, 0)):
            pair[side] = timed(comm, ours if side == 0 else theirs, 1)
        t_o.append(pair[0][0])
        t_t.append(pair[1][0])
        ratios.append(pair[1][0] / pair[0][0])
    return (float(np.median(t_o)), pair[0][1], float(np.median(t_t)), pair[1][1],
            float(np.median(ratios)))


def _fit_pair(comm, P, ours, theirs, repeats):
    """(record, hpcml's model, scikit-learn's model or None)."""
    if P > 1:
        t, m = timed(comm, ours, repeats)
        return {"hpcml_s": t}, m, None
    t, m, ts, s, ratio = _paired(comm, ours, theirs, repeats)
    return {"hpcml_s": t, "sklearn_s": ts, "hpcml_vs_sklearn": ratio}, m, s


def _models(args, comm):
    from sklearn.cluster import KMeans as SKKMeans
    from sklearn.linear_model import LogisticRegression as SKLogit, Ridge as SKRidge
    from hpcml.ml import KMeans, LogisticRegression, Ridge
    n, P, res, reps = args.rows, comm.Get_size(), {}, args.repeats
    lo, hi = _share(n, comm)
    _warm_up(comm)
    X, y = _rows(n, 64, 1, lo, hi, "ridge")
    rec, m, s = _fit_pair(comm, P, lambda: Ridge(1.0, comm=comm).fit(X, y),
                          lambda: SKRidge(1.0).fit(X, y), reps)
    res["ridge"] = dict(rec, r2=_allr2(m, X, y, comm))
    if s is not None:
        res["ridge"]["sklearn_r2"] = float(s.score(X, y))
    X, y = _rows(n, 64, 2, lo, hi, "logistic")
    rec, m, s = _fit_pair(comm, P, lambda: LogisticRegression(comm=comm).fit(X, y),
                          lambda: SKLogit().fit(X, y), reps)
    res["logistic"] = dict(rec, iterations=int(m.n_iter_))
    if s is not None:
        res["logistic"].update(sklearn_iterations=int(s.n_iter_[0]),
                               objective=m.objective(X, y),
                               sklearn_objective=_objective_at(s, X, y))
    X, _ = _rows(n, 32, 3, lo, hi, "kmeans")
    init = _rows(n, 32, 3, 0, 16, "kmeans")[0].astype(np.float64)  # rows 0-15
    rec, m, s = _fit_pair(comm, P, lambda: KMeans(16, init=init, comm=comm).fit(X),
                          lambda: SKKMeans(16, init=init, n_init=1, algorithm="lloyd")
                          .fit(X), reps)
    res["kmeans"] = dict(rec, iterations=int(m.n_iter_), inertia=m.inertia_)
    if s is not None:  # scikit-learn's centres scored exactly (its own inertia_ is
        # accumulated in float32 for float32 rows)
        from hpcml.kernels import kmeans as KK
        res["kmeans"].update(sklearn_iterations=int(s.n_iter_),
                             sklearn_inertia=float(s.inertia_),
                             sklearn_inertia_float64=float(KK.assign(
                                 X, s.cluster_centers_.astype(np.float64))[1].sum()))
    return res


def _warm_up(comm):
    """Each model fitted once on a few rows first: the kernels' compilation (or loading
    from Numba's cache) and first imports are not timed, on either side."""
    from sklearn.cluster import KMeans as SKKMeans
    from sklearn.linear_model import LogisticRegression as SKLogit, Ridge as SKRidge
    from hpcml.ml import KMeans, LogisticRegression, Ridge
    X, y = _rows(2000, 32, 9, 0, 2000, "logistic")
    ests = [Ridge(comm=comm), LogisticRegression(comm=comm)]
    if comm.Get_size() == 1:  # (scikit-learn runs at one rank only)
        ests += [SKRidge(), SKLogit()]
        SKKMeans(4, init=X[:4], n_init=1).fit(X)
    for est in ests:
        est.fit(X, y.astype(np.float64) if "Ridge" in type(est).__name__ else y)
    KMeans(4, init=X[:4].astype(np.float64), comm=comm).fit(X)


def _allr2(model, X, y, comm):
    from hpcml import comm as hc
    p = model.predict(X)
    buf = np.array([np.sum((y - p) ** 2), np.sum(y), np.sum(y * y), len(y)], np.float64)
    hc.allreduce(buf, "sum", comm=comm)
    return float(1 - buf[0] / (buf[2] - buf[1] ** 2 / buf[3]))


def _objective_at(s, X, y):
    from hpcml.ml import LogisticRegression
    m = LogisticRegression()
    m.classes_, m.coef_, m.intercept_, m.n_features_in_ = s.classes_, s.coef_, \
        s.intercept_, X.shape[1]
    return m.objective(X, y)


def _sgd(args):
    from sklearn.linear_model import SGDClassifier as SK
    from hpcml.ml import SGDClassifier
    X, y = _rows(args.sgd_rows, 64, 2, 0, args.sgd_rows, "logistic")
    X = X.astype(np.float64)
    out = {}
    for name, make in (("hpcml", lambda: SGDClassifier(random_state=0)),
                       ("sklearn", lambda: SK(random_state=0))):
        m = make()
        m.partial_fit(X[:1000], y[:1000], classes=[0, 1])  # compile / set up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            m.partial_fit(X, y)
            times.append(time.perf_counter() - t0)
        out[name + "_rows_per_s"] = len(X) / float(np.median(times))
        out[name + "_accuracy"] = float(m.score(X, y))
    out["hpcml_vs_sklearn"] = out["hpcml_rows_per_s"] / out["sklearn_rows_per_s"]
    return out


def _streaming(args, comm):
    """Ridge.fit of a sharded dataset (rows/s): every rank reads its share."""
    from hpcml import comm as hc
    from hpcml.data import ShardedDataset
    from hpcml.data.format import write_manifest, write_shard
    folder = None
    if comm.Get_rank() == 0:
        folder = tempfile.mkdtemp(prefix="hpcml-bench-ml-")
        shards = 8
        entries = []
        for i in range(shards):
            lo, hi = args.rows * i // shards, args.rows * (i + 1) // shards
            X, y = _rows(args.rows, 64, 1, lo, hi, "ridge")
            entries.append(write_shard(folder, i, X, y.astype(np.float32)))
        write_manifest(folder, entries, 64, "float32", "float32", "regression", None)
    folder = hc.bcast_object(folder, root=0, comm=comm)
    from hpcml.ml import Ridge
    ds = ShardedDataset(folder, comm)
    t, _ = timed(comm, lambda: Ridge(1.0, comm=comm).fit(ds), args.repeats)
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)
    return {"rows_per_s": args.rows / t, "seconds": t}


def _detectors(args):
    from river import drift as rd
    from hpcml.ml.drift import ADWIN, PageHinkley
    rng = np.random.default_rng(5)
    n = args.drift_rows
    xs = np.concatenate([rng.normal(0, 1, n // 2), rng.normal(0.5, 1, n - n // 2)])
    xl = xs.tolist()
    out = {}
    for name, ours, theirs in (("adwin", ADWIN, rd.ADWIN), ("page_hinkley", PageHinkley,
                                                           rd.PageHinkley)):
        ours().update_many(xs[:1000])  # compile
        rounds = []
        for k in range(3):
            order = [0, 1] if k % 2 == 0 else [1, 0]
            t = [0.0, 0.0]
            for side in order:
                t0 = time.perf_counter()
                if side == 0:
                    got = list(ours().update_many(xs))
                else:
                    det, want = theirs(), []
                    for i, x in enumerate(xl):
                        det.update(x)
                        if det.drift_detected:
                            want.append(i)
                t[side] = time.perf_counter() - t0
            rounds.append(t)
        per = ours()
        t0 = time.perf_counter()
        for x in xl[:200000]:
            per.update(x)
        per_value = min(200000, n) / (time.perf_counter() - t0)
        h, r = (float(np.median([t[i] for t in rounds])) for i in (0, 1))
        out[name] = {"hpcml_updates_per_s": n / h, "river_updates_per_s": n / r,
                     "hpcml_vs_river": r / h, "rounds": [t[1] / t[0] for t in rounds],
                     "hpcml_per_value_updates_per_s": per_value,
                     "same_drifts": got == want, "drifts": [int(g) for g in got]}
    return out


def worker(args):
    import json
    from hpcml import comm as hc
    from hpcml.comm.guard import local_ranks
    from hpcml.kernels import threads
    comm = hc.world()
    threads.configure(local_ranks(comm))
    res = {"ranks": comm.Get_size(), "models": _models(args, comm),
           "streaming": _streaming(args, comm)}
    if comm.Get_size() == 1:
        res["sgd_partial_fit"] = _sgd(args)
        res["detectors"] = _detectors(args)
    if comm.Get_rank() == 0:
        with open(args.worker_out, "w") as f:
            json.dump(res, f)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench ml", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sgd-rows", type=int, default=200_000)
    ap.add_argument("--drift-rows", type=int, default=1_000_000)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--repeats", type=int, default=5,
                    help="fits per case (paired rounds against scikit-learn at R = 1)")
    ap.add_argument("--out", default="results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    from hpcml.bench.common import run_worker, save_results
    runs = []
    for R in [int(r) for r in args.ranks.split(",")]:
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(R), sys.executable, "-m",
               "hpcml.bench", "ml", "--worker", "--rows", str(args.rows), "--sgd-rows",
               str(args.sgd_rows), "--drift-rows", str(args.drift_rows), "--repeats",
               str(args.repeats)]
        os.environ.setdefault("HPCML_TIMEOUT", "900")
        runs.append(run_worker(cmd, timeout=7200))
        _report(runs[-1])
    res = {"benchmark": "ml", "rows": args.rows, "runs": runs}
    save_results(args.out, "ml", res, lambda p: _plot(res, p))
    return 0


def _report(r):
    R = r["ranks"]
    for name, m in r["models"].items():
        line = f"R={R} {name:9s} hpcml {m['hpcml_s']:.3f} s"
        if "sklearn_s" in m:
            line += (f"  scikit-learn {m['sklearn_s']:.3f} s  (median of the rounds' "
                     f"ratios {m['hpcml_vs_sklearn']:.2f}x)")
        print(line, flush=True)
    print(f"R={R} streaming Ridge from shards: {r['streaming']['rows_per_s']:,.0f} rows/s",
          flush=True)
    if "sgd_partial_fit" in r:
        s = r["sgd_partial_fit"]
        print(f"SGDClassifier.partial_fit: hpcml {s['hpcml_rows_per_s']:,.0f} rows/s, "
              f"scikit-learn {s['sklearn_rows_per_s']:,.0f} ({s['hpcml_vs_sklearn']:.2f}x)",
              flush=True)
        for name, d in r["detectors"].items():
            print(f"{name}: hpcml {d['hpcml_updates_per_s']:,.0f}/s (per value "
                  f"{d['hpcml_per_value_updates_per_s']:,.0f}/s), river "
                  f"{d['river_updates_per_s']:,.0f}/s ({d['hpcml_vs_river']:.1f}x); same "
                  f"drifts: {d['same_drifts']}", flush=True)


def _plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpcml.atomic import atomic_savefig
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = ["ridge", "logistic", "kmeans"]
    one = next((r for r in res["runs"] if r["ranks"] == 1), None)
    width = 0.8 / (len(res["runs"]) + 1)
    for k, r in enumerate(res["runs"]):
        axes[0].bar(np.arange(3) + k * width, [r["models"][n]["hpcml_s"] for n in names],
                    width, label=f"hpcml, {r['ranks']} rank{'s' if r['ranks'] > 1 else ''}")
    if one is not None:
        axes[0].bar(np.arange(3) + len(res["runs"]) * width,
                    [one["models"][n].get("sklearn_s", 0) for n in names], width,
                    label="scikit-learn (same cores)")
    axes[0].set_xticks(np.arange(3) + width)
    axes[0].set_xticklabels([f"{n}\n{res['rows']:,} rows" for n in names])
    axes[0].set_ylabel("fit seconds")
    axes[0].legend(fontsize=8)
    if one is not None and "detectors" in one:
        d = one["detectors"]
        keys = list(d)
        x = np.arange(len(keys))
        axes[1].bar(x - 0.2, [d[k]["hpcml_updates_per_s"] for k in keys], 0.4,
                    label="hpcml update_many")
        axes[1].bar(x + 0.2, [d[k]["river_updates_per_s"] for k in keys], 0.4,
                    label="river (per value)")
        axes[1].set_xticks(x)
        axes[1].set_xticklabels(keys)
        axes[1].set_yscale("log")
        axes[1].set_ylabel("updates / s")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
