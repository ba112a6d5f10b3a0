"""CUDA matmul: shared-memory tiles with register tiling and double buffering.

A block of 16 x 16 threads computes a 64 x 64 tile of C; each thread owns a 4 x 4 patch held
in registers (cuda.local.array). Per step of 8 along k, the block reads a 64 x 8 tile of
op(A) and an 8 x 64 tile of op(B) from shared memory (each thread stages 2 elements of each,
zero-filled outside the matrix), and every thread does 8 rank-1 updates of its 4 x 4 patch
from registers: 8 shared loads feed 16 FMAs. Double buffering: the next step's tiles are
loaded from global memory into registers before the current step's arithmetic (their
latency hides behind it) and written to the other of two shared buffers after it, so one
barrier per step suffices instead of two. Transposed operands are read through their
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

    @cuda.jit(device=True, inline=True)
    def load(A, B, ga, gb, row0, col0, k0, tid, M, N, K, trans_a, trans_b):
        """This thread's 2 + 2 values of op(A)[row0:+64, k0:+8] and op(B)[k0:+8, col0:+64]
        from global memory into registers (zero outside the matrices)."""
        for l in range(2):
            idx = tid + l * 256
            mm, kk = idx // BK, idx % BK
            gi, gk = row0 + mm, k0 + kk
            v = 0
            if gi < M and gk < K:  # guard every global read
                v = A[gk, gi] if trans_a else A[gi, gk]
            ga[l] = v
            nn, kb = idx % BN, idx // BN
            gj, gk = col0 + nn, k0 + kb
            w = 0
            if gj < N and gk < K:
                w = B[gj, gk] if trans_b else B[gk, gj]
            gb[l] = w

    @cuda.jit(device=True, inline=True)
    def store(sA, sB, buf, ga, gb, tid):
        for l in range(2):
            idx = tid + l * 256
            sA[buf, idx % BK, idx // BK] = ga[l]
            sB[buf, idx // BN, idx % BN] = gb[l]

    @cuda.jit
    def gemm(A, B, C, M, N, K, trans_a, trans_b):
        sA = cuda.shared.array((2, BK, BM), nt)  # two buffers: one read, one filled
        sB = cuda.shared.array((2, BK, BN), nt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * 16 + tx
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        acc = cuda.local.array((TM, TN), nt)
        ra = cuda.local.array(TM, nt)
        rb = cuda.local.array(TN, nt)
        ga = cuda.local.array(2, nt)  # the next tile, on its way from global memory
        gb = cuda.local.array(2, nt)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0
        load(A, B, ga, gb, row0, col0, 0, tid, M, N, K, trans_a, trans_b)
        store(sA, sB, 0, ga, gb, tid)
        cuda.syncthreads()  # the first tile is complete
        buf = 0
        for k0 in range(0, K, BK):
            more = k0 + BK < K
            if more:  # issue the next tile's global loads before computing on this one
                load(A, B, ga, gb, row0, col0, k0 + BK, tid, M, N, K, trans_a, trans_b)
            for kk in range(BK):
                for i in range(TM):
                    ra[i] = sA[buf, kk, ty * TM + i]
                for j in range(TN):
                    rb[j] = sB[buf, kk, tx * TN + j]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ra[i] * rb[j]
            if more:  # the other buffer was last read before the previous barrier
                store(sA, sB, 1 - buf, ga, gb, tid)
            cuda.syncthreads()  # next tile complete, and this one's reads done
            buf = 1 - buf
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
