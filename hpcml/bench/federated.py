"""python -m hpcml.bench federated: McMahan et al.'s Table 1 (MNIST-sized data made from
digits), FedAvg against FedProx on Synthetic(1,1), robust aggregation under Byzantine
clients, and rounds/s against Flower's simulation on the same clients.

    python -m hpcml.bench federated --out benchmarks/results    # federated.json and .png

1. Table 1 (McMahan et al. 2017, its 2NN): an MLP 64-200-200-10, 100 clients, IID or
   pathological non-IID (shards:2: two label-sorted shards each), E = 1, B in {all, 10},
   C in {0.01 (one client, McMahan's C = 0), 0.1, 0.2, 0.5, 1.0}, client lr 0.1: rounds
   until the test accuracy first reaches --target (97%, McMahan's for the 2NN), at most
   --max-rounds (B = 10) or --max-rounds-full (B = all). The data are MNIST-sized (60,000
   training rows, 600 per client as McMahan's; 10,000 test rows), made from the built-in
   digits by `python -m hpcml.data synth --like digits` (shifts, ink scale, noise;
   training rows from digits:train, test rows from digits:test): MNIST cannot be
   downloaded here, and digits' 1,438 rows give a client 14 rows, too few for a round of
   real local work. Each cell runs under mpiexec -n --ranks (the result does not depend
   on the rank count).
2. FedProx (Li et al. 2020) on Synthetic(1,1) (`python -m hpcml.data synth --federated
   1,1`: 30 clients, 60 features, 10 classes, power-law sizes), multinomial logistic
   regression, C = 1/3, E = 20, B = 10, lr 0.01, 50% of the clients straggling each round:
   FedAvg drops them, FedProx (mu = 1) uses their partial work (the paper's setting).
3. Robust aggregation: 100 IID clients, C = 0.2, 20% of them Byzantine sending -10x their
   update (scale:-10): test accuracy after --robust-rounds rounds for mean (FedAvg),
   median, trimmed:0.2, krum:4 and multikrum:4:10, against FedAvg without attackers.
4. Rounds/s at 100 clients, C = 0.1, E = 1, B = 10 (the 2NN on digits): hpcml's
   simulation and Flower's (`flwr[simulation]`, Ray; the `bench` extra), with the same
   clients (hpcml's partition and local training inside Flower's ClientApp), no
   evaluation; steady state (rounds after the first) and whole runs.
Parts 3 and 4 use digits itself.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

CS = (0.01, 0.1, 0.2, 0.5, 1.0)
MCMAHAN = {  # Table 1, 2NN on MNIST, E = 1: rounds to 97% (C = 0.0, 0.1, 0.2, 0.5, 1.0)
    ("iid", 0): [1455, 1474, 1658, 1667, 1600], ("iid", 10): [316, 87, 77, 75, 70],
    ("shards:2", 0): [4278, 1796, 1528, None, None],
    ("shards:2", 10): [3275, 664, 619, 443, 380]}


def _cfg(**kw):
    from hpcml.federated import job
    c = {k: v[0] for k, v in job.SETTINGS.items()}
    c.update(dict(verbose=False, plot=False, output=tempfile.mkdtemp(prefix="hpcml-fed-")))
    c.update(kw)
    return job.validate(c)


def _run(**kw):
    """(summary, evaluated rows) of one in-process run on one rank."""
    from hpcml import comm as hc
    from hpcml.federated import job
    cfg = _cfg(**kw)
    s = job.run(cfg, hc.self_comm(), log=lambda *a: None)
    with open(os.path.join(cfg["output"], "rounds.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return s, rows


def mnist_sized(rows=60000, test_rows=10000, seed=0):
    """The folder of an MNIST-sized set made from digits (hpcml.data.augment): train/ and
    test/ under a new temporary folder."""
    from hpcml import data
    folder = os.path.join(tempfile.mkdtemp(prefix="hpcml-digits60k-"), "d")
    data.synth(folder, rows, 64, 10, shards=4, seed=seed, test_rows=test_rows,
               like="digits")
    return folder


def _run_ranks(ranks, **kw):
    """The summary of one `python -m hpcml.federated` run under mpiexec -n ranks (the
    result does not depend on ranks; they only share the clients' work)."""
    import shutil
    import subprocess
    out = tempfile.mkdtemp(prefix="hpcml-fed-")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks), sys.executable, "-m",
           "hpcml.federated", "--output", out, "--verbose", "false", "--plot", "false"]
    r = subprocess.run(cmd + flags, timeout=3600, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd + flags)} failed (exit {r.returncode}):\n"
                           + r.stderr[-3000:])
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def table1(args):
    folder = mnist_sized(args.table_rows, args.table_rows // 6)
    out = []
    for partition in ("iid", "shards:2"):
        for batch in (0, 10):
            for c in CS:
                cap = args.max_rounds if batch else args.max_rounds_full
                kw = dict(data=os.path.join(folder, "train"), clients=args.clients,
                          test_data=os.path.join(folder, "test"), fraction=c,
                          local_epochs=1, local_batch=batch, lr=args.lr,
                          partition=partition, target=args.target, rounds=cap)
                s = _run_ranks(args.ranks, stop_at_target="true", **kw) if args.ranks > 1 \
                    else _run(stop_at_target=True, **kw)[0]
                out.append({"partition": partition, "B": batch or "all", "C": c,
                            "rounds_to_target": s["rounds_to_target"], "max_rounds": cap,
                            "seconds": s["seconds"]})
                print(f"table 1: {partition:8s} B {batch or 'all':>3} C {c:4}: "
                      f"{s['rounds_to_target'] or f'> {cap}'} rounds ({s['seconds']:.1f} s)",
                      flush=True)
    return out


def fedprox(args):
    from hpcml import data
    folder = os.path.join(tempfile.mkdtemp(prefix="hpcml-synth-"), "s11")
    data.synth(folder, args.prox_rows, 60, 10, shards=3, test_rows=args.prox_rows // 5,
               federated=(1.0, 1.0), clients=30)
    out = {}
    for name, kw in (("fedavg", dict(strategy="fedavg", drop_stragglers=True)),
                     ("fedprox", dict(strategy="fedprox", mu=1.0))):
        s, rows = _run(data=folder, partition="natural", client_column=60, fraction=1 / 3,
                       local_epochs=20, local_batch=10, lr=0.01, hidden="",
                       stragglers=0.5, rounds=args.prox_rounds, standardize=False, **kw)
        out[name] = {"curve": [(r["round"], r["test_accuracy"], r["train_loss"])
                               for r in rows], "test_accuracy": s["test_accuracy"]}
        print(f"synthetic(1,1): {name}: test accuracy {s['test_accuracy']:.4f}", flush=True)
    return out


def robust(args):
    common = dict(clients=args.clients, fraction=0.2, local_epochs=1, local_batch=10,
                  lr=args.lr, rounds=args.robust_rounds)
    clean = _run(**common)[0]["test_accuracy"]
    out = {"clean_fedavg": clean, "attacked": {}}
    for agg in ("mean", "median", "trimmed:0.2", "krum:4", "multikrum:4:10"):
        acc = _run(aggregator=agg, byzantine=0.2, attack="scale:-10", **common)[0][
            "test_accuracy"]
        out["attacked"][agg] = acc
        print(f"20% byzantine (scale:-10): {agg:15s} {acc:.4f} ({acc / clean:.2f} of "
              f"clean)", flush=True)
    return out


def hpcml_rate(rounds):
    """Rounds/s of hpcml's simulation (Table 1's C = 0.1, B = 10 cell), no evaluation."""
    from hpcml import comm as hc
    from hpcml.federated import job
    from hpcml.parallel.federated.simulation import Federation
    t0 = time.perf_counter()
    cfg = _cfg(clients=100, fraction=0.1, local_epochs=1, local_batch=10, lr=0.1)
    x, y, xt, yt, ids = job.load(cfg, hc.self_comm())
    fed = Federation(cfg, hc.self_comm(), x, y, xt, yt, ids)
    stamps = []
    for _ in range(rounds):
        fed.step()
        stamps.append(time.perf_counter())
    return {"rounds": rounds, "whole_run_s": stamps[-1] - t0,
            "steady_rounds_per_s": (rounds - 1) / (stamps[-1] - stamps[0])}


def flower_rate(rounds):
    """Flower's simulation of the same cell, in a process of its own (Ray)."""
    from hpcml.bench.common import run_worker
    return run_worker([sys.executable, "-m", "hpcml.bench", "federated", "--worker",
                       "flower", "--flower-rounds", str(rounds)], 1800, capture=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench federated",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results")
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--max-rounds", type=int, default=1000,
                    help="Table 1: most rounds of a B = 10 cell")
    ap.add_argument("--max-rounds-full", type=int, default=300,
                    help="Table 1: most rounds of a B = all cell (McMahan's take 1,455+)")
    ap.add_argument("--ranks", type=int, default=2,
                    help="Table 1: ranks per run (mpiexec; 1: in this process)")
    ap.add_argument("--table-rows", type=int, default=60000,
                    help="Table 1: training rows made from digits (test rows: a sixth)")
    ap.add_argument("--clients", type=int, default=100,
                    help="clients of parts 1 and 3 (McMahan's 100)")
    ap.add_argument("--prox-rows", type=int, default=10000,
                    help="Synthetic(1,1) training rows (test: a fifth)")
    ap.add_argument("--prox-rounds", type=int, default=40)
    ap.add_argument("--robust-rounds", type=int, default=100)
    ap.add_argument("--flower-rounds", type=int, default=20)
    ap.add_argument("--skip-flower", action="store_true")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "flower":
        from hpcml.bench import federated_flower
        with open(args.worker_out, "w") as f:
            json.dump(federated_flower.run(args.flower_rounds), f)
        return 0
    res = {"benchmark": "federated", "dataset": "table 1: digits x 60,000 (python -m "
           "hpcml.data synth --like digits --rows 60000 --test-rows 10000); parts 2-4: "
           "digits", "target": args.target,
           "lr": args.lr, "max_rounds": args.max_rounds}
    res["rates"] = {"hpcml": hpcml_rate(args.flower_rounds)}
    if not args.skip_flower:
        res["rates"]["flower"] = flower_rate(args.flower_rounds)
        h, fl = res["rates"]["hpcml"], res["rates"]["flower"]
        res["rates"]["hpcml_over_flower"] = h["steady_rounds_per_s"] / \
            fl["steady_rounds_per_s"]
        print(f"rounds/s (100 clients, C=0.1): hpcml {h['steady_rounds_per_s']:.1f}, "
              f"Flower {fl['steady_rounds_per_s']:.2f}: "
              f"{res['rates']['hpcml_over_flower']:.1f}x", flush=True)
    res["table1"] = table1(args)
    res["fedprox"] = fedprox(args)
    res["robust"] = robust(args)
    from hpcml.bench.common import save_results
    save_results(args.out, "federated", res, lambda path: _plot(res, path))
    return 0


