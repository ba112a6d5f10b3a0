"""python -m hpcml.federated: federated learning with N virtual clients simulated on MPI
ranks (FedSGD, FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad; robust aggregation).

    python -m hpcml.federated --clients 100 --fraction 0.1 --rounds 50
    mpiexec -n 4 python -m hpcml.federated --partition shards:2 --local-epochs 5
    python -m hpcml.federated --strategy fedprox --mu 0.01 --partition dirichlet:0.3
    python -m hpcml.federated --aggregator trimmed:0.2 --byzantine 0.2 --attack scale:10

The clients are slices of the training rows (--partition), dealt over the ranks each
round; the result does not depend on the number of ranks. Rank 0 writes OUTPUT/rounds.jsonl
(one line per round: test accuracy and loss, clients, bytes up and down), and at the end
OUTPUT/summary.json and OUTPUT/rounds.png, and prints the summary as one JSON line.
Settings come from defaults, a TOML file (--config) and --key value flags; a bad setting
exits 2 with one message from rank 0.
"""
import json
import os
import sys
import time

import h5py
import numpy as np

from hpcml import comm as hc
from hpcml import config
from hpcml.atomic import atomic_savefig, atomic_write_json, writable_folder
from hpcml.comm.guard import CollectiveError
from hpcml.config import ConfigError
from hpcml.data import DataError, ShardedDataset

from hpcml.parallel.federated.aggregate import STRATEGIES, AggregateError, parse_aggregator
from hpcml.parallel.federated.client import parse_attack
from . import resume
from hpcml.parallel.federated.partition import PartitionError, parse as parse_partition
from hpcml.parallel.federated.simulation import Federation

# name: (default, type, help)
SETTINGS = {
    "data": ("digits", str, "training dataset: a sharded folder or a built-in name"),
    "test_data": ("auto", str, "test dataset ('auto': NAME:test for a built-in NAME; "
                               "'none')"),
    "clients": (100, int, "virtual clients N (slices of the training rows; partition "
                          "natural: one per id, this is then ignored)"),
    "fraction": (0.1, float, "C: the fraction of clients sampled per round, in (0, 1] "
                             "(max(1, round(C N)) clients; McMahan's C = 0 is 1/N)"),
    "rounds": (50, int, "communication rounds"),
    "local_epochs": (1, int, "E: local epochs per round"),
    "local_batch": (10, int, "B: local batch (0: the client's whole data)"),
    "lr": (0.05, float, "client learning rate (local SGD)"),
    "local_momentum": (0.0, float, "local SGD momentum"),
    "weight_decay": (0.0, float, "local L2 weight decay"),
    "strategy": ("fedavg", str, ", ".join(STRATEGIES) + " (fedsgd: one full-batch "
                                                         "gradient per client)"),
    "mu": (0.0, float, "FedProx's proximal weight (with --strategy fedprox)"),
    "aggregator": ("mean", str, "mean, median, trimmed:BETA, krum:F, multikrum:F:K"),
    "server_lr": (1.0, float, "server learning rate (fedavg: 1 = the mean model)"),
    "server_momentum": (0.9, float, "fedavgm's server momentum"),
    "beta1": (0.9, float, "fedadam/fedyogi first-moment decay"),
    "beta2": (0.99, float, "fedadam/fedyogi second-moment decay"),
    "tau": (1e-3, float, "fedadam/fedyogi/fedadagrad adaptivity (epsilon)"),
    "partition": ("iid", str, "iid, shards:K (K label-sorted shards per client), "
                              "dirichlet:ALPHA, quantity:ALPHA, natural (--client-column)"),
    "client_column": (-1, int, "partition natural: the feature column holding the client "
                               "id (removed from the features)"),
    "dropout_rate": (0.0, float, "probability that a sampled client does not report"),
    "stragglers": (0.0, float, "fraction of reporting clients that do only part of their "
                               "local steps"),
    "drop_stragglers": (False, bool, "drop stragglers instead of using their partial work"),
    "byzantine": (0.0, float, "fraction of the N clients that attack (fixed set)"),
    "attack": ("scale:10", str, "the Byzantine update: sign-flip or scale:FACTOR"),
    "dp_noise": (0.0, float, "DP-FedAvg: the Gaussian noise multiplier z (0: no "
                             "differential privacy); clients are then Poisson-sampled"),
    "dp_clip": (1.0, float, "DP-FedAvg: the L2 norm S each update is clipped to (the "
                            "initial S with --dp-adaptive)"),
    "dp_adaptive": (False, bool, "adapt S to a quantile of the update norms (Andrew et "
                                 "al. 2021)"),
    "dp_quantile": (0.5, float, "adaptive clipping: the target quantile"),
    "dp_clip_lr": (0.2, float, "adaptive clipping: the learning rate of log S"),
    "dp_delta": (1e-5, float, "the delta (epsilon, delta) is reported at"),
    "secagg": (False, bool, "secure aggregation (Bonawitz et al. 2017): the server sees "
                            "only masked updates and their sum; --dropout-rate clients "
                            "then drop after masking (needs the `cryptography` package)"),
    "secagg_threshold": (0, int, "Shamir threshold t (0: half the round's clients + 1)"),
    "secagg_frac_bits": (24, int, "fixed-point fractional bits of the masked updates"),
    "hidden": ("200,200", str, "hidden layer widths (McMahan's 2NN: 200,200)"),
    "activation": ("relu", str, "relu, tanh or gelu"),
    "init": ("torch", str, "weight initialisation: torch, he, xavier"),
    "dtype": ("float32", str, "float32 or float64"),
    "standardize": (True, bool, "standardise features with the training union's mean/std"),
    "seed": (0, int, "seed of the partition, the sampling and the clients' shuffling"),
    "eval_every": (1, int, "rounds between test evaluations (and lines)"),
    "target": (0.0, float, "test accuracy whose first round is reported (0: none)"),
    "stop_at_target": (False, bool, "end the run at the first evaluated round that reaches "
                                    "--target"),
    "output": ("federated-out", str, "folder: rounds.jsonl, summary.json, rounds.png"),
    "checkpoint_dir": ("", str, "folder for checkpoints ('': none)"),
    "checkpoint_every": (10, int, "rounds between checkpoints (and one after the last)"),
    "keep": (3, int, "checkpoints kept"),
    "resume": ("", str, "'auto' (the latest good checkpoint in --checkpoint-dir, if any) "
                        "or a checkpoint file; '' starts fresh"),
    "plot": (True, bool, "write rounds.png"),
    "verbose": (True, bool, "a line per evaluated round from rank 0"),
}


