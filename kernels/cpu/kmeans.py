"""Numba CPU k-means kernels (see hpcml.kernels.kmeans): direct float64 distances, one
pass over the rows, parallel over row blocks."""
import numpy as np
from numba import njit, prange

_FM = {"contract", "reassoc"}  # the per-centre sums may be reordered; nan still propagates
BLOCK = 1024


@njit(parallel=True, fastmath=_FM, cache=True)
def assign(x, centers, labels, dist):
    n, d = x.shape
    k = centers.shape[0]
    blocks = (n + BLOCK - 1) // BLOCK
    for bi in prange(blocks):
        row = np.empty(d, np.float64)
        for i in range(bi * BLOCK, min(n, (bi + 1) * BLOCK)):
            for j in range(d):
                row[j] = x[i, j]
            best, arg = np.inf, 0
            for c in range(k):
                s = 0.0
                for j in range(d):
                    t = row[j] - centers[c, j]
                    s += t * t
                if s < best:
                    best, arg = s, c
            if best != best or best == np.inf:  # nan row: no centre compared smaller
                s = 0.0
                for j in range(d):
                    t = row[j] - centers[0, j]
                    s += t * t
                best, arg = s, 0
            labels[i] = arg
            dist[i] = best
    return labels, dist


@njit(parallel=True, cache=True)
def cluster_sums(x, labels, k, w):
    n, d = x.shape
    parts = min(n // BLOCK + 1, 64)
    sums = np.zeros((parts, k, d))
    counts = np.zeros((parts, k))
    weighted = len(w) > 0
    for p in prange(parts):
        a, b = n * p // parts, n * (p + 1) // parts
        for i in range(a, b):
            c = labels[i]
            wi = w[i] if weighted else 1.0
            counts[p, c] += wi
            for j in range(d):
                sums[p, c, j] += wi * x[i, j]
    total, tc = np.zeros((k, d)), np.zeros(k)
    for p in range(parts):  # fixed order: the same result whatever the threads
        total += sums[p]
        tc += counts[p]
    return total, tc
