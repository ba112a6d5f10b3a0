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
3. ASHA against no early stopping tuning hpcml.train on digits (lr, hidden, momentum;
   --asha-epochs epochs; mpiexec -n --asha-ranks; --asha-seeds seeds): the unpruned
   random search runs --asha-trials trials, ASHA the same random stream up to
   --asha-explore times as many; the time ASHA takes to finish a trial at the unpruned
   search's best test accuracy, over that search's time (and over its own time to that
   accuracy), median over the seeds.
4. TPE against TPE on --tpe-seeds seeds (default 100; TPE is cheap): 20 seeds leave a
   median regret noisy by about 1.5x, too coarse for a 1.2x comparison.
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


def _one_tpe(job):
    fname, seed, evals = job
    from hpcml.kernels import threads
    threads.configure(2)
    return fname, seed, {name: fn(fname, sampler, seed, evals)
                         for name, fn, sampler in CASES if sampler == "tpe"}


def tpe_seeds(args):
    """hpcml's TPE against Optuna's on --tpe-seeds seeds (20 seeds leave the medians
    noisy by about 1.5x): median regret at 25, 50 and 100 evaluations, and the ratio."""
    import multiprocessing as mp
    jobs = [(f, s, args.evals) for f in FUNCS for s in range(args.tpe_seeds)]
    curves = {f: {"hpcml tpe": [], "optuna tpe": []} for f in FUNCS}
    with mp.get_context("spawn").Pool(args.procs) as pool:
        for fname, seed, out in pool.imap_unordered(_one_tpe, jobs):
            for name, c in out.items():
                curves[fname][name].append(c)
    res = {}
    for fname, d in curves.items():
        med = {name: {str(k): float(np.median(np.array(c)[:, k - 1] - FUNCS[fname]))
                      for k in CHECKPOINTS if k <= args.evals} for name, c in d.items()}
        res[fname] = {"median_regret": med, "hpcml_over_optuna": {
            k: med["hpcml tpe"][k] / med["optuna tpe"][k] for k in med["hpcml tpe"]}}
        print(f"{fname}: hpcml TPE / Optuna TPE median regret over {args.tpe_seeds} seeds: "
              + ", ".join(f"@{k} {v:.2f}x" for k, v in res[fname]["hpcml_over_optuna"]
                          .items()), flush=True)
    return res


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


ASHA_SPACE = """[params.lr]
type = "float"
low = 0.001
high = 0.5
log = true
[params.hidden]
type = "categorical"
choices = ["32", "128", "256,128"]
[params.momentum]
type = "float"
low = 0.0
high = 0.95
"""


def _study_run(out, extra, args):
    cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(args.asha_ranks), sys.executable,
           "-m", "hpcml.tune", "--objective", "train", "--space",
           os.path.join(out, "space.toml"), "--train-config", os.path.join(out, "train.toml"),
           "--sampler", "random", "--verbose", "false", "--plot", "false", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _search(out, name, seed, trials, extra, args):
    """One study: its summary, (seconds from the first start, value) per completed trial,
    and its length, from the journal's record times."""
    from hpcml.tune.journal import Journal
    folder = os.path.join(out, f"{name}-{seed}")
    s = _study_run(out, extra + ["--seed", str(seed), "--trials", str(trials),
                                 "--output", folder], args)
    recs = Journal(os.path.join(folder, "journal.jsonl")).read()
    t0 = min(r["time"] for r in recs if r["op"] == "start")
    fin = [(r["time"] - t0, r["value"]) for r in recs
           if r["op"] == "finish" and r["state"] == "complete"]
    return {"trials": trials,
            "summary": {k: s[k] for k in ("complete", "pruned", "failed", "best_value",
                                          "best_params")},
            "finishes": sorted(fin), "study_s": max(r.get("time", t0) for r in recs) - t0}


def _first_at(finishes, best):
    hit = [t for t, v in finishes if v is not None and v >= best]
    return hit[0] if hit else None


def asha(args):
    """ASHA against no early stopping, tuning hpcml.train on digits, per seed: the unpruned
    random search runs --asha-trials trials to the end (T seconds, best test accuracy A);
    ASHA draws from the same random stream (trial n has the same parameters in both) up to
    --asha-explore times as many trials, the configurations its saved epochs pay for (Li et
    al.'s comparison). The figure is the time ASHA takes to finish a trial at accuracy >= A,
    over T (the issue's "in <= 0.5x its time"), and also over the time the unpruned search
    itself took to first reach A (stricter: it credits that search with knowing when to
    stop); medians over --asha-seeds seeds (a seed ASHA never reaches A in counts as
    infinite)."""
    out = tempfile.mkdtemp(prefix="hpcml-tune-asha-")
    with open(os.path.join(out, "space.toml"), "w") as f:
        f.write(ASHA_SPACE)
    with open(os.path.join(out, "train.toml"), "w") as f:
        f.write(f"epochs = {args.asha_epochs}\nbatch_size = 64\n")
    rung = ["--pruner", "asha", "--eta", "3", "--min-resource", str(args.asha_min_resource)]
    runs = []
    for seed in range(args.asha_seeds):
        none = _search(out, "none", seed, args.asha_trials, [], args)
        pruned = _search(out, "asha", seed, args.asha_trials * args.asha_explore, rung, args)
        runs.append(_asha_record(seed, none, pruned))
    inf = float("inf")
    res = {"trials": args.asha_trials, "explore": args.asha_explore,
           "epochs": args.asha_epochs, "min_resource": args.asha_min_resource, "eta": 3,
           "runs": runs, "reached": sum(r["asha_time_to_best_s"] is not None for r in runs)}
    for key in ("asha_over_none_study", "asha_over_none_time_to_best"):
        res["median_" + key] = float(np.median([inf if r[key] is None else r[key]
                                                for r in runs]))
    print(f"asha vs none: ASHA reaches the unpruned search's best accuracy in a median "
          f"{res['median_asha_over_none_study']:.2f}x of that search's time "
          f"({res['median_asha_over_none_time_to_best']:.2f}x of its time to that accuracy) "
          f"over {len(runs)} seeds (reached in {res['reached']})", flush=True)
    return res


