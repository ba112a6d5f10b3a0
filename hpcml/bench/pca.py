"""PCA benchmark: hpcml.ml.PCA in memory against scikit-learn, and streaming from shards
against the loader's own read rate, in one run.

    python -m hpcml.bench.pca [--quick] [--out results]            # 1 rank: vs scikit-learn
    mpiexec -n 2 python -m hpcml.bench.pca --out results            # in memory + streaming

* in memory: a seeded rows x features float64 matrix (1,000,000 x 64; each rank makes only
  its rows [r*N/p, (r+1)*N/p), the same matrix for any rank count) fitted with
  PCA(10, comm) (covariance solver). At 1 rank, scikit-learn's PCA(10) with
  svd_solver="covariance_eigh" (X^T X and eigh) runs interleaved with it in every repeat,
  and svd_solver="full" (LAPACK SVD) once; both validate the result (largest difference of
  the explained variance ratios and of the components). ratio = scikit-learn's time /
  hpcml's (> 1: hpcml is faster). Also the covariance kernel alone (scatter_block) with
  its cpu and numpy backends.
* streaming: a synthetic sharded dataset (hpcml.data.synth, float32, 8 shards) read by
  every rank: plain = iterating this rank's ds.loader(batch, shuffle=False) and doing
  nothing with the batches; pca = PCA(10, comm, batch_size=batch).fit(ds), which reads the
  same batches and accumulates them. Interleaved repeats after one untimed warm-up pass
  (the same page cache for both). ratio = plain time / pca time (1: PCA keeps up with
  the loader). accumulate_only: the same batches, held in memory, through the covariance
  kernels alone (scatter_block + merge_scatter): the compute's own rate, the ceiling of pca.
  product_only: the float64 product alone (BLAS X^T X of an L2-resident float64 block, as
  many rows as this rank reads, on as many threads as the kernels use): no shift, no merge,
  no I/O, the most any float64 accumulation reaches here. loader_cpu_s: the CPU seconds
  (all the process's threads, kernel time included) of one plain pass: the work reading
  costs the cores, which a fit spends besides the product. fit_ceiling_vs_loader:
  loader_s / (product_only_s + loader_cpu_s / threads), the best ratio a fit that reads
  through the loader and multiplies with this BLAS can reach on these cores.
  cold_*: plain and pca again with the page cache emptied before each pass (root on Linux
  only; skipped otherwise), so the rows come from the disk, as from a shared file system.
Timing: Barrier, then perf_counter; each rank's median over repeats; the max over ranks.
Writes pca-p<ranks>.json and .png (atomic) on rank 0 and prints the ratios.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from hpcml.atomic import atomic_savefig, atomic_write_json
from hpcml import comm as hc
from hpcml.comm import entry_point
from hpcml.data import ShardedDataset, synth
from hpcml.kernels import covariance as KC
from hpcml.ml import PCA

BLOCK = 1 << 16  # rows per generator block: the matrix does not depend on the rank count


def matrix_rows(lo, hi, features, seed=0):
    """Rows [lo, hi) of the seeded benchmark matrix: a geometric spectrum in a random basis,
    plus a mean of 5."""
    rng = np.random.default_rng([seed, 1 << 20])
    basis = np.linalg.qr(rng.standard_normal((features, features)))[0]
    scales = np.geomspace(10, 0.1, features)
    out = np.empty((hi - lo, features))
    for b in range(lo // BLOCK, -(-hi // BLOCK)):
        z = np.random.default_rng([seed, b]).standard_normal((BLOCK, features))
        a, c = max(lo, b * BLOCK), min(hi, (b + 1) * BLOCK)
        out[a - lo:c - lo] = z[a - b * BLOCK:c - b * BLOCK]
    out *= scales
    return out @ basis + 5.0


def drop_page_cache(comm):
    """Empty the kernel's page cache (root only, Linux): the next read comes from the
    disk. The node's first rank writes /proc/sys/vm/drop_caches; True if it could."""
    ok = 1
    if comm.Get_rank() == 0:
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            ok = 0
    return bool(comm.bcast(ok))


def _timed(comm, f, cold=False):
    if cold:
        drop_page_cache(comm)
    comm.Barrier()
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def _slowest(comm, values):
    mine = np.asarray(values, np.float64)
    return hc.reduce_array(mine, "max", comm)


