"""CUDA covariance accumulation: (n, mean, centred scatter M2) of a block, in float64.

Two passes over x (host or device, float32 or float64):
1. column sums: a block of 32 x 8 threads covers 32 features of one slice of rows; each
   thread sums every 8th row of the slice in float64, the block reduces its 8 partial sums
   in shared memory, and the slices' sums are added on the host (slices x features values).
2. the centred scatter, tiled: a block of 16 x 16 threads owns a 16 x 16 tile (I, J) of M2
   with I <= J (the upper triangle; the lower is mirrored) and one slice of rows. Per step
   of 16 rows it stages the centred 16 x 16 tiles x[rows, I] - mean[I] and
   x[rows, J] - mean[J] in shared memory (float64, zero outside the matrix) and each thread
   adds the 16 products for its entry. Each slice writes its partial tile; a third kernel
   sums the slices (fixed order: deterministic) and mirrors.
Slices (grid z) give the GPU enough blocks when there are few features; their count is
capped so the partial tiles stay under PARTIAL_BUDGET values.
"""
import math

import numpy as np
from numba import cuda, float64

from . import is_device_array

TILE = 16           # scatter tile (threads per block: TILE x TILE)
SUM_X, SUM_Y = 32, 8  # column-sum block: 32 features x 8 row lanes
MIN_SLICE_ROWS = 1024
PARTIAL_BUDGET = 1 << 25  # float64 values of partial tiles (256 MiB)


@cuda.jit
def _column_sums(x, rows_per, partial):
    n = x.shape[0]
    d = x.shape[1]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    col = cuda.blockIdx.x * SUM_X + tx
    z = cuda.blockIdx.y
    r0 = z * rows_per
    r1 = min(n, r0 + rows_per)
    lane = cuda.shared.array((SUM_Y, SUM_X), float64)
    acc = 0.0
    if col < d:
        for i in range(r0 + ty, r1, SUM_Y):  # i < r1 <= n and col < d: in bounds
            acc += float64(x[i, col])  # float64 sums for float32 x too
    lane[ty, tx] = acc
    cuda.syncthreads()  # all 8 lanes of every column are in shared memory before the sum
    if ty == 0 and col < d and z < partial.shape[0]:
        t = 0.0
        for k in range(SUM_Y):
            t += lane[k, tx]
        partial[z, col] = t


@cuda.jit
def _scatter_tiles(x, mean, rows_per, partial):
    n = x.shape[0]
    d = x.shape[1]
    bi = cuda.blockIdx.y  # tile row (features bi*16 ...)
    bj = cuda.blockIdx.x  # tile column
    z = cuda.blockIdx.z   # slice of rows
    if bi > bj:
        return  # the whole block leaves together: no syncthreads below is half-reached
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    sa = cuda.shared.array((TILE, TILE), float64)
    sb = cuda.shared.array((TILE, TILE), float64)
    ca = bi * TILE + tx  # the feature this thread stages for tile row bi
    cb = bj * TILE + tx  # ... and for tile column bj
    r0 = z * rows_per
    r1 = min(n, r0 + rows_per)
    acc = 0.0
    for i0 in range(r0, r1, TILE):
        i = i0 + ty
        va = 0.0
        vb = 0.0
        if i < r1 and ca < d:  # guard the global reads of x and mean
            va = float64(x[i, ca]) - mean[ca]
        if i < r1 and cb < d:
            vb = float64(x[i, cb]) - mean[cb]
        sa[ty, tx] = va
        sb[ty, tx] = vb
        cuda.syncthreads()  # both centred tiles are staged before any thread reads them
        for r in range(TILE):
            acc += sa[r, ty] * sb[r, tx]
        cuda.syncthreads()  # every thread is done reading before the next step overwrites
    row = bi * TILE + ty
    col = bj * TILE + tx
    if row < d and col < d and z < partial.shape[0]:  # guard the global write
        partial[z, row, col] = acc


@cuda.jit
def _sum_slices(partial, out):
    row, col = cuda.grid(2)
    slices = partial.shape[0]
    d = out.shape[0]
    if row < d and col < d:  # guard every global access below
        a = min(row, col)
        b = max(row, col)  # only tiles with I <= J were written: read the upper triangle
        t = 0.0
        for z in range(slices):
            t += partial[z, a, b]
        out[row, col] = t


def _slices(n, d):
    cap = max(1, PARTIAL_BUDGET // max(1, d * d))
    return max(1, min(math.ceil(n / MIN_SLICE_ROWS), cap))


def scatter_block(x):
    """(n, mean float64[d], M2 float64[d, d]) of the rows of x (host or device array,
    float32 or float64); mean and M2 come back as host arrays."""
    n, d = (int(s) for s in x.shape)
    if n == 0 or d == 0:
        return n, np.zeros(d), np.zeros((d, d))
    dx = x if is_device_array(x) else cuda.to_device(np.ascontiguousarray(x))
    slices = _slices(n, d)
    rows_per = math.ceil(n / slices)
    slices = math.ceil(n / rows_per)
    sums = cuda.device_array((slices, d), np.float64)
    _column_sums[(math.ceil(d / SUM_X), slices), (SUM_X, SUM_Y)](dx, rows_per, sums)
    mean = sums.copy_to_host().sum(axis=0) / n
    dmean = cuda.to_device(mean)
    tiles = math.ceil(d / TILE)
    partial = cuda.device_array((slices, d, d), np.float64)
    _scatter_tiles[(tiles, tiles, slices), (TILE, TILE)](dx, dmean, rows_per, partial)
    out = cuda.device_array((d, d), np.float64)
    _sum_slices[(tiles, tiles), (TILE, TILE)](partial, out)
    return n, mean, out.copy_to_host()
