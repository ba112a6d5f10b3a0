"""Numba CPU kernels for blocked covariance accumulation (hpcml.kernels.covariance).

Each kernel is one pass over a row block that NumPy would take two or three passes (and a
temporary) for: shifting a block by a centre while summing it, or summing a block's
deviations and their squares. Sums are float64 whatever the input dtype. They are serial
and release the GIL (nogil): the scatter product that follows goes to BLAS, which brings
its own threads, and a loader thread can read the next batch meanwhile.
"""
from numba import njit


@njit(nogil=True, cache=True)
def center_shift(x, center, out, sums):
    """out[i, j] = x[i, j] - center[j] (float64) and sums[j] += out[i, j], in one pass.

    x: rows x features, float32 or float64 (row-major); center, sums: float64 (features,);
    out: float64, at least x's shape. NaN and Inf propagate into out and sums."""
    n, d = x.shape
    for i in range(n):
        xi = x[i]
        oi = out[i]
        for j in range(d):
            v = xi[j] - center[j]
            oi[j] = v
            sums[j] += v


@njit(nogil=True, cache=True)
def moments_shift(x, center, sums, squares):
    """sums[j] += sum_i (x[i, j] - center[j]); squares[j] += sum_i (x[i, j] - center[j])^2,
    in float64, one pass, nothing written per row (per-feature variances of wide data)."""
    n, d = x.shape
    for i in range(n):
        xi = x[i]
        for j in range(d):
            v = xi[j] - center[j]
            sums[j] += v
            squares[j] += v * v


@njit(nogil=True, cache=True)
def first_nonfinite(x):
    """Index of the first row of x holding a NaN or Inf, or -1."""
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            v = x[i, j]
            if v != v or v - v != 0:  # NaN, or +-Inf (inf - inf is NaN)
                return i
    return -1
