"""Blocked covariance accumulation: per-block (count, mean, centred scatter) and their merge.

    from hpcml.kernels.covariance import scatter_block, merge_scatter
    a = scatter_block(x1)                  # (n, mean float64[d], M2 float64[d, d])
    b = scatter_block(x2)
    n, mean, M2 = merge_scatter(a, b)      # the statistics of x1 and x2 stacked
    cov = M2 / (n - 1)

M2 is the centred scatter sum_i (x_i - mean)(x_i - mean)^T, in float64 for float32 or float64
input. Merging uses Chan, Golub & LeVeque's pairwise update (Chan et al. 1979/1983):
mean = mean_a + delta n_b / n, M2 = M2_a + M2_b + delta delta^T n_a n_b / n with
delta = mean_b - mean_a, so no quantity ever holds sum x x^T, and data with a large mean and
a tiny spread (1e5 +- 1e-3) keeps its digits. `scatter_about` moves a block's scatter to
another centre (the k-way form of the same identity, used to merge across ranks with one
sum all-reduce).

Backends (``backend=`` or the process-wide one, hpcml.kernels.set_backend):
* ``numpy``: the reference (reference_scatter): mean, a centred float64 copy, Xc^T Xc.
* ``cpu``: cache-sized row blocks. A chunk is centred on the mean of its first block c (a
  shift); each block is shifted and summed in one Numba pass (cpu/covariance.py) into an
  L2-resident float64 buffer whose scatter BLAS forms (syrk); then
  M2 = S - n (m - c)(m - c)^T. Since c is the mean of the chunk's first b rows, those rows
  alone give M2 >= b (m - c)(m - c)^T in every direction, so the subtraction loses at most a
  factor n/b <= CHUNK_BLOCKS in relative accuracy; chunks are merged with merge_scatter.
  One pass over memory, no full-size copy. With several threads (hpcml.kernels.threads),
  each takes a contiguous share of the rows with single-threaded BLAS and the shares are
  merged in order: on 2 cores, 1,000,000 x 64 took 0.14-0.16 s this way against
  0.24-0.31 s for one stream of products on 2 BLAS threads (the shift pass no longer
  leaves a core idle). The product is BLAS's: a hand-written Numba
  scatter (rank-1 updates, 4 rows unrolled, parallel over output rows) measured 6x slower
  than OpenBLAS dsyrk on 2048 x 64 blocks here, and a 2-thread Numba shift pass no faster
  than the serial one (hpcml.bench.pca times cpu against numpy and scikit-learn).
* ``cuda``: cuda/covariance.py, shared-memory tiles of the centred X^T X in float64.
``auto`` sends device arrays to cuda and host arrays to AUTO[kernel].
"""
import math
import threading

import numpy as np

from .cpu import covariance as _cpu
from .threads import blas_threads

#: auto's CPU choice per kernel: scatter_block of 1,000,000 x 64 float64 on the 2-core CI
#: machine took 0.19-0.21 s with cpu, 0.43-0.53 s (and a 512 MB temporary) with numpy
AUTO = {"scatter_block": "cpu", "moments_block": "cpu", "center_rows": "cpu"}
#: kernels with a CUDA version (the others run on the CPU when the process-wide backend
#: is cuda and the arrays are on the host)
CUDA_KERNELS = ("scatter_block",)
#: bytes of one centred float64 row block (the size of one core's L2 here: 4096 rows of 64
#: features measured 10-15% faster than 1024 or 2048, and than 8192)
BLOCK_BYTES = 2 << 20
#: row blocks per shifted chunk (bounds the shift's loss of accuracy, see above)
CHUNK_BLOCKS = 64


