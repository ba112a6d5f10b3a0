"""python -m hpcml.bench gpu: hpcml's CUDA paths on a GPU against their anchors, same run.

    python -m hpcml.bench gpu --out benchmarks/results          # on a machine with a GPU:
                                                                # gpu.json and gpu.png
    NUMBA_ENABLE_CUDASIM=1 python -m hpcml.bench gpu --smoke    # plumbing only (simulator)

Parts (--parts):

* matmul: hpcml.kernels.matmul on device arrays (the double-buffered tiled kernel) vs
  cuBLAS through CuPy (`cupy.matmul`), float32 n x n at 1024, 2048, 4096; GFLOP/s, each the
  median of --reps calls between device synchronisations, after a warm-up. At 4096 every
  tile shape of kernels/cuda/matmul.py's TILES is timed too, and the best one named
  (`best_tile`: set it with HPCML_CUDA_TILE, or make it DEFAULT_TILE).
* train: `hpcml.train --device cuda` (one rank, in process: loader, staging, kernels)
  vs PyTorch on the same GPU: the same MLP (784-1024-1024-10, ReLU), SGD (0.05, Nesterov
  momentum 0.9, weight decay 1e-4), global batch and rows; PyTorch's rows come from host
  memory (no loader) and are copied to the GPU per step. samples/s of the last epoch.
* pca: PCA(backend="cuda") vs PCA(backend="cpu") fit on the same in-memory rows.
* tsne: TSNE(backend="cuda") at --tsne-points points vs the 2-rank CPU run
  (`mpiexec -n 2 python -m hpcml.tsne`-equivalent: hpcml.bench dimred's worker).

An anchor that is not installed (CuPy, torch with CUDA) is recorded as missing, not
guessed. Results from the simulator are marked "simulator": true, are never written to
benchmarks/results, and measure nothing about a GPU (--smoke checks the plumbing).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MLP = (784, [1024, 1024], 10)


def _simulator():
    from numba import config
    return bool(config.ENABLE_CUDASIM)


def _sync():
    from numba import cuda
    cuda.synchronize()


def _median_time(f, reps, sync):
    f()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_matmul(sizes, reps, sweep=None):
    """GFLOP/s at each size against cuBLAS; the tile shapes timed at `sweep` (default:
    the largest size) and recorded with the largest size's row."""
    from numba import cuda
    from hpcml import kernels as K
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        da, db, dc = cuda.to_device(a), cuda.to_device(b), cuda.device_array((n, n), np.float32)
        t = _median_time(lambda: K.matmul(da, db, out=dc), reps, _sync)
        err = float(np.abs(dc.copy_to_host() - a @ b).max() / np.abs(a @ b).max())
        row = {"n": n, "hpcml_s": t, "hpcml_gflops": 2 * n ** 3 / t / 1e9, "max_rel_err": err}
        row.update(_cupy_matmul(a, b, reps))
        if row.get("cupy_gflops"):
            row["hpcml_vs_cublas"] = row["hpcml_gflops"] / row["cupy_gflops"]
        rows.append(row)
        print(f"matmul {n}: hpcml {row['hpcml_gflops']:,.1f} GFLOP/s, cuBLAS "
              f"{row.get('cupy_gflops') or float('nan'):,.1f}", flush=True)
    if rows:  # the tile shapes at the largest size: which one to make the default
        rows[-1].update(_tile_sweep(sweep or sizes[-1], reps, rows[-1].get("cupy_gflops")))
    return rows