def in_memory(comm, rows, features, repeats, k=10):
    p, r = comm.Get_size(), comm.Get_rank()
    X = matrix_rows(rows * r // p, rows * (r + 1) // p, features)
    PCA(k, comm=comm).fit(X[:5000])  # warm-up: Numba kernels loaded, BLAS threads up
    ours, eigh = [], []
    sk = None
    for _ in range(repeats):
        fitted = []
        ours.append(_timed(comm, lambda: fitted.append(PCA(k, comm=comm).fit(X))))
        if p == 1:
            from sklearn.decomposition import PCA as SkPCA
            t = time.perf_counter()
            sk = SkPCA(k, svd_solver="covariance_eigh").fit(X)
            eigh.append(time.perf_counter() - t)
    res = {"rows": rows, "features": features, "n_components": k,
           "hpcml_s": float(_slowest(comm, [np.median(ours)])[0]), "repeats": repeats}
    if p == 1:
        from sklearn.decomposition import PCA as SkPCA
        t = time.perf_counter()
        full = SkPCA(k, svd_solver="full").fit(X)
        res["sklearn_full_s"] = time.perf_counter() - t
        res["sklearn_covariance_eigh_s"] = float(np.median(eigh))
        res["ratio_vs_covariance_eigh"] = res["sklearn_covariance_eigh_s"] / res["hpcml_s"]
        res["ratio_vs_full"] = res["sklearn_full_s"] / res["hpcml_s"]
        for backend in ("cpu", "numpy"):  # the covariance kernel alone, both backends
            res[f"scatter_block_{backend}_s"] = float(np.median(
                [_timed(comm, lambda: KC.scatter_block(X, backend=backend))
                 for _ in range(min(3, repeats))]))
        mine = fitted[0]
        for name, other in (("full", full), ("covariance_eigh", sk)):
            res[f"max_ratio_diff_vs_{name}"] = float(np.abs(
                mine.explained_variance_ratio_ - other.explained_variance_ratio_).max())
            res[f"max_component_diff_vs_{name}"] = float(np.abs(
                mine.components_ - other.components_).max())
    return res


def streaming(comm, rows, features, repeats, batch, folder, drop_cache=False):
    synth(folder, rows, features, classes=10, shards=8, seed=0, comm=comm)
    ds = ShardedDataset(folder, comm)

    def plain():
        for _ in ds.loader(batch, shuffle=False):
            pass

    def fit():
        PCA(10, comm=comm, batch_size=batch).fit(ds)
    batches = [x for x, _ in ds.loader(batch, shuffle=False)]  # also the warm-up read

    def compute():  # the accumulation alone, on the same batches held in memory
        total = (0, np.zeros(features), np.zeros((features, features)))
        for x in batches:
            total = KC.merge_scatter(total, KC.scatter_block(x), inplace=True)
    product = _product_only(sum(len(x) for x in batches), features)
    fit()
    product()
    t_plain, t_fit, t_compute, t_product = [], [], [], []
    for _ in range(repeats):
        t_plain.append(_timed(comm, plain))
        t_fit.append(_timed(comm, fit))
        t_compute.append(_timed(comm, compute))
        t_product.append(_timed(comm, product))
    cpu = time.process_time()
    plain()
    loader_cpu = time.process_time() - cpu
    slow = _slowest(comm, [np.median(t_plain), np.median(t_fit), np.median(t_compute),
                           np.median(t_product), loader_cpu])
    mb = ds.rows * ds.features * 4 / comm.Get_size() / 1e6  # float32 x per rank
    cold = {}
    if drop_cache and drop_page_cache(comm):  # the same, each pass read from the disk
        c_plain, c_fit = [], []
        for _ in range(repeats):
            c_plain.append(_timed(comm, plain, cold=True))
            c_fit.append(_timed(comm, fit, cold=True))
        cs = _slowest(comm, [np.median(c_plain), np.median(c_fit)])
        cold = {"cold_loader_s": float(cs[0]), "cold_pca_s": float(cs[1]),
                "cold_loader_MBps_per_rank": mb / cs[0], "cold_pca_MBps_per_rank": mb / cs[1],
                "cold_pca_vs_loader": float(cs[0] / cs[1])}
    return {**cold, "rows": rows, "features": features, "batch_size": batch, "repeats": repeats,
            "loader_s": float(slow[0]), "pca_s": float(slow[1]),
            "accumulate_only_s": float(slow[2]),
            "loader_MBps_per_rank": mb / slow[0], "pca_MBps_per_rank": mb / slow[1],
            "accumulate_only_MBps_per_rank": mb / slow[2],
            "product_only_s": float(slow[3]), "product_only_MBps_per_rank": mb / slow[3],
            "product_threads": product.threads,
            "product_only_GFMAps_per_rank": product.fma / slow[3] / 1e9,
            "loader_cpu_s": float(slow[4]),
            "pca_vs_loader": float(slow[0] / slow[1]),
            "accumulate_only_vs_loader": float(slow[0] / slow[2]),
            "product_only_vs_loader": float(slow[0] / slow[3]),
            # the most any float64 fit could reach here: its CPU work is at least the
            # product's (product_only_s on `threads` cores) plus the reading's (loader_cpu_s),
            # spread over the same cores
            "fit_ceiling_vs_loader": float(slow[0] / (slow[3] + slow[4] / product.threads))}


def _product_only(rows, features):
    """A callable doing the float64 X^T X products for `rows` rows with no data movement:
    each worker thread (as many as scatter_block uses) multiplies its own L2-sized random
    block by itself, single-threaded BLAS, for its share of the blocks."""
    from hpcml.kernels.threads import available_cores, blas_threads, current
    block = KC.rows_per_block(features)
    workers = max(1, current() or available_cores())
    blocks = -(-rows // block)
    shares = [blocks * i // workers for i in range(workers + 1)]
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((block, features)) for _ in range(workers)]

    def work(i):
        B, S = data[i], np.zeros((features, features))
        for _ in range(shares[i + 1] - shares[i]):
            S += B.T @ B  # syrk, as scatter_block's
        return S

    def run():
        with blas_threads(1):
            if workers == 1:
                work(0)
            else:
                list(KC._pool(workers).map(work, range(workers)))
    run.threads = workers
    run.fma = blocks * block * features * (features + 1) / 2
    return run


def bench_pca(out_dir, quick=False, comm=None, rows=None, stream_rows=None, features=64,
              repeats=None, batch=65536, plot=True, drop_cache=False):
    """Run both parts on comm (default COMM_WORLD); rank 0 writes
    out_dir/pca-p<ranks>.json and .png. Returns the result dict (rank 0; {} elsewhere).
    drop_cache: also time reads from the disk, emptying the whole machine's page cache
    before each (root only; it slows everything else on the machine): only when asked."""
    comm = comm if comm is not None else hc.world()
    rank, p = comm.Get_rank(), comm.Get_size()
    rows = rows or (100_000 if quick else 1_000_000)
    stream_rows = stream_rows or (200_000 if quick else 2_000_000)
    repeats = repeats or (2 if quick else 5)
    mem = in_memory(comm, rows, features, repeats)
    tmp = comm.bcast(tempfile.mkdtemp(prefix="hpcml-pca-bench-") if rank == 0 else None)
    try:
        stream = streaming(comm, stream_rows, features, repeats, batch,
                           os.path.join(tmp, "data"), drop_cache)
    finally:
        comm.Barrier()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    if rank != 0:
        return {}
    result = {"benchmark": "pca", "ranks": p, "quick": quick, "in_memory": mem,
              "streaming": stream}
    base = os.path.join(out_dir, f"pca-p{p}")
    atomic_write_json(base + ".json", result)
    if plot:
        _plot(base + ".png", result)
    return result


def _plot(path, result):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mem, st = result["in_memory"], result["streaming"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    names, times = ["hpcml"], [mem["hpcml_s"]]
    for key, label in (("sklearn_covariance_eigh_s", "sklearn\ncovariance_eigh"),
                       ("sklearn_full_s", "sklearn full")):
        if key in mem:
            names.append(label)
            times.append(mem[key])
    a1.bar(names, times, color=["tab:blue", "tab:orange", "tab:gray"][:len(names)])
    a1.set_ylabel("seconds (median)")
    a1.set_yscale("log")
    if len(names) == 1:  # the anchors run on one rank (pca-p1)
        a1.text(0.5, 0.5, "scikit-learn runs on 1 rank:\nsee pca-p1.png", ha="center",
                va="center", transform=a1.transAxes, color="0.35")
    ranks = result["ranks"]
    a1.set_title(f"PCA fit, {mem['rows']:,} x {mem['features']} float64,\n"
                 f"{ranks} rank{'s' if ranks > 1 else ''}", fontsize=10)
    names = ["loader\n(cached)", "PCA fit\n(cached)", "accumulate\nonly",
             "float64\nproduct"]
    vals = [st["loader_MBps_per_rank"], st["pca_MBps_per_rank"],
            st["accumulate_only_MBps_per_rank"], st["product_only_MBps_per_rank"]]
    colors = ["tab:gray", "tab:blue", "tab:green", "tab:olive"]
    title = f"PCA at {st['pca_vs_loader']:.2f}x the loader (cached: page cache)"
    if "cold_pca_vs_loader" in st:
        names += ["loader\n(disk)", "PCA fit\n(disk)"]
        vals += [st["cold_loader_MBps_per_rank"], st["cold_pca_MBps_per_rank"]]
        colors += ["tab:gray", "tab:blue"]
        title += f", {st['cold_pca_vs_loader']:.2f}x (disk)"
    a2.bar(range(len(names)), vals, color=colors)
    a2.set_xticks(range(len(names)), names, fontsize=8)
    a2.set_ylabel("MB/s per rank (slowest rank)")
    a2.set_title(f"streaming {st['rows']:,} rows:\n{title}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


@entry_point
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench.pca", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    ap.add_argument("--rows", type=int, default=None, help="in-memory rows (1,000,000)")
    ap.add_argument("--stream-rows", type=int, default=None, help="dataset rows (2,000,000)")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (5)")
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--out", default="results")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--drop-cache", action="store_true", help="also time reads from the "
                    "disk, emptying the page cache before each (root; slows the machine)")
    args = ap.parse_args(argv)
    res = bench_pca(args.out, args.quick, rows=args.rows, stream_rows=args.stream_rows,
                    features=args.features, repeats=args.repeats, batch=args.batch_size,
                    plot=not args.no_plot, drop_cache=args.drop_cache)
    if res:
        mem, st = res["in_memory"], res["streaming"]
        for key, value in list(mem.items()) + [("streaming_" + k, v) for k, v in st.items()]:
            print(f"{key:36s} {value:.4g}" if isinstance(value, float) else
                  f"{key:36s} {value}")
        print(f"# wrote {args.out}/pca-p{res['ranks']}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
