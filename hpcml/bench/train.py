"""Training throughput: hpcml.train against PyTorch DDP (gloo, CPU) on the same work.

    python -m hpcml.bench train [--ranks 1,2,4] [--out results]      # the driver
    mpiexec -n 2 python -m hpcml.bench train --worker ...             # one world size

The driver launches, for each world size P, one `mpiexec -n P` job in which every rank
measures, one after the other and on the same data:

* hpcml: hpcml.train.run (sharded-HDF5 loader, forward/backward through hpcml.kernels,
  one all-reduce of the flat gradient, fused SGD update) for --epochs epochs;
* torch: torch.nn.parallel.DistributedDataParallel over gloo, the same MLP, optimizer,
  global batch and rows (taken from memory, no loader: torch's side does less work).

Both: MLP 784-512-256-10, ReLU, SGD (momentum 0.9, Nesterov, weight decay 1e-4), global
batch 256 split evenly over ranks, float32, one thread per rank. samples/s counts
training rows per second of a run's last epoch (the first includes compilation and
warm-up); --rounds runs of each side alternate (hpcml first, then torch first, ...), and
the figure is the median over rounds, of the slowest rank. JSON + PNG with the ratio hpcml/torch per P.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MLP = (784, [512, 256], 10)


def _torch_group(comm):
    """One gloo process group for the worker's torch runs (collective; None at 1 rank)."""
    import torch.distributed as dist
    rank, p = comm.Get_rank(), comm.Get_size()
    if p == 1:
        return None
    from hpcml import comm as hc
    port = hc.bcast_object(_free_port() if rank == 0 else None, comm=comm)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=p)
    return dist


def _torch_ddp(x, y, batch, epochs, seed, comm):
    import torch
    torch.set_num_threads(1)
    rank, p = comm.Get_rank(), comm.Get_size()
    torch.manual_seed(seed)
    f, hidden, classes = MLP
    layers, n = [], f
    for h in hidden:
        layers += [torch.nn.Linear(n, h), torch.nn.ReLU()]
        n = h
    layers.append(torch.nn.Linear(n, classes))
    model = torch.nn.Sequential(*layers)
    if p > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    lossf = torch.nn.CrossEntropyLoss()
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    b = batch // p
    steps = len(x) // batch
    rates = []
    for _ in range(epochs):
        t = time.perf_counter()
        for k in range(steps):
            lo = k * batch + rank * b
            xb, yb = X[lo:lo + b], Y[lo:lo + b]
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(xb), yb)
            loss.backward()
            opt.step()
        rates.append(steps * batch / (time.perf_counter() - t))
    return rates


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args):
    from hpcml import comm as hc
    from hpcml import train
    from hpcml.comm import entry_point  # noqa: F401  (the guard is installed by main)
    comm = hc.world()
    rank, p = comm.Get_rank(), comm.Get_size()
    from hpcml.data import ShardedDataset
    ds = ShardedDataset(args.data, comm)
    cfg = {k: v[0] for k, v in train.SETTINGS.items()}
    cfg.update(data=args.data, test_data="none", hidden=",".join(map(str, MLP[1])),
               batch_size=args.batch, epochs=args.epochs, lr=0.05, warmup=0,
               schedule="constant", standardize=False, progress=False, seed=0,
               algorithm=args.algorithm)
    cfg = train.validate(cfg)

    def ours():
        hist = []
        train.run(cfg, comm, log=lambda *a: None, history=hist)
        return [h["samples_per_s"] for h in hist]

    x = y = None
    if not args.no_torch:
        x = np.empty((ds.rows, ds.features), np.float32)
        y = np.empty(ds.rows, np.int64)
        o = 0
        for bx, by in ShardedDataset(args.data).loader(65536, shuffle=False):
            x[o:o + len(bx)], y[o:o + len(bx)] = bx, by
            o += len(bx)
    # rounds alternate which side goes first, so a slow phase of a shared machine hits
    # both alike; each round's figure is its last epoch, the result the median of rounds
    runs = {"hpcml": [], "torch": []}
    group = _torch_group(comm) if x is not None else None
    for r in range(args.rounds):
        sides = ["hpcml", "torch"] if r % 2 == 0 else ["torch", "hpcml"]
        for side in sides:
            if side == "hpcml":
                runs["hpcml"].append(ours())
            elif x is not None:
                runs["torch"].append(_torch_ddp(x, y, args.batch, args.epochs, 0, comm))
    if group is not None:
        group.destroy_process_group()
    last = {k: [v[-1] for v in runs[k]] for k in runs}
    mine = np.array([np.median(last["hpcml"]),
                     np.median(last["torch"]) if last["torch"] else np.nan])
    worst = hc.reduce_array(mine, "min", comm)
    ours, theirs = runs["hpcml"], runs["torch"] or None
    if rank == 0:
        print(json.dumps({"ranks": p, "hpcml_samples_per_s": worst[0],
                          "torch_ddp_samples_per_s": None if theirs is None else worst[1],
                          "hpcml_epochs": ours, "torch_epochs": theirs}))
    return 0


