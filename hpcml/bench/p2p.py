"""Per-call overhead of hpcml.comm against mpi4py's own calls, in the same run.

    mpiexec -n 2 python -m hpcml.bench p2p --out benchmarks/results

* ping-pong between ranks 0 and 1 (OSU latency: half the round trip), message sizes 8 B to
  64 KiB: `hc.send`/`hc.recv` (argument checks, HPCML_TIMEOUT bound) against the
  communicator's own `Send`/`Recv`;
* an 8-byte all-reduce on every rank: `hc.allreduce` (in place, algorithm auto) against
  the communicator's `Allreduce` (MPI's own, out of place).

Warm-up excluded, Barrier before each timed block, median over blocks of `--iters` calls
(mpi4py and hpcml alternating block by block),
max over ranks. Writes p2p-pN.json and p2p-pN.png (rank 0).
"""
import argparse
import os

import numpy as np

from hpcml import comm as hc
from hpcml.atomic import atomic_savefig, atomic_write_json
from hpcml.bench.common import environment, parse_sizes


def _pingpong(comm, n, iters, ours):
    rank = comm.Get_rank()
    buf = np.zeros(n, np.uint8)
    peer = 1 - rank
    if rank > 1:
        return None
    send = (lambda: hc.send(buf, peer, 5, comm)) if ours else (lambda: comm.Send(buf, peer, 5))
    recv = (lambda: hc.recv(buf, peer, 5, comm)) if ours else (lambda: comm.Recv(buf, peer, 5))
    t = hc.wtime()
    for _ in range(iters):
        if rank == 0:
            send()
            recv()
        else:
            recv()
            send()
    return (hc.wtime() - t) / iters / 2


def _allreduce(comm, iters, ours):
    buf, out = np.zeros(1, np.float64), np.empty(1, np.float64)  # zeros: no overflow
    t = hc.wtime()
    for _ in range(iters):
        if ours:
            hc.allreduce(buf, "sum", comm)
        else:
            comm.Allreduce(buf, out)
    return (hc.wtime() - t) / iters


def _medians(comm, f, blocks):
    """{False: mpi4py, True: hpcml}: median over blocks of the slowest rank's time of
    f(ours); the two alternate block by block (first one, then the other), so a slow
    phase of a shared machine hits both alike."""
    times = {False: [], True: []}
    for b in range(blocks):
        for ours in ((False, True) if b % 2 == 0 else (True, False)):
            hc.barrier(comm)
            times[ours].append(hc.reduce_value(f(ours), "max", comm))
    return {ours: float(np.median(t)) for ours, t in times.items()}


@hc.entry_point
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8:64K", help="ping-pong sizes (8:64K or 8,1K,...)")
    ap.add_argument("--iters", type=int, default=2000, help="calls per timed block")
    ap.add_argument("--blocks", type=int, default=21, help="timed blocks (median)")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = ap.parse_args(argv)
    comm = hc.world()
    p = comm.Get_size()
    if p < 2:
        raise SystemExit("the p2p benchmark needs 2 or more ranks (mpiexec -n 2)")
    records = []
    for n in parse_sizes(args.sizes):
        for ours in (False, True):  # warm-up, both
            _pingpong(comm, n, 50, ours)
        med = _medians(comm, lambda ours: _pingpong(comm, n, args.iters, ours), args.blocks)
        records.append({"kind": "pingpong", "bytes": n, "mpi4py_us": med[False] * 1e6,
                        "hpcml_us": med[True] * 1e6, "ratio": med[True] / med[False]})
    for ours in (False, True):
        _allreduce(comm, 50, ours)
    med = _medians(comm, lambda ours: _allreduce(comm, args.iters, ours), args.blocks)
    records.append({"kind": "allreduce", "bytes": 8, "mpi4py_us": med[False] * 1e6,
                    "hpcml_us": med[True] * 1e6, "ratio": med[True] / med[False]})
    env = environment(comm)  # collective
    if comm.Get_rank() == 0:
        os.makedirs(args.out, exist_ok=True)
        result = {"benchmark": "p2p", "environment": env, "iters": args.iters,
                  "blocks": args.blocks, "records": records}
        atomic_write_json(os.path.join(args.out, f"p2p-p{p}.json"), result)
        _plot(records, os.path.join(args.out, f"p2p-p{p}.png"))
        for r in records:
            print(f"{r['kind']:9s} {r['bytes']:7d} B  mpi4py {r['mpi4py_us']:7.2f} us  "
                  f"hpcml {r['hpcml_us']:7.2f} us  hpcml time / mpi4py time {r['ratio']:.2f}")
    return 0


def _plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pp = [r for r in records if r["kind"] == "pingpong"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["bytes"] for r in pp], [r["mpi4py_us"] for r in pp], "o-", label="mpi4py Send/Recv")
    ax.plot([r["bytes"] for r in pp], [r["hpcml_us"] for r in pp], "s-",
            label="hpcml.comm send/recv")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message bytes")
    ax.set_ylabel("one-way latency (us)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
