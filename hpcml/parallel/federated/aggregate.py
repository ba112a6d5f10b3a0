"""The server side of a federated round: aggregate the clients' updates (robustly if
asked), then the server's own optimizer step (Reddi et al. 2021, "Adaptive Federated
Optimization"). Everything in float64 and in client order, so every rank that holds the
same updates computes the same bytes.

An update is a client's model after local training minus the global model it started
from (delta_i), with its row count n_i.

Aggregators (`--aggregator`):
* ``mean``: sum_i n_i delta_i / sum_i n_i (FedAvg's weighted mean).
* ``median``: the coordinate-wise median (FedMedian; unweighted).
* ``trimmed:BETA``: per coordinate, the floor(BETA m) largest and smallest values of the m
  updates dropped, the rest averaged (FedTrimmedAvg; 0 <= BETA < 0.5).
* ``krum:F``: the update whose summed squared distance to its m - F - 2 nearest others is
  smallest (Blanchard et al. 2017; F Byzantine clients tolerated).
* ``multikrum:F:K``: the weighted mean (by rows, as Flower's) of the K updates with the
  smallest Krum scores.

Server optimizers (`--strategy`; the aggregate A acts as a pseudo-gradient, -A):
* ``fedavg`` / ``fedsgd`` / ``fedprox``: w += server_lr * A (server_lr 1: the mean model).
* ``fedavgm``: v = server_momentum * v + A; w += server_lr * v.
* ``fedadagrad``: v += A^2; ``fedadam``: m = b1 m + (1-b1) A, v = b2 v + (1-b2) A^2;
  ``fedyogi``: v -= (1-b2) A^2 sign(v - A^2); then w += server_lr * m / (sqrt(v) + tau)
  (fedadagrad: m = A).
"""
import numpy as np

STRATEGIES = ("fedsgd", "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
AGGREGATORS = ("mean", "median", "trimmed", "krum", "multikrum")


class AggregateError(ValueError):
    """A strategy or aggregator that cannot run; the message names the setting."""


def parse_aggregator(text, clients=None):
    """'trimmed:0.1' -> ('trimmed', (0.1,)); checked against the clients per round."""
    kind, *args = str(text).split(":")
    if kind not in AGGREGATORS:
        raise AggregateError(f"aggregator = {text!r}: one of mean, median, trimmed:BETA, "
                             f"krum:F, multikrum:F:K")
    want = {"mean": 0, "median": 0, "trimmed": 1, "krum": 1, "multikrum": 2}[kind]
    try:
        if len(args) != want:
            raise ValueError
        vals = (float(args[0]),) if kind == "trimmed" else tuple(int(a) for a in args)
    except ValueError:
        raise AggregateError(f"aggregator = {text!r}: {kind} takes {want} argument(s) "
                             f"(e.g. trimmed:0.1, krum:2, multikrum:2:5)") from None
    if kind == "trimmed" and not 0 <= vals[0] < 0.5:
        raise AggregateError(f"aggregator = {text!r}: BETA must be in [0, 0.5)")
    if kind in ("krum", "multikrum"):
        if vals[0] < 0 or (kind == "multikrum" and vals[1] < 1):
            raise AggregateError(f"aggregator = {text!r}: F >= 0 (and K >= 1)")
        if clients is not None and clients < vals[0] + 3:
            raise AggregateError(f"aggregator = {text!r}: Krum needs at least F + 3 = "
                                 f"{vals[0] + 3} updates per round; {clients} clients are "
                                 f"sampled")
    return kind, vals


def aggregate(updates, weights, kind="mean", args=()):
    """The aggregate (float64) of `updates` (m x P, client order) with row counts
    `weights`."""
    u = np.asarray(updates, np.float64)
    w = np.asarray(weights, np.float64)
    if kind == "mean":
        out = np.zeros(u.shape[1])
        for i in range(len(u)):  # client order, one add each: the same bytes everywhere
            out += w[i] * u[i]
        return out / w.sum()
    if kind == "median":
        return np.median(u, axis=0)
    if kind == "trimmed":
        k = int(np.floor(args[0] * len(u)))
        s = np.sort(u, axis=0)
        return s[k:len(u) - k].mean(axis=0)
    scores = krum_scores(u, args[0])
    if kind == "krum":
        return u[int(np.argmin(scores))].copy()
    best = np.sort(np.argsort(scores, kind="stable")[:args[1]])
    return aggregate(u[best], w[best], "mean")


def krum_scores(u, f):
    """Each update's summed squared distance to its m - f - 2 nearest other updates
    (distances from the differences themselves: no cancellation)."""
    m = len(u)
    d = np.empty((m, m))
    for i in range(m):
        diff = u - u[i]
        d[i] = np.einsum("ij,ij->i", diff, diff)
    near = max(1, m - f - 2)
    out = np.empty(m)
    for i in range(m):
        others = np.delete(d[i], i)
        out[i] = np.sort(others)[:near].sum()
    return out


class ServerOptimizer:
    """The server's step on the global parameters (float64 `params`, updated in place)."""

    def __init__(self, params, strategy="fedavg", lr=1.0, momentum=0.9, betas=(0.9, 0.99),
                 tau=1e-3):
        if strategy not in STRATEGIES:
            raise AggregateError(f"strategy = {strategy!r}: one of {', '.join(STRATEGIES)}")
        self.params, self.strategy, self.lr = params, strategy, float(lr)
        self.momentum, self.betas, self.tau = float(momentum), betas, float(tau)
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        if strategy in ("fedadagrad", "fedadam", "fedyogi"):
            self.v += tau * tau  # Reddi et al.: v_{-1} >= tau^2
        self.rounds = 0

    def step(self, a):
        """Apply the aggregate `a` (float64, the mean change the clients propose)."""
        s, b1, b2 = self.strategy, self.betas[0], self.betas[1]
        if s in ("fedavg", "fedsgd", "fedprox"):
            self.params += self.lr * a
        elif s == "fedavgm":
            self.m *= self.momentum
            self.m += a
            self.params += self.lr * self.m
        else:
            a2 = a * a
            if s == "fedadagrad":
                self.m[...] = a
                self.v += a2
            else:
                self.m *= b1
                self.m += (1 - b1) * a
                if s == "fedadam":
                    self.v *= b2
                    self.v += (1 - b2) * a2
                else:  # fedyogi
                    self.v -= (1 - b2) * a2 * np.sign(self.v - a2)
            self.params += self.lr * self.m / (np.sqrt(self.v) + self.tau)
        self.rounds += 1

    def state_dict(self):
        return {"m": self.m.copy(), "v": self.v.copy(), "rounds": self.rounds}

    def load_state_dict(self, state):
        self.m[...], self.v[...] = state["m"], state["v"]
        self.rounds = int(state["rounds"])
