"""Gaussian-process Bayesian optimisation (the `gp` sampler), NumPy and SciPy only.

A GP with a Matern-5/2 kernel with one length scale per parameter (ARD), a signal variance
and a noise variance on the unit cube, the losses standardised; its hyperparameters are
fitted by maximising the log marginal likelihood (L-BFGS-B from two fixed starts, so a
study is reproducible). The next point maximises expected improvement (Jones et al. 1998)
over 2,000 random points and 500 near the best ones, the best few refined by L-BFGS-B.
Running trials enter the GP with the best loss seen so far (constant liar, "CL-min",
Ginsbourger et al. 2010), so workers proposing at the same time spread out. The first
`startup` trials are scrambled Sobol points. Inactive (conditional) coordinates are 0.5.
"""
import math

import numpy as np

SQRT5 = math.sqrt(5.0)


def matern52(a, b, ls, s2):
    d = (a[:, None, :] - b[None, :, :]) / ls
    r = np.sqrt(np.maximum(np.sum(d * d, axis=-1), 0.0))
    return s2 * (1 + SQRT5 * r + 5.0 / 3.0 * r * r) * np.exp(-SQRT5 * r)


class GP:
    """Posterior of a zero-mean GP given (x, y) and theta = [log ls..., log s2, log noise]."""

    def __init__(self, x, y, theta):
        from scipy.linalg import cho_solve, cholesky
        d = x.shape[1]
        self.x, self.ls = x, np.exp(theta[:d])
        self.s2, self.noise = math.exp(theta[d]), math.exp(theta[d + 1])
        self.k_signal = matern52(x, x, self.ls, self.s2)
        k = self.k_signal + (self.noise + 1e-9) * np.eye(len(x))
        self.chol = cholesky(k, lower=True)
        self.alpha = cho_solve((self.chol, True), y)

    def predict(self, xs):
        from scipy.linalg import solve_triangular
        ks = matern52(xs, self.x, self.ls, self.s2)
        mu = ks @ self.alpha
        v = solve_triangular(self.chol, ks.T, lower=True)
        var = np.maximum(self.s2 - np.sum(v * v, axis=0), 1e-12)
        return mu, np.sqrt(var)


def neg_log_marginal_likelihood(theta, x, y):
    """(-log p(y | x, theta), its gradient in theta): 0.5 y^T K^-1 y + 0.5 log|K| + const;
    d/d theta_j = -0.5 tr((alpha alpha^T - K^-1) dK/d theta_j)."""
    from scipy.linalg import cho_solve
    try:
        gp = GP(x, y, theta)
    except np.linalg.LinAlgError:
        return 1e10, np.zeros_like(theta)
    n, d = x.shape
    value = float(0.5 * y @ gp.alpha + np.sum(np.log(np.diag(gp.chol)))
                  + 0.5 * n * math.log(2 * math.pi))
    w = np.outer(gp.alpha, gp.alpha) - cho_solve((gp.chol, True), np.eye(n))
    diff = (x[:, None, :] - x[None, :, :]) / gp.ls  # n x n x d
    r = np.sqrt(np.maximum(np.sum(diff * diff, axis=-1), 0.0))
    base = gp.s2 * 5.0 / 3.0 * (1 + SQRT5 * r) * np.exp(-SQRT5 * r)
    grad = np.empty(d + 2)
    for j in range(d):  # d k / d log ls_j = s2 5/3 (1 + sqrt5 r) e^(-sqrt5 r) diff_j^2
        grad[j] = -0.5 * np.sum(w * base * diff[:, :, j] ** 2)
    grad[d] = -0.5 * np.sum(w * gp.k_signal)
    grad[d + 1] = -0.5 * gp.noise * np.trace(w)
    return value, grad


def fit(x, y):
    """theta maximising the marginal likelihood within bounds (length scales 0.01-10,
    signal variance 0.05-20, noise 1e-6-0.5 of the standardised losses)."""
    from scipy.optimize import minimize
    d = x.shape[1]
    bounds = [(math.log(1e-2), math.log(10.0))] * d + [(math.log(0.05), math.log(20.0)),
                                                        (math.log(1e-6), math.log(0.5))]
    best = None
    for ls0 in (0.3, 1.0):
        t0 = np.array([math.log(ls0)] * d + [0.0, math.log(1e-3)])
        r = minimize(neg_log_marginal_likelihood, t0, args=(x, y), method="L-BFGS-B",
                     jac=True, bounds=bounds, options={"maxiter": 200})
        if best is None or r.fun < best.fun:
            best = r
    return best.x


def expected_improvement(mu, sd, best, xi=0.0):
    from scipy.special import ndtr
    z = (best - mu - xi) / sd
    return sd * (z * ndtr(z) + np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi))


class GPSampler:
    name = "gp"

    def __init__(self, space, seed=0, startup=10, **_):
        from .samplers import SobolSampler
        self.space, self.startup = space, startup
        self.sobol = SobolSampler(space, seed=seed)

    def propose(self, done, pending, rng, number):
        if len(done) < self.startup:
            return self.sobol.propose(done, pending, rng, number)
        x = np.nan_to_num(np.array([u for u, _ in done]), nan=0.5)
        loss = np.array([v for _, v in done], dtype=np.float64)
        mean, sd = loss.mean(), max(loss.std(), 1e-12)
        y = (loss - mean) / sd
        theta = fit(x, y)
        if pending:  # constant liar: running trials at the best loss so far
            x = np.vstack([x, np.nan_to_num(np.array(pending), nan=0.5)])
            y = np.concatenate([y, np.full(len(pending), y.min())])
        gp = GP(x, y, theta)
        return _maximise_ei(gp, y.min(), x[np.argsort(y)[:5]], rng)


def _maximise_ei(gp, best, near, rng):
    from scipy.optimize import minimize
    d = near.shape[1]
    cand = np.vstack([rng.random((2000, d)),
                      np.clip(near[rng.integers(0, len(near), 500)]
                              + 0.05 * rng.standard_normal((500, d)), 0.0, 1.0)])
    ei = expected_improvement(*gp.predict(cand), best)
    top = cand[np.argsort(-ei)[:3]]

    def neg(u):
        return -float(expected_improvement(*gp.predict(u[None, :]), best)[0])
    results = [minimize(neg, u, method="L-BFGS-B", bounds=[(0.0, 1.0)] * d,
                        options={"maxiter": 50}) for u in top]
    r = min(results, key=lambda r: r.fun)
    return np.clip(r.x, 0.0, 1.0) if r.fun <= -ei.max() else top[0]
