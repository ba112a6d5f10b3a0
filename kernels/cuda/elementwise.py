"""CUDA element-wise kernels: one thread per element (grid-stride), same rules as cpu/.

Arguments may be host arrays (numba copies them in and out) or device arrays. Scalars
arrive cast to the arrays' dtype by the dispatcher, as for the CPU kernels.
"""
import math

import numpy as np
from numba import cuda

from .. import scalar
from . import is_device_array as is_device

TPB = 256


def _grid(n):
    return max(1, min(4096, (n + TPB - 1) // TPB))


_act = cuda.jit(device=True)(scalar.act)
_act_grad = cuda.jit(device=True)(scalar.act_grad)
_sgd_step = cuda.jit(device=True)(scalar.sgd_step)
_adam_step = cuda.jit(device=True)(scalar.adam_step)
_combine = cuda.jit(device=True)(scalar.combine)


@cuda.jit
def _bias_act(x, bias, code, out, zero):
    n, f = x.shape
    start = cuda.grid(1)
    for idx in range(start, n * f, cuda.gridsize(1)):
        i = idx // f
        j = idx - i * f
        out[i, j] = _act(x[i, j] + bias[j], code, zero)


@cuda.jit
def _bias_act_backward(dy, x, bias, code, dx, zero, one):
    n, f = x.shape
    start = cuda.grid(1)
    for idx in range(start, n * f, cuda.gridsize(1)):
        i = idx // f
        j = idx - i * f
        dx[i, j] = dy[i, j] * _act_grad(x[i, j] + bias[j], code, zero, one)


@cuda.jit
def _column_sums(dx, db):
    n, f = dx.shape
    j = cuda.grid(1)
    if j < f:  # guard: one thread per column
        s = 0.0
        for i in range(n):
            s += dx[i, j]
        db[j] = s


@cuda.jit
def _column_sums_into(x, out, accumulate):
    n, f = x.shape
    j = cuda.grid(1)
    if j < f:  # guard: one thread per column; the sum in float64, as the CPU kernels
        s = 0.0
        for i in range(n):
            s += x[i, j]
        out[j] = out[j] + s if accumulate else s


@cuda.jit
def _multiply(x, y, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = x[i] * y[i]


@cuda.jit
def _fill(x, value):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] = value


@cuda.jit
def _softmax_xent(logits, labels, grad, losses, inv_n):
    n, c = logits.shape
    i = cuda.grid(1)
    if i < n:  # guard: one thread per row
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


@cuda.jit
def _sgd(params, grads, velocity, lr, momentum, nesterov, weight_decay):
    start = cuda.grid(1)
    for i in range(start, params.size, cuda.gridsize(1)):
        vi = velocity[i] if momentum != 0 else params[i]
        p, vi = _sgd_step(params[i], grads[i], vi, lr, momentum, nesterov, weight_decay)
        params[i] = p
        if momentum != 0:
            velocity[i] = vi


@cuda.jit
def _adam(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, bc1, bc2, one):
    start = cuda.grid(1)
    for i in range(start, params.size, cuda.gridsize(1)):
        p, mi, vi = _adam_step(params[i], grads[i], m[i], v[i], lr, beta1, beta2, eps,
                               weight_decay, decoupled, bc1, bc2, one)
        params[i] = p
        m[i] = mi
        v[i] = vi


@cuda.jit
def _sum_squares(x, out):
    partial = cuda.shared.array(TPB, np.float64)
    tid = cuda.threadIdx.x
    s = 0.0
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        xi = np.float64(x[i])
        s += xi * xi
    partial[tid] = s
    cuda.syncthreads()  # every thread's partial sum is in shared memory
    step = TPB // 2
    while step > 0:
        if tid < step:
            partial[tid] += partial[tid + step]
        cuda.syncthreads()  # this level of the tree is complete before the next reads it
        step //= 2
    if tid == 0:
        cuda.atomic.add(out, 0, partial[0])


@cuda.jit
def _scale(x, factor):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] = x[i] * factor


@cuda.jit
def _reduce_into(acc, x, code, incoming_first):
    for i in range(cuda.grid(1), acc.size, cuda.gridsize(1)):
        acc[i] = _combine(x[i], acc[i], code) if incoming_first else _combine(acc[i], x[i], code)


def bias_act(x, bias, code, out, zero):
    _bias_act[_grid(x.size), TPB](x, bias, code, out, zero)
    return out


def bias_act_backward(dy, x, bias, code, dx, zero, one):
    _bias_act_backward[_grid(x.size), TPB](dy, x, bias, code, dx, zero, one)
    if is_device(dx):  # stays on the device, in x's dtype (summed in float64)
        db = cuda.device_array(x.shape[1], dx.dtype)
        column_sums(dx, db, False)
        return db
    db = np.zeros(x.shape[1], np.float64)
    if x.shape[1]:
        _column_sums[(x.shape[1] + TPB - 1) // TPB, TPB](dx, db)
    return db


def column_sums(x, out, accumulate):
    """out (= or +=) the sum of x's rows, per column."""
    if x.shape[1]:
        _column_sums_into[(x.shape[1] + TPB - 1) // TPB, TPB](x, out, bool(accumulate))
    return out


def multiply(x, y, out):
    _multiply[_grid(x.size), TPB](x, y, out)
    return out


def fill(x, value):
    _fill[_grid(x.size), TPB](x, value)
    return x


def softmax_xent(logits, labels, grad):
    n = logits.shape[0]
    if n == 0:
        return 0.0
    losses = np.zeros(n, np.float64)
    _softmax_xent[(n + TPB - 1) // TPB, TPB](logits, labels, grad, losses, 1.0 / n)
    return float(losses.sum() / n)


def sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay):
    _sgd[_grid(params.size), TPB](params, grads, velocity, lr, momentum, nesterov, weight_decay)
    return params


def adam_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                bc1, bc2, one):
    _adam[_grid(params.size), TPB](params, grads, m, v, lr, beta1, beta2, eps, weight_decay,
                                   decoupled, bc1, bc2, one)
    return params


def sum_squares(x):
    out = np.zeros(1, np.float64)
    if x.size:
        _sum_squares[_grid(x.size), TPB](x, out)
    return float(out[0])


def scale(x, factor):
    _scale[_grid(x.size), TPB](x, factor)
    return x


def reduce_into(acc, x, code, incoming_first):
    _reduce_into[_grid(acc.size), TPB](acc, x, code, incoming_first)
    return acc
