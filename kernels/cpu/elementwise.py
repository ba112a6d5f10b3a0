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

_FM = {"contract"}
_FM_SUM = {"contract", "reassoc"}
_GELU_C = math.sqrt(2.0 / math.pi)

ACT_CODES = {"identity": 0, "relu": 1, "tanh": 2, "gelu": 3}


@njit(fastmath=_FM, inline="always")
def _act(z, code, zero):
    if code == 1:
        return z if (z > 0 or z != z) else zero  # max(z, 0) that keeps nan, as np.maximum
    if code == 2:
        return math.tanh(z)
    if code == 3:
        return 0.5 * z * (1 + math.tanh(_GELU_C * (z + 0.044715 * z * z * z)))
    return z


@njit(fastmath=_FM, inline="always")
def _act_grad(z, code, zero, one):
    if code == 1:
        if z > 0:
            return one
        return zero if z == z else z  # 0, or nan for nan
    if code == 2:
        t = math.tanh(z)
        return 1 - t * t
    if code == 3:
        u = _GELU_C * (z + 0.044715 * z * z * z)
        t = math.tanh(u)
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * z * z)
    return one


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
def softmax_xent(logits, labels, grad):
    """One pass per row: max, exp-sum, loss term and gradient; returns the mean loss."""
    n, c = logits.shape
    losses = np.zeros(n, np.float64)
    inv_n = 1.0 / max(n, 1)
    for i in prange(n):
        m = logits[i, 0]
        for j in range(1, c):
            v = logits[i, j]
            if v > m or v != v:
                m = v
        s = 0.0
        for j in range(c):
            e = math.exp(logits[i, j] - m)
            grad[i, j] = e
            s += e
        label = labels[i]
        losses[i] = math.log(s) - (logits[i, label] - m)
        scale = inv_n / s
        for j in range(c):
            grad[i, j] = grad[i, j] * scale
        grad[i, label] -= inv_n
    return losses.sum() * inv_n if n else 0.0


@njit(parallel=True, fastmath=_FM, cache=True)
def sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay):
    for i in prange(params.size):
        g = grads[i]
        if weight_decay != 0:
            g = g + weight_decay * params[i]
        if momentum != 0:
            v = momentum * velocity[i] + g
            velocity[i] = v
            g = g + momentum * v if nesterov else v
        params[i] = params[i] - lr * g
    return params


@njit(parallel=True, fastmath=_FM, cache=True)
def adam_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                bc1, bc2, one):
    """bc1 = 1 - beta1**step, bc2 = 1 - beta2**step (computed once by the caller)."""
    for i in prange(params.size):
        p = params[i]
        g = grads[i]
        if weight_decay != 0:
            if decoupled:
                p = p * (one - lr * weight_decay)
            else:
                g = g + weight_decay * p
        mi = beta1 * m[i] + (one - beta1) * g
        vi = beta2 * v[i] + (one - beta2) * g * g
        m[i] = mi
        v[i] = vi
        params[i] = p - lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps)
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
        a = acc[i]
        b = x[i]
        if incoming_first:
            a, b = b, a
        if code == 0:
            r = a + b
        elif code == 1:
            r = a * b
        elif code == 2:
            r = a if (a >= b or a != a) else b
        else:
            r = a if (a <= b or a != a) else b
        acc[i] = r
    return acc


@njit(parallel=True, cache=True)
def copy(dst, src):
    """dst[:] = src with the kernels' threads: the copy bandwidth updates are compared to."""
    for i in prange(dst.size):
        dst[i] = src[i]
    return dst
