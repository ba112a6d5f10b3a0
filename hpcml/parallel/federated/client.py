"""A virtual client's round: E local epochs of mini-batch SGD at batch B on its own rows,
starting from the global model, with hpcml.nn and hpcml.optim; FedProx adds the proximal
term mu/2 ||w - w_global||^2 to the local objective. Its update is the change of the
parameters. The client's shuffling comes from (seed, round, client), so the update does
not depend on which rank simulates it.
"""
import numpy as np

from hpcml import nn, optim

ATTACKS = ("sign-flip", "scale")


def parse_attack(text):
    """'sign-flip' -> ('sign-flip', -1.0); 'scale:10' -> ('scale', 10.0)."""
    kind, _, arg = str(text).partition(":")
    if kind == "sign-flip" and not arg:
        return kind, -1.0
    if kind == "scale":
        try:
            return kind, float(arg)
        except ValueError:
            pass
    raise ValueError(f"attack = {text!r}: sign-flip or scale:FACTOR (e.g. scale:10)")


class Client:
    """The local trainer a rank reuses for each client it simulates (one model, a fresh
    optimizer per client and round)."""

    def __init__(self, model, x, y, lr, epochs, batch, mu=0.0, momentum=0.0,
                 weight_decay=0.0, regression=False):
        self.model, self.x, self.y = model, x, y
        self.lr, self.epochs, self.batch, self.mu = lr, epochs, batch, mu
        self.momentum, self.weight_decay = momentum, weight_decay
        self.regression = regression

    def update(self, w_global, rows, seed, rnd, client, steps=None):
        """(the client's update w_local - w_global, its rows, its mean training loss of the
        round) for the client holding `rows`; `steps` caps its local steps (a straggler's
        partial work), None for all."""
        m = self.model
        m.params[...] = w_global
        opt = optim.SGD(m, self.lr, self.momentum, False, self.weight_decay)
        rng = np.random.default_rng([seed, rnd, client, 0xC1])
        n = len(rows)
        b = n if self.batch <= 0 else min(self.batch, n)
        loss_sum, seen, done = 0.0, 0, 0
        for _ in range(self.epochs):
            order = rows[rng.permutation(n)]
            for s in range(0, n, b):
                if steps is not None and done >= steps:
                    break
                idx = order[s:s + b]
                out = m.forward(self.x[idx], train=True)
                if self.regression:
                    loss, dy = nn.mse(out, self.y[idx].reshape(out.shape))
                else:
                    loss, dy = nn.cross_entropy(out, self.y[idx])
                m.backward(dy, False, input_grad=False)
                if self.mu:
                    m.grads += m.grads.dtype.type(self.mu) * (m.params - w_global)
                opt.step(lr=self.lr)
                loss_sum += loss * len(idx)
                seen += len(idx)
                done += 1
        return m.params - w_global, n, loss_sum / max(seen, 1)