def _asha_record(seed, none, pruned):
    best = none["summary"]["best_value"]
    t_none, t_asha = _first_at(none["finishes"], best), _first_at(pruned["finishes"], best)
    rec = {"seed": seed, "best_accuracy": best, "none": none, "asha": pruned,
           "none_time_to_best_s": t_none, "asha_time_to_best_s": t_asha,
           "asha_over_none_study": None if t_asha is None else t_asha / none["study_s"],
           "asha_over_none_time_to_best": None if t_asha is None else t_asha / t_none}
    print(f"asha vs none on digits, seed {seed}: the unpruned search ({none['trials']} trials) "
          f"took {none['study_s']:.1f} s, best accuracy {best:.4f} first at {t_none:.1f} s; "
          + (f"ASHA reached it at {t_asha:.1f} s ({rec['asha_over_none_study']:.2f}x, "
             f"{rec['asha_over_none_time_to_best']:.2f}x)" if t_asha is not None
             else "ASHA never reached it") +
          f" ({pruned['summary']['pruned']} of {pruned['trials']} trials pruned; its study "
          f"{pruned['study_s']:.1f} s)", flush=True)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench tune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--evals", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2, help="processes for part 1")
    ap.add_argument("--util-trials", type=int, default=60)
    ap.add_argument("--tpe-seeds", type=int, default=100,
                    help="part 4: seeds of the TPE-against-TPE comparison")
    ap.add_argument("--asha-trials", type=int, default=27, help="the unpruned search's trials")
    ap.add_argument("--asha-explore", type=int, default=3,
                    help="ASHA's trial budget, as a multiple of --asha-trials")
    ap.add_argument("--asha-seeds", type=int, default=5)
    ap.add_argument("--asha-epochs", type=int, default=81,
                    help="epochs per trial (ASHA's maximum resource; R = 81, eta = 3 is "
                         "Hyperband's worked example)")
    ap.add_argument("--asha-ranks", type=int, default=3, help="mpiexec -n (1 manages)")
    ap.add_argument("--asha-min-resource", type=int, default=3,
                    help="ASHA's first rung (epochs)")
    ap.add_argument("--parts", default="utilisation,asha,quality,tpe",
                    help="parts to run; the others are kept from an existing tune.json")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    path = os.path.join(args.out, "tune.json")
    res = {}
    if os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
    res.update({"benchmark": "tune"})
    parts = args.parts.split(",")
    if "utilisation" in parts:
        res["utilisation"] = utilisation(args)
    if "asha" in parts:
        res["asha"] = asha(args)
    if "quality" in parts:
        res.update(seeds=args.seeds, evals=args.evals, quality=quality(args))
    if "tpe" in parts:
        res["tpe_seeds"] = {"seeds": args.tpe_seeds, **tpe_seeds(args)}
    from hpcml.bench.common import save_results
    save_results(args.out, "tune", res, lambda p: _plot(res, p))
    return 0


def _plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpcml.atomic import atomic_savefig
    quality = res.get("quality", {})
    runs = res.get("asha", {}).get("runs", [])
    n = len(quality) + bool(runs)
    fig, axes = plt.subplots(1, max(1, n), figsize=(6 * max(1, n), 4.3), squeeze=False)
    for ax, (fname, cases) in zip(axes[0], quality.items()):
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
    if runs:
        _plot_asha(axes[0][len(quality)], res["asha"])
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def _plot_asha(ax, a):
    """Best-so-far test accuracy against time, per seed: unpruned (dashed) and ASHA."""
    for k, r in enumerate(a["runs"]):
        for name, ls in (("none", "--"), ("asha", "-")):
            fin = r[name]["finishes"]
            t = [f[0] for f in fin] + [r[name]["study_s"]]
            best = np.maximum.accumulate([f[1] for f in fin] + [fin[-1][1]])
            ax.step(t, best, where="post", ls=ls, color=f"C{k}", lw=1,
                    label=f"seed {r['seed']}" if name == "asha" else None)
    ax.set_ylim(0.95, 1.0)
    ax.set_xlabel("seconds")
    ax.set_ylabel("best test accuracy so far")
    ax.set_title(f"digits: ASHA (solid) vs none (dashed), median "
                 f"{a['median_asha_over_none_study']:.2f}x", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


if __name__ == "__main__":
    sys.exit(main())
