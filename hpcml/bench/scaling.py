"""python -m hpcml.bench scaling: strong and weak scaling of every strategy at P = 1, 2, 4, 8,
on one host and across two, with an alpha-beta-gamma cost model fitted to the runs.

    python -m hpcml.bench scaling --quick --out benchmarks/results     # under 10 minutes
    python -m hpcml.bench scaling --out benchmarks/results             # the committed run

Cases (CASES below; each is one step of the strategy, timed from a barrier to the slowest
rank's end, the median of --reps steps after a warm-up):

* allreduce: hpcml's ring all-reduce of float32 messages (the sizes of --sizes);
* data-parallel: one training step of an MLP (forward, backward, the gradient
  all-reduce, SGD) through the DataParallel strategy; zero: the same through ZeRO-1;
* pipeline: one 1F1B step of a deeper MLP split in P stages, 8 micro-batches (P >= 2);
* parameter-server: a bsp step of hpcml.train --parallel ps (one server rank, P - 1
  workers, P >= 2), each worker pushing its gradient and pulling the parameters;
* pca: a PCA fit of in-memory rows (the scatter all-reduced once);
* kmeans: 5 Lloyd iterations of k-means (k = 16; per-cluster sums all-reduced).

Strong scaling keeps the global problem (batch, rows) fixed as P grows; weak scaling keeps
each rank's share fixed. On this host P > cores is oversubscribed, and marked so. With
root and network namespaces (slurm/dev/fake-hosts.sh), every case also runs with the
ranks split over two hosts joined by TCP (hpcml.launch --netns).

The model (hpcml/bench/costmodel.py) is fitted on P <= 4 and checked on P = 8: see there.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

STRONG_BATCH, WEAK_BATCH = 512, 128          # training: global / per-rank rows per step
STRONG_ROWS, WEAK_ROWS = 400_000, 100_000    # pca and k-means rows (global / per rank)
WIDTH, DEPTH, IN, OUT = 512, 2, 256, 10      # the data-parallel / ZeRO MLP
PIPE_DEPTH, MICRO = 8, 8                     # the pipeline's MLP depth, micro-batches
FEATURES, CLUSTERS, LLOYD = 32, 16, 5


def _timed(comm, f, reps):
    """Median over reps of f() from a barrier to the last rank's end, after a warm-up."""
    from hpcml.bench.common import timed
    f()
    return timed(comm, f, reps)[0]


def _share(total, comm):
    p, r = comm.Get_size(), comm.Get_rank()
    return total * (r + 1) // p - total * r // p


