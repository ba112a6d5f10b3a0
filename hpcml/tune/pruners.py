"""Early stopping on intermediate values (epochs of hpcml.train, or what a function reports).

A pruner sees a running trial's loss at a step (the value to minimise) and the reports of
the trials it may compare with (`others`: {trial number: {step: loss}}; the study gives the
finished trials more than `lag` trials older, so the decision does not depend on timing),
and says whether to stop the trial.

    median      Optuna's MedianPruner: after `startup` trials, prune when the loss at a step
                is worse than the median of the others' losses at that step.
    asha        asynchronous successive halving (Li et al. 2020; Optuna's
                SuccessiveHalvingPruner): rungs at steps min_resource * eta^k; at a rung a
                trial continues only if its loss is in the best 1/eta of the losses recorded
                at that rung (its own included).
    hyperband   ASHA in brackets s = 0.. with min_resource * eta^s (Li et al. 2018); a trial's
                bracket is its number modulo the brackets, and it is compared within it.
"""
import math

import numpy as np

PRUNERS = ("none", "median", "asha", "hyperband")


class NoPruner:
    name = "none"

    def should_prune(self, number, step, loss, others):
        return False


class MedianPruner:
    name = "median"

    def __init__(self, startup=5, warmup=0):
        self.startup, self.warmup = startup, warmup

    def should_prune(self, number, step, loss, others):
        at = [r[step] for r in others.values() if step in r and r[step] is not None]
        if step < self.warmup or len(others) < self.startup or not at:
            return False
        return loss > float(np.median(at))


class ASHAPruner:
    name = "asha"

    def __init__(self, min_resource=1, eta=3, max_resource=None):
        if min_resource < 1 or eta < 2:
            raise ValueError("asha needs min_resource >= 1 and eta >= 2")
        self.min_resource, self.eta, self.max_resource = min_resource, eta, max_resource

    def rung_steps(self):
        k, out = 0, []
        while True:
            s = self.min_resource * self.eta ** k
            if self.max_resource is not None and s >= self.max_resource:
                return out
            out.append(s)
            k += 1
            if k > 60:
                return out

    def should_prune(self, number, step, loss, others):
        if step not in self.rung_steps():
            return False
        at = [r[step] for r in others.values() if step in r and r[step] is not None]
        at.append(loss)
        keep = max(1, len(at) // self.eta)
        return loss > sorted(at)[keep - 1]


class HyperbandPruner:
    name = "hyperband"

    def __init__(self, min_resource=1, eta=3, max_resource=27):
        self.brackets = []
        s = 0
        while min_resource * eta ** s < max_resource:
            self.brackets.append(ASHAPruner(min_resource * eta ** s, eta, max_resource))
            s += 1
        self.brackets = self.brackets or [ASHAPruner(min_resource, eta, max_resource)]

    def should_prune(self, number, step, loss, others):
        b = number % len(self.brackets)
        mine = {n: r for n, r in others.items() if n % len(self.brackets) == b}
        return self.brackets[b].should_prune(number, step, loss, mine)


def make(name, min_resource=1, eta=3, max_resource=None, startup=5):
    if name in ("none", "", None):
        return NoPruner()
    if name == "median":
        return MedianPruner(startup=startup)
    if name == "asha":
        return ASHAPruner(min_resource, eta, max_resource)
    if name == "hyperband":
        return HyperbandPruner(min_resource, eta, max_resource or
                               min_resource * eta ** 3)
    raise ValueError(f"pruner {name!r}: one of {', '.join(PRUNERS)}")


def finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)
