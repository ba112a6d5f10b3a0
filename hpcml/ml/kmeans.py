"""k-means across ranks (scikit-learn's KMeans and MiniBatchKMeans contracts).

    from hpcml.ml import KMeans
    km = KMeans(16, comm=comm).fit(X_mine)        # each rank: its own rows
    km.predict(X_mine); km.inertia_

Lloyd's algorithm, distributed: every rank assigns its rows to the nearest centre
(hpcml.kernels.kmeans: NumPy, Numba CPU or CUDA) and forms per-cluster weighted sums and
counts; one all-reduce of (sums, counts, inertia) gives every rank the same new centres.
The stopping rule is scikit-learn's: labels unchanged (strict convergence), or the centres'
total squared shift at most tol x the mean per-feature variance of the data; then one more
assignment makes labels_ and inertia_ those of the final centres. An empty cluster takes
the row farthest from its centre (over all ranks), as scikit-learn relocates them.

Initialisation (`init`):
* "k-means||" (Bahmani et al. 2012), the default: a first centre drawn uniformly; then
  `init_rounds` rounds in which every rank keeps each of its rows independently with
  probability min(1, l d^2(x) / phi), l = oversampling_factor x k and phi the total cost
  (one all-reduce per round), the kept rows being gathered on every rank (row i's draw is
  draw i of one counter-based stream, so the centres do not depend on the rank count);
  each candidate
  is weighted by the rows nearest to it and rank 0 reduces the candidates to k centres by
  weighted k-means++ and Lloyd, then broadcasts them.
* "k-means++": greedy k-means++ (2 + log k local trials, scikit-learn's) on rank 0 over a
  uniform sample of at most `init_sample` rows gathered from the ranks.
* "random": k distinct rows drawn uniformly over all ranks.
* an array (k x d): those centres (on every rank the same).
n_init runs (default: 1, 10 for "random") keep the lowest inertia.
"""
import math

import numpy as np

from hpcml import comm as hc
from hpcml.kernels import kmeans as KK

from .base import (Estimator, Rows, allreduce_sum, broadcast, check_choice, check_int,
                   check_random_state, check_real)
from .checks import InputError, check_backend
from .linear import _predict_rows

INITS = ("k-means||", "k-means++", "random")


