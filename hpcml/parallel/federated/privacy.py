"""Differential privacy for federated rounds: DP-FedAvg (McMahan et al. 2018) with fixed or
adaptive clipping (Andrew et al. 2021), and a Renyi-DP accountant for the Poisson-subsampled
Gaussian mechanism (Mironov, Talwar and Zhang 2019) that reports (epsilon, delta).

A DP round samples each client independently with probability q = C (Poisson sampling, the
case the accountant covers), clips each reported update to L2 norm S, and the server adds
Gaussian noise N(0, (z S)^2) to their sum and divides by the expected count q N (the
fixed-denominator estimator). Adaptive clipping moves S towards a quantile gamma of the
update norms: each client also reports whether its norm was <= S, the server counts them
with noise N(0, sigma_b^2), and S <- S exp(-eta (b - gamma)); the updates' noise multiplier
is then z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2, so that the round as a whole is a Gaussian
mechanism of multiplier z (what the accountant composes).

In this simulation the noise is drawn from (seed, round): reproducible on every rank, not
secret; a deployment would draw it from a secure source on the server.
"""
import math

import numpy as np

#: Renyi orders searched (the usual set: fine below 11, integers to 63, a few large)
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) +
               [128, 256, 512, 1024])


def _log_add(a, b):
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _log_sub(a, b):
    """log(exp(a) - exp(b)) for a >= b."""
    if b == -math.inf:
        return a
    if a == b:
        return -math.inf
    return a + math.log1p(-math.exp(b - a))


def _log_erfc(x):
    """log(erfc(x)), with the asymptotic series where erfc underflows."""
    if x < 20:
        return math.log(math.erfc(x))
    r = 1.0 / (x * x)
    return -x * x - math.log(x) - 0.5 * math.log(math.pi) + \
        math.log1p(-0.5 * r + 0.75 * r * r - 1.875 * r ** 3)


def _log_comb(n, k):
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_a_int(q, sigma, alpha):
    """log A_alpha for an integer order: the binomial expansion (Mironov et al. 3.2)."""
    out = -math.inf
    for k in range(alpha + 1):
        out = _log_add(out, _log_comb(alpha, k) + k * math.log(q) +
                       (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma * sigma))
    return out


def _log_a_frac(q, sigma, alpha):
    """log A_alpha for a fractional order: the two erfc series of Mironov et al. (3.3),
    summed (with the generalised binomial's signs) until their terms are negligible."""
    a0 = a1 = -math.inf
    z0 = sigma * sigma * math.log(1 / q - 1) + 0.5
    i = 0
    while True:
        coef = _log_comb(alpha, i)
        negative = max(0, i - math.ceil(alpha)) % 2 == 1
        j = alpha - i
        s0 = (coef + i * math.log(q) + j * math.log1p(-q) + (i * i - i) / (2 * sigma ** 2)
              + math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma)))
        s1 = (coef + j * math.log(q) + i * math.log1p(-q) + (j * j - j) / (2 * sigma ** 2)
              + math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma)))
        if negative:
            a0, a1 = _log_sub(a0, s0), _log_sub(a1, s1)
        else:
            a0, a1 = _log_add(a0, s0), _log_add(a1, s1)
        i += 1
        if max(s0, s1) < -30 and i > alpha:
            break
    return _log_add(a0, a1)


def rdp(q, sigma, steps, orders=ORDERS):
    """Renyi DP of `steps` compositions of the Poisson-subsampled Gaussian (sampling rate
    q, noise multiplier sigma), one value per order."""
    out = []
    for a in orders:
        if q == 0:
            out.append(0.0)
        elif sigma == 0:
            out.append(math.inf)
        elif q == 1.0:
            out.append(a / (2 * sigma * sigma))
        else:
            log_a = _log_a_int(q, sigma, int(a)) if float(a).is_integer() else \
                _log_a_frac(q, sigma, a)
            out.append(log_a / (a - 1))
    return np.array(out) * steps


def epsilon(q, sigma, steps, delta, orders=ORDERS):
    """(epsilon, the best order) for (q, sigma, steps) at delta."""
    return epsilon_from_rdp(rdp(q, sigma, steps, orders), delta, orders)


def epsilon_from_rdp(values, delta, orders=ORDERS):
    """(epsilon, the best order) from RDP values, by the conversion of Balle et al. 2020
    (Theorem 21): eps = r + log(1 - 1/a) - log(delta a) / (a - 1)."""
    best, order = math.inf, None
    for a, r in zip(orders, values):
        if delta * delta + math.expm1(-r) > 0:
            return 0.0, a
        if a > 1.01:
            e = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
            if e < best:
                best, order = e, a
    return best, order


class DPAggregator:
    """DP-FedAvg's server side: clip, sum, noise, divide by the expected count; adaptive
    clipping if `adaptive`."""

    def __init__(self, noise, clip, expected, adaptive=False, quantile=0.5, clip_lr=0.2,
                 count_stddev=None):
        self.noise, self.clip, self.expected = float(noise), float(clip), float(expected)
        self.adaptive, self.quantile, self.clip_lr = adaptive, quantile, clip_lr
        self.count_stddev = expected / 20 if count_stddev is None else count_stddev
        self.update_noise = self.noise
        if adaptive and self.noise:
            inner = self.noise ** -2 - (2 * self.count_stddev) ** -2
            if inner <= 0:
                raise ValueError(f"dp: adaptive clipping's count noise (stddev "
                                 f"{self.count_stddev:g}, the expected clients / 20) takes "
                                 f"the whole privacy budget of noise {self.noise:g}: raise "
                                 f"--dp-noise or sample more clients per round")
            self.update_noise = inner ** -0.5

    def __call__(self, updates, rng):
        """The noisy mean (float64) of `updates` (m x P, client order); S adapted after."""
        u = np.asarray(updates, np.float64)
        total = np.zeros(u.shape[1])
        below = 0
        for row in u:
            norm = float(np.sqrt(np.dot(row, row)))
            below += norm <= self.clip
            total += row * min(1.0, self.clip / (norm + 1e-12))
        total += rng.normal(0.0, self.update_noise * self.clip, total.shape)
        out = total / self.expected
        if self.adaptive:
            b = (below + rng.normal(0.0, self.count_stddev)) / self.expected
            self.clip *= math.exp(-self.clip_lr * (b - self.quantile))
        return out
