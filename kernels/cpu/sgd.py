"""Numba CPU kernel for hpcml.ml's SGD estimators: one epoch of mini-batch steps on one
rank (batch size 1 included, scikit-learn's default), with the same arithmetic as the
NumPy step in hpcml/ml/sgd.py (the reference it is tested against step by step).

Parameters live in W ((d + 1) x K, last row the intercepts); m1, m2 are the optimizer's
moments, avg the running average. state = [steps, averaged, eta0, ...] is updated in
place. Codes: LOSSES, SCHEDULES and OPTIMIZERS below (the order of the names).
"""
import math

import numpy as np
from numba import njit

LOSSES = ("hinge", "log_loss", "modified_huber", "squared_hinge", "perceptron",
          "squared_error", "huber", "epsilon_insensitive", "squared_epsilon_insensitive")
SCHEDULES = ("constant", "optimal", "invscaling", "adaptive")
OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")


@njit(cache=True)
def _dloss(code, z, y, eps):
    """(loss, dL/dz) of one output."""
    if code <= 4:
        m = y * z
        if code == 0:
            return (1 - m, -y) if m < 1 else (0.0, 0.0)
        if code == 1:
            e = math.exp(-abs(m))
            loss = max(-m, 0.0) + math.log1p(e)
            mm = min(max(m, -700.0), 700.0)
            return loss, -y / (1 + math.exp(mm))
        if code == 2:
            if m >= 1:
                return 0.0, 0.0
            if m >= -1:
                return (1 - m) * (1 - m), -2 * y * (1 - m)
            return -4 * m, -4 * y
        if code == 3:
            h = max(0.0, 1 - m)
            return h * h, -2 * y * h
        return (-m, -y) if m <= 0 else (0.0, 0.0)
    r = z - y
    a = abs(r)
    s = 1.0 if r > 0 else (-1.0 if r < 0 else 0.0)
    if code == 5:
        return 0.5 * r * r, r
    if code == 6:
        return (0.5 * r * r, r) if a <= eps else (eps * (a - 0.5 * eps), eps * s)
    if code == 7:
        return (a - eps, s) if a > eps else (0.0, 0.0)
    e = max(0.0, a - eps)
    return e * e, 2 * e * s


@njit(cache=True, inline="always")
def _margin(X, i, W, k, d):
    """Row i's score for output k: W[d, k] + x_i . W[:d, k]."""
    z = W[d, k]
    for j in range(d):
        z += X[i, j] * W[j, k]
    return z


@njit(cache=True)
def _eta(schedule, t, eta0, alpha, power_t, scale):
    if schedule == 1:
        return 1.0 / (alpha * (t + 1.0 / (eta0 * alpha)))
    if schedule == 2:
        return eta0 / t ** power_t
    return eta0 * scale


@njit(cache=True, inline="always")
def _update(W, m1, m2, g, B, eta, t, optimizer, alpha_l2, alpha_l1, momentum, beta2):
    """One optimizer step of W from the gradient sums g over B rows (weight), the L2 part
    of the penalty in the gradient and the L1 part as its proximal map."""
    d1, K = W.shape
    d = d1 - 1
    for j in range(d1):
        for k in range(K):
            gj = g[j, k] / B
            if j < d:
                gj += alpha_l2 * W[j, k]
            if optimizer == 0:
                W[j, k] -= eta * gj
            elif optimizer == 1:
                m1[j, k] = momentum * m1[j, k] + gj
                W[j, k] -= eta * m1[j, k]
            elif optimizer == 2:
                m2[j, k] += gj * gj
                W[j, k] -= eta * gj / (math.sqrt(m2[j, k]) + 1e-8)
            elif optimizer == 3:
                m2[j, k] = beta2 * m2[j, k] + (1 - beta2) * gj * gj
                W[j, k] -= eta * gj / (math.sqrt(m2[j, k]) + 1e-8)
            else:
                m1[j, k] = momentum * m1[j, k] + (1 - momentum) * gj
                m2[j, k] = beta2 * m2[j, k] + (1 - beta2) * gj * gj
                mh = m1[j, k] / (1 - momentum ** t)
                vh = m2[j, k] / (1 - beta2 ** t)
                W[j, k] -= eta * mh / (math.sqrt(vh) + 1e-8)
            if j < d and alpha_l1 > 0:
                v = W[j, k]
                cut = eta * alpha_l1
                W[j, k] = (v - cut) if v > cut else ((v + cut) if v < -cut else 0.0)


@njit(cache=True)
def epoch(X, Y, w, order, bounds, W, m1, m2, avg, state, loss, schedule, optimizer,
          alpha_l2, alpha_l1, alpha, eps, eta0, power_t, scale, momentum, beta2,
          fit_intercept, average_start):
    """Steps over order[bounds[s]:bounds[s + 1]] for each s; returns (loss sum, weight
    sum). w: empty for unit weights."""
    d1, K = W.shape
    d = d1 - 1
    g = np.zeros((d1, K))
    total, wsum = 0.0, 0.0
    plain = optimizer == 0 and alpha_l1 == 0.0 and average_start == 0
    for s in range(len(bounds) - 1):
        if plain and bounds[s + 1] - bounds[s] == 1:  # one row, plain SGD: fused update
            i = order[bounds[s]]
            wi = w[i] if len(w) else 1.0
            state[0] += 1.0
            eta = _eta(schedule, state[0], eta0, alpha, power_t, scale)
            decay = 1.0 - eta * alpha_l2
            for k in range(K):
                lv, dz = _dloss(loss, _margin(X, i, W, k, d), Y[i, k], eps)
                total += wi * lv
                # the gradient is dz * w_i / w_i (a one-row batch's weighted mean)
                step = eta * dz if wi > 0 else 0.0
                for j in range(d):
                    W[j, k] = W[j, k] * decay - step * X[i, j]
                if fit_intercept:
                    W[d, k] -= step
            wsum += wi
            continue
        g[:] = 0.0
        B = 0.0
        for i in order[bounds[s]:bounds[s + 1]]:
            wi = w[i] if len(w) else 1.0
            B += wi
            for k in range(K):
                lv, dz = _dloss(loss, _margin(X, i, W, k, d), Y[i, k], eps)
                total += wi * lv
                dz *= wi
                if dz != 0.0:
                    for j in range(d):
                        g[j, k] += X[i, j] * dz
                    if fit_intercept:
                        g[d, k] += dz
        wsum += B
        if B <= 0:
            B = 1e-300
        state[0] += 1.0
        t = state[0]
        eta = _eta(schedule, t, eta0, alpha, power_t, scale)
        _update(W, m1, m2, g, B, eta, t, optimizer, alpha_l2, alpha_l1, momentum, beta2)
        if average_start > 0 and t >= average_start:
            state[1] += 1.0
            for j in range(d1):
                for k in range(K):
                    avg[j, k] += (W[j, k] - avg[j, k]) / state[1]
    return total, wsum
