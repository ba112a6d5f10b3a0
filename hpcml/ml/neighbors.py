"""Exact k nearest neighbours by brute force: BLAS distance blocks, a GIL-free top-k merge,
then the chosen neighbours' squared distances recomputed directly (no cancellation) and
sorted by (distance, index), so the result does not depend on how rows are blocked or
split across ranks."""
import numpy as np

from hpcml.kernels import tsne as KT

QUERY_BLOCK = 2048
REF_BLOCK = 8192


def knn(xq, xr, k, self_offset=None, extra=4, backend=None, progress=None):
    """(indices (nq, k) int64, squared distances (nq, k) float64) of each query row's k
    nearest rows of xr, nearest first. self_offset: xq[i] is xr[self_offset + i], which is
    then not its own neighbour. `extra` more candidates are taken by the fast BLAS
    distances and re-ranked by exact ones. backend="cuda" computes the distance blocks on
    the GPU. progress: an object with update(rows) called per block of query rows."""
    from hpcml.kernels.cpu.tsne import topk_merge
    nq, nr = xq.shape[0], xr.shape[0]
    avail = nr - (1 if self_offset is not None else 0)
    if not 1 <= k <= avail:
        raise ValueError(f"knn: k = {k} neighbours asked, {avail} available")
    kc = min(avail, k + extra)
    dt = np.result_type(xq.dtype, xr.dtype, np.float32)
    # distances do not change under a shift; centring on xr's mean (in float64) keeps the
    # BLAS form |q|^2 + |r|^2 - 2 q.r from losing the gaps between near neighbours to
    # rounding when the data sit far from the origin (float32 especially)
    centre = xr.mean(axis=0, dtype=np.float64)
    xq_raw, xr_raw = xq, xr
    xq = np.ascontiguousarray(xq - centre, dt)
    xr = np.ascontiguousarray(xr - centre, dt)
    rn = np.einsum("ij,ij->i", xr, xr)
    idx = np.empty((nq, k), np.int64)
    d2 = np.empty((nq, k))
    for q0 in range(0, nq, QUERY_BLOCK):
        q1 = min(nq, q0 + QUERY_BLOCK)
        xb = xq[q0:q1]
        qn = np.einsum("ij,ij->i", xb, xb)
        best_d = np.full((q1 - q0, kc), np.inf, np.float64 if backend == "cuda" else dt)
        best_i = np.full((q1 - q0, kc), -1, np.int64)
        for r0 in range(0, nr, REF_BLOCK):
            r1 = min(nr, r0 + REF_BLOCK)
            if backend == "cuda":
                d = KT.sq_distances(xb, xr[r0:r1], backend="cuda")
            else:
                d = xb @ xr[r0:r1].T
                d *= -2
                d += qn[:, None]
                d += rn[None, r0:r1]
            self0 = -1 if self_offset is None else self_offset + q0
            topk_merge(d, r0, self0, kc, best_d, best_i)
        exact = KT.sq_dist_rows(xq_raw[q0:q1], xr_raw, best_i)
        order = _sort_rows(exact, best_i)[:, :k]
        idx[q0:q1] = np.take_along_axis(best_i, order, axis=1)
        d2[q0:q1] = np.take_along_axis(exact, order, axis=1)
        if progress is not None:
            progress.update(q1 - q0)
    return idx, d2


def _sort_rows(d, i):
    """Per row, the order sorting by distance then index."""
    order = np.argsort(i, axis=1, kind="stable")
    d_by_i = np.take_along_axis(d, order, axis=1)
    return np.take_along_axis(order, np.argsort(d_by_i, axis=1, kind="stable"), axis=1)
