"""Numba CPU kernels that fuse what NumPy does in several passes into one.

Every kernel works in place on flat (1-D contiguous) buffers or on 2-D row-major arrays,
loops once over memory, and parallelises over elements with prange (threads: see
hpcml.kernels.threads). Scalars arrive already cast to the array's dtype, so float32 work
stays float32, as in the NumPy reference. fastmath is limited to contraction (FMA) and,
for sums, reassociation: nan and inf still propagate as in NumPy.
"""
import math

import numpy as np
from numba import njit, prange

from .. import scalar

_FM = {"contract"}
_FM_SUM = {"contract", "reassoc"}
ACT_CODES = {"identity": 0, "relu": 1, "tanh": 2, "gelu": 3}


_act = njit(fastmath=_FM, inline="always")(scalar.act)
_act_grad = njit(fastmath=_FM, inline="always")(scalar.act_grad)
_sgd_step = njit(fastmath=_FM, inline="always")(scalar.sgd_step)
_adam_step = njit(fastmath=_FM, inline="always")(scalar.adam_step)
_combine = njit(fastmath=_FM, inline="always")(scalar.combine)


@njit(parallel=True, fastmath=_FM, cache=True)
def bias_act(x, bias, code, out, zero):
    n, f = x.shape
    for i in prange(n):
        for j in range(f):
            out[i, j] = _act(x[i, j] + bias[j], code, zero)
    return out


@njit(parallel=True, fastmath=_FM, cache=True)
def bias_act_backward(dy, x, bias, code, dx, zero, one):
    n, f = x.shape
    for i in prange(n):
        for j in range(f):
            dx[i, j] = dy[i, j] * _act_grad(x[i, j] + bias[j], code, zero, one)
    db = np.zeros(f, np.float64)
    for i in range(n):  # column sums in float64, row by row (vectorises over j)
        for j in range(f):
            db[j] += dx[i, j]
    return db


@njit(parallel=True, fastmath=_FM, cache=True)
def _row_max(logits, out):
    n, c = logits.shape
    for i in prange(n):
        m = logits[i, 0]
        for j in range(1, c):
            v = logits[i, j]
            if v > m or v != v:
                m = v
        out[i] = m
    return out


@njit(parallel=True, fastmath=_FM_SUM, cache=True)
def _xent_finish(logits, labels, grad, m):
    """grad holds exp(logits - m) per row: normalise it into the gradient, return the loss."""
    n, c = grad.shape
    losses = np.zeros(n, np.float64)
    inv_n = 1.0 / max(n, 1)
    for i in prange(n):
        s = 0.0
        for j in range(c):
            s += grad[i, j]
        label = labels[i]
        losses[i] = math.log(s) - (logits[i, label] - m[i])
        scale = inv_n / s
        for j in range(c):
            grad[i, j] = grad[i, j] * scale
        grad[i, label] -= inv_n
    return losses.sum() * inv_n if n else 0.0


def softmax_xent(logits, labels, grad):
    """Softmax + cross-entropy forward and backward: a Numba pass for the row maxima, NumPy's
    vectorised exp written straight into grad (Numba's exp does not vectorise), and one
    Numba pass for the sums, the loss and the gradient. Returns the mean loss."""
    m = _row_max(logits, np.empty(logits.shape[0], logits.dtype))
    np.subtract(logits, m[:, None], out=grad)
    np.exp(grad, out=grad)
    return _xent_finish(logits, labels, grad, m)


@njit(parallel=True, fastmath=_FM, cache=True)
def sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay):
    for i in prange(params.size):
        vi = velocity[i] if momentum != 0 else params[i]
        params[i], vi = _sgd_step(params[i], grads[i], vi, lr, momentum, nesterov, weight_decay)
        if momentum != 0:
            velocity[i] = vi
    return params