def validate(cfg):
    def bad(key, why):
        config.bad(cfg, key, why)
    if not 0 < cfg["fraction"] <= 1:
        bad("fraction", "must be in (0, 1] (for one client per round, McMahan's C = 0, "
                        "use 1/clients)")
    if cfg["resume"] == "auto" and not cfg["checkpoint_dir"]:
        bad("resume", "'auto' needs --checkpoint-dir")
    for key in ("clients", "rounds", "local_epochs", "eval_every", "checkpoint_every",
                "keep"):
        if cfg[key] < 1:
            bad(key, "must be >= 1")
    if cfg["local_batch"] < 0:
        bad("local_batch", "must be >= 0 (0: the client's whole data)")
    for key in ("lr", "server_lr"):
        if not cfg[key] > 0:
            bad(key, "must be > 0")
    for key in ("dropout_rate", "stragglers", "byzantine"):
        if not 0 <= cfg[key] < 1:
            bad(key, "must be in [0, 1)")
    if cfg["strategy"] not in STRATEGIES:
        bad("strategy", f"must be one of {', '.join(STRATEGIES)}")
    if cfg["mu"] < 0 or (cfg["mu"] and cfg["strategy"] != "fedprox"):
        bad("mu", "is FedProx's proximal weight: >= 0, with --strategy fedprox")
    if cfg["strategy"] == "fedsgd":  # one full-batch gradient step per client
        cfg["local_epochs"], cfg["local_batch"] = 1, 0
    _check(cfg, "partition", parse_partition, PartitionError)
    _check(cfg, "attack", parse_attack, ValueError)
    m = max(1, int(round(cfg["fraction"] * cfg["clients"])))
    try:
        parse_aggregator(cfg["aggregator"], m)
    except AggregateError as e:
        bad("aggregator", str(e).split(": ", 1)[1])
    _check_dp(cfg, bad)
    _check_secagg(cfg, bad, m)
    if cfg["dtype"] not in ("float32", "float64"):
        bad("dtype", "must be float32 or float64")
    if cfg["activation"] not in ("relu", "tanh", "gelu"):
        bad("activation", "must be relu, tanh or gelu")
    config.hidden_sizes(cfg)
    return cfg


def _check_dp(cfg, bad):
    if cfg["dp_noise"] < 0:
        bad("dp_noise", "must be >= 0 (0: off)")
    if not cfg["dp_noise"]:
        return
    if not cfg["dp_clip"] > 0:
        bad("dp_clip", "must be > 0")
    if not 0 < cfg["dp_delta"] < 1:
        bad("dp_delta", "must be in (0, 1)")
    if not 0 < cfg["dp_quantile"] < 1:
        bad("dp_quantile", "must be in (0, 1)")
    if cfg["aggregator"] != "mean":
        bad("aggregator", "differential privacy clips and averages: use mean with "
                          "--dp-noise")
    if cfg["dp_adaptive"]:
        from hpcml.parallel.federated.privacy import DPAggregator
        try:
            DPAggregator(cfg["dp_noise"], cfg["dp_clip"], cfg["fraction"] * cfg["clients"],
                         True, cfg["dp_quantile"], cfg["dp_clip_lr"])
        except ValueError as e:
            bad("dp_noise", str(e).split(": ", 1)[1])