def _plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpcml.atomic import atomic_savefig
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    a = ax[0, 0]
    for part, style in (("iid", "-"), ("shards:2", "--")):
        for b, color in (("all", "tab:blue"), (10, "tab:red")):
            rows = [r for r in res["table1"] if r["partition"] == part and r["B"] == b]
            pts = [(r["C"], r["rounds_to_target"]) for r in rows if r["rounds_to_target"]]
            if pts:
                a.plot(*zip(*pts), style, color=color, marker="o", label=f"{part}, B={b}")
            never = [r["C"] for r in rows if not r["rounds_to_target"]]
            if never:  # not reached within --max-rounds: drawn at the cap
                a.plot(never, [r["max_rounds"] for r in rows if not r["rounds_to_target"]],
                       "^", color=color, ms=9, mfc="none" if part == "iid" else color,
                       label=f"{part}, B={b}: not reached")
            ref = MCMAHAN.get((part, 0 if b == "all" else b))
            if b == 10 and ref:  # McMahan's MNIST figures (their C = 0 at 0.01)
                a.plot(CS, ref, style, color="grey", marker="x", alpha=0.7,
                       label=f"McMahan MNIST, {part}, B=10")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("C (fraction of clients per round)")
    a.set_ylabel(f"rounds to {res['target']:.0%}")
    a.set_title("McMahan Table 1 layout, 60k rows made from digits (2NN, E=1; "
                "^ not reached)", fontsize=10)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    a = ax[0, 1]
    for name, d in res["fedprox"].items():
        c = np.array(d["curve"])
        a.plot(c[:, 0], c[:, 1], label=f"{name} (test accuracy)")
    a.set_xlabel("round")
    a.set_title("Synthetic(1,1), 50% stragglers")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    a = ax[1, 0]
    rob = res["robust"]
    names = list(rob["attacked"])
    a.bar(range(len(names)), [rob["attacked"][n] for n in names], color="tab:orange")
    a.axhline(rob["clean_fedavg"], color="k", label="FedAvg, no attackers")
    a.axhline(0.9 * rob["clean_fedavg"], color="k", ls=":", label="90% of it")
    a.set_xticks(range(len(names)), names, fontsize=8)
    a.set_ylabel("test accuracy")
    a.set_title("20% Byzantine clients (scale:-10)")
    a.legend(fontsize=8)
    a = ax[1, 1]
    rates = res["rates"]
    labels = [k for k in ("hpcml", "flower") if k in rates]
    a.bar(labels, [rates[k]["steady_rounds_per_s"] for k in labels], color="tab:green")
    a.set_ylabel("rounds/s (steady state)")
    a.set_title("100 clients, C=0.1, E=1, B=10")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