def _tile_sweep(n, reps, cublas):
    """GFLOP/s of every tile shape in kernels.cuda.matmul.TILES at n x n float32 (each
    checked against NumPy), the best one, and its ratio to cuBLAS (same run)."""
    from numba import cuda
    from hpcml.kernels.cuda.matmul import TILES, matmul
    rng = np.random.default_rng(n + 1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    want = a @ b
    da, db, dc = cuda.to_device(a), cuda.to_device(b), cuda.device_array((n, n), np.float32)
    out = []
    for tile in TILES:
        t = _median_time(lambda: matmul(da, db, out=dc, tile=tile), reps, _sync)
        err = float(np.abs(dc.copy_to_host() - want).max() / np.abs(want).max())
        out.append({"tile": "x".join(map(str, tile)), "gflops": 2 * n ** 3 / t / 1e9,
                    "max_rel_err": err})
        print(f"matmul {n} tile {out[-1]['tile']}: {out[-1]['gflops']:,.1f} GFLOP/s",
              flush=True)
    best = max(out, key=lambda r: r["gflops"])
    res = {"tiles": out, "tile_n": n, "best_tile": best["tile"],
           "best_tile_gflops": best["gflops"]}
    if cublas:
        res["best_tile_vs_cublas"] = best["gflops"] / cublas
    return res


def _cupy_matmul(a, b, reps):
    try:
        import cupy as cp
        ca, cb = cp.asarray(a), cp.asarray(b)
    except Exception as e:  # not installed, or no GPU for it (the simulator)
        return {"cupy": f"missing: {type(e).__name__}: {e}"[:200]}
    n = a.shape[0]
    t = _median_time(lambda: cp.matmul(ca, cb), reps, cp.cuda.Device().synchronize)
    return {"cupy": cp.__version__, "cupy_s": t, "cupy_gflops": 2 * n ** 3 / t / 1e9}


def bench_train(rows, batch, epochs, mlp=MLP):
    """(hpcml.train --device cuda samples/s, torch samples/s or the reason it is missing)."""
    from hpcml import comm as hc
    from hpcml import train
    tmp = tempfile.mkdtemp(prefix="hpcml-bench-gpu-")
    data = os.path.join(tmp, "data")
    subprocess.run([sys.executable, "-m", "hpcml.data", "synth", data, "--rows", str(rows),
                    "--features", str(mlp[0]), "--classes", str(mlp[2]), "--shards", "4",
                    "--seed", "0"], check=True, capture_output=True)
    cfg = {k: v[0] for k, v in train.SETTINGS.items()}
    cfg.update(data=data, test_data="none", hidden=",".join(map(str, mlp[1])),
               batch_size=batch, epochs=epochs, lr=0.05, warmup=0, schedule="constant",
               standardize=False, progress=False, seed=0, device="cuda", log_every=0)
    hist = []
    train.run(train.validate(cfg), hc.self_comm(), log=lambda *a: None, history=hist)
    out = {"rows": rows, "batch": batch, "epochs": epochs, "mlp": [mlp[0], *mlp[1], mlp[2]],
           "hpcml_samples_per_s": hist[-1]["samples_per_s"]}
    out.update(_torch_train(data, batch, epochs, mlp))
    if out.get("torch_samples_per_s"):
        out["hpcml_vs_torch"] = out["hpcml_samples_per_s"] / out["torch_samples_per_s"]
    print(f"train: hpcml {out['hpcml_samples_per_s']:,.0f} samples/s, torch "
          f"{out.get('torch_samples_per_s') or float('nan'):,.0f}", flush=True)
    return out


def _torch_train(data, batch, epochs, mlp):
    try:
        import torch
        if not torch.cuda.is_available():
            return {"torch": f"missing: torch {torch.__version__} sees no CUDA GPU"}
    except ImportError as e:
        return {"torch": f"missing: {e}"}
    from hpcml.data import ShardedDataset
    x = np.concatenate([bx for bx, _ in ShardedDataset(data).loader(65536, shuffle=False)])
    y = np.concatenate([by for _, by in ShardedDataset(data).loader(65536, shuffle=False)])
    dev = torch.device("cuda")
    torch.manual_seed(0)
    layers, n = [], mlp[0]
    for h in mlp[1]:
        layers += [torch.nn.Linear(n, h), torch.nn.ReLU()]
        n = h
    model = torch.nn.Sequential(*layers, torch.nn.Linear(n, mlp[2])).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    lossf = torch.nn.CrossEntropyLoss()
    X, Y = torch.from_numpy(x).pin_memory(), torch.from_numpy(y.astype(np.int64)).pin_memory()
    rate = None
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, len(X) - batch + 1, batch):
            idx = perm[i:i + batch]
            xb, yb = X[idx].to(dev, non_blocking=True), Y[idx].to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            lossf(model(xb), yb).backward()
            opt.step()
        torch.cuda.synchronize()
        rate = (len(X) // batch) * batch / (time.perf_counter() - t0)
    return {"torch": torch.__version__, "torch_samples_per_s": rate}


def bench_pca(rows, features, reps):
    from hpcml.ml import PCA
    X = np.random.default_rng(0).standard_normal((rows, features))
    out = {"rows": rows, "features": features}
    for backend in ("cuda", "cpu"):
        out[f"{backend}_s"] = _median_time(
            lambda: PCA(min(16, features), backend=backend).fit(X), reps, _sync)
    out["cuda_vs_cpu"] = out["cpu_s"] / out["cuda_s"]
    print(f"pca {rows}x{features}: cuda {out['cuda_s']:.3f} s, cpu {out['cpu_s']:.3f} s",
          flush=True)
    return out


def bench_tsne(points, iters):
    from hpcml.ml import TSNE
    X = np.random.default_rng(0).standard_normal((points, 50))
    t0 = time.perf_counter()
    TSNE(max_iter=iters, perplexity=min(30.0, points / 4), random_state=0,
         backend="cuda").fit_transform(X)
    out = {"points": points, "max_iter": iters, "cuda_s": time.perf_counter() - t0}
    out.update(_tsne_cpu_2ranks(X, iters))
    if out.get("cpu_2ranks_s"):
        out["cuda_vs_cpu_2ranks"] = out["cpu_2ranks_s"] / out["cuda_s"]
    print(f"t-SNE {points}: cuda {out['cuda_s']:.1f} s, 2-rank CPU "
          f"{out.get('cpu_2ranks_s') or float('nan'):.1f} s", flush=True)
    return out


def _tsne_cpu_2ranks(X, iters):
    tmp = tempfile.mkdtemp(prefix="hpcml-bench-gpu-tsne-")
    path = os.path.join(tmp, "x.npy")
    np.save(path, X)
    code = ("import sys, numpy as np, time; from hpcml import comm as hc; "
            "from hpcml.ml import TSNE; c = hc.world(); X = np.load(sys.argv[1]); "
            "r = np.array_split(np.arange(len(X)), c.Get_size())[c.Get_rank()]; "
            "c.Barrier(); t = time.perf_counter(); "
            "TSNE(max_iter=int(sys.argv[2]), perplexity=min(30.0, len(X) / 4), "
            "random_state=0, backend='cpu', comm=c)"
            ".fit_transform(X[r]); c.Barrier(); "
            "print(time.perf_counter() - t) if c.Get_rank() == 0 else None")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    r = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-c", code, path, str(iters)],
                       capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        return {"cpu_2ranks": f"failed: {r.stderr.strip()[-300:]}"}
    return {"cpu_2ranks_s": float(r.stdout.strip().splitlines()[-1])}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="matmul,train,pca,tsne")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (simulator plumbing)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per figure (5)")
    ap.add_argument("--tsne-points", type=int, default=50_000)
    ap.add_argument("--out", default=".", help="folder for gpu.json")
    args = ap.parse_args(argv)
    from hpcml.kernels.cuda import available, why_unavailable
    if not available():
        raise SystemExit(f"hpcml.bench gpu: {why_unavailable()}")
    sim, small = _simulator(), args.smoke
    if sim and not small:
        raise SystemExit("hpcml.bench gpu: the CUDA simulator is on; use --smoke (plumbing "
                         "only) or run on a GPU")
    if sim and os.path.abspath(args.out).startswith(os.path.abspath("benchmarks")):
        raise SystemExit("hpcml.bench gpu: simulator results are not written to benchmarks/")
    reps = args.reps or (1 if small else 5)
    parts, res = args.parts.split(","), {"benchmark": "gpu", "simulator": sim}
    if "matmul" in parts:
        res["matmul"] = bench_matmul([40] if small else [1024, 2048, 4096], reps,
                                     sweep=16 if small else None)
    if "train" in parts:
        res["train"] = bench_train(32 if small else 200_000, 16 if small else 1024,
                                   1 if small else 3, (6, [5], 3) if small else MLP)
    if "pca" in parts:
        res["pca"] = bench_pca(200 if small else 1_000_000, 8 if small else 256, reps)
    if "tsne" in parts:
        res["tsne"] = bench_tsne(60 if small else args.tsne_points, 10 if small else 1000)
    res["device"] = _device_name()
    from hpcml.atomic import atomic_write_json
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "gpu.json"), res)
    plot(res, os.path.join(args.out, "gpu.png"))
    print(f"# wrote {os.path.join(args.out, 'gpu.json')} and gpu.png")
    return 0


