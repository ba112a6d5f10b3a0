"""Numba CUDA kernels for t-SNE (signatures as in kernels/tsne.py), real GPU or simulator.

Host arrays are copied to the device per call; pass device arrays (numba.cuda.to_device)
for what stays put across iterations (the P matrix), as hpcml.ml.TSNE does. The repulsion
is exact: each block loads TILE source points at a time into shared memory and every
thread (one target row) sums over them, O(N^2 / TILE) global reads.
"""

import numpy as np
from numba import cuda

from .. import tsne_rows

_perplexity_row = cuda.jit(device=True)(tsne_rows.perplexity_row)
_kl_row = cuda.jit(device=True)(tsne_rows.kl_row)
_attractive_row = cuda.jit(device=True)(tsne_rows.attractive_row)
_gains_step = cuda.jit(device=True)(tsne_rows.gains_step)

TPB = 128  # threads per block = rows per block = source points per shared-memory tile
MAX_DIM = 3  # embedding dimensions the shared tile holds


def _blocks(n):
    return max(1, (n + TPB - 1) // TPB)


@cuda.jit
def _sq_distances(a, b, out):
    """out[i, j] = |a_i - b_j|^2; a 2-D grid of TPB x 1 blocks: thread (i) of block
    (bi, j) handles row i = bi * TPB + tid against column j (coalesced over a's rows)."""
    i = cuda.blockIdx.x * TPB + cuda.threadIdx.x
    j = cuda.blockIdx.y
    if i < a.shape[0] and j < b.shape[0]:  # guard: ragged last block
        s = 0.0
        for c in range(a.shape[1]):
            v = np.float64(a[i, c]) - np.float64(b[j, c])
            s += v * v
        out[i, j] = s


@cuda.jit
def _perplexity(d2, target, tol, max_steps, out, missed):
    i = cuda.grid(1)
    if i < d2.shape[0]:  # guard: one thread per row
        if not _perplexity_row(d2, i, target, tol, max_steps, out):
            cuda.atomic.add(missed, 0, 1)


@cuda.jit
def _attractive(y, r0, indptr, indices, pvals, out):
    li = cuda.grid(1)
    if li < out.shape[0]:  # guard: one thread per local row
        _attractive_row(y, r0 + li, li, indptr[li], indptr[li + 1], indices, pvals, out)


@cuda.jit
def _kl_rows(y, r0, indptr, indices, pvals, a_rows, b_rows):
    li = cuda.grid(1)
    if li < a_rows.shape[0]:  # guard: one thread per local row
        a, b = _kl_row(y, r0 + li, indptr[li], indptr[li + 1], indices, pvals)
        a_rows[li] = a
        b_rows[li] = b


@cuda.jit
def _repulsive_tiled(y, r0, nrows, out, z_rows):
    tile = cuda.shared.array((TPB, MAX_DIM), np.float64)
    tid = cuda.threadIdx.x
    li = cuda.blockIdx.x * TPB + tid
    n, d = y.shape
    i = r0 + li
    active = li < nrows  # inactive threads still load tiles and reach every barrier
    yi = cuda.local.array(MAX_DIM, np.float64)
    acc = cuda.local.array(MAX_DIM, np.float64)
    for c in range(d):
        yi[c] = y[i, c] if active else 0.0
        acc[c] = 0.0
    z = 0.0
    for base in range(0, n, TPB):
        j = base + tid
        if j < n:  # guard: the last tile is ragged
            for c in range(d):
                tile[tid, c] = y[j, c]
        cuda.syncthreads()  # the tile is loaded before any thread reads it
        if active:
            for t in range(min(TPB, n - base)):
                if base + t != i:
                    s = 0.0
                    for c in range(d):
                        v = yi[c] - tile[t, c]
                        s += v * v
                    w = 1.0 / (1.0 + s)
                    z += w
                    for c in range(d):
                        acc[c] += w * w * (yi[c] - tile[t, c])
        cuda.syncthreads()  # every thread is done with the tile before it is overwritten
    if active:
        for c in range(d):
            out[li, c] = acc[c]
        z_rows[li] = z


@cuda.jit
def _update(y, grad, upd, gains, momentum, lr, min_gain):
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        u, gain = _gains_step(upd[t], grad[t], gains[t], momentum, lr, min_gain)
        upd[t] = u
        gains[t] = gain
        y[t] += u


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def sq_distances(a, b):
    out = cuda.device_array((a.shape[0], b.shape[0]), np.float64)
    if a.shape[0] and b.shape[0]:
        _sq_distances[(_blocks(a.shape[0]), b.shape[0]), TPB](a, b, out)
    return out.copy_to_host()


def perplexity_search(d2, target, tol, max_steps):
    d2 = np.ascontiguousarray(_host(d2), np.float64)
    out = np.empty_like(d2)
    missed = np.zeros(1, np.int64)
    if d2.shape[0]:
        _perplexity[_blocks(d2.shape[0]), TPB](d2, target, tol, max_steps, out, missed)
    return out


def attractive(y, r0, indptr, indices, pvals, out):
    n = len(indptr) - 1
    res = np.empty((n, y.shape[1])) if out is None else out
    if n:
        _attractive[_blocks(n), TPB](y, r0, indptr, indices, pvals, res)
    return res


def kl_terms(y, r0, indptr, indices, pvals):
    n = len(indptr) - 1
    a, b = np.zeros(n), np.zeros(n)
    if n:
        _kl_rows[_blocks(n), TPB](y, r0, indptr, indices, pvals, a, b)
    return float(a.sum()), float(b.sum())


def repulsive_exact(y, r0, out, z_rows):
    if y.shape[1] > MAX_DIM:
        raise ValueError(f"repulsive_exact (cuda): at most {MAX_DIM} dimensions, got "
                         f"{y.shape[1]}")
    n = out.shape[0]
    if n:
        _repulsive_tiled[_blocks(n), TPB](y, r0, n, out, z_rows)


def update(y, grad, upd, gains, momentum, lr, min_gain):
    f = [a.reshape(-1) for a in (y, grad, upd, gains)]
    g = _host(f[1])
    if y.size:
        _update[max(1, min(1024, _blocks(y.size))), TPB](*f, momentum, lr, min_gain)
    return float((np.asarray(g, np.float64) ** 2).sum())
