"""I/O benchmark: the per-rank loader against a plain sequential h5py read of the same rows.

    mpiexec -n 2 python -m hpcml.bench io [--rows 2000000 --features 64] [--out results]

Per rank, in the same run, on a synthetic dataset written first (or --data):
* plain: h5py reads this rank's share of rows in file order, `batch-size` rows per slice,
  each shard's datasets looked up once, nothing else;
* loader: ShardedDataset.loader() delivers the same rows as batches (shuffle off, then on);
* overlap: the loader with a simulated compute step per batch (time.sleep, which releases
  the GIL as NumPy/Numba kernels do) as long as that batch's read; the fraction of I/O time
  hidden is 1 - (epoch time - compute time) / loader time without compute, where compute
  time is the sum of the compute steps as measured (a sleep overshoots its request).
MB/s counts the x and y bytes delivered. Each reader runs --repeats times, interleaved;
each rank takes the median of its times, and each figure is the max over ranks of those
(the slowest rank sets the pace; the hidden fraction is the min over ranks); page-cache effects are the same for all readers,
which run after one untimed warm-up pass. Writes io-p<ranks>.json and .png.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import h5py
import numpy as np

from hpcml.atomic import atomic_write_json, atomic_savefig
from hpcml import comm as hc
from hpcml.comm import entry_point
from hpcml.data import ShardedDataset, synth


def plain_read(ds, loader, batch):
    """Read this rank's rows (the unshuffled loader's share: one contiguous run of rows per
    shard) with bare h5py, as a user would: each shard opened once, its datasets looked up
    once, then one slice of `batch` rows after another."""
    runs = {}
    for _, s, start, stop in loader.share(0):
        a, b = runs.get(s, (start, stop))
        runs[s] = (min(a, start), max(b, stop))
    nbytes = 0
    t = time.perf_counter()
    for s, (a, b) in sorted(runs.items()):
        with h5py.File(ds.files[s], "r") as f:
            dx, dy = f["x"], f["y"]
            for r in range(a, b, batch):
                x, y = dx[r:min(b, r + batch)], dy[r:min(b, r + batch)]
                nbytes += x.nbytes + y.nbytes
    return time.perf_counter() - t, nbytes


def loader_pass(loader, compute=0.0):
    """(epoch seconds, bytes, batches, seconds spent in the compute steps as measured)."""
    nbytes, batches, computed = 0, 0, 0.0
    t = time.perf_counter()
    for x, y in loader:
        nbytes += x.nbytes + y.nbytes
        batches += 1
        if compute:
            c = time.perf_counter()
            time.sleep(compute)
            computed += time.perf_counter() - c
    return time.perf_counter() - t, nbytes, batches, computed


@entry_point
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench io", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="an existing dataset (else one is made)")
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--agree-errors", action="store_true",
                    help="loaders with agree_errors=True (per-batch error agreement)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="passes of each reader; each rank's median is reported")
    ap.add_argument("--out", default="results")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    comm = hc.world()
    rank, p = comm.Get_rank(), comm.Get_size()
    tmp = None
    path = args.data
    if path is None:
        tmp = comm.bcast(tempfile.mkdtemp(prefix="hpcml-io-") if rank == 0 else None)
        path = os.path.join(tmp, "data")
        synth(path, args.rows, args.features, classes=10, shards=args.shards, seed=0,
              comm=comm)
    try:
        ds = ShardedDataset(path, comm)
        agree = args.agree_errors
        plain_ld = ds.loader(args.batch_size, shuffle=False, agree_errors=agree)
        loader_pass(plain_ld)  # warm-up: the same page cache for every reader below
        _, _, n_batches, _ = loader_pass(plain_ld)
        runs = []  # per repeat: plain, loader, shuffled, loader+compute, compute, hidden
        for rep in range(args.repeats):  # interleaved, so drift hits every reader alike
            comm.Barrier()
            t_plain, b_plain = plain_read(ds, plain_ld, args.batch_size)
            comm.Barrier()
            t_seq = loader_pass(ds.loader(args.batch_size, shuffle=False,
                                          agree_errors=agree))[0]
            comm.Barrier()
            t_shuf = loader_pass(ds.loader(args.batch_size, shuffle=True, seed=rep,
                                           agree_errors=agree))[0]
            comm.Barrier()
            per_batch = t_seq / max(n_batches, 1)
            # a sleep overshoots its request (timer slack, wake-up): ask for less, so
            # that the compute step as measured is about as long as the batch's read
            trial = time.perf_counter()
            for _ in range(20):
                time.sleep(per_batch)
            overshoot = (time.perf_counter() - trial) / 20 - per_batch
            request = max(per_batch - overshoot, per_batch / 10)
            t_over, _, _, compute = loader_pass(
                ds.loader(args.batch_size, shuffle=False, agree_errors=agree), request)
            hidden = 1 - max(t_over - compute, 0.0) / t_seq
            runs.append([t_plain, t_seq, t_shuf, t_over, compute, hidden])
        runs = np.array(runs)
        t_plain, t_seq, t_shuf, t_over, compute, hidden = np.median(runs, axis=0)
        mine = np.array([t_plain, t_seq, t_shuf, t_over, compute, hidden])
        slowest = hc.reduce_array(mine, "max", comm)
        worst_hidden = hc.reduce_value(hidden, "min", comm)
        if rank == 0:
            mb = b_plain / 1e6  # every rank delivers about the same bytes
            res = {
                "ranks": p, "rows": ds.rows, "features": ds.features, "batch_size":
                    args.batch_size, "bytes_per_rank": int(b_plain),
                "plain_h5py_MBps_per_rank": mb / slowest[0],
                "loader_MBps_per_rank": mb / slowest[1],
                "loader_shuffled_MBps_per_rank": mb / slowest[2],
                "aggregate_loader_MBps": p * mb / slowest[1],
                "loader_vs_plain": slowest[0] / slowest[1],
                "loader_shuffled_vs_plain": slowest[0] / slowest[2],
                "loader_s": slowest[1], "epoch_with_compute_s": slowest[3],
                "compute_s": slowest[4], "compute_vs_loader": slowest[4] / slowest[1],
                "io_hidden_fraction_worst_rank": worst_hidden,
            }
            for k, v in res.items():
                print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
            base = f"{args.out}/io-p{p}"
            atomic_write_json(base + ".json", {"benchmark": "io", "config": vars(args),
                                               "result": res})
            if not args.no_plot:
                import matplotlib
                matplotlib.use("Agg")
                import matplotlib.pyplot as plt
                fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
                names = ["plain h5py", "loader", "loader shuffled"]
                a1.bar(names, [res["plain_h5py_MBps_per_rank"], res["loader_MBps_per_rank"],
                               res["loader_shuffled_MBps_per_rank"]])
                a1.set_ylabel("MB/s per rank (slowest rank)")
                a1.set_title(f"read throughput, {p} rank(s)")
                a2.bar(["loader alone", "compute alone", "loader + compute"],
                       [slowest[1], slowest[4], slowest[3]])
                a2.set_ylabel("seconds per epoch")
                a2.set_title(f"prefetch hides {100 * worst_hidden:.0f}% of I/O")
                fig.tight_layout()
                atomic_savefig(fig, base + ".png", dpi=110)
                plt.close(fig)
            print(f"# wrote {base}.json")
    finally:
        comm.Barrier()
        if tmp and rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
