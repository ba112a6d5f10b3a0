"""Numba CPU matmul: cache-blocked, 4x4 register micro-kernel of dot products.

C = op(A) @ op(B) is computed as C[i, j] = dot(a_i, b_j) where a_i is row i of op(A) and
b_j column j of op(B), both contiguous along k. The micro-kernel keeps a 4x4 block of C in
16 scalar accumulators and streams 4 rows of each operand: 8 loads feed 16 FMAs per k,
and LLVM vectorises the k loop (fastmath reassociation for the sums). K is cut into
1024-wide slabs (4 rows x 4 KiB of each operand stay in L1/L2), N into 16-column blocks.

An operand whose k dimension is not contiguous in memory (B for A @ B, A for A^T @ B) is
packed one k-slab at a time into a row-major panel, as BLAS libraries pack; A @ B^T needs
no packing at all. Rows are split across threads with prange.
"""
import numpy as np
from numba import njit, prange

KC = 1024  # k-slab
MC = 128  # rows per parallel task (swept 64-256 at 1024: 128 x 32 best)
NB = 32   # columns per inner block
_FM = {"contract", "reassoc", "nsz"}  # the k sums need reassociation; nan/inf still propagate


@njit(fastmath=_FM, inline="always")
def _dot(a, b):
    s = a[0] * 0
    for k in range(a.size):
        s += a[k] * b[k]
    return s


@njit(fastmath=_FM, cache=True)
def _block(Ar, ka, Bc, kb, kc, C, i0, i1, j0, j1):
    """C[i, j] += dot(Ar[i, ka:ka+kc], Bc[j, kb:kb+kc]) for i in [i0,i1), j in [j0,j1)."""
    i4 = i0 + (i1 - i0) // 4 * 4
    j4 = j0 + (j1 - j0) // 4 * 4
    z = np.zeros(1, C.dtype)[0]
    for i in range(i0, i4, 4):
        a0 = Ar[i, ka:ka + kc]
        a1 = Ar[i + 1, ka:ka + kc]
        a2 = Ar[i + 2, ka:ka + kc]
        a3 = Ar[i + 3, ka:ka + kc]
        for j in range(j0, j4, 4):
            b0 = Bc[j, kb:kb + kc]
            b1 = Bc[j + 1, kb:kb + kc]
            b2 = Bc[j + 2, kb:kb + kc]
            b3 = Bc[j + 3, kb:kb + kc]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z
            for k in range(kc):
                x0 = a0[k]
                x1 = a1[k]
                x2 = a2[k]
                x3 = a3[k]
                y0 = b0[k]
                y1 = b1[k]
                y2 = b2[k]
                y3 = b3[k]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s23 += x2 * y3
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
                s33 += x3 * y3
            C[i, j] += s00
            C[i, j + 1] += s01
            C[i, j + 2] += s02
            C[i, j + 3] += s03
            C[i + 1, j] += s10
            C[i + 1, j + 1] += s11
            C[i + 1, j + 2] += s12
            C[i + 1, j + 3] += s13
            C[i + 2, j] += s20
            C[i + 2, j + 1] += s21
            C[i + 2, j + 2] += s22
            C[i + 2, j + 3] += s23
            C[i + 3, j] += s30
            C[i + 3, j + 1] += s31
            C[i + 3, j + 2] += s32
            C[i + 3, j + 3] += s33
        for jj in range(j4, j1):  # right edge: 4 x 1
            b = Bc[jj, kb:kb + kc]
            C[i, jj] += _dot(a0, b)
            C[i + 1, jj] += _dot(a1, b)
            C[i + 2, jj] += _dot(a2, b)
            C[i + 3, jj] += _dot(a3, b)
    for ii in range(i4, i1):  # bottom edge: 1 x n
        a = Ar[ii, ka:ka + kc]
        for jj in range(j0, j1):
            C[ii, jj] += _dot(a, Bc[jj, kb:kb + kc])


@njit(parallel=True, cache=True)
def _pack_t(X, r0, r1, out):
    """out[c, r - r0] = X[r, c] for r in [r0, r1): the k-slab of X, transposed."""
    rows, cols = r1 - r0, X.shape[1]
    for cb in prange((cols + 63) // 64):
        for r in range(rows):
            for c in range(cb * 64, min(cols, cb * 64 + 64)):
                out[c, r] = X[r0 + r, c]


@njit(parallel=True, fastmath=_FM, cache=True)
def gemm(A, B, C, trans_a, trans_b):
    """C = op(A) @ op(B) for C-contiguous A, B, C (C is overwritten)."""
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    C[:, :] = 0
    kmax = min(K, KC)
    a_slab = np.empty((M if trans_a else 0, kmax), A.dtype)
    b_slab = np.empty((0 if trans_b else N, kmax), B.dtype)
    for k0 in range(0, K, KC):
        k1 = min(K, k0 + KC)
        if trans_a:
            _pack_t(A, k0, k1, a_slab)
        if not trans_b:
            _pack_t(B, k0, k1, b_slab)
        ar = a_slab if trans_a else A
        ka = 0 if trans_a else k0
        bc = B if trans_b else b_slab
        kb = k0 if trans_b else 0
        for ib in prange((M + MC - 1) // MC):
            i0 = ib * MC
            i1 = min(M, i0 + MC)
            for j0 in range(0, N, NB):
                _block(ar, ka, bc, kb, k1 - k0, C, i0, i1, j0, min(N, j0 + NB))
    return C