def driver(args):
    from hpcml.atomic import atomic_write_json, atomic_savefig
    tmp = tempfile.mkdtemp(prefix="hpcml-bench-train-")
    data = os.path.join(tmp, "data")
    results = []
    env = dict(os.environ, HPCML_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        # in a child process: the driver stays idle (no compute thread pools left
        # spinning here while the measured jobs run)
        subprocess.run([sys.executable, "-m", "hpcml.data", "synth", data, "--rows",
                        str(args.rows), "--features", str(MLP[0]), "--classes", str(MLP[2]),
                        "--shards", "4", "--seed", "0"], check=True, env=env,
                       capture_output=True)
        for p in [int(r) for r in args.ranks.split(",")]:
            cmd = ["mpiexec", "-n", str(p), sys.executable, "-m", "hpcml.bench", "train",
                   "--worker", "--data", data, "--batch", str(args.batch), "--epochs",
                   str(args.epochs), "--algorithm", args.algorithm, "--rounds",
                   str(args.rounds)]
            if args.no_torch:
                cmd.append("--no-torch")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            if out.returncode:
                sys.stderr.write(out.stderr)
                raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode})")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if r["torch_ddp_samples_per_s"]:
                r["hpcml_vs_torch"] = r["hpcml_samples_per_s"] / r["torch_ddp_samples_per_s"]
            results.append(r)
            print(f"{p} rank(s): hpcml {r['hpcml_samples_per_s']:,.0f} samples/s, torch DDP "
                  f"{r['torch_ddp_samples_per_s'] or float('nan'):,.0f}"
                  + (f" ({r['hpcml_vs_torch']:.2f}x)" if "hpcml_vs_torch" in r else ""),
                  flush=True)
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    base = os.path.join(args.out, "train")
    meta = {"benchmark": "train", "mlp": MLP, "global_batch": args.batch, "rows": args.rows,
            "epochs": args.epochs, "algorithm": args.algorithm, "dtype": "float32",
            "threads_per_rank": 1, "cores": os.cpu_count()}
    try:
        import torch
        meta["torch"] = torch.__version__
    except ImportError:
        pass
    atomic_write_json(base + ".json", {**meta, "results": results})
    if not args.no_plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        ps = [r["ranks"] for r in results]
        ax.plot(ps, [r["hpcml_samples_per_s"] for r in results], "o-", label="hpcml")
        if all(r["torch_ddp_samples_per_s"] for r in results):
            ax.plot(ps, [r["torch_ddp_samples_per_s"] for r in results], "s--",
                    label="PyTorch DDP (gloo)")
        ax.set_xlabel("ranks")
        ax.set_xticks(ps)
        ax.set_ylabel("training samples/s (slowest rank)")
        ax.set_title(f"MLP 784-512-256-10, global batch {args.batch}, float32")
        ax.legend()
        fig.tight_layout()
        atomic_savefig(fig, base + ".png", dpi=110)
        plt.close(fig)
    print(f"# wrote {base}.json")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--rows", type=int, default=51200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3,
                    help="hpcml and torch runs, alternating; the median of their last epochs")
    ap.add_argument("--algorithm", default="auto")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default="results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        from hpcml.comm import entry_point
        return entry_point(worker)(args)
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
