"""Pipeline parallelism: measured bubble against the replay's prediction and the closed form,
activation bytes per rank, samples/s, and torch.distributed.pipelining on the same work.

    python -m hpcml.bench pipeline [--stages 2,4] [--micro 1,2,4,8,16] [--out results]
    mpiexec -n S python -m hpcml.bench pipeline --worker --stages S ...   # one S (the driver runs it)

Model: an MLP 256 -> 8 x 512 -> 10 (float32, ReLU; 9 Linear layers, split by parameters
into S stages), global batch 512 rows cut into M micro-batches, SGD. For each schedule
(gpipe, 1f1b, zb-h1, interleaved with 2 virtual stages where the layers allow) and M, each
rank times its own compute actions (F, B, W) over `--steps` steps after a warm-up step:

* measured bubble = 1 - sum of the ranks' compute time / (S x the step's wall time);
* predicted bubble = the replay of the same schedule with each rank's measured mean
  duration per action kind, and a per-message latency measured by a ping-pong of one
  micro-batch's activations between ranks 0 and 1 in the same run;
* theory = the closed form at equal stages ((p-1)/(m+p-1), ...).

Peak activation bytes per rank are what the runner keeps for backward (GPipe, 1F1B, 1F1B
with recompute). At S = 2 the same run then times torch.distributed.pipelining's
ScheduleGPipe and Schedule1F1B (gloo, CPU, one thread per rank) on the same MLP, batch and
M, and reports samples/s of both. Oversubscribed runs (S > cores) are marked.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

WIDTH, DEPTH, IN, OUT, BATCH = 512, 8, 256, 10, 512


def _model(dtype=np.float32):
    from hpcml import nn
    return nn.mlp(IN, [WIDTH] * DEPTH, OUT, dtype=dtype, seed=0)


def _data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((BATCH, IN)).astype(np.float32),
            rng.integers(0, OUT, BATCH))


def _action_times(events):
    """[(kind, seconds)] per action of a step from the runner's trace events: the action's
    whole time (its compute, the loss, copies, posting its send) less the receive waits
    inside it: what the rank spends not waiting."""
    waits = [(a, b) for n, a, b in events if n == "pipeline wait"]
    out = []
    for n, a, b in events:
        if n != "pipeline wait":
            inside = sum(e - s for s, e in waits if s >= a and e <= b)
            out.append((n[0], (b - a) - inside))
    return out


def _hpcml_case(comm, name, M, v, steps, recompute=False):
    from hpcml import optim
    from hpcml import comm as hc
    from hpcml.parallel.pipe import PipelineRunner, split
    from hpcml.parallel.pipeline import make, replay, theory_bubble
    P, rank = comm.Get_size(), comm.Get_rank()
    model = _model()
    sched = make(name, P, M, v)
    runner = PipelineRunner(model, split(model, P * v), sched, comm, recompute=recompute)
    latency = _one_way(comm, BATCH // M * WIDTH)
    opts = runner.optimizers(lambda m: optim.SGD(m, 0.01, momentum=0.9))
    x, y = _data()
    from hpcml.parallel.trace import Tracer
    timer = runner.tracer = Tracer(comm, keep_events=True)  # a span per action and wait
    walls, sched_walls, busy, kinds = [], [], 0.0, {}
    for i in range(steps + 1):
        timer.events.clear()
        comm.Barrier()
        t0 = time.perf_counter()
        runner.step(x, y)
        t1 = time.perf_counter()  # the schedule's end on this rank (before the optimizer)
        for o in opts.values():
            o.step()
        comm.Barrier()
        walls.append(time.perf_counter() - t0)
        sched_walls.append(t1 - t0)
        if i:  # every timed step's spans: busy time, and duration per kind (recompute:
            # forward calls inside B are counted as part of B's time, as the replay
            # charges them); the first step is a warm-up
            for k, d in _action_times(timer.events):
                busy += d
                kinds.setdefault(k, []).append(d)
    mean = {k: float(np.mean(v)) for k, v in kinds.items()}
    per_rank = hc.gather_objects({"busy": busy, "mean": mean, "peak": runner.peak_bytes,
                                  "sched": sched_walls[1:]},
                                 root=None, comm=comm)
    wall = float(np.median(walls[1:]))
    if rank != 0:
        return None
    costs = {r: d["mean"] for r, d in enumerate(per_rank)}

    def cost(r, a):  # (a recomputing stage's B action holds its forward again)
        return costs[r].get(a.kind, 0.0)
    predicted = replay(sched, cost, latency=latency).bubble
    last_busy = sum(d["busy"] for d in per_rank)
    return {"schedule": name, "virtual": v, "stages": P * v, "ranks": P, "micro_batches": M,
            "recompute": recompute, "step_s": wall, "samples_per_s": BATCH / wall,
            # the schedule's time: from the barrier to the last rank's end of its actions,
            # per step (the optimizer step after it is no pipeline bubble)
            "measured_bubble": max(0.0, 1 - last_busy / (P * float(np.sum(np.max(
                [d["sched"] for d in per_rank], axis=0))))),
            "predicted_bubble": predicted, "theory_bubble": theory_bubble(name, P, M, v),
            "message_s": latency,
            "peak_activation_bytes": [d["peak"] for d in per_rank]}


def _one_way(comm, n, reps=20):
    """Seconds for one message of n float32 between ranks 0 and 1 (half a ping-pong's
    median), the replay's per-message latency; the same on every rank."""
    from hpcml import comm as hc
    P, rank = comm.Get_size(), comm.Get_rank()
    t = np.zeros(1)
    if P > 1 and rank < 2:
        buf, times = np.zeros(n, np.float32), []
        for _ in range(reps):
            t0 = time.perf_counter()
            if rank == 0:
                hc.send(buf, 1, 91, comm)
                hc.recv(buf, 1, 92, comm)
            else:
                hc.recv(buf, 0, 91, comm)
                hc.send(buf, 0, 92, comm)
            times.append(time.perf_counter() - t0)
        t[0] = np.median(times) / 2
    if P > 1:
        hc.broadcast(t, root=0, comm=comm)
    return float(t[0])


