"""Samplers: grid, random, Sobol (QMC), TPE and Gaussian-process Bayesian optimisation.

Every sampler proposes a point of the unit cube (one coordinate per parameter; the space
decodes it) from the finished trials (`done`: [(unit point, loss)], loss = the value to
minimise; inactive coordinates NaN) and the running ones (`pending`: unit points), with a
NumPy generator the study derives from (seed, trial number), so a study is reproducible.
Running trials are not left out: TPE counts them among the bad trials and GP-BO gives
them the best loss seen so far (a "constant liar", Ginsbourger et al. 2010), so parallel
workers do not propose the same point.

References: Bergstra et al. 2011 (TPE) and Optuna's TPESampler (its default gamma, prior
and bandwidth rule, here univariate); Rasmussen & Williams 2006 (GP regression, marginal
likelihood); Jones et al. 1998 (expected improvement).
"""
import itertools
import math

import numpy as np

SAMPLERS = ("grid", "random", "sobol", "tpe", "gp")


class RandomSampler:
    name = "random"

    def __init__(self, space, seed=0, **_):
        self.d = len(space.params)

    def propose(self, done, pending, rng, number):
        return rng.random(self.d)


class SobolSampler:
    """Scrambled Sobol points in trial order (scipy.stats.qmc; Owen scrambling from the
    study's seed): point n is the n-th of one sequence, whichever worker asks."""
    name = "sobol"

    def __init__(self, space, seed=0, **_):
        from scipy.stats import qmc
        self.engine = qmc.Sobol(len(space.params), scramble=True, seed=seed)
        self.cache = np.zeros((0, len(space.params)))

    def propose(self, done, pending, rng, number):
        if number >= len(self.cache):  # powers of two keep the sequence balanced
            m = max(1, int(math.ceil(math.log2(number + 1))))
            self.engine.reset()
            self.cache = self.engine.random_base2(m)
        return self.cache[number].copy()


class GridSampler:
    """Every combination of each parameter's grid (--grid-points values of a numeric
    parameter, every choice), in order; conditional parameters only where active. The study
    ends when the grid is done."""
    name = "grid"

    def __init__(self, space, seed=0, grid_points=5, **_):
        grids = [p.grid(grid_points) for p in space.params]
        seen, self.points = set(), []
        for combo in itertools.product(*grids):
            values = {}
            for p, v in zip(space.params, combo):
                if space.active(p, values):
                    values[p.name] = v
            key = tuple(sorted((k, repr(v)) for k, v in values.items()))
            if key not in seen:
                seen.add(key)
                self.points.append(space.encode(values))

    def __len__(self):
        return len(self.points)

    def propose(self, done, pending, rng, number):
        return None if number >= len(self.points) else self.points[number].copy()


class TPESampler:
    """Tree-structured Parzen estimator, per parameter (Optuna's univariate default):
    after `startup` random trials, the finished (and, as bad, the running) trials are split
    into the best gamma(n) = min(ceil(0.1 n), 25) and the rest; each side's density is a
    uniform prior plus a truncated Gaussian at every observation, with Optuna's bandwidth
    (the larger gap to a neighbour, clipped to [1 / min(100, n + 1), 1]); of `candidates`
    draws from the good density the one with the largest good/bad ratio is proposed."""
    name = "tpe"

    def __init__(self, space, seed=0, startup=10, candidates=24, **_):
        self.space, self.startup, self.candidates = space, startup, candidates

    def propose(self, done, pending, rng, number):
        d = len(self.space.params)
        if len(done) < self.startup:
            return rng.random(d)
        loss = np.array([v for _, v in done])
        order = np.argsort(loss, kind="stable")
        n_good = min(int(math.ceil(0.1 * len(done))), 25)
        pts = np.array([u for u, _ in done])
        good = pts[order[:n_good]]
        bad = np.vstack([pts[order[n_good:]]] + ([np.array(pending)] if pending else []))
        out = np.empty(d)
        for j, p in enumerate(self.space.params):
            g, b = good[:, j], bad[:, j]
            g, b = g[~np.isnan(g)], b[~np.isnan(b)]
            if p.kind == "categorical":
                out[j] = _tpe_categorical(g, b, len(p.choices), rng, self.candidates)
            else:
                out[j] = _tpe_numeric(g, b, rng, self.candidates)
        return out


def _bandwidths(obs):
    if len(obs) == 0:
        return obs
    srt = np.sort(obs)
    edges = np.concatenate([[0.0], srt, [1.0]])
    gaps = np.maximum(np.diff(edges)[:-1], np.diff(edges)[1:])
    sig = np.empty_like(obs)
    sig[np.argsort(obs, kind="stable")] = gaps
    return np.clip(sig, 1.0 / min(100.0, len(obs) + 1.0), 1.0)


def _parzen_logpdf(x, obs, sig):
    """log density of (uniform prior + truncated Gaussians) / (n + 1) at points x."""
    from scipy.special import ndtr
    dens = np.ones_like(x)  # the prior: uniform on [0, 1]
    if len(obs):
        z = (x[:, None] - obs[None, :]) / sig[None, :]
        mass = ndtr((1 - obs) / sig) - ndtr(-obs / sig)  # truncation to [0, 1]
        dens = dens + np.sum(np.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * sig * mass),
                             axis=1)
    return np.log(dens / (len(obs) + 1))


def _tpe_numeric(good, bad, rng, n):
    sig = _bandwidths(good)
    k = rng.integers(0, len(good) + 1, n)  # which component: len(good) = the prior
    cand = np.empty(n)
    for i, c in enumerate(k):
        if c == len(good):
            cand[i] = rng.random()
        else:
            while True:  # truncated to [0, 1] by rejection
                v = rng.normal(good[c], sig[c])
                if 0.0 <= v <= 1.0:
                    cand[i] = v
                    break
    score = _parzen_logpdf(cand, good, sig) - _parzen_logpdf(cand, bad, _bandwidths(bad))
    return cand[int(np.argmax(score))]


def _tpe_categorical(good, bad, k, rng, n):
    def weights(obs):
        idx = np.minimum((obs * k).astype(int), k - 1)
        return (np.bincount(idx, minlength=k) + 1.0) / (len(obs) + k)
    wg, wb = weights(good), weights(bad)
    cand = rng.choice(k, size=n, p=wg)
    best = cand[int(np.argmax(np.log(wg[cand]) - np.log(wb[cand])))]
    return (best + 0.5) / k


def make(name, space, seed=0, **kw):
    from .gp import GPSampler
    classes = {"grid": GridSampler, "random": RandomSampler, "sobol": SobolSampler,
               "tpe": TPESampler, "gp": GPSampler}
    if name not in classes:
        raise ValueError(f"sampler {name!r}: one of {', '.join(SAMPLERS)}")
    return classes[name](space, seed=seed, **kw)