def _check_secagg(cfg, bad, m):
    if not cfg["secagg"]:
        return
    if cfg["aggregator"] != "mean" or cfg["dp_noise"]:
        bad("secagg", "the server learns only the sum: use --aggregator mean, without "
                      "--dp-noise")
    if cfg["secagg_threshold"] < 0 or cfg["secagg_threshold"] > m:
        bad("secagg_threshold", f"must be between 1 and the {m} clients of a round (t > n "
                                f"could never unmask; 0: {m // 2 + 1})")
    if not 8 <= cfg["secagg_frac_bits"] <= 40:
        bad("secagg_frac_bits", "must be in 8..40 (the sum of rows x updates must fit in "
                                "64 bits)")


def _check(cfg, key, parse, error):
    """parse(cfg[key]) or one ConfigError naming the setting."""
    try:
        parse(cfg[key])
    except error as e:
        config.bad(cfg, key, str(e).split(": ", 1)[-1])


def parse_args(argv=None):
    return validate(config.parse("python -m hpcml.federated", __doc__, SETTINGS, argv,
                                 positional=("data",)))


def _read(name, comm):
    """(x, y, classes or None, task) of a whole dataset, read by every rank (a simulation
    holds every client's rows; the partition needs every label)."""
    ds = ShardedDataset(name, comm)
    xs, ys = [], []
    for f in ds.files:
        with h5py.File(f, "r") as h:
            xs.append(h["x"][...])
            ys.append(h["y"][...])
    return np.concatenate(xs), np.concatenate(ys), ds.classes, ds.task


def load(cfg, comm):
    """(x, y, x_test, y_test, client ids or None) as the model's dtype, standardised with
    the training union's statistics if asked; cfg gains classes and task."""
    from hpcml.train import _test_name, _train_name
    x, y, classes, task = _read(_train_name(cfg), comm)
    cfg["classes"], cfg["task"] = classes, task
    ids = None
    col = cfg["client_column"]
    if cfg["partition"] == "natural":
        if not 0 <= col < x.shape[1]:
            raise ConfigError(f"client-column = {col}: partition natural needs the column "
                              f"of the client id, 0..{x.shape[1] - 1}")
        ids = x[:, col].copy()
    name = _test_name(dict(cfg, data=cfg["data"]))
    xt, yt = (None, None) if name is None else _read(name, comm)[:2]
    if ids is not None:
        x = np.delete(x, col, axis=1)
        xt = None if xt is None else np.delete(xt, col, axis=1)
    dt = np.dtype(cfg["dtype"])
    x64 = x.astype(np.float64)
    if cfg["standardize"]:
        mean, std = x64.mean(axis=0), x64.std(axis=0)
        std[std == 0] = 1.0
    else:
        mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    def prep(a):
        return None if a is None else ((a.astype(np.float64) - mean) / std).astype(dt)
    ydt = dt if task == "regression" else np.int64
    return prep(x), y.astype(ydt), prep(xt), None if yt is None else yt.astype(ydt), ids


def simulate(cfg, comm, rounds=None):
    """The Federation of cfg after `rounds` rounds (cfg's by default), without outputs,
    evaluation or checkpoints (tests and benchmarks)."""
    x, y, xt, yt, ids = load(cfg, comm)
    fed = Federation(cfg, comm, x, y, xt, yt, ids)
    for _ in range(cfg["rounds"] if rounds is None else rounds):
        fed.step()
    return fed


