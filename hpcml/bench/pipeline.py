"""Pipeline parallelism: measured bubble against the replay's prediction and the closed form,
activation bytes per rank, samples/s, and torch.distributed.pipelining on the same work.

    python -m hpcml.bench pipeline [--stages 2,4] [--micro 1,2,4,8,16] [--out results]
    mpiexec -n S python -m hpcml.bench pipeline --worker --stages S ...   # one S (the driver runs it)

Model: an MLP 256 -> 8 x 512 -> 10 (float32, ReLU; 9 Linear layers, split by parameters
into S stages), global batch 512 rows cut into M micro-batches, SGD. For each schedule
(gpipe, 1f1b, zb-h1, interleaved with 2 virtual stages where the layers allow) and M, each
rank times its own compute actions (F, B, W) over `--steps` steps after a warm-up step:

* measured bubble = 1 - sum of the ranks' compute time / (S x the schedule's wall time),
  a rank's compute time being the CPU time of its actions less their receive waits (with
  a core per rank that is their wall time less the waits; on an oversubscribed node the
  time a rank is descheduled is not counted as computing);
* predicted bubble = the replay of the same schedule with each rank's mean CPU time per
  action kind and a per-message latency measured by a ping-pong of one micro-batch's
  activations between ranks 0 and 1 in the same run; on an oversubscribed node (S >
  cores) the replay shares the cores among the ranks (`replay(..., cores=)`: waiting
  ranks spin in MPI's wait, so each rank holds cores / S of a core), and the record also
  gives its prediction for a core per rank;
* theory = the closed form at equal stages ((p-1)/(m+p-1), ...).

Peak activation bytes per rank are what the runner keeps for backward (GPipe, 1F1B, 1F1B
with recompute). At S = 2 the same run then times torch.distributed.pipelining's
ScheduleGPipe and Schedule1F1B (gloo, CPU, one thread per rank) on the same MLP, stages,
batch and M, in rounds that alternate which side runs first, and reports samples/s of
both and the median of the rounds' ratios. Oversubscribed runs (S > cores) are marked.
"""
import argparse
import contextlib
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


class _CpuTracer:
    """The runner's tracer interface, keeping per span its wall and process CPU times."""

    def __init__(self):
        self.events, self.seconds = [], {}

    @contextlib.contextmanager
    def span(self, name, label=None):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.events.append((name, t0, time.perf_counter(), time.process_time() - c0))


def _action_times(events):
    """[(kind, seconds)] per action of a step from the runner's spans: the CPU time the
    action used (its compute, the loss, copies, posting its send) less that of the receive
    waits inside it: what the rank spends computing. With a core per rank this is the
    action's wall time less its waits; with more ranks than cores, time a rank spends
    descheduled is not counted as busy."""
    waits = [(a, b, c) for n, a, b, c in events if n == "pipeline wait"]
    out = []
    for n, a, b, c in events:
        if n != "pipeline wait":
            inside = sum(cw for s, e, cw in waits if s >= a and e <= b)
            out.append((n[len("pipeline ")], c - inside))
    return out


def _timed(comm, runner, opts, x, y, steps):
    """Run steps + 1 steps (the first a warm-up): the median step wall time, each timed
    step's schedule time on this rank (barrier to its last action, before the optimizer),
    the rank's busy seconds and mean seconds per action kind."""
    timer = runner.tracer = _CpuTracer()  # a span per action and wait
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
    return float(np.median(walls[1:])), sched_walls[1:], busy, mean


def _runner(comm, name, M, v, recompute):
    from hpcml import optim
    from hpcml.parallel.pipe import PipelineRunner, split
    from hpcml.parallel.pipeline import make
    P = comm.Get_size()
    model = _model()
    sched = make(name, P, M, v)
    runner = PipelineRunner(model, split(model, P * v), sched, comm, recompute=recompute)
    return sched, runner, runner.optimizers(lambda m: optim.SGD(m, 0.01, momentum=0.9))