class KMeans(Estimator):
    """k-means clustering (scikit-learn's KMeans contract; algorithm "lloyd").

    n_clusters, init ("k-means||", "k-means++", "random" or a k x d array), n_init ("auto":
    1, or 10 for "random"), max_iter, tol, random_state (int, or None: drawn on rank 0),
    oversampling_factor and init_rounds (k-means||), init_sample (k-means++: rows of the
    sample), comm, batch_size (rows per block of a dataset), backend (the assignment
    kernel's).

    Attributes (the same on every rank, but labels_: this rank's rows): cluster_centers_,
    labels_, inertia_ (over all ranks' rows), n_iter_, n_features_in_."""

    _kind = "clusterer"
    _expected_failed_checks = {
        "check_sample_weight_equivalence_on_dense_data":
            "the initial centres are drawn from the rows: a row weighted 2 and the same "
            "row twice are drawn through different random streams, so the fits start, and "
            "may end, at different centres; scikit-learn lists this check as an expected "
            "failure of its own KMeans for the same reason"}

    def __init__(self, n_clusters=8, *, init="k-means||", n_init="auto", max_iter=300,
                 tol=1e-4, random_state=None, oversampling_factor=2.0, init_rounds=5,
                 init_sample=100000, comm=None, batch_size=65536, backend=None):
        self._store(locals())

    def _check_params(self):
        check_int("n_clusters", self.n_clusters, 1)
        if isinstance(self.init, str):
            check_choice("init", self.init, INITS)
        elif np.ndim(self.init) != 2 or len(self.init) != self.n_clusters:
            raise ValueError(f"init as an array must be n_clusters x n_features "
                             f"({self.n_clusters} rows), got shape {np.shape(self.init)}")
        if not (isinstance(self.n_init, str) and self.n_init == "auto"):
            check_int("n_init", self.n_init, 1)
        check_int("max_iter", self.max_iter, 1)
        check_real("tol", self.tol, 0.0)
        check_random_state(self.random_state)
        check_real("oversampling_factor", self.oversampling_factor, 0.0, strict=True)
        check_int("init_rounds", self.init_rounds, 1)
        check_int("init_sample", self.init_sample, 1)
        check_int("batch_size", self.batch_size, 1)
        check_backend(self.backend)

    def _runs(self):
        if not isinstance(self.init, str):
            return 1  # given centres: one run (scikit-learn warns and does one too)
        if isinstance(self.n_init, str):
            return 10 if self.init == "random" else 1
        return int(self.n_init)

    def fit(self, X, y=None, sample_weight=None):
        """Cluster this rank's rows (collective with a communicator); returns self."""
        comm = self._comm_for(X)
        self._agree_params(comm)
        rows = Rows(X, comm, self.batch_size, None, sample_weight)
        d, n = rows.agree("checking KMeans's input")
        rows.check_weights("KMeans")
        k = self.n_clusters
        if n < k:
            raise InputError(f"n_samples={n} should be >= n_clusters={k}: there must be at "
                             f"least as many rows as clusters")
        if not isinstance(self.init, str) and np.shape(self.init)[1] != d:
            raise InputError(f"init has {np.shape(self.init)[1]} features, X has {d}")
        Xa, _, w = rows.gather()
        w = np.ones(len(Xa)) if w is None else w
        tol = self.tol * _mean_variance(Xa, w, comm)
        rng = np.random.default_rng(_seed(self.random_state, comm))
        best = None
        for _ in range(self._runs()):
            centers = self._initial(Xa, w, comm, rng)
            result = _lloyd(Xa, w, centers, comm, self.max_iter, tol, self.backend)
            if best is None or result[2] < best[2]:
                best = result
        self.cluster_centers_, self.labels_, self.inertia_, self.n_iter_ = best
        self.n_features_in_ = d
        return self

    def _initial(self, X, w, comm, rng):
        k = self.n_clusters
        if not isinstance(self.init, str):
            return np.array(self.init, np.float64)
        if self.init == "random":
            return _random_rows(X, k, comm, rng)
        if self.init == "k-means++":
            sample, sw = _sample(X, w, self.init_sample, comm, rng)
            root = _root_rng(rng)
            return _on_root(comm, k, X.shape[1], lambda: _kmeanspp(sample, sw, k, root))
        return _kmeans_parallel(X, w, k, comm, rng, self.oversampling_factor,
                                self.init_rounds, self.backend)

    def fit_predict(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).labels_

    def predict(self, X):
        """The nearest centre's index for each of this rank's rows."""
        self._fitted("cluster_centers_")
        Xa = _predict_rows(X, self.n_features_in_, "KMeans")
        return KK.assign(Xa, self.cluster_centers_, backend=self.backend)[0]

    def transform(self, X):
        """Euclidean distances of this rank's rows to every centre (n x k)."""
        self._fitted("cluster_centers_")
        Xa = _predict_rows(X, self.n_features_in_, "KMeans")
        x, c = Xa.astype(np.float64), self.cluster_centers_
        d2 = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
        return np.sqrt(np.maximum(d2, 0)).astype(Xa.dtype)  # the input's float dtype

    def fit_transform(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None):
        """Minus the inertia of this rank's rows against the fitted centres."""
        self._fitted("cluster_centers_")
        Xa = _predict_rows(X, self.n_features_in_, "KMeans")
        dist = KK.assign(Xa, self.cluster_centers_, backend=self.backend)[1]
        w = np.ones(len(Xa)) if sample_weight is None else np.asarray(sample_weight)
        return -float(w @ dist)


def _seed(random_state, comm):
    if random_state is not None:
        return int(random_state)
    seed = np.array([np.random.SeedSequence().entropy % (1 << 62)], np.int64)
    broadcast(seed, comm)
    return int(seed[0])


def _mean_variance(X, w, comm):
    """The mean over features of the weighted variance of all ranks' rows (float64;
    in row blocks: float32 rows are widened a block at a time, and mixed-dtype products,
    which NumPy does without BLAS, are avoided: 1.3 s -> 0.05 s on 1,000,000 x 32)."""
    d = X.shape[1]
    step = 65536
    buf = np.zeros(d + 1)
    for a in range(0, len(X), step):
        xb, wb = np.asarray(X[a:a + step], np.float64), w[a:a + step]
        buf[0] += wb.sum()
        buf[1:] += wb @ xb
    allreduce_sum(buf, comm)
    mean = buf[1:] / buf[0]
    m2 = np.zeros(d)
    for a in range(0, len(X), step):
        xb = np.asarray(X[a:a + step], np.float64) - mean
        m2 += w[a:a + step] @ (xb * xb)
    allreduce_sum(m2, comm)
    return float(np.mean(m2 / buf[0]))


def _root_rng(rng):
    """A generator for work done on rank 0 alone, drawn from the shared one by every rank
    alike: the shared generator stays in step across the ranks (a later n_init run or
    mini-batch draw would otherwise see different states on rank 0 and the others)."""
    return np.random.default_rng(int(rng.integers(1 << 62)))