def _torch_case(comm, name, M, steps):
    """torch.distributed.pipelining on the same MLP split into P stages by layers."""
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
    torch.set_num_threads(1)
    P, rank = comm.Get_size(), comm.Get_rank()
    torch.manual_seed(0)
    dims = [IN] + [WIDTH] * DEPTH + [OUT]
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers.append(torch.nn.Linear(a, b))
        if b != OUT:
            layers.append(torch.nn.ReLU())
    per = -(-len(layers) // P)
    # cut after a ReLU so that every stage ends in a full layer
    cuts = [0]
    for s in range(1, P):
        c = min(len(layers) - 1, s * per)
        while c < len(layers) and not isinstance(layers[c - 1], torch.nn.ReLU):
            c += 1
        cuts.append(c)
    cuts.append(len(layers))
    sub = torch.nn.Sequential(*layers[cuts[rank]:cuts[rank + 1]])
    stage = PipelineStage(sub, rank, P, torch.device("cpu"))
    loss = torch.nn.CrossEntropyLoss()
    cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[name]
    sched = cls(stage, M, loss_fn=loss)
    opt = torch.optim.SGD(sub.parameters(), lr=0.01, momentum=0.9)
    x, y = _data()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    walls = []
    for _ in range(steps + 1):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        if rank == 0:
            sched.step(xt)
        elif rank == P - 1:
            sched.step(target=yt, losses=[])
        else:
            sched.step()
        opt.step()
        dist.barrier()
        walls.append(time.perf_counter() - t0)
    wall = float(np.median(walls[1:]))
    return {"schedule": name, "stages": P, "micro_batches": M, "step_s": wall,
            "samples_per_s": BATCH / wall}


def worker(args):
    from hpcml import comm as hc
    from hpcml.kernels import threads
    comm = hc.world()
    P, rank = comm.Get_size(), comm.Get_rank()
    from hpcml.comm.guard import local_ranks
    threads.configure(local_ranks(comm))  # cores / ranks on this node each (1 here at S=2)
    out = []
    micro = [int(m) for m in args.micro.split(",")]
    for name, v in (("gpipe", 1), ("1f1b", 1), ("zb-h1", 1), ("interleaved", 2)):
        if P * v > DEPTH + 1:
            continue
        for M in micro:
            r = _hpcml_case(comm, name, M, v, args.steps)
            if rank == 0:
                out.append(r)
                print(f"S={P} {name:11s} v={v} M={M:2d}: {r['samples_per_s']:8,.0f} samples/s"
                      f"  bubble measured {r['measured_bubble']:.3f} predicted "
                      f"{r['predicted_bubble']:.3f} theory {r['theory_bubble']:.3f}",
                      flush=True)
    for M in (8,):
        r = _hpcml_case(comm, "1f1b", M, 1, args.steps, recompute=True)
        if rank == 0:
            out.append(r)
    torch_rows = []
    if args.torch and P == 2:
        from hpcml.bench.train import _torch_group
        _torch_group(comm)
        for name in ("gpipe", "1f1b"):
            for M in [m for m in micro if m >= P]:  # torch's schedules need M >= stages
                # the hpcml figure of the same schedule, M and S, measured right here, in
                # rounds that alternate which side goes first (this machine drifts by
                # 10-20% within minutes): the ratio is the median of the rounds'
                rounds = []
                for k in range(args.rounds):
                    first, second = (_torch_case, _hpcml_case) if k % 2 == 0 else \
                        (_hpcml_case, _torch_case)
                    a = first(comm, name, M, 1, args.steps) if first is _hpcml_case else \
                        first(comm, name, M, args.steps)
                    b = second(comm, name, M, 1, args.steps) if second is _hpcml_case else \
                        second(comm, name, M, args.steps)
                    t, h = (a, b) if first is _torch_case else (b, a)
                    if rank == 0:
                        rounds.append((h["samples_per_s"], t["samples_per_s"]))
                if rank == 0:
                    ratios = [h / t for h, t in rounds]
                    t = {"schedule": name, "stages": P, "micro_batches": M,
                         "samples_per_s": float(np.median([t for _, t in rounds])),
                         "hpcml_samples_per_s": float(np.median([h for h, _ in rounds])),
                         "hpcml_vs_torch": float(np.median(ratios)),
                         "rounds_hpcml_vs_torch": ratios}
                    torch_rows.append(t)
                    print(f"S=2 {name} M={M}: hpcml {t['hpcml_samples_per_s']:,.0f} vs torch "
                          f"pipelining {t['samples_per_s']:,.0f} samples/s (median of "
                          f"{len(ratios)} rounds {t['hpcml_vs_torch']:.2f}x; rounds "
                          + ", ".join(f"{r:.2f}" for r in ratios) + ")", flush=True)
    if rank == 0:
        with open(args.worker_out, "w") as f:
            json.dump({"ranks": P, "oversubscribed": P > (os.cpu_count() or 1),
                       "records": out, "torch": torch_rows}, f)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="2,4", help="pipeline ranks to measure")
    ap.add_argument("--micro", default="1,2,4,8,16", help="micro-batch counts")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per case")
    ap.add_argument("--torch", type=int, default=1, help="also time torch pipelining (1/0)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="hpcml/torch rounds per case (alternating which goes first)")
    ap.add_argument("--out", default="results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    import shutil
    import tempfile
    results = []
    for S in [int(s) for s in args.stages.split(",")]:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(S), sys.executable, "-m",
               "hpcml.bench", "pipeline", "--worker", "--micro", args.micro, "--steps",
               str(args.steps), "--torch", str(args.torch), "--rounds", str(args.rounds),
               "--worker-out", path]
        env = dict(os.environ, HPCML_TIMEOUT=os.environ.get("HPCML_TIMEOUT", "600"))
        r = subprocess.run(cmd, env=env, timeout=3600)
        if r.returncode:
            print(f"error: the S={S} run failed (exit {r.returncode})", file=sys.stderr)
            return 1
        with open(path) as f:
            results.append(json.load(f))
        os.unlink(path)
    os.makedirs(args.out, exist_ok=True)
    from hpcml.atomic import atomic_write_json
    atomic_write_json(os.path.join(args.out, "pipeline.json"),
                      {"benchmark": "pipeline", "model": f"MLP {IN}-{DEPTH}x{WIDTH}-{OUT} "
                       f"float32, batch {BATCH}", "runs": results})
    _plot(results, os.path.join(args.out, "pipeline.png"))
    print(f"# wrote {args.out}/pipeline.json and pipeline.png")
    return 0


def _plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpcml.atomic import atomic_savefig
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.3), squeeze=False)
    for ax, run in zip(axes[0], results):
        for name, color in (("gpipe", "tab:blue"), ("1f1b", "tab:orange"),
                            ("zb-h1", "tab:green"), ("interleaved", "tab:red")):
            rows = [r for r in run["records"] if r["schedule"] == name and not r["recompute"]]
            if not rows:
                continue
            m = [r["micro_batches"] for r in rows]
            ax.plot(m, [r["measured_bubble"] for r in rows], "o-", color=color,
                    label=f"{name} measured")
            ax.plot(m, [r["predicted_bubble"] for r in rows], "x--", color=color, alpha=0.7,
                    label=f"{name} replay")
            if name in ("1f1b", "zb-h1"):  # gpipe's closed form is 1f1b's
                ax.plot(m, [r["theory_bubble"] for r in rows], ":", color=color, alpha=0.6,
                        label=f"{'gpipe, 1f1b' if name == '1f1b' else name} closed form")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("micro-batches M")
        ax.set_ylabel("bubble (idle share of the step)")
        over = " (oversubscribed)" if run["oversubscribed"] else ""
        ax.set_title(f"{run['ranks']} pipeline ranks{over}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
