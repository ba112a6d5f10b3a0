"""Per-row t-SNE math shared by the CPU and CUDA kernels, written once.

Plain Python over one row of arrays (math only), compiled twice, as kernels/scalar.py:
inlined by Numba's CPU JIT in cpu/tsne.py (rows in parallel) and as CUDA device functions
in cuda/tsne.py (one thread per row).
"""
import math


def perplexity_row(d2, i, target, tol, max_steps, out):
    """Row i of out = exp(-beta d2[i]) / sum, with beta found by scikit-learn's binary
    search so that the entropy is `target` (= log perplexity) within tol. True when it
    converged within max_steps."""
    k = d2.shape[1]
    beta, lo, hi = 1.0, -math.inf, math.inf
    for _ in range(max_steps):
        s = 0.0
        for t in range(k):
            v = math.exp(-d2[i, t] * beta)
            out[i, t] = v
            s += v
        if s == 0.0:
            s = 1e-8  # as scikit-learn: every affinity underflowed
        sd = 0.0
        for t in range(k):
            out[i, t] = out[i, t] / s
            sd += d2[i, t] * out[i, t]
        diff = math.log(s) + beta * sd - target
        if abs(diff) <= tol:
            return True
        if diff > 0.0:
            lo = beta
            beta = beta * 2.0 if hi == math.inf else (beta + hi) / 2.0
        else:
            hi = beta
            beta = beta / 2.0 if lo == -math.inf else (beta + lo) / 2.0
    return False


def kl_row(y, i, start, stop, indices, pvals):
    """(sum p log p, sum p log(1 + |y_i - y_j|^2)) over row i's entries [start, stop)."""
    a = 0.0
    b = 0.0
    for t in range(start, stop):
        p = pvals[t]
        if p > 0.0:
            j = indices[t]
            s = 0.0
            for c in range(y.shape[1]):
                v = y[i, c] - y[j, c]
                s += v * v
            a += p * math.log(p)
            b += p * math.log1p(s)
    return a, b


def attractive_row(y, i, li, start, stop, indices, pvals, out):
    """out[li] = sum over row i's entries of p_ij w_ij (y_i - y_j), any dimension."""
    d = y.shape[1]
    for c in range(d):
        out[li, c] = 0.0
    for t in range(start, stop):
        j = indices[t]
        s = 0.0
        for c in range(d):
            v = y[i, c] - y[j, c]
            s += v * v
        pw = pvals[t] / (1.0 + s)
        for c in range(d):
            out[li, c] += pw * (y[i, c] - y[j, c])


def gains_step(upd, g, gain, momentum, lr, min_gain):
    """scikit-learn's step for one coordinate: the gain grows by 0.2 where the gradient's
    sign differs from the last update's and shrinks by 0.8 elsewhere (>= min_gain); returns
    (new update, new gain); the coordinate moves by the new update."""
    gain = gain + 0.2 if upd * g < 0.0 else gain * 0.8
    if gain < min_gain:
        gain = min_gain
    return momentum * upd - lr * gain * g, gain