def _on_root(comm, k, d, make):
    """make() on rank 0 (or alone), broadcast: the same k x d centres on every rank."""
    out = np.empty((k, d))
    if comm is None or comm.Get_rank() == 0:
        out[:] = make()
    return broadcast(out, comm)


def _lloyd(X, w, centers, comm, max_iter, tol, backend):
    """(centres, this rank's labels, inertia over all ranks, iterations). Each iteration
    is one fused pass (assignment and per-cluster sums) and one all-reduce; labels that
    no longer change anywhere (strict convergence) end it with the labels and distances
    already those of the final centres, else one more assignment makes them so."""
    labels = None
    it, strict = 0, False
    unit = np.all(w == 1)
    for it in range(1, max_iter + 1):
        new_labels, dist, sums, counts = KK.lloyd_step(X, centers, None if unit else w,
                                                       backend=backend)
        new = _m_step(X, w, sums, counts, dist, centers, comm)
        changed = np.array([1.0 if labels is None else
                            float(not np.array_equal(labels, new_labels))])
        allreduce_sum(changed, comm)
        shift = float(np.sum((new - centers) ** 2))
        labels, centers = new_labels, new
        if changed[0] == 0:
            strict = True
            break
        if shift <= tol:
            break
    if not strict:
        labels, dist = KK.assign(X, centers, backend=backend)
    inertia = allreduce_sum(np.array([float(w @ dist)]), comm)[0]
    return centers, labels, float(inertia), it


def _m_step(X, w, sums, counts, dist, centers, comm):
    """New centres: all-reduced weighted sums / counts; an empty cluster takes the row
    farthest from its centre (over all ranks; scikit-learn's relocation)."""
    k, d = centers.shape
    buf = np.concatenate([sums.ravel(), counts])
    allreduce_sum(buf, comm)
    sums, counts = buf[:k * d].reshape(k, d), buf[k * d:]
    empty = np.flatnonzero(counts == 0)
    new = centers.copy()
    full = counts > 0
    new[full] = sums[full] / counts[full, None]
    if len(empty):
        new[empty] = _farthest(X, dist * (w > 0), len(empty), comm)
    return new


def _farthest(X, dist, m, comm):
    """The m rows with the largest distances over all ranks (ties: lower rank, then
    lower row), the same on every rank."""
    d = X.shape[1]
    if m < len(dist):  # the m largest (a partition, then those m in order)
        part = np.argpartition(-dist, m - 1)[:m]
        top = part[np.lexsort((part, -dist[part]))]
    else:
        top = np.argsort(-dist, kind="stable")[:m]
    mine = np.full((m, d + 1), -np.inf)
    mine[:len(top), 0] = dist[top]
    mine[:len(top), 1:] = X[top]
    if comm is None or comm.Get_size() == 1:
        return mine[:m, 1:]
    p = comm.Get_size()
    allm = np.zeros(p * m * (d + 1))
    r = comm.Get_rank()
    allm[r * m * (d + 1):(r + 1) * m * (d + 1)] = np.where(np.isfinite(mine), mine, 0).ravel()
    valid = np.zeros(p * m)
    valid[r * m:r * m + len(top)] = 1
    allreduce_sum(allm, comm)
    allreduce_sum(valid, comm)
    cand = allm.reshape(p * m, d + 1)
    key = np.where(valid > 0, cand[:, 0], -np.inf)
    order = np.argsort(-key, kind="stable")[:m]
    return cand[order, 1:]


def _random_rows(X, k, comm, rng):
    """k distinct rows drawn uniformly over all ranks' rows."""
    counts = _counts(len(X), comm)
    picks = rng.choice(int(counts.sum()), size=k, replace=False)  # same on every rank
    return _rows_at(X, np.sort(picks), counts, comm)[np.argsort(np.argsort(picks))]


def _counts(n, comm):
    if comm is None or comm.Get_size() == 1:
        return np.array([n], np.int64)
    c = np.zeros(comm.Get_size(), np.int64)
    c[comm.Get_rank()] = n
    hc.allreduce(c, "sum", comm=comm)
    return c


def _rows_at(X, global_idx, counts, comm):
    """The rows at sorted global indices (rank order), on every rank."""
    d = X.shape[1]
    out = np.zeros((len(global_idx), d))
    start = int(counts[:comm.Get_rank()].sum()) if comm is not None else 0
    mine = (global_idx >= start) & (global_idx < start + len(X))
    out[mine] = X[global_idx[mine] - start]
    return allreduce_sum(out, comm)


