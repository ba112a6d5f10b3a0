"""t-SNE kernels: NumPy references (the specification), dispatch to Numba CPU (cpu/tsne.py)
and Numba CUDA (cuda/tsne.py), and the FFT-accelerated repulsion. Pure compute.

    from hpcml.kernels import tsne as KT
    P = KT.perplexity_search(d2, perplexity=30)          # rows: conditional p_j|i
    KT.attractive(y, r0, indptr, indices, pvals, out)    # sum_j p_ij w_ij (y_i - y_j)
    z = KT.repulsive_exact(y, r0, out)                   # sum_j w_ij^2 (y_i - y_j), part of Z
    z = KT.RepulsionFFT().compute(y, r0, r1, out)        # the same, O(N) + FFT (2-D)

Notation: y is the (n, d) embedding (float64), a rank's rows are i in [r0, r0 + len(out)),
w_ij = 1 / (1 + |y_i - y_j|^2), Z = sum_{i != j} w_ij. The t-SNE gradient of row i is
4 (exaggeration * attractive_i - repulsive_i / Z).
"""
import math
import time

import numpy as np

BACKENDS = ("auto", "numpy", "cpu", "cuda")


#: auto's CPU choice per kernel: the Numba kernels (t-SNE's NumPy versions are references)
AUTO = {k: "cpu" for k in ("perplexity_search", "attractive", "kl_terms", "repulsive_exact",
                           "update", "sq_distances", "sq_dist_rows")}


def _backend(kernel, backend, *arrays):
    from . import pick
    return pick(kernel, backend, *arrays, table=AUTO)


# --- NumPy references ------------------------------------------------------------------

def reference_perplexity_search(d2, perplexity, tol=1e-5, max_steps=100):
    """scikit-learn's binary search on the precision beta, all rows at once."""
    d2 = np.asarray(d2, np.float64)
    n, k = d2.shape
    target = math.log(perplexity)
    beta = np.ones(n)
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    P = np.zeros((n, k))
    active = np.ones(n, bool)
    for _ in range(max_steps):
        if not active.any():
            break
        a = np.flatnonzero(active)
        e = np.exp(-d2[a] * beta[a, None])
        s = e.sum(axis=1)
        s[s == 0] = 1e-8  # as scikit-learn and the kernels: every affinity underflowed
        p = e / s[:, None]
        P[a] = p
        diff = np.log(s) + beta[a] * (d2[a] * p).sum(axis=1) - target
        done = np.abs(diff) <= tol
        up = (diff > 0) & ~done
        down = (diff <= 0) & ~done
        b = beta[a]
        lo_a, hi_a = lo[a], hi[a]
        lo_a[up] = b[up]
        b[up] = np.where(np.isinf(hi_a[up]), b[up] * 2, (b[up] + hi_a[up]) / 2)
        hi_a[down] = b[down]
        b[down] = np.where(np.isinf(lo_a[down]), b[down] / 2, (b[down] + lo_a[down]) / 2)
        beta[a], lo[a], hi[a] = b, lo_a, hi_a
        active[a[done]] = False
    return P


def _pairs(y, r0, indptr, indices):
    rows = r0 + np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    diff = y[rows] - y[indices]
    return rows, diff, (diff * diff).sum(axis=1)


def reference_attractive(y, r0, indptr, indices, pvals):
    rows, diff, d2 = _pairs(y, r0, indptr, indices)
    out = np.zeros((len(indptr) - 1, y.shape[1]))
    np.add.at(out, rows - r0, (pvals / (1 + d2))[:, None] * diff)
    return out


def reference_kl_terms(y, r0, indptr, indices, pvals):
    _, _, d2 = _pairs(y, r0, indptr, indices)
    pos = pvals > 0
    return float((pvals[pos] * np.log(pvals[pos])).sum()), float((pvals * np.log1p(d2)).sum())


def reference_repulsive_exact(y, r0, r1):
    """(forces (r1 - r0, d), per-row z (r1 - r0,)) of rows [r0, r1)."""
    diff = y[r0:r1, None, :] - y[None, :, :]
    w = 1 / (1 + (diff * diff).sum(axis=2))
    w[np.arange(r1 - r0), np.arange(r0, r1)] = 0
    return ((w * w)[:, :, None] * diff).sum(axis=1), w.sum(axis=1)


def reference_update(y, grad, upd, gains, momentum, lr, min_gain):
    """scikit-learn's _gradient_descent step, in place; returns |grad|^2."""
    inc = upd * grad < 0
    gains[inc] += 0.2
    gains[~inc] *= 0.8
    np.clip(gains, min_gain, np.inf, out=gains)
    upd *= momentum
    upd -= lr * gains * grad
    y += upd
    return float((grad * grad).sum())


