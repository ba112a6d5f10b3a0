"""PCA's statistics across blocks and ranks: finiteness checks, the k-way merge of
(n, mean, scatter) over ranks, and TSQR of a matrix split by rows."""
import numpy as np

from hpcml import comm as hc
from hpcml.kernels import covariance as KC

from .checks import InputError


class BadRows(ValueError):
    pass


def check_finite(x, offset, stats, rows):
    """Raise _BadRows naming the first non-finite row if the block's statistics are not
    finite (NaN/Inf anywhere in a block makes its sums non-finite)."""
    if np.isfinite(stats[1]).all() and np.isfinite(stats[2]).all():
        return
    bad = KC.find_nonfinite(x)
    where = "the dataset's" if rows.ds is not None else "X"
    if bad >= 0:
        raise BadRows(f"{where} row {offset + bad} (of this rank's rows) has a NaN or Inf "
                       f"value")
    raise BadRows(f"{where} rows {offset}..{offset + len(x) - 1} overflow float64 "
                   f"(values too large to square)")


def check_merged(mean, M2):
    """The merged statistics (the same bytes on every rank) must be finite: each block's
    are, but their sum across blocks, calls or ranks can still overflow float64."""
    if not (np.isfinite(mean).all() and np.isfinite(M2).all()):
        raise InputError("the rows' scatter overflows float64 once blocks and ranks are "
                         "merged (values too large to square); scale the data")


def merge_ranks(comm, stats):
    """(n, mean, M2) of all ranks' rows (M2 a scatter matrix or per-feature vector), the
    same bytes on every rank: sum all-reduce of (n, n * mean), then of each rank's M2
    moved to the global mean."""
    n, mean, M = stats
    if comm is None:
        return n, mean.copy(), M.copy()
    d = len(mean)
    buf = np.empty(d + 1)
    buf[0], buf[1:] = n, mean * n
    hc.allreduce(buf, "sum", comm=comm)
    total = int(round(buf[0]))
    if total == 0:
        return 0, np.zeros(d), np.zeros_like(M)
    center = buf[1:] / total
    out = KC.scatter_about(stats, center)
    hc.allreduce(out, "sum", comm=comm)
    return total, center, out


def tsqr(Y, comm):
    """Q with orthonormal columns spanning Y's, Y split by rows across ranks (TSQR: local
    QR, all-gather of the R factors, QR of their stack)."""
    n, width = Y.shape
    if comm is None or comm.Get_size() == 1:
        return np.linalg.qr(Y)[0]
    p, r = comm.Get_size(), comm.Get_rank()
    if n:
        Q1, R1 = np.linalg.qr(Y)  # Q1: n x m, R1: m x width, m = min(n, width)
    else:
        Q1, R1 = np.zeros((0, 0)), np.zeros((0, width))
    stack = np.zeros(p * width * width)
    stack[r * width * width:r * width * width + R1.size] = R1.ravel()
    hc.allgather(stack, comm=comm)  # block r of chunk_bounds(p * w * w, p) from rank r
    Q2 = np.linalg.qr(stack.reshape(p * width, width))[0]
    return Q1 @ Q2[r * width:r * width + R1.shape[0]]
