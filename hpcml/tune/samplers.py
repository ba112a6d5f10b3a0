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
    """Tree-structured Parzen estimator (Bergstra et al. 2011) with Optuna's defaults:
    after `startup` random trials, the finished trials are split into the best gamma(n) =
    min(ceil(0.1 n), 25) and the rest (running trials join the rest: a constant liar).
    multivariate (Optuna's default): each side's density is a mixture over the whole space:
    a product of truncated Gaussians at every observation, each dimension's bandwidth its
    larger gap to a neighbour (Optuna's rule and clip), and a prior component (centre,
    sigma = the range); older trials down-weighted past 25 as Optuna's default_weights; a
    categorical dimension keeps 0.9 of a kernel on its own choice. Conditional spaces fall
    back to one such density per parameter. Of `candidates` draws from the good density
    the one with the largest good/bad ratio is proposed."""
    name = "tpe"

    def __init__(self, space, seed=0, startup=10, candidates=24, multivariate=True, **_):
        self.space, self.startup, self.candidates = space, startup, candidates
        self.multivariate = multivariate and not any(p.when for p in space.params)

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
        if self.multivariate:
            kinds = [len(p.choices) if p.kind == "categorical" else 0
                     for p in self.space.params]
            w_all = _age_weights(len(done))  # Optuna's default_weights, by trial order
            wg = w_all[order[:n_good]]
            wb = np.concatenate([w_all[order[n_good:]], np.ones(len(pending))])
            return _mv_propose(good, wg, bad, wb, kinds, rng, self.candidates)
        out = np.empty(d)
        for j, p in enumerate(self.space.params):
            g, b = good[:, j], bad[:, j]
            g, b = g[~np.isnan(g)], b[~np.isnan(b)]
            if p.kind == "categorical":
                out[j] = _tpe_categorical(g, b, len(p.choices), rng, self.candidates)
            else:
                out[j] = _tpe_numeric(g, b, rng, self.candidates)
        return out


def _age_weights(n):
    """Optuna's default_weights: 1 each below 25 trials; else a ramp from 1/n to 1 over
    the oldest n - 25 (by trial order) and 1 for the newest 25."""
    if n < 25:
        return np.ones(n)
    return np.concatenate([np.linspace(1.0 / n, 1.0, num=n - 25), np.ones(25)])


def _mv_components(obs, w, kinds):
    """(means m x d, sigmas m x d, weights m) of a multivariate Parzen estimator over the
    unit cube (Optuna's): a kernel per observation with each dimension's bandwidth by the
    neighbour-gap rule, then the prior (centre, sigma 1)."""
    n, d = obs.shape
    sigmas = np.ones((n + 1, d))
    for j in range(d):
        if n:
            sigmas[:n, j] = _bandwidths(obs[:, j])
    means = np.vstack([obs, np.full((1, d), 0.5)])
    weights = np.concatenate([w, [1.0]])
    return means, sigmas, weights / weights.sum()


def _mv_logpdf(x, means, sigmas, weights, kinds):
    from scipy.special import logsumexp, ndtr
    lp = np.zeros((len(x), len(means)))
    for j, k in enumerate(kinds):
        if k:  # categorical: 0.9 of a kernel on its own choice (the prior: uniform)
            cx = np.minimum((x[:, j] * k).astype(int), k - 1)
            cm = np.minimum((means[:, j] * k).astype(int), k - 1)
            same = cx[:, None] == cm[None, :]
            p = np.where(same, 0.9, 0.1 / max(k - 1, 1)) if k > 1 else np.ones_like(same)
            p[:, -1] = 1.0 / k
            lp += np.log(p)
        else:
            m, s = means[:, j], sigmas[:, j]
            z = (x[:, j][:, None] - m[None, :]) / s[None, :]
            mass = ndtr((1 - m) / s) - ndtr(-m / s)
            lp += -0.5 * z * z - np.log(math.sqrt(2 * math.pi) * s * mass)[None, :]
    return logsumexp(lp + np.log(weights)[None, :], axis=1)


def _mv_propose(good, wg, bad, wb, kinds, rng, n):
    mg, sg, pg = _mv_components(good, wg, kinds)
    mb, sb, pb = _mv_components(bad, wb, kinds)
    comp = rng.choice(len(pg), size=n, p=pg)
    cand = np.empty((n, good.shape[1]))
    for j, k in enumerate(kinds):
        for i, c in enumerate(comp):
            if k and c < len(pg) - 1 and rng.random() < 0.9:  # a kernel's own choice
                cand[i, j] = mg[c, j]
            elif k:
                cand[i, j] = (rng.integers(0, k) + 0.5) / k
            else:
                while True:  # truncated to [0, 1] by rejection
                    v = rng.normal(mg[c, j], sg[c, j])
                    if 0.0 <= v <= 1.0:
                        cand[i, j] = v
                        break
    score = _mv_logpdf(cand, mg, sg, pg, kinds) - _mv_logpdf(cand, mb, sb, pb, kinds)
    return cand[int(np.argmax(score))]


def _bandwidths(obs):
    """Optuna's bandwidths on [0, 1]: each observation's larger gap to a neighbour (the
    ends 0 and 1 count as neighbours, but an end observation takes its inner gap), clipped
    to [1 / min(100, n + 2), 1] (n observations and the prior)."""
    n = len(obs)
    if n == 0:
        return obs
    order = np.argsort(obs, kind="stable")
    edges = np.concatenate([[0.0], obs[order], [1.0]])
    sig = np.maximum(edges[1:-1] - edges[:-2], edges[2:] - edges[1:-1])
    if n >= 2:
        sig[0], sig[-1] = edges[2] - edges[1], edges[-2] - edges[-3]
    out = np.empty(n)
    out[order] = sig
    return np.clip(out, 1.0 / min(100.0, n + 2.0), 1.0)


def _parzen_logpdf(x, obs, sig):
    """log density of the prior (centre, sigma 1) and a Gaussian at every observation,
    each truncated to [0, 1], equally weighted."""
    means, sigmas = np.append(obs, 0.5), np.append(sig, 1.0)
    return _mv_logpdf(x[:, None], means[:, None], sigmas[:, None],
                      np.full(len(means), 1.0 / len(means)), [0])


def _tpe_numeric(good, bad, rng, n):
    sig = _bandwidths(good)
    means, sigmas = np.append(good, 0.5), np.append(sig, 1.0)
    k = rng.integers(0, len(means), n)  # which component (the last: the prior)
    cand = np.empty(n)
    for i, c in enumerate(k):
        while True:  # truncated to [0, 1] by rejection
            v = rng.normal(means[c], sigmas[c])
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