def _sample(X, w, size, comm, rng):
    """A uniform sample of at most `size` rows of all ranks (and their weights), on
    every rank."""
    counts = _counts(len(X), comm)
    total = int(counts.sum())
    idx = np.sort(rng.choice(total, size=min(size, total), replace=False))
    both = np.column_stack([X, w])
    got = _rows_at(both, idx, counts, comm)
    return got[:, :-1], got[:, -1]


def _kmeanspp(X, w, k, rng):
    """Greedy weighted k-means++ (scikit-learn's: 2 + log k candidates per step, the one
    lowering the potential most is kept)."""
    n = len(X)
    trials = 2 + int(math.log(k))
    centers = np.empty((k, X.shape[1]))
    p = w / w.sum()
    first = rng.choice(n, p=p)
    centers[0] = X[first]
    closest = ((X - centers[0]) ** 2).sum(1)
    pot = float(w @ closest)
    for c in range(1, k):
        if pot <= 0:  # every row is on a centre: take any rows
            centers[c] = X[rng.integers(n)]
            continue
        probs = w * closest
        cand = rng.choice(n, size=trials, p=probs / probs.sum())
        d2 = ((X[None, :, :] - X[cand][:, None, :]) ** 2).sum(2)
        d2 = np.minimum(closest[None, :], d2)
        pots = d2 @ w
        best = int(np.argmin(pots))
        centers[c], closest, pot = X[cand[best]], d2[best], float(pots[best])
    return centers


def _kmeans_parallel(X, w, k, comm, rng, factor, rounds, backend):
    """k-means|| (Bahmani et al.): oversampled candidates in a few rounds, reduced to k
    centres by weighted k-means++ and Lloyd on rank 0."""
    d = X.shape[1]
    cand = _random_rows(X, 1, comm, rng)
    counts = _counts(len(X), comm)
    offset = int(counts[:comm.Get_rank()].sum()) if comm is not None else 0
    key = int(rng.integers(1 << 62))
    ell = factor * k
    for rnd in range(rounds):
        dist = KK.assign(X, cand, backend=backend)[1] * w
        phi = allreduce_sum(np.array([dist.sum()]), comm)[0]
        if phi <= 0:
            break
        u = _uniforms([key, rnd], offset, len(X))  # row i's draw: the same at any P
        keep = u < np.minimum(1.0, ell * dist / phi)
        cand = np.vstack([cand, _allgather_rows(X[keep], comm, d)])
    labels = KK.assign(X, cand, backend=backend)[0]
    weights = np.bincount(labels, weights=w, minlength=len(cand)).astype(np.float64)
    allreduce_sum(weights, comm)
    if len(cand) <= k:
        extra = _random_rows(X, k - len(cand), comm, rng) if len(cand) < k else None
        return cand if extra is None else np.vstack([cand, extra])

    root = _root_rng(rng)

    def reduce():
        c0 = _kmeanspp(cand, weights, k, root)
        return _lloyd(cand, weights, c0, None, 300, 0.0, backend)[0]
    return _on_root(comm, k, d, reduce)


