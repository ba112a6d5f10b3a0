"""ZeRO against data parallelism: training throughput in the same run.

    mpiexec -n 2 python -m hpcml.bench zero --out benchmarks/results

The same training (built-in digits, an MLP of --hidden, --epochs, ring all-reduce) runs
with DataParallel, ZeRO-1 and ZeRO-2, interleaved --repeats times; each run's last-epoch
samples/s (slowest rank) is recorded and the medians compared. Every run must end with the
same parameter bytes (checked: ZeRO is bit-identical to DataParallel), and the largest
rank's gradient-buffer and optimizer-state bytes are recorded. Writes zero-pN.json and zero-pN.png (rank 0).
"""
import argparse
import os

import numpy as np

from hpcml import comm as hc
from hpcml.atomic import atomic_savefig, atomic_write_json
from hpcml.bench.common import environment

STRATEGIES = {"data parallel": 0, "ZeRO-1": 1, "ZeRO-2": 2}


def _run(comm, args, zero):
    from hpcml import train
    cfg = {k: v[0] for k, v in train.SETTINGS.items()}
    cfg.update(data=args.data, test_data="none", hidden=args.hidden, epochs=args.epochs,
               progress=False, algorithm="ring", optimizer=args.optimizer, zero=zero,
               batch_size=args.batch_size)
    hist = []
    summary, _ = train.run(train.validate(cfg), comm, log=lambda *a: None, history=hist)
    memory = {k: hc.reduce_value(summary[k], "max", comm)  # the largest rank's
              for k in ("grad_bytes", "optimizer_state_bytes")}
    return hc.reduce_value(hist[-1]["samples_per_s"], "min", comm), summary["params_sha256"], \
        memory


@hc.entry_point
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--hidden", default="1024,1024")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=os.path.join("benchmarks", "results"))
    ap.add_argument("--suffix", default="", help="added to the file names (zero-pN-SUFFIX)")
    args = ap.parse_args(argv)
    comm = hc.world()
    p = comm.Get_size()
    rates = {name: [] for name in STRATEGIES}
    memory = {}
    digests = set()
    _run(comm, args, 0)  # warm-up: compile, page cache
    for r in range(args.repeats):
        names = list(STRATEGIES)
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotating order
            rate, digest, memory[name] = _run(comm, args, STRATEGIES[name])
            rates[name].append(rate)
            digests.add(digest)
    env = environment(comm)  # collective
    if comm.Get_rank() != 0:
        return 0
    med = {k: float(np.median(v)) for k, v in rates.items()}
    result = {"benchmark": "zero", "environment": env, "settings": vars(args),
              "samples_per_s": rates, "median_samples_per_s": med,
              "ratio_vs_data_parallel": {k: med[k] / med["data parallel"] for k in med},
              "bit_identical": len(digests) == 1,
              "bytes_per_rank": memory}  # gradient buffers and optimizer state, largest rank
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"zero-p{p}" + (f"-{args.suffix}" if args.suffix else ""))
    atomic_write_json(base + ".json", result)
    _plot(rates, base + ".png", p)
    for k in STRATEGIES:
        print(f"{k:14s} median {med[k]:10,.0f} samples/s  "
              f"{result['ratio_vs_data_parallel'][k]:.2f}x data parallel  gradients "
              f"{memory[k]['grad_bytes']:,} B  optimizer state "
              f"{memory[k]['optimizer_state_bytes']:,} B per rank")
    print(f"parameters bit-identical across all runs: {result['bit_identical']}")
    return 0 if result["bit_identical"] else 1


def _plot(rates, path, p):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    names = list(rates)
    ax.boxplot([rates[k] for k in names])
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("samples/s (slowest rank)")
    ax.set_title(f"{p} ranks: ZeRO vs data parallelism")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