def _hpcml_case(comm, name, M, v, steps, recompute=False, cores=None):
    """One schedule at M micro-batches: measured bubble and the replay's, from each rank's
    mean CPU time per action kind in this run (a rank's busy time is its CPU time in
    actions less its receive waits). cores: when the ranks share fewer cores than there
    are ranks, the replay shares them (see pipeline.replay) and the record also gives its
    prediction for a core per rank."""
    from hpcml import comm as hc
    from hpcml.parallel.pipeline import replay, theory_bubble
    P, rank = comm.Get_size(), comm.Get_rank()
    sched, runner, opts = _runner(comm, name, M, v, recompute)
    latency = _one_way(comm, BATCH // M * WIDTH)
    x, y = _data()
    wall, sched_walls, busy, mean = _timed(comm, runner, opts, x, y, steps)
    per_rank = hc.gather_objects({"busy": busy, "mean": mean, "peak": runner.peak_bytes,
                                  "sched": sched_walls}, root=None, comm=comm)
    if rank != 0:
        return None
    costs = [d["mean"] for d in per_rank]

    def cost(r, a):  # (a recomputing stage's B action holds its forward again)
        return costs[r].get(a.kind, 0.0)
    sim = replay(sched, cost, latency=latency, cores=cores)
    rec = {"schedule": name, "virtual": v, "stages": P * v, "ranks": P, "micro_batches": M,
           "recompute": recompute, "step_s": wall, "samples_per_s": BATCH / wall,
           # the schedule's time: from the barrier to the last rank's end of its actions,
           # per step (the optimizer step after it is no pipeline bubble)
           "measured_bubble": max(0.0, 1 - sum(d["busy"] for d in per_rank) / (P * float(
               np.sum(np.max([d["sched"] for d in per_rank], axis=0))))),
           "predicted_bubble": sim.bubble,
           # the schedule's time per step, measured (mean) and replayed
           "schedule_s": float(np.mean(np.max([d["sched"] for d in per_rank], axis=0))),
           "predicted_schedule_s": sim.makespan,
           "busy_s": [d["busy"] / len(d["sched"]) for d in per_rank],
           "predicted_busy_s": list(sim.busy),
           "theory_bubble": theory_bubble(name, P, M, v), "message_s": latency,
           "peak_activation_bytes": [d["peak"] for d in per_rank]}
    if cores:  # what the same costs give with a core per rank (a cluster's node)
        rec["cores"] = cores
        rec["predicted_bubble_core_per_rank"] = replay(sched, cost, latency=latency).bubble
    return rec


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
    """torch.distributed.pipelining on the same MLP split into the same P stages."""
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
    # the same stages as hpcml's (split by parameters): Linear i is layers[2 i], its ReLU
    # layers[2 i + 1]
    from hpcml.parallel.pipe import split
    cuts = [2 * a for a, _ in split(_model(), P)] + [len(layers)]
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
    cores = len(os.sched_getaffinity(0))
    over = P > cores
    out = []
    micro = [int(m) for m in args.micro.split(",")]
    for name, v in (("gpipe", 1), ("1f1b", 1), ("zb-h1", 1), ("interleaved", 2)):
        if P * v > DEPTH + 1:
            continue
        for M in micro:
            r = _hpcml_case(comm, name, M, v, args.steps, cores=cores if over else None)
            if rank == 0:
                out.append(r)
                print(f"S={P} {name:11s} v={v} M={M:2d}: {r['samples_per_s']:8,.0f} samples/s"
                      f"  bubble measured {r['measured_bubble']:.3f} predicted "
                      f"{r['predicted_bubble']:.3f} theory {r['theory_bubble']:.3f}",
                      flush=True)
    for M in (8,):
        r = _hpcml_case(comm, "1f1b", M, 1, args.steps, recompute=True,
                        cores=cores if over else None)
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
            json.dump({"ranks": P, "oversubscribed": over, "cores": cores,
                       "records": out, "torch": torch_rows}, f)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="2,4", help="pipeline ranks to measure")
    ap.add_argument("--micro", default="1,2,4,8,16", help="micro-batch counts")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per case")
    ap.add_argument("--torch", type=int, default=1, help="also time torch pipelining (1/0)")
    ap.add_argument("--rounds", type=int, default=5,
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
    from hpcml.bench.common import save_results
    save_results(args.out, "pipeline", {"benchmark": "pipeline", "model": f"MLP {IN}-{DEPTH}"
                                        f"x{WIDTH}-{OUT} float32, batch {BATCH}",
                                        "runs": results},
                 lambda path: _plot(results, path))
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
            if run["oversubscribed"] and name in ("gpipe", "1f1b"):
                ax.plot(m, [r["predicted_bubble_core_per_rank"] for r in rows], "+:",
                        color=color, alpha=0.5, label=f"{name} replay, a core per rank")
            if name in ("1f1b", "zb-h1"):  # gpipe's closed form is 1f1b's
                ax.plot(m, [r["theory_bubble"] for r in rows], ":", color=color, alpha=0.6,
                        label=f"{'gpipe, 1f1b' if name == '1f1b' else name} closed form")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("micro-batches M")
        ax.set_ylabel("bubble (idle share of the step)")
        over = f" on {run.get('cores')} cores (oversubscribed)" if run["oversubscribed"] \
            else ""
        ax.set_title(f"{run['ranks']} pipeline ranks{over}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