def case_allreduce(comm, mode, reps, sizes):
    from hpcml import comm as hc
    out = []
    for nbytes in sizes:
        buf = np.ones(nbytes // 4, np.float32)
        t = _timed(comm, lambda: hc.allreduce(buf, comm=comm, algorithm="ring"), reps)
        out.append({"bytes": nbytes, "step_s": t})
    return out


def _train_step(comm, mode, reps, zero):
    from hpcml import nn, optim
    from hpcml.parallel.data_parallel import DataParallel
    from hpcml.parallel.zero import ZeRO
    P = comm.Get_size()
    glob = STRONG_BATCH if mode == "strong" else WEAK_BATCH * P
    rows = _share(glob, comm)
    rng = np.random.default_rng(comm.Get_rank())
    x = rng.standard_normal((rows, IN)).astype(np.float32)
    y = rng.integers(0, OUT, rows)
    model = nn.mlp(IN, [WIDTH] * DEPTH, OUT, dtype=np.float32, seed=0)
    strat = (ZeRO(model, comm, algorithm="ring", stage=1) if zero else
             DataParallel(model, comm, algorithm="ring"))
    opt = strat.optimizer(lambda m: optim.SGD(m, 0.01, momentum=0.9))

    def step():
        out = model.forward(x, train=True)
        _, dl = nn.cross_entropy(out, y, denom=glob)
        strat.backward(dl)
        strat.sync()
        strat.step(opt, 0.01)
    return [{"bytes": int(model.grads.nbytes), "rows": rows, "global_rows": glob,
             "step_s": _timed(comm, step, reps)}]


def case_data_parallel(comm, mode, reps, sizes):
    return _train_step(comm, mode, reps, zero=False)


def case_zero(comm, mode, reps, sizes):
    return _train_step(comm, mode, reps, zero=True)


def case_pipeline(comm, mode, reps, sizes):
    from hpcml import nn, optim
    from hpcml.parallel.pipe import PipelineRunner, split
    from hpcml.parallel.pipeline import make
    P = comm.Get_size()
    if P < 2:
        return []
    glob = STRONG_BATCH if mode == "strong" else WEAK_BATCH * P
    model = nn.mlp(IN, [WIDTH] * PIPE_DEPTH, OUT, dtype=np.float32, seed=0)
    runner = PipelineRunner(model, split(model, P), make("1f1b", P, MICRO, 1), comm)
    opts = runner.optimizers(lambda m: optim.SGD(m, 0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((glob, IN)).astype(np.float32)
    y = rng.integers(0, OUT, glob)

    def step():
        runner.step(x, y)
        for o in opts.values():
            o.step()
    return [{"bytes": glob // MICRO * WIDTH * 4, "global_rows": glob,
             "step_s": _timed(comm, step, reps)}]


class _StepClock:
    """A Trainer callback: the time at each optimizer step's end (on the workers)."""

    def __init__(self):
        self.times = []

    def on_step(self, trainer, step):
        self.times.append(time.perf_counter())


def case_parameter_server(comm, mode, reps, sizes):
    """hpcml.train --parallel ps (bsp, one server rank, P - 1 workers) on digits: the
    median time between steps (push, the server's update, pull, the next forward and
    backward) after 3 warm-up steps, the slowest worker's."""
    from hpcml import comm as hc
    from hpcml import train
    P = comm.Get_size()
    if P < 2:
        return []
    W = P - 1
    glob = STRONG_BATCH if mode == "strong" else WEAK_BATCH * W
    cfg = {k: v[0] for k, v in train.SETTINGS.items()}
    cfg.update(data="digits", test_data="none", hidden=f"{WIDTH},{WIDTH}", batch_size=glob,
               epochs=1000, progress=False, parallel="ps", servers=1, consistency="bsp",
               standardize=False, max_steps=4 + reps)
    clock = _StepClock()
    train.run(train.validate(cfg), comm, log=lambda *a: None, callbacks=[clock])
    mine = float(np.median(np.diff(clock.times[3:]))) if len(clock.times) > 4 else 0.0
    model_bytes = 4 * (64 * WIDTH + WIDTH + WIDTH * WIDTH + WIDTH + WIDTH * 10 + 10)
    return [{"bytes": model_bytes, "rows": glob // W, "global_rows": glob, "workers": W,
             "step_s": hc.reduce_value(mine, "max", comm)}]


def _rows(comm, mode, seed=0):
    """This rank's rows: strong splits STRONG_ROWS, weak gives each rank WEAK_ROWS."""
    P, r = comm.Get_size(), comm.Get_rank()
    n = _share(STRONG_ROWS, comm) if mode == "strong" else WEAK_ROWS
    return np.random.default_rng([seed, r, P]).standard_normal((n, FEATURES)).astype(
        np.float32)


def case_pca(comm, mode, reps, sizes):
    from hpcml.ml import PCA
    X = _rows(comm, mode)
    return [{"bytes": FEATURES * (FEATURES + 1) * 8, "rows": len(X),
             "step_s": _timed(comm, lambda: PCA(8, comm=comm).fit(X), reps)}]


def case_kmeans(comm, mode, reps, sizes):
    from hpcml.ml import KMeans
    X = _rows(comm, mode, seed=1)
    C = np.random.default_rng(7).standard_normal((CLUSTERS, FEATURES))

    def fit():
        KMeans(CLUSTERS, init=C, n_init=1, max_iter=LLOYD, tol=0.0, comm=comm).fit(X)
    return [{"bytes": CLUSTERS * (FEATURES + 1) * 8, "rows": len(X), "iterations": LLOYD,
             "step_s": _timed(comm, fit, reps)}]


#: every strategy the suite measures: name -> the function timing one step of it
CASES = {name[len("case_"):].replace("_", "-"): f for name, f in sorted(globals().items())
         if name.startswith("case_") and callable(f)}
TWO_HOST_CASES = tuple(CASES)  # every case also with its ranks split over two hosts


def worker(args):
    from hpcml import comm as hc
    comm = hc.world()
    sizes = [int(s) for s in args.sizes.split(",")]
    res = {"ranks": comm.Get_size(), "hosts": args.hosts, "cases": {}}
    for name in args.cases.split(","):
        for mode in ("strong", "weak") if name != "allreduce" else ("strong",):
            res["cases"].setdefault(name, {})[mode] = CASES[name](comm, mode, args.reps, sizes)
    if comm.Get_rank() == 0:
        with open(args.worker_out, "w") as f:
            json.dump(res, f)
    return 0


def _cmd(P, hosts, names, args, out):
    inner = [sys.executable, "-m", "hpcml.bench", "scaling", "--worker", "--cases",
             ",".join(names), "--reps", str(args.reps), "--sizes", args.sizes,
             "--hosts", str(hosts), "--worker-out", out]
    if args.launcher:  # e.g. "srun --mpi=pmi2 --overcommit": each P a job step
        return [*shlex.split(args.launcher), "-n", str(P), *inner]
    if hosts == 1:
        return [shutil.which("mpiexec") or "mpiexec", "-n", str(P), *inner]
    a, b = -(-P // 2), P // 2  # ranks 0..a-1 on the first host
    # the namespaces share this machine's cores: each rank one BLAS thread (on real
    # hosts, a rank alone on its host would take them all)
    return ["env", f"HPCML_NUM_THREADS={max(1, (os.cpu_count() or 1) // P)}",
            sys.executable, "-m", "hpcml.launch", "-n", str(P), "-H",
            f"{args.netns_prefix}1:{a},{args.netns_prefix}2:{b}", "--netns", *inner]


def _fake_hosts(action, prefix):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "slurm", "dev", "fake-hosts.sh")
    env = dict(os.environ, HPCML_NETNS_PREFIX=prefix, HPCML_NETNS_NET="10.231.9")
    r = subprocess.run(["bash", script, action] + (["2"] if action == "up" else []), env=env,
                       capture_output=True, text=True, timeout=120)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def measure(args):
    """{hosts: {P: worker result}} for one host and (when possible) two."""
    names = [c for c in args.cases.split(",")]
    runs = {"1": {}}
    two = False
    if args.two_hosts:
        ok, why = (False, "needs root") if os.geteuid() != 0 else _fake_hosts("up",
                                                                              args.netns_prefix)
        two = ok
        if not ok:
            print(f"# two hosts skipped: {why}", flush=True)
    try:
        for hosts in ([1, 2] if two else [1]):
            for P in [int(p) for p in args.ranks.split(",")]:
                if hosts == 2 and P < 2:
                    continue
                todo = names if hosts == 1 else [n for n in names if n in TWO_HOST_CASES]
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "r.json")
                    t0 = time.time()
                    r = subprocess.run(_cmd(P, hosts, todo, args, out), timeout=1800,
                                       env=dict(os.environ, HPCML_TIMEOUT="600"))
                    if r.returncode != 0:
                        raise SystemExit(f"P={P} hosts={hosts}: exit {r.returncode}")
                    with open(out) as f:
                        runs.setdefault(str(hosts), {})[str(P)] = json.load(f)
                print(f"# hosts={hosts} P={P}: {time.time() - t0:.0f} s", flush=True)
    finally:
        if two:
            _fake_hosts("down", args.netns_prefix)
    return runs


def _median_runs(rounds):
    """One result from several sweeps: each record's step time the median of the
    sweeps' (the P = 8 points, oversubscribed 4x here, move by 2-3x between sweeps)."""
    out = json.loads(json.dumps(rounds[0]))
    for hosts, per_p in out.items():
        for P, r in per_p.items():
            for case, modes in r["cases"].items():
                for mode, recs in modes.items():
                    for i, rec in enumerate(recs):
                        ts = [x[hosts][P]["cases"][case][mode][i]["step_s"] for x in rounds]
                        rec["step_s"] = float(np.median(ts))
                        rec["sweeps_s"] = ts
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    ap.add_argument("--ranks", default="1,2,4,8")
    ap.add_argument("--cases", default=",".join(CASES), help="of " + ", ".join(CASES))
    ap.add_argument("--sizes", default=None, help="all-reduce bytes (default: 64 KiB..16 MiB)")
    ap.add_argument("--reps", type=int, default=None, help="timed steps per case (9; quick 5)")
    ap.add_argument("--two-hosts", type=int, default=1, help="also across 2 hosts (root)")
    ap.add_argument("--sweeps", type=int, default=None,
                    help="whole sweeps over P, each point their median (3; quick 1)")
    ap.add_argument("--netns-prefix", default="hpcml-scale-h")
    ap.add_argument("--launcher", default="",
                    help="start each P with this instead of mpiexec (slurm/scaling.sbatch: "
                         "'srun --mpi=pmi2 --overcommit')")
    ap.add_argument("--out", default="results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hosts", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 9)
    args.sweeps = args.sweeps or (1 if args.quick else 3)
    args.sizes = args.sizes or ("262144,4194304" if args.quick else
                                "65536,262144,1048576,4194304,16777216")
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        ap.error(f"--cases: unknown {', '.join(sorted(unknown))} (known: {', '.join(CASES)})")
    if args.worker:  # a rank: the guard, and cores / ranks-per-node BLAS threads
        from hpcml import comm as hc
        return hc.entry_point(worker)(args)
    from hpcml.bench import costmodel
    from hpcml.bench.common import save_results
    t0 = time.time()
    runs = _median_runs([measure(args) for _ in range(args.sweeps)])
    res = costmodel.analyse(runs, cores=os.cpu_count() or 1)
    res.update(benchmark="scaling", quick=args.quick, seconds=time.time() - t0,
               cores=os.cpu_count(), settings={k: getattr(args, k) for k in (
                   "ranks", "cases", "sizes", "reps", "sweeps")})
    costmodel.report(res)
    save_results(args.out, "scaling", res, lambda p: costmodel.plot(res, p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