def run(cfg, comm, log=print):
    """The whole simulation; returns the summary (the same on every rank)."""
    t0 = time.perf_counter()
    rank = comm.Get_rank()
    if rank == 0:
        writable_folder(cfg["output"], "output")
    x, y, xt, yt, ids = load(cfg, comm)
    try:
        fed = Federation(cfg, comm, x, y, xt, yt, ids)
    except (PartitionError, AggregateError) as e:
        raise ConfigError(str(e)) from None
    say = log if rank == 0 and cfg["verbose"] else (lambda *a: None)
    say(f"# {len(fed.clients)} clients ({cfg['partition']}: "
        f"{json.dumps(fed.partition_figures())}), {comm.Get_size()} rank(s)")
    ck = resume.find(cfg)  # every rank reads the same file
    rows = resume.restore(fed, ck) if ck is not None else []
    if ck is not None:
        say(f"# resumed from {ck['path']} (round {fed.round})")
    _rounds(cfg, comm, fed, rows, say)
    reached = next((e["round"] for e in rows if cfg["target"] and
                    e.get("test_accuracy", -1) >= cfg["target"]), None)
    summary = {"job": "federated", "status": "done", "ranks": comm.Get_size(),
               "rounds": fed.round, "clients": len(fed.clients),
               "partition": fed.partition_figures(), "strategy": cfg["strategy"],
               "aggregator": cfg["aggregator"], "bytes_up": fed.bytes_up,
               "bytes_down": fed.bytes_down, "rounds_to_target": reached,
               "seconds": time.perf_counter() - t0, **{k: v for k, v in rows[-1].items()
                                                       if k.startswith("test_")}}
    summary["settings"] = {k: cfg[k] for k in SETTINGS}  # saved with the results
    if ck is not None:
        summary["resumed_from"] = ck["path"]
    if fed.dp is not None:
        summary.update(epsilon=fed.epsilon(), delta=cfg["dp_delta"], dp_clip=fed.dp.clip)
    summary["rounds_per_second"] = fed.round / max(summary["seconds"], 1e-9)
    import hashlib
    summary["params_sha256"] = hashlib.sha256(fed.params.tobytes()).hexdigest()
    config.on_rank0(comm, lambda: _write(cfg, summary, rows), "writing the results")
    return summary


def _rounds(cfg, comm, fed, rows, say):
    """The rounds left; rank 0 writes rounds.jsonl (the resumed rows first) and the
    checkpoints."""
    path = os.path.join(cfg["output"], "rounds.jsonl")
    with (open(path, "w") if comm.Get_rank() == 0 else open(os.devnull, "w")) as out:
        for entry in rows:
            out.write(json.dumps(entry) + "\n")
        while fed.round < cfg["rounds"]:
            entry = fed.step()
            done = False
            if entry["round"] % cfg["eval_every"] == 0 or fed.round == cfg["rounds"]:
                entry.update(fed.evaluate())
                rows.append(entry)
                out.write(json.dumps(entry) + "\n")
                out.flush()
                if comm.Get_rank() == 0:  # append-only, on disk line by line
                    os.fsync(out.fileno())
                say(_line(entry, cfg["rounds"]))
                done = cfg["stop_at_target"] and cfg["target"] and \
                    entry.get("test_accuracy", -1) >= cfg["target"]
            if cfg["checkpoint_dir"] and (fed.round % cfg["checkpoint_every"] == 0 or
                                          fed.round == cfg["rounds"]):
                config.on_rank0(comm, lambda: resume.save(cfg, fed, rows),
                                "writing a checkpoint")
            if done:  # the same decision on every rank (the same accuracy)
                break


def _line(e, total):
    acc = f"  test acc {e['test_accuracy']:.4f}" if "test_accuracy" in e else ""
    loss = f"  test loss {e['test_loss']:.4f}" if "test_loss" in e else ""
    eps = f"  epsilon {e['epsilon']:.3f}" if "epsilon" in e else ""
    train = "-" if e["train_loss"] is None else f"{e['train_loss']:.4f}"
    return (f"round {e['round']}/{total}  clients {e['reported']}/{e['clients']}  train "
            f"loss {train}{acc}{loss}{eps}  up {e['bytes_up'] / 2 ** 20:,.1f} MiB"
            + ("  (aborted: too few survivors)" if e.get("aborted") else ""))


def _write(cfg, summary, rows):
    atomic_write_json(os.path.join(cfg["output"], "summary.json"), summary)
    if not cfg["plot"] or not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    r = [e["round"] for e in rows]
    if "test_accuracy" in rows[0]:
        ax[0].plot(r, [e["test_accuracy"] for e in rows])
        ax[0].set_ylabel("test accuracy")
    ax[1].plot(r, [np.nan if e["train_loss"] is None else e["train_loss"] for e in rows],
               label="clients' train loss")
    if "test_loss" in rows[0]:
        ax[1].plot(r, [e["test_loss"] for e in rows], label="test loss")
    ax[1].legend()
    for a in ax:
        a.set_xlabel("round")
        a.grid(alpha=0.3)
    fig.suptitle(f"{cfg['strategy']}, {cfg['partition']}, C={cfg['fraction']}, "
                 f"E={cfg['local_epochs']}, B={cfg['local_batch'] or 'all'}")
    fig.tight_layout()
    atomic_savefig(fig, os.path.join(cfg["output"], "rounds.png"), dpi=100)
    plt.close(fig)


@hc.entry_point
def main(argv=None):
    return config.run_job(hc.world(), parse_args, run, argv,
                          failures=(CollectiveError, DataError, ValueError),
                          show_settings=lambda cfg: {k: cfg[k] for k in SETTINGS})


if __name__ == "__main__":
    sys.exit(main())
