"""CUDA k-means assignment: a thread per row, the centres staged in shared memory when
they fit (float64 distances), for host or device arrays (results on the side they came
from)."""
import math

import numpy as np
from numba import cuda, float64

from . import is_device_array

THREADS = 128
SHARED = 4096  # float64 centre values staged per block (32 KiB)


@cuda.jit
def _assign_shared(x, centers, labels, dist):
    n, d = x.shape
    k = centers.shape[0]
    stage = cuda.shared.array(SHARED, float64)
    t = cuda.threadIdx.x
    for idx in range(t, k * d, cuda.blockDim.x):
        stage[idx] = centers[idx // d, idx % d]
    cuda.syncthreads()
    i = cuda.grid(1)
    if i >= n:
        return
    best, arg = math.inf, 0
    for c in range(k):
        s = 0.0
        for j in range(d):
            v = x[i, j] - stage[c * d + j]
            s += v * v
        if s < best:
            best, arg = s, c
    if not best < math.inf:
        s = 0.0
        for j in range(d):
            v = x[i, j] - stage[j]
            s += v * v
        best, arg = s, 0
    labels[i] = arg
    dist[i] = best


@cuda.jit
def _assign_global(x, centers, labels, dist):
    i = cuda.grid(1)
    n, d = x.shape
    if i >= n:
        return
    best, arg = math.inf, 0
    for c in range(centers.shape[0]):
        s = 0.0
        for j in range(d):
            v = x[i, j] - centers[c, j]
            s += v * v
        if s < best:
            best, arg = s, c
    if not best < math.inf:
        s = 0.0
        for j in range(d):
            v = x[i, j] - centers[0, j]
            s += v * v
        best, arg = s, 0
    labels[i] = arg
    dist[i] = best


def assign(x, centers):
    on_device = is_device_array(x)
    n = x.shape[0]
    dx = x if on_device else cuda.to_device(np.ascontiguousarray(x))
    c = centers if is_device_array(centers) else np.ascontiguousarray(centers, np.float64)
    dc = c if is_device_array(c) else cuda.to_device(c)
    labels = cuda.device_array(n, np.int64)
    dist = cuda.device_array(n, np.float64)
    if n:
        blocks = (n + THREADS - 1) // THREADS
        k, d = centers.shape
        kernel = _assign_shared if k * d <= SHARED else _assign_global
        kernel[blocks, THREADS](dx, dc, labels, dist)
    if on_device:
        return labels, dist
    return labels.copy_to_host(), dist.copy_to_host()
