"""Federated simulation over MPI ranks: N virtual clients are slices of the training rows
(hpcml.parallel.federated.partition), not processes. Each round:

1. the round's clients: max(1, round(C N)) sampled without replacement from
   default_rng([seed, round]); each then drops out with probability `dropout_rate`, and a
   `stragglers` fraction of the rest does only part of its local work (a random number of
   its local steps: FedProx's partial work), or is dropped with `drop_stragglers`;
2. the surviving clients are dealt over the ranks in order (contiguous runs); each rank
   trains its clients from the global model (hpcml.parallel.federated.client) and the updates are
   gathered on every rank in client order (copies, no arithmetic);
3. every rank aggregates the same bytes in the same order (hpcml.parallel.federated.aggregate) and
   takes the same server step, so the global model does not depend on how many ranks
   simulate the clients (bit-identical at any rank count);
4. the global model is evaluated on the test set (rows split over the ranks, sums
   all-reduced) every `eval_every` rounds.

Byzantine clients (a fixed `byzantine` fraction of the N, from the seed) replace their
update when sampled: sign-flip (-delta) or scale:K (K delta).
"""
import time

import numpy as np

from hpcml import comm as hc
from hpcml import nn

from .aggregate import ServerOptimizer, aggregate, parse_aggregator
from .client import Client, parse_attack
from .partition import describe, partition


def round_clients(seed, rnd, n_clients, fraction, dropout_rate=0.0, stragglers=0.0,
                  poisson=False):
    """(sampled client ids, the ones that report, {client: True} for stragglers): the same
    on every rank, from (seed, round) alone. poisson: each client independently with
    probability `fraction` (differential privacy's sampling), else max(1, round(C N))."""
    rng = np.random.default_rng([seed, rnd, 0x5A])
    if poisson:
        chosen = np.flatnonzero(rng.random(n_clients) < fraction)
    else:
        m = max(1, int(round(fraction * n_clients)))
        chosen = np.sort(rng.choice(n_clients, m, replace=False))
    m = len(chosen)
    u = rng.random(m)
    alive = chosen[u >= dropout_rate]
    s = rng.random(len(alive))
    slow = {int(c) for c, v in zip(alive, s) if v < stragglers}
    return chosen, alive, slow


def byzantine_set(seed, n_clients, fraction):
    k = int(round(fraction * n_clients))
    rng = np.random.default_rng([seed, 0xB1])
    return set(int(c) for c in rng.choice(n_clients, k, replace=False)) if k else set()