def reference_sq_distances(a, b):
    diff = a[:, None, :].astype(np.float64) - b[None, :, :].astype(np.float64)
    return (diff * diff).sum(axis=2)


def reference_sq_dist_rows(xq, xr, idx):
    diff = xq[:, None, :].astype(np.float64) - xr[idx].astype(np.float64)
    return (diff * diff).sum(axis=2)


# --- dispatch --------------------------------------------------------------------------

def _cpu():
    from .cpu import tsne
    return tsne


def _cuda():
    from .cuda import tsne
    return tsne


def _rows_check(kernel, y, r0, n_rows):
    if y.ndim != 2 or not 0 <= r0 <= r0 + n_rows <= y.shape[0]:
        raise ValueError(f"{kernel}: rows [{r0}, {r0 + n_rows}) outside y of shape {y.shape}")


def perplexity_search(d2, perplexity, tol=1e-5, max_steps=100, backend=None):
    """Conditional distributions P[i] over each row's neighbours whose entropy is
    log(perplexity), from squared distances d2 (n, k)."""
    if not perplexity > 0:
        raise ValueError(f"perplexity_search: perplexity must be > 0, got {perplexity}")
    be = _backend("perplexity_search", backend, d2)
    if be == "numpy":
        return reference_perplexity_search(d2, perplexity, tol, max_steps)
    if be == "cuda":
        return _cuda().perplexity_search(d2, math.log(perplexity), tol, max_steps)
    d2 = np.ascontiguousarray(d2, np.float64)
    out = np.empty_like(d2)
    _cpu().perplexity_search(d2, math.log(perplexity), float(tol), int(max_steps), out)
    return out


def attractive(y, r0, indptr, indices, pvals, out=None, backend=None):
    _rows_check("attractive", y, r0, len(indptr) - 1)
    be = _backend("attractive", backend, y)
    if be == "numpy":
        res = reference_attractive(y, r0, indptr, indices, pvals)
        if out is None:
            return res
        out[...] = res
        return out
    if be == "cuda":
        return _cuda().attractive(y, r0, indptr, indices, pvals, out)
    if out is None:
        out = np.empty((len(indptr) - 1, y.shape[1]))
    _cpu().attractive(y, r0, indptr, indices, pvals, out)
    return out


def kl_terms(y, r0, indptr, indices, pvals, backend=None):
    be = _backend("kl_terms", backend, y)
    if be == "cpu":
        a, b = _cpu().kl_terms(y, r0, indptr, indices, pvals)
        return float(a), float(b)
    if be == "cuda":
        return _cuda().kl_terms(y, r0, indptr, indices, pvals)
    return reference_kl_terms(y, r0, indptr, indices, pvals)


def repulsive_exact(y, r0, out, z_rows=None, backend=None):
    """out[li] = sum_{j != i} w_ij^2 (y_i - y_j) and z_rows[li] = sum_{j != i} w_ij for
    i = r0 + li; returns these rows' part of Z (the sum of z_rows). O(n) per row: for
    small n, tests, and the CUDA path."""
    _rows_check("repulsive_exact", y, r0, out.shape[0])
    if z_rows is None:
        z_rows = np.empty(out.shape[0])
    be = _backend("repulsive_exact", backend, y)
    if be == "numpy":
        out[...], z_rows[...] = reference_repulsive_exact(y, r0, r0 + out.shape[0])
    elif be == "cuda":
        _cuda().repulsive_exact(y, r0, out, z_rows)
    else:
        _cpu().repulsive_exact(y, r0, out, z_rows)
    return float(z_rows.sum())


def update(y, grad, upd, gains, momentum, lr, min_gain=0.01, backend=None):
    """One gradient step with gains and momentum (scikit-learn's rule), in place over
    C-contiguous arrays of the same shape; returns |grad|^2."""
    for name, a in (("grad", grad), ("upd", upd), ("gains", gains)):
        if a.shape != y.shape:
            raise ValueError(f"update: {name} has shape {a.shape}, y {y.shape}")
    be = _backend("update", backend, y)
    if be == "numpy":
        return reference_update(y, grad, upd, gains, momentum, lr, min_gain)
    if be == "cuda":
        return _cuda().update(y, grad, upd, gains, momentum, lr, min_gain)
    f = [a.reshape(-1) for a in (y, grad, upd, gains)]
    return float(_cpu().update(*f, float(momentum), float(lr), float(min_gain)))