def plot(res, path):
    """One bar per figure: hpcml's speed over its anchor's, measured in the same run (1.0:
    as fast; the issue's targets drawn where it sets one)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpcml.atomic import atomic_savefig
    bars = [(f"matmul {r['n']}\nvs cuBLAS", r.get("hpcml_vs_cublas"), 0.3)
            for r in res.get("matmul", [])]
    best = res.get("matmul", [{}])[-1] if res.get("matmul") else {}
    if best.get("best_tile_vs_cublas") is not None:
        bars.append((f"matmul {best['tile_n']}\ntile {best['best_tile']}",
                     best["best_tile_vs_cublas"], 0.3))
    bars += [("train\nvs PyTorch", res.get("train", {}).get("hpcml_vs_torch"), 0.5),
             ("PCA cuda\nvs cpu", res.get("pca", {}).get("cuda_vs_cpu"), None),
             ("t-SNE cuda\nvs 2 CPU ranks", res.get("tsne", {}).get("cuda_vs_cpu_2ranks"), 1.0)]
    bars = [b for b in bars if b[1] is not None]
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(bars)), 3.6))
    x = np.arange(len(bars))
    ax.bar(x, [b[1] for b in bars], 0.6)
    for i, (_, _, target) in enumerate(bars):
        if target is not None:
            ax.hlines(target, i - 0.35, i + 0.35, colors="k", linestyles="--")
    ax.set_xticks(x, [b[0] for b in bars], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("hpcml / anchor (speed)")
    sim = " (SIMULATOR: not a GPU figure)" if res.get("simulator") else ""
    ax.set_title(f"{res.get('device', '?')}{sim}; dashed: the issue's target", fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def _device_name():
    from numba import cuda
    try:
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # the simulator has no such call
        return "simulator" if _simulator() else "unknown"


if __name__ == "__main__":
    sys.exit(main())
