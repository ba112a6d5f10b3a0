"""python -m hpcml.bench tune: hpcml.tune's samplers against Optuna's in the same run, and
the manager/worker protocol's utilisation.

    python -m hpcml.bench tune --out benchmarks/results       # tune.json and tune.png

1. Quality: Branin (f* = 0.397887) and Hartmann6 (f* = -3.32237), --seeds seeds each,
   --evals evaluations: the regret (best value found - f*) after 25, 50 and 100
   evaluations, median and quartiles over the seeds, for hpcml's random, TPE and GP-BO and
   Optuna's TPESampler and GPSampler (defaults, seeded), one process per (function, seed)
   on --procs processes (the figures are values, not times; each sampler's seconds are
   reported too).
2. Utilisation: mpiexec -n 5 python -m hpcml.tune (4 workers) on a function that sleeps
   0.1-1 s (drawn from its parameters), --util-trials trials: the workers' busy share
   (time in trials / (workers x the study's time)).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

FUNCS = {"branin": 0.397887, "hartmann6": -3.32237}
CHECKPOINTS = (25, 50, 100)


def sleepy(p):
    """Sleeps 0.1-1 s (a function of the parameters) and returns x1."""
    d = 0.1 + 0.9 * ((np.sin(1e3 * p["x1"] + 7 * p["x2"]) + 1) / 2)
    time.sleep(d)
    return p["x1"]


def _hpcml_curve(fname, sampler, seed, evals):
    from hpcml.tune import functions, samplers
    f, space, _ = functions.BUILTIN[fname]
    s = samplers.make(sampler, space, seed=seed)
    done, best, curve = [], np.inf, []
    for n in range(evals):
        u = s.propose(done, [], np.random.default_rng([seed, n]), n)
        v = f(space.decode(u))
        done.append((u, v))
        best = min(best, v)
        curve.append(best)
    return curve


def _optuna_curve(fname, sampler, seed, evals):
    import optuna
    from hpcml.tune import functions
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    f, space, _ = functions.BUILTIN[fname]
    smp = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler}[sampler]
    study = optuna.create_study(sampler=smp(seed=seed), direction="minimize")

    def objective(trial):
        return f({p.name: trial.suggest_float(p.name, p.low, p.high) for p in space.params})
    study.optimize(objective, n_trials=evals)
    return list(np.minimum.accumulate([t.value for t in study.trials]))


CASES = [("hpcml random", _hpcml_curve, "random"), ("hpcml tpe", _hpcml_curve, "tpe"),
         ("hpcml gp", _hpcml_curve, "gp"), ("optuna tpe", _optuna_curve, "tpe"),
         ("optuna gp", _optuna_curve, "gp")]


def _one(job):
    fname, seed, evals = job
    from hpcml.kernels import threads
    threads.configure(2)  # one BLAS thread per process (two processes share the cores)
    out = {}
    for name, fn, sampler in CASES:
        t0 = time.perf_counter()
        out[name] = {"curve": fn(fname, sampler, seed, evals),
                     "seconds": time.perf_counter() - t0}
    return fname, seed, out


def quality(args):
    import multiprocessing as mp
    jobs = [(f, s, args.evals) for f in FUNCS for s in range(args.seeds)]
    res = {f: {name: {"curves": [], "seconds": []} for name, _, _ in CASES} for f in FUNCS}
    with mp.get_context("spawn").Pool(args.procs) as pool:
        for fname, seed, out in pool.imap_unordered(_one, jobs):
            for name, d in out.items():
                res[fname][name]["curves"].append(d["curve"])
                res[fname][name]["seconds"].append(d["seconds"])
            print(f"quality: {fname} seed {seed} done", flush=True)
    table = {}
    for fname, cases in res.items():
        table[fname] = {}
        for name, d in cases.items():
            reg = np.array(d["curves"]) - FUNCS[fname]
            table[fname][name] = {str(k): [float(np.percentile(reg[:, k - 1], q))
                                           for q in (25, 50, 75)]
                                  for k in CHECKPOINTS if k <= args.evals}
            table[fname][name]["seconds_median"] = float(np.median(d["seconds"]))
            table[fname][name]["curves"] = reg.tolist()
            print(f"{fname:10s} {name:13s} median regret " + ", ".join(
                f"@{k} {table[fname][name][str(k)][1]:.4g}" for k in CHECKPOINTS
                if k <= args.evals), flush=True)
    return table


def utilisation(args):
    out = tempfile.mkdtemp(prefix="hpcml-tune-util-")
    space = os.path.join(out, "space.toml")
    with open(space, "w") as f:
        f.write("[params.x1]\ntype = \"float\"\nlow = 0.0\nhigh = 1.0\n"
                "[params.x2]\ntype = \"float\"\nlow = 0.0\nhigh = 1.0\n")
    cmd = [shutil.which("mpiexec") or "mpiexec", "-n", "5", sys.executable, "-m",
           "hpcml.tune", "--objective", "hpcml.bench.tune:sleepy", "--space", space,
           "--sampler", "tpe", "--trials", str(args.util_trials), "--output", out,
           "--verbose", "false", "--plot", "false"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    s = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"utilisation at 4 workers, {args.util_trials} trials of 0.1-1 s: "
          f"{s['worker_utilisation']:.3f}", flush=True)
    return {"workers": 4, "trials": args.util_trials,
            "utilisation": s["worker_utilisation"], "wall_s": time.perf_counter() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench tune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--evals", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2, help="processes for part 1")
    ap.add_argument("--util-trials", type=int, default=60)
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    res = {"benchmark": "tune", "seeds": args.seeds, "evals": args.evals}
    res["utilisation"] = utilisation(args)
    res["quality"] = quality(args)
    os.makedirs(args.out, exist_ok=True)
    from hpcml.atomic import atomic_write_json
    atomic_write_json(os.path.join(args.out, "tune.json"), res)
    _plot(res, os.path.join(args.out, "tune.png"))
    print(f"# wrote {args.out}/tune.json and tune.png")
    return 0


def _plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpcml.atomic import atomic_savefig
    fig, axes = plt.subplots(1, len(res["quality"]), figsize=(6 * len(res["quality"]), 4.3),
                             squeeze=False)
    for ax, (fname, cases) in zip(axes[0], res["quality"].items()):
        for name, d in cases.items():
            reg = np.maximum(np.array(d["curves"]), 1e-9)
            x = np.arange(1, reg.shape[1] + 1)
            med = np.median(reg, axis=0)
            ax.plot(x, med, label=name, ls="-" if name.startswith("hpcml") else "--")
            ax.fill_between(x, np.percentile(reg, 25, axis=0), np.percentile(reg, 75, axis=0),
                            alpha=0.12)
        ax.set_yscale("log")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("regret (median, quartiles)")
        ax.set_title(f"{fname}, {res['seeds']} seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