@njit(parallel=True, fastmath=_FM, cache=True)
def adam_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                bc1, bc2, one):
    """bc1 = 1 - beta1**step, bc2 = 1 - beta2**step (computed once by the caller)."""
    for i in prange(params.size):
        params[i], m[i], v[i] = _adam_step(params[i], grads[i], m[i], v[i], lr, beta1, beta2,
                                           eps, weight_decay, decoupled, bc1, bc2, one)
    return params


@njit(parallel=True, fastmath=_FM_SUM, cache=True)
def sum_squares(x):
    s = 0.0
    for i in prange(x.size):
        xi = np.float64(x[i])
        s += xi * xi
    return s


@njit(parallel=True, fastmath=_FM, cache=True)
def scale(x, factor):
    for i in prange(x.size):
        x[i] = x[i] * factor
    return x


@njit(parallel=True, fastmath=_FM, cache=True)
def reduce_into(acc, x, code, incoming_first):
    """acc = op(acc, x) (or op(x, acc)); code 0 sum, 1 prod, 2 max, 3 min (NumPy semantics:
    max/min propagate nan)."""
    for i in prange(acc.size):
        acc[i] = _combine(x[i], acc[i], code) if incoming_first else _combine(acc[i], x[i], code)
    return acc


@njit(parallel=True, cache=True)
def copy(dst, src):
    """dst[:] = src with the kernels' threads: the copy bandwidth updates are compared to."""
    for i in prange(dst.size):
        dst[i] = src[i]
    return dst


@njit(inline="always")
def _mix64(z):
    """splitmix64's finaliser (uint64 -> uint64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(nogil=True, cache=True)
def keyed_permutation(n, k0, k1, k2):
    """A permutation of 0..n-1 determined by the uint64 keys (k0, k1, k2) alone: Fisher-Yates
    driven by a splitmix64 stream, indices drawn by multiply-shift (bias below n / 2**32).
    About 5x cheaper than creating a NumPy Generator per call, which the loader does per
    block."""
    out = np.empty(n, np.int64)
    keyed_permutation_into(out, n, k0, k1, k2)
    return out


@njit(nogil=True, cache=True)
def keyed_permutation_into(out, n, k0, k1, k2):
    """keyed_permutation(n, k0, k1, k2) written into out[:n] (no allocation)."""
    for i in range(n):
        out[i] = i
    golden = np.uint64(0x9E3779B97F4A7C15)
    state = _mix64(_mix64(_mix64(k0 + golden) ^ k1) ^ k2)
    for i in range(n - 1, 0, -1):
        state += golden
        r = _mix64(state) >> np.uint64(32)
        j = np.int64((r * np.uint64(i + 1)) >> np.uint64(32))
        out[i], out[j] = out[j], out[i]
    return out


@njit(nogil=True, cache=True)
def gather_block(x, y, rows, bx, by, fill, classes):
    """The loader's per-block pass: bx[fill + i] = x[rows[i]] and by[fill + i] = y[rows[i]]
    for each i, checking on the way that the features are finite and (classes > 0) the
    labels in 0..classes-1. Returns -1, or the first i whose row failed (the caller then
    names the row and the problem)."""
    f = x.shape[1]
    for i in range(rows.size):
        r = rows[i]
        ok = True
        for j in range(f):
            v = x[r, j]
            bx[fill + i, j] = v
            ok &= (v - v) == 0  # false for nan and +-inf
        label = y[r]
        by[fill + i] = label
        if classes > 0:
            ok &= (label >= 0) & (label < classes)
        if not ok:
            return i
    return -1


@njit(nogil=True, cache=True)
def check_block(x, y, classes):
    """-1 if every feature of x is finite and (classes > 0) every label of y in
    0..classes-1, else the first row that is not."""
    for i in range(x.shape[0]):
        ok = True
        for j in range(x.shape[1]):
            v = x[i, j]
            ok &= (v - v) == 0
        if classes > 0:
            ok &= (y[i] >= 0) & (y[i] < classes)
        if not ok:
            return i
    return -1
