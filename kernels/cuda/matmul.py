"""CUDA matmul: shared-memory tiles with register tiling and double buffering.

A block of (BN/TN) x (BM/TM) threads computes a BM x BN tile of C; each thread owns a
TM x TN patch held in registers (cuda.local.array). Per step of BK along k, the block reads
a BM x BK tile of op(A) and a BK x BN tile of op(B) from shared memory (each thread stages
its share of both, zero-filled outside the matrix), and every thread does BK rank-1
updates of its patch from registers: TM + TN shared loads feed TM x TN FMAs. Double
buffering: the next step's tiles are loaded from global memory into registers before the
current step's arithmetic (their latency hides behind it) and written to the other of two
shared buffers after it, so one barrier per step suffices instead of two. Transposed
operands are read through their strides while staging, so A^T B and A B^T need no
transposed copy.

The tile shape (BM, BN, BK, TM, TN) is a compile-time constant of each kernel: TILES lists
the FP32 shapes `python -m hpcml.bench gpu` times against cuBLAS on a GPU (no tensor
cores: Numba cannot issue their instructions). The default is DEFAULT_TILE, or the
HPCML_CUDA_TILE environment variable ("128x128x8x8x8"), or the `tile` argument.
"""
import math
import os
from functools import lru_cache

import numpy as np
from numba import cuda

from . import is_device_array

#: (BM, BN, BK, TM, TN): 256 threads each; 64 x 64 with 4 x 4 per thread, the classic
#: SGEMM 128 x 128 with 8 x 8, and the shapes between
TILES = ((64, 64, 8, 4, 4), (64, 64, 16, 4, 4), (128, 64, 8, 8, 4), (128, 128, 8, 8, 8),
         (128, 128, 16, 8, 8))
DEFAULT_TILE = TILES[0]  # not tuned yet: no GPU has measured the others


def check_tile(tile, itemsize=4):
    """The tile as a tuple of 5 ints, or ValueError naming what is wrong with it (its
    threads, its staging, or its two shared buffers over the 48 KiB a block may hold
    statically, for `itemsize`-byte values)."""
    try:
        BM, BN, BK, TM, TN = (int(v) for v in tile)
    except (TypeError, ValueError):
        raise ValueError(f"CUDA matmul tile {tile!r}: need 5 integers BM, BN, BK, TM, "
                         f"TN (e.g. 128x128x8x8x8)") from None
    if min(BM, BN, BK, TM, TN) <= 0 or BM % TM or BN % TN:
        raise ValueError(f"CUDA matmul tile {tile!r}: TM must divide BM and TN divide BN")
    threads = (BN // TN) * (BM // TM)
    if threads > 1024 or (BM * BK) % threads or (BK * BN) % threads:
        raise ValueError(f"CUDA matmul tile {tile!r}: its {threads} threads (at most 1024) "
                         f"must divide BM x BK and BK x BN")
    if 2 * BK * (BM + BN) * itemsize > 48 * 1024:
        raise ValueError(f"CUDA matmul tile {tile!r}: two shared buffers of "
                         f"{itemsize}-byte values exceed 48 KiB")
    return BM, BN, BK, TM, TN


def default_tile():
    text = os.environ.get("HPCML_CUDA_TILE", "").strip()
    return check_tile(text.split("x")) if text else DEFAULT_TILE


def _shape(tile):
    """(threads along x, threads per block, values of the A and B tiles a thread stages)."""
    BM, BN, BK, TM, TN = tile
    TX = BN // TN
    NT = TX * (BM // TM)
    return TX, NT, BM * BK // NT, BK * BN // NT


@lru_cache(maxsize=None)
def _staging(tile):
    """The tile's device functions that move the next k-step's tiles: global memory ->
    registers (load), registers -> one of the two shared buffers (store)."""
    BM, BN, BK, TM, TN = tile
    TX, NT, LA, LB = _shape(tile)

    @cuda.jit(device=True, inline=True)
    def load(A, B, ga, gb, row0, col0, k0, tid, M, N, K, trans_a, trans_b):
        """This thread's LA + LB values of op(A)[row0:+BM, k0:+BK] and
        op(B)[k0:+BK, col0:+BN] from global memory into registers (zero outside)."""
        for l in range(LA):
            idx = tid + l * NT
            mm, kk = idx // BK, idx % BK
            gi, gk = row0 + mm, k0 + kk
            v = 0
            if gi < M and gk < K:  # guard every global read
                v = A[gk, gi] if trans_a else A[gi, gk]
            ga[l] = v
        for l in range(LB):
            idx = tid + l * NT
            nn, kb = idx % BN, idx // BN
            gj, gk = col0 + nn, k0 + kb
            w = 0
            if gj < N and gk < K:
                w = B[gj, gk] if trans_b else B[gk, gj]
            gb[l] = w

    @cuda.jit(device=True, inline=True)
    def store(sA, sB, buf, ga, gb, tid):
        for l in range(LA):
            idx = tid + l * NT
            sA[buf, idx % BK, idx // BK] = ga[l]
        for l in range(LB):
            idx = tid + l * NT
            sB[buf, idx // BN, idx % BN] = gb[l]

    return load, store


@lru_cache(maxsize=None)
def _kernel(dtype, tile=DEFAULT_TILE):
    nt = dtype
    BM, BN, BK, TM, TN = tile
    TX, NT, LA, LB = _shape(tile)
    load, store = _staging(tile)

    @cuda.jit
    def gemm(A, B, C, M, N, K, trans_a, trans_b):
        sA = cuda.shared.array((2, BK, BM), nt)  # two buffers: one read, one filled
        sB = cuda.shared.array((2, BK, BN), nt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        acc = cuda.local.array((TM, TN), nt)
        ra = cuda.local.array(TM, nt)
        rb = cuda.local.array(TN, nt)
        ga = cuda.local.array(LA, nt)  # the next tile, on its way from global memory
        gb = cuda.local.array(LB, nt)
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


def matmul(a, b, out=None, trans_a=False, trans_b=False, tile=None):
    """out = op(a) @ op(b) on the GPU; a, b (and out) host or device arrays; tile: the
    (BM, BN, BK, TM, TN) shape (default: default_tile())."""
    dtype = np.dtype(a.dtype)
    if tile is None:  # HPCML_CUDA_TILE's, where its buffers fit this dtype
        tile = default_tile()
        if 2 * tile[2] * (tile[0] + tile[1]) * dtype.itemsize > 48 * 1024:
            tile = DEFAULT_TILE
    BM, BN, BK, TM, TN = tile = check_tile(tile, dtype.itemsize)
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    K2, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != K2:
        raise ValueError(f"matmul: inner dimensions differ ({K} vs {K2})")
    if out is None:
        out = cuda.device_array((M, N), dtype) if is_device_array(a) else \
            np.empty((M, N), dtype)
    if M and N:
        if K == 0:
            out[...] = 0
            return out
        grid = (math.ceil(N / BN), math.ceil(M / BM))
        _kernel(dtype.type, tile)[grid, (BN // TN, BM // TM)](a, b, out, M, N, K, trans_a,
                                                              trans_b)
    return out
