"""All-reduce benchmark: hpcml's ring/tree/auto against the MPI library's Allreduce.

Conventions of the OSU micro-benchmarks and nccl-tests: a size sweep, warm-up excluded,
Barrier then MPI.Wtime around each call, the max over ranks per iteration, the median over
iterations; algbw = bytes / time, busbw = algbw * 2(p-1)/p. The algorithms run interleaved
(rotating order) in every iteration so slow drifts of a shared machine hit all alike. Each
call starts from the same input (restored untimed); the validation column compares every
algorithm's output, bit for bit, with MPI's out-of-place Allreduce of that input (the data
are small integers, so float sums are exact in any order) on every rank.

    mpiexec -n 4 python -m hpcml.bench allreduce [--sizes 8:64M] [--out results]
"""
import argparse
import json
import sys

import numpy as np

from hpcml import comm as hc
from hpcml.atomic import atomic_write_json, atomic_savefig
from hpcml.comm.model import allreduce_choices, choose_allreduce, ALLREDUCE_ALGORITHMS
from hpcml.comm.timing import time_interleaved
from .common import parse_sizes, environment, human


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench allreduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8:64M", help="bytes: lo:hi (powers of 2) or a,b,c")
    ap.add_argument("--algorithms", default="mpi,auto,ring,tree,rhd",
                    help="comma-separated; mpi is always included as the anchor")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "int32", "int64"])
    ap.add_argument("--op", default="sum", choices=["sum", "max", "min", "prod"])
    ap.add_argument("--budget", type=float, default=3.0,
                    help="target seconds of timed calls per size (all algorithms)")
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--max-iters", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-calibrate", action="store_true",
                    help="use the default cost model instead of measuring it first")
    ap.add_argument("--out", default="results", help="folder for JSON and PNG (rank 0)")
    ap.add_argument("--no-plot", action="store_true")
    return ap


def _source(n, dtype, rank):
    return ((np.arange(n) % 13) + rank + 1).astype(dtype)