def _uniforms(key, offset, n):
    """Draws offset .. offset + n - 1 of one Philox stream (a counter-based generator:
    a rank jumps to its rows' draws, so the sampling does not depend on the rank count)."""
    bg = np.random.Philox(key=key)
    bg.advance(offset // 4)  # 4 doubles per counter step
    g = np.random.Generator(bg)
    g.random(offset % 4)
    return g.random(n)


def _allgather_rows(rows, comm, d):
    """Every rank's rows (variable counts), stacked in rank order, on every rank."""
    if comm is None or comm.Get_size() == 1:
        return np.array(rows, np.float64)
    counts = _counts(len(rows), comm)
    out = np.zeros((int(counts.sum()), d))
    start = int(counts[:comm.Get_rank()].sum())
    out[start:start + len(rows)] = rows
    return allreduce_sum(out, comm)


class MiniBatchKMeans(KMeans):
    """Mini-batch k-means (Sculley 2010; scikit-learn's MiniBatchKMeans contract) across
    ranks. Each step draws `batch_size` rows of all ranks' rows (the draw is one global
    permutation per epoch from the shared seed, so the batches do not depend on the rank
    count), assigns them to the nearest centres and moves each centre to the running mean
    of every row it has been given: c_k <- (n_k c_k + sum_k) / (n_k + m_k), n_k += m_k,
    with the batch's sums and counts summed over the ranks in one all-reduce. fit runs up
    to max_iter epochs and stops early when the smoothed batch inertia has not improved for
    max_no_improvement steps (scikit-learn's rule); partial_fit takes one step on the rows
    it is given (its first call initialises the centres from them). Parameters as KMeans's
    plus batch_size and max_no_improvement; labels_ and inertia_ are those of the final
    centres over all rows."""

    def __init__(self, n_clusters=8, *, init="k-means||", n_init="auto", max_iter=100,
                 batch_size=1024, max_no_improvement=10, tol=0.0, random_state=None,
                 oversampling_factor=2.0, init_rounds=5, init_sample=100000, comm=None,
                 backend=None):
        self._store(locals())

    def _check_params(self):
        super()._check_params()
        check_int("max_no_improvement", self.max_no_improvement, 1, allow_none=True)

    def _runs(self):
        return 1  # one initialisation: the steps are what a mini-batch fit buys

    def fit(self, X, y=None, sample_weight=None):
        comm = self._comm_for(X)
        self._agree_params(comm)
        Xa, w, n = self._gathered(X, sample_weight, comm)
        rng = np.random.default_rng(_seed(self.random_state, comm))
        self.cluster_centers_ = self._initial(Xa, w, comm, rng)
        self._counts = np.zeros(self.n_clusters)
        counts = _counts(len(Xa), comm)
        offset = int(counts[:comm.Get_rank()].sum()) if comm is not None else 0
        steps_per_epoch = max(1, -(-n // self.batch_size))
        best, stale, ewa, self.n_steps_ = np.inf, 0, None, 0
        for epoch in range(self.max_iter):
            order = np.random.default_rng([int(rng.integers(1 << 62)), epoch]).permutation(n)
            for s in range(steps_per_epoch):
                pick = order[n * s // steps_per_epoch:n * (s + 1) // steps_per_epoch]
                mine = pick[(pick >= offset) & (pick < offset + len(Xa))] - offset
                inertia = self._step(Xa[mine], w[mine], comm)
                ewa = inertia if ewa is None else 0.9 * ewa + 0.1 * inertia  # per-row EWA
                stale = 0 if ewa < best else stale + 1
                best = min(best, ewa)
                if self.max_no_improvement is not None and stale >= self.max_no_improvement:
                    break
            else:
                continue
            break
        self.n_iter_ = epoch + 1
        self._finish(Xa, w, comm)
        return self

    def partial_fit(self, X, y=None, sample_weight=None):
        """One step on these rows (collective with a communicator); returns self."""
        comm = self._comm_for(X)
        self._agree_params(comm)
        Xa, w, _ = self._gathered(X, sample_weight, comm,
                                  getattr(self, "n_features_in_", None))
        if not hasattr(self, "cluster_centers_"):
            rng = np.random.default_rng(_seed(self.random_state, comm))
            self.cluster_centers_ = self._initial(Xa, w, comm, rng)
            self._counts = np.zeros(self.n_clusters)
            self.n_steps_ = 0
        self._step(Xa, w, comm)
        self._finish(Xa, w, comm)
        return self

    def _gathered(self, X, sample_weight, comm, fitted=None):
        rows = Rows(X, comm, 65536, None, sample_weight)
        d, n = rows.agree("checking MiniBatchKMeans's input", fitted, "MiniBatchKMeans")
        rows.check_weights("MiniBatchKMeans")
        if n < self.n_clusters and not hasattr(self, "cluster_centers_"):
            raise InputError(f"n_samples={n} should be >= n_clusters={self.n_clusters}: "
                             f"there must be at least as many rows as clusters")
        Xa, _, w = rows.gather()
        self.n_features_in_ = d
        return Xa, (np.ones(len(Xa)) if w is None else w), n

    def _step(self, xb, wb, comm):
        """One mini-batch update; returns the batch's mean inertia (over all ranks)."""
        k, d = self.cluster_centers_.shape
        _, dist, sums, cnt = KK.lloyd_step(xb, self.cluster_centers_,
                                           None if np.all(wb == 1) else wb,
                                           backend=self.backend)
        buf = np.concatenate([sums.ravel(), cnt, [float(wb @ dist), float(wb.sum())]])
        allreduce_sum(buf, comm)
        sums, cnt = buf[:k * d].reshape(k, d), buf[k * d:k * d + k]
        seen = self._counts + cnt
        upd = cnt > 0
        self.cluster_centers_[upd] = (self.cluster_centers_[upd] * self._counts[upd, None]
                                      + sums[upd]) / seen[upd, None]
        self._counts = seen
        self.n_steps_ += 1
        return buf[-2] / max(buf[-1], 1e-300)

    def _finish(self, Xa, w, comm):
        self.labels_, dist = KK.assign(Xa, self.cluster_centers_, backend=self.backend)
        self.inertia_ = float(allreduce_sum(np.array([float(w @ dist)]), comm)[0])