def rows_per_block(features):
    """Rows per cache-sized block for this many features (at least 256)."""
    return max(256, BLOCK_BYTES // (8 * max(int(features), 1)))


# --- references ------------------------------------------------------------------------

def reference_scatter(x):
    """(n, mean, M2) of a block, the two-pass way in float64 (the specification)."""
    x64 = np.asarray(x, dtype=np.float64)
    n, d = x64.shape
    if n == 0:
        return 0, np.zeros(d), np.zeros((d, d))
    mean = x64.mean(axis=0)
    xc = x64 - mean
    return n, mean, xc.T @ xc


def reference_moments(x):
    """(n, mean, per-feature M2 = sum_i (x_ij - mean_j)^2) of a block, two-pass float64."""
    x64 = np.asarray(x, dtype=np.float64)
    n, d = x64.shape
    if n == 0:
        return 0, np.zeros(d), np.zeros(d)
    mean = x64.mean(axis=0)
    return n, mean, ((x64 - mean) ** 2).sum(axis=0)


# --- merging (pure NumPy, float64) ------------------------------------------------------

def merge_scatter(a, b, inplace=False):
    """The (n, mean, M2) of two blocks stacked (Chan et al.'s pairwise update). M2 may be a
    d x d scatter or a per-feature vector. inplace=True updates a's M2 array (and returns
    it in the result); a and b are otherwise left as they are."""
    na, ma, Ma = a
    nb, mb, Mb = b
    if nb == 0:
        return a if inplace else (na, ma.copy(), Ma.copy())
    if na == 0:
        return nb, np.array(mb, np.float64), np.array(Mb, np.float64)
    n = na + nb
    delta = mb - ma
    mean = ma + delta * (nb / n)
    M = Ma if inplace else Ma.copy()
    with np.errstate(over="ignore", invalid="ignore"):  # overflow: inf, for the caller
        M += Mb
        w = delta * math.sqrt(na * nb / n)
        if M.ndim == 2:
            M += np.outer(w, w)  # w_i w_j == w_j w_i: M stays exactly symmetric
        else:
            M += w * w
    return n, mean, M


def scatter_about(stats, center):
    """A block's scatter about `center` instead of its own mean:
    M2 + n (mean - center)(mean - center)^T (or the per-feature form). Summing this over
    blocks, with center the mean of all of them, gives the scatter of all the rows."""
    n, mean, M = stats
    out = np.array(M, np.float64)
    if n:
        with np.errstate(over="ignore", invalid="ignore"):
            w = (mean - center) * math.sqrt(n)
            out += np.outer(w, w) if out.ndim == 2 else w * w
    return out


# --- dispatch ---------------------------------------------------------------------------

def _pick(kernel, backend, x):
    from hpcml import kernels as K  # (imported late: no import cycle)
    return K.pick(kernel, backend, x, table=AUTO, cuda=kernel in CUDA_KERNELS)


def _check(kernel, x):
    from hpcml import kernels as K
    if not (K._is_device(x) or isinstance(x, np.ndarray)):
        raise TypeError(f"{kernel}: x must be an array, got {type(x).__name__}")
    if len(x.shape) != 2:
        raise ValueError(f"{kernel}: x must be rows x features, got shape {tuple(x.shape)}")
    K._float(kernel, "x", x)


# --- threads: shares of the rows on a pool, BLAS single-threaded meanwhile --------------
#: the least number of row blocks worth a worker thread
MIN_SHARE_BLOCKS = 4
_pools = {}
_pools_lock = threading.Lock()


def _workers(threads, n, rows):
    if threads is None:
        from . import threads as T
        threads = T.current() or T.available_cores()
    return max(1, min(int(threads), n // (rows * MIN_SHARE_BLOCKS)))


def _pool(workers):
    with _pools_lock:
        if workers not in _pools:
            from concurrent.futures import ThreadPoolExecutor
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="hpcml-cov")
        return _pools[workers]


def _rowmajor(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def scatter_block(x, backend=None, block_rows=None, threads=None):
    """(n, mean float64[d], M2 float64[d, d]) of the rows of x (float32 or float64, host or
    device), M2 the centred scatter. NaN/Inf propagate. cpu only: block_rows (default
    rows_per_block(d)); threads: workers, each taking a contiguous share of the rows with
    single-threaded BLAS, merged in order (default: hpcml.kernels.threads' count, else
    the cores; a share is at least MIN_SHARE_BLOCKS blocks)."""
    _check("scatter_block", x)
    be = _pick("scatter_block", backend, x)
    n, d = (int(s) for s in x.shape)
    if n == 0:
        return 0, np.zeros(d), np.zeros((d, d))
    if be == "numpy":
        return reference_scatter(x)
    if be == "cuda":
        from .cuda.covariance import scatter_block as cuda_scatter
        return cuda_scatter(x)
    rows = int(block_rows or rows_per_block(d))
    workers = _workers(threads, n, rows)
    if workers == 1:
        return _scatter_rows(x, rows)
    bounds = [n * i // workers for i in range(workers + 1)]
    with blas_threads(1):
        parts = list(_pool(workers).map(
            lambda i: _scatter_rows(x[bounds[i]:bounds[i + 1]], rows), range(workers)))
    total = parts[0]
    for part in parts[1:]:
        total = merge_scatter(total, part, inplace=True)
    return total


def _scatter_rows(x, rows):
    """scatter_block on one thread: shifted chunks of CHUNK_BLOCKS blocks, merged."""
    n, d = x.shape
    buf = np.empty((min(rows, n), d))
    step = rows * CHUNK_BLOCKS
    total = None
    for c0 in range(0, n, step):
        part = _scatter_chunk(x[c0:c0 + step], rows, buf)
        total = part if total is None else merge_scatter(total, part, inplace=True)
    return total


def _scatter_chunk(x, rows, buf):
    n, d = x.shape
    center = np.mean(x[:rows], axis=0, dtype=np.float64)
    sums = np.zeros(d)
    S = np.zeros((d, d))
    for i0 in range(0, n, rows):
        blk = _rowmajor(x[i0:i0 + rows])
        out = buf[:len(blk)]
        _cpu.center_shift(blk, center, out, sums)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf propagate, quietly
            S += out.T @ out  # BLAS syrk (NumPy spots Xc^T Xc)
    dev = sums / n
    w = dev * math.sqrt(n)
    S -= np.outer(w, w)
    return n, center + dev, S


def moments_block(x, backend=None, block_rows=None):
    """(n, mean float64[d], per-feature M2 float64[d]) of the rows of x: the diagonal of
    scatter_block's M2 without forming it (wide data). Same shift and chunking."""
    _check("moments_block", x)
    be = _pick("moments_block", backend, x)
    n, d = (int(s) for s in x.shape)
    if n == 0:
        return 0, np.zeros(d), np.zeros(d)
    if be == "numpy":
        return reference_moments(x)
    rows = int(block_rows or rows_per_block(d))
    step = rows * CHUNK_BLOCKS
    total = None
    for c0 in range(0, n, step):
        chunk = x[c0:c0 + step]
        m = len(chunk)
        center = np.mean(chunk[:rows], axis=0, dtype=np.float64)
        sums, squares = np.zeros(d), np.zeros(d)
        for i0 in range(0, m, rows):
            _cpu.moments_shift(_rowmajor(chunk[i0:i0 + rows]), center, sums, squares)
        dev = sums / m
        part = (m, center + dev, squares - m * dev * dev)
        total = part if total is None else merge_scatter(total, part, inplace=True)
    return total


def center_rows(x, center, out=None, backend=None):
    """x - center as a new (or the given) float64 array, one pass (the sums are dropped)."""
    _check("center_rows", x)
    be = _pick("center_rows", backend, x)
    center = np.asarray(center, np.float64)
    if out is None:
        out = np.empty(x.shape, np.float64)
    if be == "numpy":
        np.subtract(x, center, out=out, dtype=np.float64)
        return out
    _cpu.center_shift(_rowmajor(x), center, out, np.zeros(x.shape[1]))
    return out


def find_nonfinite(x):
    """Index of the first row of the host array x with a NaN or Inf, or -1."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        return -1
    return int(_cpu.first_nonfinite(_rowmajor(x.reshape(len(x), -1))))


__all__ = ["scatter_block", "merge_scatter", "scatter_about", "moments_block",
           "center_rows", "find_nonfinite", "reference_scatter", "reference_moments",
           "rows_per_block", "AUTO", "BLOCK_BYTES", "CHUNK_BLOCKS"]