def bench_size(comm, nbytes, algorithms, args):
    p, rank = comm.Get_size(), comm.Get_rank()
    dtype = np.dtype(args.dtype)
    n = nbytes // dtype.itemsize
    src = _source(n, dtype, rank)
    buf = src.copy()
    calls = {a: (lambda a=a: hc.allreduce(buf, args.op, comm, a)) for a in algorithms}
    prepare = lambda: np.copyto(buf, src)  # noqa: E731
    warm = time_interleaved(comm, calls, args.warmup, prepare)
    per_iter = sum(float(np.median(t)) for t in warm.values())
    iters = int(min(args.max_iters, max(args.min_iters, args.budget / max(per_iter, 1e-9))))
    iters = hc.reduce_value(iters, "min", comm)  # every rank loops the same count
    times = time_interleaved(comm, calls, iters, prepare)
    expected = hc.reduce_array(src, args.op, comm)  # MPI's own Allreduce
    valid = {}
    for a in algorithms:
        np.copyto(buf, src)
        hc.allreduce(buf, args.op, comm, a)
        valid[a] = bool(hc.reduce_value(int(np.array_equal(buf, expected)), "min", comm))
    chosen = choose_allreduce(hc.model_for(comm), nbytes, p,
                              max(1, hc.config.segment_bytes // dtype.itemsize) * dtype.itemsize)
    med = {a: float(np.median(times[a])) for a in algorithms}
    records = []
    for a in algorithms:
        algbw = nbytes / med[a] / 1e9 if med[a] > 0 else 0.0
        records.append({
            "algorithm": a, "bytes": nbytes, "ranks": p, "dtype": dtype.name,
            "op": args.op, "iterations": iters, "median_s": med[a],
            "min_s": float(times[a].min()),
            "algbw_GBps": algbw, "busbw_GBps": algbw * 2 * (p - 1) / p,
            "ratio_vs_mpi": med["mpi"] / med[a], "latency_vs_mpi": med[a] / med["mpi"],
            "valid": valid[a], **({"chosen": chosen} if a == "auto" else {}),
        })
    return records


def summarize(records, p):
    """The acceptance checks of the issue, as figures (reported, not asserted)."""
    auto = {r["bytes"]: r for r in records if r["algorithm"] == "auto"}
    big = [r["ratio_vs_mpi"] for b, r in auto.items() if b >= 1 << 20]
    small = [r["latency_vs_mpi"] for b, r in auto.items() if b <= 4096]
    own = {}  # size -> (time, algorithm) of the fastest of hpcml's own algorithms
    for r in records:
        if r["algorithm"] in ALLREDUCE_ALGORITHMS:
            best = own.get(r["bytes"])
            if best is None or r["median_s"] < best[0]:
                own[r["bytes"]] = (r["median_s"], r["algorithm"])
    measured = []
    for b in sorted(own):
        if not measured or measured[-1][1] != own[b][1]:
            measured.append((b, own[b][1]))
    auto_vs_best = [own[b][0] / r["median_s"] for b, r in auto.items() if b in own]
    return {
        "auto_busbw_ratio_min_ge_1MiB": min(big) if big else None,
        "auto_latency_ratio_max_le_4KiB": max(small) if small else None,
        "all_valid": all(r["valid"] for r in records),
        "measured_fastest_own_from_bytes": measured,
        "auto_vs_fastest_own_min": min(auto_vs_best) if auto_vs_best else None,
    }


def print_table(records, algorithms, out=sys.stdout):
    by = {(r["algorithm"], r["bytes"]): r for r in records}
    sizes = sorted({r["bytes"] for r in records})
    head = f"{'size':>9} " + " ".join(f"{a + ' us':>10} {a + ' GB/s':>10}" for a in algorithms)
    # ratio_vs_mpi: MPI's time / auto's time, so > 1 means auto is faster
    print(head + f" {'auto speedup vs mpi':>19} {'chosen':>6} {'valid':>5}", file=out)
    for b in sizes:
        row = f"{human(b):>9} "
        row += " ".join(f"{by[(a, b)]['median_s'] * 1e6:10.1f} {by[(a, b)]['busbw_GBps']:10.3f}"
                        for a in algorithms)
        auto = by.get(("auto", b))
        ok = all(by[(a, b)]["valid"] for a in algorithms)
        row += (f" {auto['ratio_vs_mpi']:19.2f} {auto['chosen']:>6}" if auto else " " * 27)
        print(row + f" {'yes' if ok else 'NO':>5}", file=out)


def plot(records, algorithms, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for a in algorithms:
        rs = sorted((r for r in records if r["algorithm"] == a), key=lambda r: r["bytes"])
        x = [r["bytes"] for r in rs]
        ax1.plot(x, [r["busbw_GBps"] for r in rs], marker="o", ms=3, label=a)
        ax2.plot(x, [r["median_s"] * 1e6 for r in rs], marker="o", ms=3, label=a)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message size (bytes)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax1.set_ylabel("bus bandwidth (GB/s)")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency (us, median of max over ranks)")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


@hc.entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    comm = hc.world()
    p, rank = comm.Get_size(), comm.Get_rank()
    algorithms = ["mpi"] + [a for a in args.algorithms.split(",") if a and a != "mpi"]
    for a in algorithms:
        if a not in hc.ALGORITHMS:
            raise SystemExit(f"unknown algorithm {a!r}; choose from {', '.join(hc.ALGORITHMS)}")
    sizes = parse_sizes(args.sizes)
    itemsize = np.dtype(args.dtype).itemsize
    sizes = [s for s in sizes if s % itemsize == 0]
    model = hc.model_for(comm) if args.no_calibrate else hc.calibrate(comm)
    seg_bytes = hc.config.segment_bytes
    predicted = allreduce_choices(model, p, seg_bytes)
    if rank == 0:
        print(f"# hpcml allreduce benchmark: {p} ranks, {args.dtype} {args.op}, "
              f"{hc.library_version()}")
        print(f"# cost model ({'default' if args.no_calibrate else 'calibrated'}): "
              f"alpha={model.alpha * 1e6:.2f} us, beta={1e-9 / model.beta:.2f} GB/s, "
              f"gamma={1e-9 / model.gamma:.2f} GB/s; auto picks "
              + ", ".join(f"{a} from {human(b)}" for b, a in predicted))
        sys.stdout.flush()
    records = []
    for nbytes in sizes:
        records.extend(bench_size(comm, nbytes, algorithms, args))
    summary = summarize(records, p)
    summary["predicted_choice_from_bytes"] = predicted
    env = environment(comm)  # collective
    if rank == 0:
        print_table(records, algorithms)
        print("# " + json.dumps(summary))
        result = {"benchmark": "allreduce", "environment": env,
                  "config": vars(args), "model": json.loads(model.to_json()),
                  "segment_bytes": seg_bytes, "summary": summary, "records": records}
        base = f"{args.out}/allreduce-p{p}"
        atomic_write_json(base + ".json", result)
        if not args.no_plot:
            plot(records, algorithms, base + ".png",
                 f"all-reduce, {p} ranks, {args.dtype} {args.op} "
                 f"(median of max over ranks; mpi = {env['mpi_library']})")
        print(f"# wrote {base}.json" + ("" if args.no_plot else f" and {base}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