class Federation:
    """The simulation's state on one rank: data, clients, the global model (float64) and
    the server's optimizer. `cfg`: validated settings (hpcml.federated.job.SETTINGS)."""

    def __init__(self, cfg, comm, x, y, x_test=None, y_test=None, ids=None):
        self.cfg, self.comm = cfg, comm
        self.x, self.y, self.x_test, self.y_test = x, y, x_test, y_test
        self.regression = cfg.get("task", "classification") == "regression"
        self.clients = partition(cfg["partition"], y, cfg["clients"], cfg["seed"], ids)
        self.sizes = np.array([len(c) for c in self.clients])
        outputs = 1 if self.regression else int(cfg["classes"])
        self.model = nn.mlp(x.shape[1], cfg["hidden_sizes"], outputs, cfg["activation"],
                            dtype=np.dtype(cfg["dtype"]), seed=cfg["seed"], init=cfg["init"])
        self.params = self.model.params.astype(np.float64)  # the global model
        self.server = ServerOptimizer(self.params, cfg["strategy"], cfg["server_lr"],
                                      cfg["server_momentum"], (cfg["beta1"], cfg["beta2"]),
                                      cfg["tau"])
        self.agg = parse_aggregator(cfg["aggregator"])
        self.byzantine = byzantine_set(cfg["seed"], len(self.clients), cfg["byzantine"])
        self.attack = parse_attack(cfg["attack"])
        self.local = Client(self.model, x, y, cfg["lr"], cfg["local_epochs"],
                            cfg["local_batch"], cfg["mu"], cfg["local_momentum"],
                            cfg["weight_decay"], self.regression)
        self.round = 0
        self.bytes_up = self.bytes_down = 0
        self.dp = None
        if cfg["dp_noise"]:
            from .privacy import DPAggregator, rdp
            self.dp = DPAggregator(cfg["dp_noise"], cfg["dp_clip"],
                                   cfg["fraction"] * len(self.clients), cfg["dp_adaptive"],
                                   cfg["dp_quantile"], cfg["dp_clip_lr"])
            self.rdp_round = rdp(cfg["fraction"], cfg["dp_noise"], 1)  # one round's

    def partition_figures(self):
        return describe(self.clients, self.y)

    def step(self):
        """One round; returns its figures (the same on every rank)."""
        cfg, comm, t0 = self.cfg, self.comm, time.perf_counter()
        chosen, alive, slow = round_clients(cfg["seed"], self.round, len(self.clients),
                                            cfg["fraction"], cfg["dropout_rate"],
                                            cfg["stragglers"], self.dp is not None)
        if cfg["drop_stragglers"]:
            alive = np.array([c for c in alive if int(c) not in slow], np.int64)
        parts = np.array_split(alive, comm.Get_size())
        mine = parts[comm.Get_rank()]
        w = self.params.astype(self.model.dtype)
        local = np.empty((len(mine), self.model.size), self.model.dtype)
        losses = np.zeros(len(mine))
        for i, c in enumerate(mine):
            local[i], _, losses[i] = self._client(w, int(c), int(c) in slow)
        counts = [len(p) for p in parts]
        gather = (lambda a: hc.allgather_rows(a, comm, counts=counts)) \
            if comm.Get_size() > 1 else (lambda a: a)
        if cfg["secagg"]:  # what leaves a client: its masked update, rows and loss
            local = self._masked(chosen, mine, local, losses)
        updates = gather(local)
        nbytes = self.model.size * self.model.dtype.itemsize
        self.bytes_down += len(chosen) * nbytes
        self.bytes_up += len(alive) * (local.shape[1] * local.dtype.itemsize if
                                       cfg["secagg"] else nbytes)
        aborted, train_loss = self._aggregate(chosen, alive, updates,
                                              None if cfg["secagg"] else gather(losses))
        self.round += 1
        extra = {} if self.dp is None else {"epsilon": self.epsilon(),
                                            "dp_clip": self.dp.clip}
        if cfg["secagg"]:
            extra["aborted"] = aborted
        return {**extra, "round": self.round, "clients": int(len(chosen)),
                "reported": int(len(alive)), "stragglers": len(slow),
                "train_loss": train_loss, "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down, "seconds": time.perf_counter() - t0}

    def _aggregate(self, chosen, alive, updates, loss):
        """The server's step of the round: (aborted, the reporting clients' rows-weighted
        training loss, None when unknown). loss: each reporting client's, None under
        secure aggregation (its sum travels masked)."""
        cfg = self.cfg
        w = self.sizes[alive].astype(np.float64)
        mean_loss = float((loss * w).sum() / w.sum()) if loss is not None and len(w) \
            else None
        if self.dp is not None:  # every round is a mechanism, even with no client
            self.server.step(self.dp(updates, np.random.default_rng(
                [cfg["seed"], self.round, 0xD9])))
        elif cfg["secagg"]:
            out = self._secure_mean(chosen, alive, updates)
            if out is None:
                return True, None
            self.server.step(out[0])
            mean_loss = out[1]
        elif len(alive):
            self.server.step(aggregate(updates, w, self.agg[0], self.agg[1]))
        return False, mean_loss

    def _client(self, w, c, straggler):
        cfg = self.cfg
        steps = None
        if straggler:  # a random part of its local steps, at least one
            b = self.sizes[c] if cfg["local_batch"] <= 0 else min(cfg["local_batch"],
                                                                  self.sizes[c])
            full = cfg["local_epochs"] * -(-self.sizes[c] // b)
            rng = np.random.default_rng([cfg["seed"], self.round, c, 0x57])
            steps = int(rng.integers(1, max(full, 2)))
        delta, n, loss = self.local.update(w, self.clients[c], cfg["seed"], self.round, c,
                                           steps)
        if c in self.byzantine:
            delta *= delta.dtype.type(self.attack[1])
        return delta, n, loss

    # --- secure aggregation (hpcml.parallel.federated.secagg) ------------------------------------
    def _secagg_parties(self, chosen):
        """The round's clients as SecAgg parties (position order), their public keys, and
        the threshold; the simulation derives each client's secrets from (seed, round,
        client), so every rank can play any of them."""
        from .secagg import SecAggClient, _hkdf
        cfg = self.cfg
        if getattr(self, "_parties", (None,))[0] == self.round:  # made once a round
            return self._parties[1]
        parties = [SecAggClient(i, int(c), _hkdf(b"%d %d %d" % (cfg["seed"], self.round,
                                                                 int(c)), b"hpcml-secagg"))
                   for i, c in enumerate(chosen)]
        n = len(parties)
        t = cfg["secagg_threshold"] or n // 2 + 1
        self._parties = (self.round, (parties, [p.pk for p in parties], min(t, n)))
        return self._parties[1]

    def _masked(self, chosen, mine, local, losses):
        """y_i for this rank's clients: their update times their rows, then their rows and
        their training loss times their rows as two more coordinates, quantised and
        masked."""
        from .secagg import quantize
        parties, pks, _ = self._secagg_parties(chosen)
        where = {int(c): i for i, c in enumerate(chosen)}
        out = np.empty((len(mine), local.shape[1] + 2), np.uint64)
        for k, c in enumerate(mine):
            n = float(self.sizes[int(c)])
            x = quantize(np.append(local[k].astype(np.float64) * n, (n, n * losses[k])),
                         self.cfg["secagg_frac_bits"])
            out[k] = parties[where[int(c)]].masked(x, pks)
        return out

    def _secure_mean(self, chosen, alive, masked):
        """(the rows-weighted mean update, the rows-weighted training loss) from the sum of
        the survivors' masked vectors (None: too few survivors, the round is aborted)."""
        from .secagg import dequantize, unmask
        parties, pks, t = self._secagg_parties(chosen)
        where = {int(c): i for i, c in enumerate(chosen)}
        survivors = [where[int(c)] for c in alive]
        if len(survivors) < t:
            return None
        total = np.zeros(masked.shape[1], np.uint64)
        for row in masked:
            total += row
        shares = [p.shares(len(parties), t) for p in parties]
        s = dequantize(unmask(total, len(parties), survivors, pks, shares, t),
                       self.cfg["secagg_frac_bits"])
        return s[:-2] / s[-2], float(s[-1] / s[-2])

    def epsilon(self):
        """The privacy spent so far: epsilon at --dp-delta after self.round rounds."""
        from .privacy import ORDERS, epsilon_from_rdp
        return epsilon_from_rdp(self.rdp_round * self.round, self.cfg["dp_delta"], ORDERS)[0]

    def evaluate(self):
        """The global model's test figures (test rows split over the ranks)."""
        if self.x_test is None:
            return {}
        m, comm = self.model, self.comm
        m.params[...] = self.params
        lo, hi = hc.row_bounds(len(self.y_test), comm.Get_size(), comm.Get_rank())
        s = np.zeros(3)
        for a in range(lo, hi, 4096):
            b = min(hi, a + 4096)
            out = m.forward(self.x_test[a:b], train=False)
            if self.regression:
                loss, _ = nn.mse(out, self.y_test[a:b])
                s += (loss * (b - a), 0.0, b - a)
            else:
                loss, _ = nn.cross_entropy(out, self.y_test[a:b])
                s += (loss * (b - a), float((out.argmax(1) == self.y_test[a:b]).sum()), b - a)
        if comm.Get_size() > 1:
            s = hc.reduce_array(s, "sum", comm)
        n = max(s[2], 1)
        out = {"test_loss": s[0] / n}
        if not self.regression:
            out["test_accuracy"] = s[1] / n
        return out

    def state_dict(self):
        return {"round": self.round, "params": self.params.copy(),
                "dp_clip": self.dp.clip if self.dp is not None else 0.0,
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                **{f"server_{k}": v for k, v in self.server.state_dict().items()}}

    def load_state_dict(self, state):
        self.round = int(state["round"])
        self.params[...] = state["params"]
        self.bytes_up, self.bytes_down = int(state["bytes_up"]), int(state["bytes_down"])
        if self.dp is not None:
            self.dp.clip = float(state["dp_clip"])
        self.server.load_state_dict({k[7:]: v for k, v in state.items()
                                     if k.startswith("server_")})
