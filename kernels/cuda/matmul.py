"""CUDA matmul: shared-memory tiles with register tiling.

A block of 16 x 16 threads computes a 64 x 64 tile of C; each thread owns a 4 x 4 patch held
in registers (cuda.local.array). Per step of 8 along k, the block stages a 64 x 8 tile of
op(A) and an 8 x 64 tile of op(B) in shared memory (each thread loads 2 elements of each,
zero-filled outside the matrix), then every thread does 8 rank-1 updates of its 4 x 4 patch
from registers: 8 shared loads feed 16 FMAs. Transposed operands are read through their
strides while staging, so A^T B and A B^T need no transposed copy.
"""
import math
from functools import lru_cache

import numpy as np
from numba import cuda

from . import is_device_array

BM = BN = 64
BK = 8
TM = TN = 4
THREADS = (BN // TN, BM // TM)  # (x, y) = (16, 16)


@lru_cache(maxsize=None)
def _kernel(dtype):
    nt = dtype

    @cuda.jit
    def gemm(A, B, C, M, N, K, trans_a, trans_b):
        sA = cuda.shared.array((BK, BM), nt)
        sB = cuda.shared.array((BK, BN), nt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * 16 + tx
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        acc = cuda.local.array((TM, TN), nt)
        ra = cuda.local.array(TM, nt)
        rb = cuda.local.array(TN, nt)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0
        for k0 in range(0, K, BK):
            for l in range(2):  # stage op(A)[row0:row0+64, k0:k0+8], 512 values, 2 each
                idx = tid + l * 256
                kk = idx % BK
                mm = idx // BK
                gi = row0 + mm
                gk = k0 + kk
                v = 0
                if gi < M and gk < K:  # guard every global read
                    v = A[gk, gi] if trans_a else A[gi, gk]
                sA[kk, mm] = v
            for l in range(2):  # stage op(B)[k0:k0+8, col0:col0+64]
                idx = tid + l * 256
                nn = idx % BN
                kk = idx // BN
                gj = col0 + nn
                gk = k0 + kk
                v = 0
                if gj < N and gk < K:
                    v = B[gj, gk] if trans_b else B[gk, gj]
                sB[kk, nn] = v
            cuda.syncthreads()  # both tiles complete before anyone reads them
            for kk in range(BK):
                for i in range(TM):
                    ra[i] = sA[kk, ty * TM + i]
                for j in range(TN):
                    rb[j] = sB[kk, tx * TN + j]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()  # all reads done before the next step overwrites the tiles
        for i in range(TM):
            gi = row0 + ty * TM + i
            for j in range(TN):
                gj = col0 + tx * TN + j
                if gi < M and gj < N:  # guard every global write
                    C[gi, gj] = acc[i, j]

    return gemm


def matmul(a, b, out=None, trans_a=False, trans_b=False):
    """out = op(a) @ op(b) on the GPU; a, b (and out) host or device arrays."""
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    K2, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != K2:
        raise ValueError(f"matmul: inner dimensions differ ({K} vs {K2})")
    dtype = np.dtype(a.dtype)
    if out is None:
        out = cuda.device_array((M, N), dtype) if is_device_array(a) else \
            np.empty((M, N), dtype)
    if M and N:
        if K == 0:
            out[...] = 0
            return out
        grid = (math.ceil(N / BN), math.ceil(M / BM))
        _kernel(dtype.type)[grid, THREADS](a, b, out, M, N, K, trans_a, trans_b)
    return out