def sq_distances(a, b, backend=None):
    """All pairwise squared distances (len(a), len(b)) as float64. "cpu" uses BLAS
    (|a|^2 + |b|^2 - 2 a b^T, clipped at 0: fast, with cancellation error for close
    points); "cuda" a direct kernel; "numpy" the direct reference."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"sq_distances: a and b must be 2-D with the same columns, got "
                         f"{a.shape} and {b.shape}")
    be = _backend("sq_distances", backend, a, b)
    if be == "numpy":
        return reference_sq_distances(a, b)
    if be == "cuda":
        return _cuda().sq_distances(a, b)
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a64 @ b64.T
    d *= -2
    d += np.einsum("ij,ij->i", a64, a64)[:, None]
    d += np.einsum("ij,ij->i", b64, b64)[None, :]
    return np.maximum(d, 0, out=d)


def sq_dist_rows(xq, xr, idx, backend=None):
    """d2[i, t] = |xq[i] - xr[idx[i, t]]|^2 in float64, summed directly."""
    be = _backend("sq_dist_rows", backend, xq)
    if be == "numpy" or be == "cuda":
        return reference_sq_dist_rows(xq, xr, idx)
    out = np.empty(idx.shape)
    _cpu().sq_dist_rows(np.ascontiguousarray(xq), np.ascontiguousarray(xr),
                        np.ascontiguousarray(idx, np.int64), out)
    return out


# --- FFT-accelerated repulsion (2-D) ---------------------------------------------------

def _is_smooth(m):
    """Whether m has no prime factors but 2, 3 and 5 (a fast FFT length)."""
    for f in (2, 3, 5):
        while m % f == 0:
            m //= f
    return m == 1


class RepulsionFFT:
    """The repulsive forces and Z by interpolation on a regular grid and FFT convolution
    (Linderman et al. 2019, "FIt-SNE"), for 2-D embeddings: O(n p^2) to spread and
    interpolate, plus FFTs of the (2 G)^2 padded grid, G = boxes x p.

    The embedding's bounding square is cut into `boxes` intervals per axis of width h
    (h <= 1 / intervals_per_unit, and at least `min_intervals` boxes), with p Lagrange
    nodes per interval. One charge grid (unit charges) is convolved with three kernels:
    w (for Z) and the two components of w^2 (y - y') (the forces). The kernels' FFTs
    depend only on (grid size, h); h is snapped to a ladder of 2^(k/8) steps, so they are
    reused across iterations (kept for the last few grids). Every rank computing with the
    same y gets the same bytes, whatever its rows.

    exact_fallback: when the grid would cost more than the exact O(n^2) sum (a few points
    spread far apart, e.g. 30 points over 600 units gave a 3,600^2 grid and 70 s where
    Barnes-Hut took 0.4 s), compute the exact sum instead (last_grid is then None)."""

    def __init__(self, p=3, min_intervals=50, intervals_per_unit=1.0, cache=6,
                 exact_fallback=True):
        if p < 1 or min_intervals < 1 or not intervals_per_unit > 0:
            raise ValueError("RepulsionFFT: p, min_intervals and intervals_per_unit must be "
                             "positive")
        self.p, self.min_intervals = int(p), int(min_intervals)
        self.h_max = 1.0 / intervals_per_unit
        self._cache, self._cache_size = {}, cache
        self.exact_fallback = exact_fallback
        self.last_grid = None

    def _grid(self, y):
        lo, hi = y.min(axis=0), y.max(axis=0)
        span = max(float((hi - lo).max()), 1e-12)  # the square's side: the larger extent
        want = min(self.h_max, span / self.min_intervals)
        k = math.floor(8 * math.log2(want / self.h_max))
        h = self.h_max * 2.0 ** (k / 8)  # <= want: at least min_intervals boxes
        nb = math.ceil(span / h * (1 + 1e-9)) + 1
        while not _is_smooth(2 * self.p * nb):  # the padded grid's FFT length
            nb += 1
        lo = lo - (nb * h - (hi - lo)) / 2  # centre the points in the grid, per axis
        return (float(lo[0]), float(lo[1])), h, nb, k

    def _kernels(self, nb, h, k):
        key = (nb, k)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        G = nb * self.p
        s = h / self.p
        off = np.arange(2 * G)
        off = np.where(off < G, off, off - 2 * G).astype(np.float64) * s  # wrapped offsets
        dx, dy = np.meshgrid(off, off, indexing="ij")
        w = 1.0 / (1.0 + dx * dx + dy * dy)
        w[G, :] = 0  # offset -G never occurs; keep the wrap exact
        w[:, G] = 0
        w2 = w * w
        kern = np.stack([w, w2 * dx, w2 * dy])
        fk = np.fft.rfft2(kern, axes=(1, 2))
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = fk
        return fk

    def compute(self, y, r0, r1, out, z_rows):
        """out[i - r0] ~ sum_{j != i} w_ij^2 (y_i - y_j) and z_rows[i - r0] ~ sum_{j != i}
        w_ij for i in [r0, r1). y: (n, 2) float64 C-contiguous."""
        from .cpu.tsne import spread, interpolate
        if y.ndim != 2 or y.shape[1] != 2:
            raise ValueError(f"RepulsionFFT: needs a 2-D embedding, got shape {y.shape}")
        lo, h, nb, k = self._grid(y)
        G = nb * self.p
        n = y.shape[0]
        if self.exact_fallback and 2 * (2 * G) ** 2 * math.log2(2 * G) > n * n:
            # a few points spread far apart: the grid (the embedding's span in boxes of at
            # most 1/intervals_per_unit) would cost more than the exact O(n^2) sum, which
            # is also exact. Decided on the whole embedding, so the same on every rank.
            self.last_grid = None
            repulsive_exact(y, r0, out, z_rows, backend="cpu")
            return
        fk = self._kernels(nb, h, k)
        q = np.zeros((2 * G, 2 * G))
        spread(y, lo[0], lo[1], h, nb, self.p, q[:G, :G])
        fq = np.fft.rfft2(q)
        fields = np.fft.irfft2(fk * fq[None], s=(2 * G, 2 * G), axes=(1, 2))[:, :G, :G]
        fields = np.ascontiguousarray(fields)
        self.last_grid = (lo, h, nb)
        f = np.empty((r1 - r0, 3))
        interpolate(y, r0, r1, lo[0], lo[1], h, nb, self.p, fields, f)
        z_rows[...] = f[:, 0] - 1.0  # w_ii = 1
        out[...] = f[:, 1:]


class RepulsionBH:
    """The repulsive forces by Barnes-Hut on a quadtree (2-D), scikit-learn's criterion
    (a cell of width w at distance d is summarised by its centre of mass when w/d < theta).
    The tree is built from the whole embedding, so every rank gets the same forces for a
    row whatever its rows. O(N log N)."""

    def __init__(self, theta=0.5, group=16):
        if not 0 <= theta <= 1:
            raise ValueError(f"RepulsionBH: theta (angle) must be in [0, 1], got {theta}")
        self.theta = float(theta)
        self.group = int(group)
        self._arrays = None
        self.seconds = np.zeros(3)  # build, groups + pack, traversal
    def _alloc(self, m):
        self._arrays = (np.zeros(m, np.int8), np.empty((m, 4), np.int64),
                        np.zeros(m, np.int64), *(np.empty(m) for _ in range(5)),
                        np.empty(m, np.int64), np.empty((m, 4)))
        self._order = None  # insertion order: the last tree's depth-first point order

    def compute(self, y, r0, r1, out, z_rows):
        from .cpu.tsne import bh_build, bh_repulsive, bh_groups, bh_pack, bh_grouped_packed
        if y.ndim != 2 or y.shape[1] != 2:
            raise ValueError(f"RepulsionBH: needs a 2-D embedding, got shape {y.shape}")
        t0 = time.perf_counter()
        n = y.shape[0]
        lo = y.min(axis=0)
        w = float((y.max(axis=0) - lo).max()) * (1 + 1e-9) + 1e-12
        leaf_of, nxt = np.empty(n, np.int64), np.empty(n, np.int64)
        m = 4 * n + 64 if self._arrays is None else self._arrays[0].shape[0]
        while True:
            if self._arrays is None or self._arrays[0].shape[0] < m:
                self._alloc(m)
            kind, child, cnt, sx, sy, nx, ny, nw, rep, box = self._arrays
            order = self._order if self._order is not None and len(self._order) == n \
                else np.arange(n, dtype=np.int64)
            used = bh_build(y, order, float(lo[0]), float(lo[1]), w, kind, child, cnt, sx, sy,
                            nx, ny, nw, rep, leaf_of, box, nxt)
            if used >= 0:
                break
            m *= 2
        if self.group <= 1:
            bh_repulsive(y, r0, self.theta, kind, child, cnt, sx, sy, nx, ny, nw, leaf_of,
                         out, z_rows)
            self._order = None
            return
        t1 = time.perf_counter()
        group_of = np.empty(r1 - r0, np.int64)
        bh_groups(y, r0, r1, self.group, kind, child, cnt, nx, ny, nw, group_of)
        nd, nbox, new = np.empty((used, 8)), np.empty((used, 4)), np.empty(used, np.int64)
        self._order = np.empty(n, np.int64)
        bh_pack(y, used, kind, child, cnt, nw, box, leaf_of, nd, nbox, new, rep, nxt,
                self._order)
        group_of = new[group_of]  # groups in depth-first order: neighbours work together
        order = np.argsort(group_of, kind="stable")
        g = group_of[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if g.size else \
            np.zeros(0, np.int64)
        gstart = np.append(starts, g.size).astype(np.int64)
        t2 = time.perf_counter()
        bh_grouped_packed(y, r0, order, gstart, g[starts], self.theta, nd,
                          nbox, leaf_of, out, z_rows)
        self.seconds += (t1 - t0, t2 - t1, time.perf_counter() - t2)
