"""Principal component analysis across MPI ranks, with scikit-learn's contract.

    from hpcml.ml import PCA
    pca = PCA(10).fit(X)                          # an array, in memory
    pca = PCA(0.95, comm=comm).fit(X_mine)        # each rank passes its own rows
    pca = PCA(10, comm=comm).fit("data/blobs")    # a sharded dataset, split by the loader
    Z = pca.transform(X_mine)

Solvers:
* "covariance": one pass. Each rank accumulates (count, mean, centred scatter M2) of its
  rows in float64, block by block (hpcml.kernels.covariance: cache-sized blocks, BLAS
  syrk, Chan et al.'s merge), so a large mean over a tiny spread keeps its digits. Ranks
  merge with the k-way form of the same identity: one sum all-reduce of (n, n * mean)
  gives the global mean m, then one of M2_r + n_r (mean_r - m)(mean_r - m)^T. Rank 0
  diagonalises M2 / (n - 1) (eigh) and broadcasts, so every rank holds the same bytes.
  partial_fit adds rows to the same statistics, so fitting in pieces equals one fit.
* "randomized" (Halko, Martinsson & Tropp 2011), for many features and few components,
  rows split across ranks and every product formed from centred row blocks: Y = Xc Omega
  on each rank's rows, orthonormalised across ranks by TSQR (local QR, all-gather of the
  small R factors, QR of their stack); power iterations Z = Xc^T Q (summed over ranks, then
  QR) and Y = Xc Z; finally B^T = Xc^T Q summed over ranks and a small SVD of B. Each
  product is one pass over the data (2 * iterated_power + 3 passes in all).
* "auto": randomized when there are more than 1,000 features and n_components is an int
  below a tenth of min(n_samples, n_features); covariance otherwise.

Signs follow scikit-learn: the largest-magnitude entry of each component is positive.
Learned attributes are float64 whatever the input dtype (the accumulation is float64);
transform returns the input's float dtype. Validation is collective: a bad input on any
rank raises the same InputError (a ValueError) on every rank.
"""
import math
import numbers

import numpy as np

from hpcml import comm as hc
from hpcml.comm.guard import same_everywhere
from hpcml.data import DataError, ShardedDataset
from hpcml.kernels import covariance as KC

from .base import Estimator, Rows
from .checks import InputError, NotFittedError, not_fitted  # noqa: F401 (re-exported)
from .checks import agree as _agree, check_backend as _check_backend, host_rows as _host_rows
from .rankstats import BadRows as _BadRows, check_finite as _check_finite
from .rankstats import check_merged as _check_merged, merge_ranks as _merge_ranks, tsqr as _tsqr

SOLVERS = ("auto", "covariance", "randomized")
WIDE = 1000  # auto: more features than this (and few components) -> randomized


def _flip_signs(V):
    """Rows of V with their largest-|.| entry made positive (scikit-learn's svd_flip)."""
    idx = np.argmax(np.abs(V), axis=1)
    signs = np.sign(V[np.arange(len(V)), idx])
    signs[signs == 0] = 1
    return V * signs[:, None]


class _Rows(Rows):
    """This rank's rows of an array or a sharded dataset, visited chunk by chunk as
    (offset, float rows); no NaN/Inf pass: PCA finds them in its blocks' statistics."""

    def __init__(self, X, comm, batch_size):
        super().__init__(X, comm, batch_size, check_finite=False)

    def chunks(self):
        if self.array is not None:
            yield 0, self.array
            return
        for offset, x, _, _ in super().chunks():
            yield offset, x


class PCA(Estimator):
    """Principal component analysis (scikit-learn's PCA contract).

    n_components: int k, float in (0, 1) (the smallest k whose cumulative explained
    variance ratio reaches it; covariance solver), or None (min(n_samples, n_features)).
    solver: "auto", "covariance" or "randomized". whiten: transform to unit variance.
    comm: an mpi4py communicator (None: one process); with one, every call is collective
    and each rank passes its own rows of an array, or the same dataset (path, built-in
    name or ShardedDataset), whose rows the loader splits. iterated_power ("auto": 7 if
    n_components < 0.1 min(n_samples, n_features), else 4), n_oversamples, random_state
    (an int, or None: drawn on rank 0): the randomized solver. batch_size: rows per
    streamed batch of a dataset. backend: covariance kernel backend (None: the
    process-wide one; "cuda" accumulates on the GPU). verbose: rank 0 shows each pass
    over a dataset's rows (hpcml.progress: a bar on a terminal, else periodic lines).

    Attributes (after fit, the same on every rank): components_ (k x d),
    explained_variance_, explained_variance_ratio_, singular_values_, mean_,
    n_components_, n_samples_, n_features_in_, noise_variance_, solver_.
    """

    def __init__(self, n_components=None, *, solver="auto", whiten=False, comm=None,
                 iterated_power="auto", n_oversamples=10, random_state=0,
                 batch_size=65536, backend=None, verbose=0):
        self.n_components = n_components
        self.solver = solver
        self.whiten = whiten
        self.comm = comm
        self.iterated_power = iterated_power
        self.n_oversamples = n_oversamples
        self.random_state = random_state
        self.batch_size = batch_size
        self.backend = backend
        self.verbose = verbose

    # --- fitting -----------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit on X (this rank's rows, or a dataset); returns self. If it fails, the
        statistics of an earlier fit are kept (its attributes are untouched)."""
        previous = getattr(self, "_local", None)
        self._local = None
        try:
            return self._fit(X, incremental=False)
        except BaseException:
            self._local = previous
            raise

    def partial_fit(self, X, y=None):
        """Add the rows of X to the covariance statistics and refit; returns self.
        Fitting in pieces gives what one fit on all pieces gives (covariance solver)."""
        return self._fit(X, incremental=True)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def _check_params(self, incremental):
        """Parameter errors (the same on every rank: they depend on parameters only)."""
        k = self.n_components
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Real)):
            raise ValueError(f"n_components must be an int, a float in (0, 1) or None, "
                             f"got {k!r}")
        if isinstance(k, numbers.Real) and not isinstance(k, numbers.Integral):
            if not 0 < k < 1:
                raise ValueError(f"n_components={k!r}: a float must be in (0, 1)")
        elif k is not None and k < 1:
            raise ValueError(f"n_components={k!r} must be >= 1")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r}: expected one of {', '.join(SOLVERS)}")
        if incremental and self.solver == "randomized":
            raise ValueError("partial_fit accumulates covariance statistics: use "
                             "solver='covariance' or 'auto'")
        if not isinstance(self.whiten, (bool, np.bool_)):
            raise ValueError(f"whiten must be True or False, got {self.whiten!r}")
        ip = self.iterated_power
        if not (ip == "auto" or (isinstance(ip, numbers.Integral) and not
                                 isinstance(ip, bool) and ip >= 0)):
            raise ValueError(f"iterated_power must be 'auto' or an int >= 0, got {ip!r}")
        for name in ("n_oversamples", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        _check_backend(self.backend)
        rs = self.random_state
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, numbers.Integral)
                               or rs < 0):
            raise ValueError(f"random_state must be an int >= 0 or None, got {rs!r}")
        if (incremental and hasattr(self, "components_")
                and getattr(self, "_local", None) is None):
            raise ValueError("partial_fit after a fit with the randomized solver: that fit "
                             "kept no covariance statistics, so its rows would be lost; "
                             "refit with solver='covariance' to add rows later")

    def _same_params(self, comm):
        """Collective: True on every rank if every rank holds the same parameters (those
        that shape the model; comm and backend may differ)."""
        return same_everywhere(comm, {k: v for k, v in self.get_params().items()
                                      if k not in ("comm", "backend")})

    def _agree_params(self, comm, incremental):
        """Parameter errors, raised as the same InputError on every rank (collective)."""
        error = None
        try:
            self._check_params(incremental)
        except ValueError as e:
            error = str(e)
        if comm is not None and comm.Get_size() > 1:
            same = self._same_params(comm)  # on every rank, whatever its own verdict
            if error is None and not same:
                error = ("PCA's parameters differ across ranks: every rank must pass the "
                         "same " + ", ".join(k for k in self._param_names()
                                             if k not in ("comm", "backend"))
                         + f" (this rank: {self!r})")
        _agree(comm, error, "checking PCA's parameters")

    def _check_rows(self, rows, comm, incremental):
        """Collective: agree on bad input, feature counts and the total row count."""
        error = rows.error
        d = rows.features
        if comm is not None and rows.ds is None:
            ends = np.array([d, -d] if error is None else [-1, -(1 << 62)], np.int64)
            hc.allreduce(ends, "max", comm=comm)
            if error is None and (ends[0] != d or -ends[1] != d):
                error = (f"X has {d} features on this rank, but between {-ends[1]} and "
                         f"{ends[0]} across ranks")
        if error is None and d < 1:
            error = "X has no features"
        if error is None and incremental and getattr(self, "n_features_in_", d) != d:
            error = (f"X has {d} features, but PCA is expecting {self.n_features_in_} "
                     f"features as input (partial_fit was called before with "
                     f"{self.n_features_in_})")
        _agree(comm, error, "checking PCA's input")
        if rows.ds is not None:
            return d, rows.total
        n = np.array([rows.rows], np.int64)
        if comm is not None:
            hc.allreduce(n, "sum", comm=comm)
        return d, int(n[0])

    def _fit(self, X, incremental):
        comm = self._comm_for(X)
        self._agree_params(comm, incremental)
        rows = _Rows(X, comm, self.batch_size)
        d, n_new = self._check_rows(rows, comm, incremental)
        resume = (incremental and getattr(self, "_local", None) is not None
                  and hasattr(self, "n_samples_"))
        n_total = n_new + (self.n_samples_ if resume else 0)
        if n_total < 2:
            raise InputError(f"PCA needs at least 2 rows in total, got n_samples = "
                             f"{n_total}")
        limit = min(n_total, d)
        k = self.n_components
        if isinstance(k, numbers.Integral) and k > limit:
            raise InputError(f"n_components={k} must be <= min(n_samples, n_features) = "
                             f"min({n_total}, {d}) = {limit}")
        solver = self._choose_solver(n_total, d, incremental)
        if solver == "randomized" and not isinstance(k, numbers.Integral):
            raise InputError(f"solver='randomized' needs an int n_components, got {k!r}")
        self.n_features_in_ = d
        if solver == "covariance":
            before = self._local if resume else (0, np.zeros(d), np.zeros((d, d)))
            self._local = before
            try:
                self._accumulate(rows, comm)
                self._finish_covariance(comm, d)
            except InputError:
                self._local = before  # rows that failed are not added (partial_fit)
                raise
        else:
            self._local = None
            self._fit_randomized(rows, comm, n_total, d, int(k))
        self.solver_ = solver
        return self

    def _choose_solver(self, n, d, incremental):
        if self.solver != "auto":
            return self.solver
        k = self.n_components
        few = isinstance(k, numbers.Integral) and k < 0.1 * min(n, d)
        return "randomized" if (d > WIDE and few and not incremental) else "covariance"

    # --- covariance solver ---------------------------------------------------------------
    def _pass(self, rows, comm, fn, what):
        """fn(offset, x) over this rank's chunks; errors (bad rows, unreadable shards) are
        agreed on at the end of the pass, so no rank is left waiting (collective)."""
        error = None
        bar = None
        if self.verbose and rows.ds is not None and (comm is None or comm.Get_rank() == 0):
            from hpcml.comm.rows import row_bounds
            from hpcml.progress import Progress
            p = comm.Get_size() if comm is not None else 1
            bar = Progress(row_bounds(rows.total, p, 0)[1], what + (
                f" (rank 0 of {p})" if p > 1 else ""))
        try:
            for offset, x in rows.chunks():
                fn(offset, x)
                if bar is not None:
                    bar.update(len(x))
            if bar is not None:
                bar.close()
        except (DataError, OSError, _BadRows) as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - anything else, agreed on too: no rank waits
            error = f"{type(e).__name__}: {e}"
        _agree(comm, error, what)

    def _accumulate(self, rows, comm):
        """Add this rank's rows to self._local, all of them or (on an error) none."""
        d = rows.features
        new = [(0, np.zeros(d), np.zeros((d, d)))]

        def add(offset, x):
            part = KC.scatter_block(x, backend=self.backend)
            _check_finite(x, offset, part, rows)
            new[0] = KC.merge_scatter(new[0], part, inplace=True)
        self._pass(rows, comm, add, "accumulating PCA's covariance")
        self._local = KC.merge_scatter(self._local, new[0])  # a new tuple: the old one kept

    def _finish_covariance(self, comm, d):
        n, mean, M2 = _merge_ranks(comm, self._local)
        if n < 2:
            raise InputError(f"PCA needs at least 2 rows in total, got n_samples = {n}")
        _check_merged(mean, M2)
        packed = np.empty(d + d * d)
        if comm is None or comm.Get_rank() == 0:
            evals, evecs = np.linalg.eigh(M2 / (n - 1))
            packed[:d], packed[d:] = evals[::-1], evecs[:, ::-1].T.ravel()
        if comm is not None:
            hc.broadcast(packed, root=0, comm=comm)
        evals = np.maximum(packed[:d], 0.0)
        V = _flip_signs(packed[d:].reshape(d, d))
        total_var = float(np.trace(M2)) / (n - 1)
        self._set(n, mean, V, evals[:min(n, d)], total_var)

    def _set(self, n, mean, V, ev_all, total_var):
        """Attributes from components V (rows, sorted) and the variances ev_all of the
        first min(n, d) of them (or of all that were computed)."""
        d = len(mean)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_all = ev_all / total_var
        k = self.n_components
        limit = min(n, d)
        if k is None:
            k = limit
        elif not isinstance(k, numbers.Integral):
            k = int(np.searchsorted(np.cumsum(ratio_all), k, side="right")) + 1
            k = min(k, limit)
        k = int(k)
        self.n_samples_, self.n_components_ = int(n), k
        self.mean_ = mean
        self.components_ = np.ascontiguousarray(V[:k])
        self.explained_variance_ = ev_all[:k].copy()
        self.explained_variance_ratio_ = ratio_all[:k].copy()
        self.singular_values_ = np.sqrt(self.explained_variance_ * (n - 1))
        if k < limit:
            if len(ev_all) >= limit:
                self.noise_variance_ = float(np.mean(ev_all[k:limit]))
            else:  # randomized: what the kept components leave, spread over the rest
                self.noise_variance_ = float((total_var - ev_all[:k].sum()) / (limit - k))
        else:
            self.noise_variance_ = 0.0

    # --- randomized solver ---------------------------------------------------------------
    def _fit_randomized(self, rows, comm, n, d, k):
        stats = [(0, np.zeros(d), np.zeros(d))]

        def moments(offset, x):
            part = KC.moments_block(x)
            _check_finite(x, offset, part, rows)
            stats[0] = KC.merge_scatter(stats[0], part, inplace=True)
        self._pass(rows, comm, moments, "PCA: per-feature moments")
        n, mean, m2 = _merge_ranks(comm, stats[0])
        _check_merged(mean, m2)
        total_var = float(m2.sum()) / (n - 1)
        width = min(k + self.n_oversamples, min(n, d))
        q = self.iterated_power
        if q == "auto":
            q = 7 if k < 0.1 * min(n, d) else 4
        omega = np.random.default_rng(self._seed(comm)).standard_normal((d, width))
        Q = _tsqr(self._product(rows, comm, mean, omega), comm)
        for _ in range(q):
            Z = np.linalg.qr(self._back(rows, comm, mean, Q))[0]
            Q = _tsqr(self._product(rows, comm, mean, Z), comm)
        Bt = self._back(rows, comm, mean, Q)  # Xc^T Q = B^T, the same on every rank
        packed = np.empty(width + width * d)
        if comm is None or comm.Get_rank() == 0:
            _, S, Vt = np.linalg.svd(Bt.T, full_matrices=False)
            packed[:len(S)], packed[width:width + Vt.size] = S, Vt.ravel()
        if comm is not None:
            hc.broadcast(packed, root=0, comm=comm)
        S = packed[:width]
        V = _flip_signs(packed[width:].reshape(width, d))
        self._set(n, mean, V, S ** 2 / (n - 1), total_var)

    def _seed(self, comm):
        if self.random_state is not None:
            return int(self.random_state)
        seed = np.array([np.random.SeedSequence().entropy % (1 << 62)], np.int64)
        if comm is not None:
            hc.broadcast(seed, root=0, comm=comm)
        return int(seed[0])

    def _blocks(self, x, mean):
        """(start, centred float64 block) over x in cache-sized blocks."""
        step = KC.rows_per_block(x.shape[1])
        buf = np.empty((min(step, len(x)), x.shape[1]))
        for i in range(0, len(x), step):
            blk = x[i:i + step]
            yield i, KC.center_rows(blk, mean, out=buf[:len(blk)])

    def _product(self, rows, comm, mean, M):
        """This rank's Xc @ M (rows x M's columns)."""
        parts = []

        def f(offset, x):
            out = np.empty((len(x), M.shape[1]))
            for i, xc in self._blocks(x, mean):
                np.matmul(xc, M, out=out[i:i + len(xc)])
            parts.append(out)
        self._pass(rows, comm, f, "PCA: randomized range finder")
        return np.concatenate(parts) if parts else np.zeros((0, M.shape[1]))

    def _back(self, rows, comm, mean, Q):
        """Xc^T Q summed over ranks (features x Q's columns), the same on every rank."""
        Z = np.zeros((len(mean), Q.shape[1]))

        def f(offset, x):
            for i, xc in self._blocks(x, mean):
                Z[...] += xc.T @ Q[offset + i:offset + i + len(xc)]
        self._pass(rows, comm, f, "PCA: randomized power iteration")
        if comm is not None:
            hc.allreduce(Z, "sum", comm=comm)
        return Z

    # --- transforming ------------------------------------------------------------------
    def _fitted(self):
        if not hasattr(self, "components_"):
            raise not_fitted("This PCA instance is not fitted yet: call 'fit' with "
                             "appropriate arguments first")

    def _scale(self):
        s = np.sqrt(self.explained_variance_)
        return np.maximum(s, np.finfo(np.float64).eps)

    def _per_row(self, X, fn, width, dtype, what):
        """fn(centred float64 block) -> (rows x width) over this rank's rows of X (an
        array or a dataset), checked: with a comm, collective, and a bad input on any rank
        (a row error, the feature count, NaN/Inf, an unreadable shard) raises the same
        InputError on every rank."""
        self._fitted()
        comm = self._comm_for(X) if isinstance(X, ShardedDataset) else self.comm
        rows = _Rows(X, comm, self.batch_size)
        error = rows.error
        if error is None and rows.features != self.n_features_in_:
            error = (f"X has {rows.features} features, but PCA is expecting "
                     f"{self.n_features_in_} features as input (it was fitted with "
                     f"{self.n_features_in_})")
        parts = []
        if error is None:
            where = "the dataset's" if rows.ds is not None else "X"
            try:
                for offset, x in rows.chunks():
                    out = np.empty((len(x), width), dtype or x.dtype)
                    for i, xc in self._blocks(x, self.mean_):
                        bad = KC.find_nonfinite(xc)
                        if bad >= 0:
                            raise _BadRows(f"{where} row {offset + i + bad} (of this "
                                           f"rank's rows) has a NaN or Inf value")
                        out[i:i + len(xc)] = fn(xc)
                    parts.append(out)
            except (DataError, OSError, _BadRows) as e:
                error = str(e)
        _agree(comm, error, what)
        if not parts:
            return np.zeros((0, width), dtype or (rows.array.dtype if rows.array is not None
                                                   else np.float64))
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def transform(self, X):
        """Project X (this rank's rows, or this rank's share of a dataset) on the
        components: (X - mean_) @ components_.T (/ sqrt(explained_variance_) if whiten).
        With a comm, collective (errors are agreed on)."""
        W = self.components_.T if hasattr(self, "components_") else None
        Z = self._per_row(X, lambda xc: xc @ W, self.n_components_
                          if W is not None else 0, None, "PCA.transform")
        if self.whiten:
            Z /= self._scale().astype(Z.dtype)
        return Z

    def score_samples(self, X):
        """Log-likelihood of each of this rank's rows under the probabilistic PCA model
        (scikit-learn's formula, with get_precision()); float64. Collective with a comm."""
        self._fitted()
        P = self.get_precision()
        sign, logdet = np.linalg.slogdet(P)
        logdet = logdet if sign > 0 else -np.inf
        d = self.n_features_in_
        const = -0.5 * (d * math.log(2 * math.pi) - logdet)
        ll = self._per_row(X, lambda xc: (-0.5 * (xc * (xc @ P)).sum(axis=1))[:, None],
                           1, np.float64, "PCA.score_samples")
        return ll[:, 0] + const

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of X; with a comm, of every rank's rows (the
        same value on every rank, collective)."""
        ll = self.score_samples(X)
        total = np.array([ll.sum(), len(ll)], np.float64)
        if self.comm is not None or (isinstance(X, ShardedDataset) and X.comm is not None):
            hc.allreduce(total, "sum", comm=self._comm_for(X) or self.comm)
        if total[1] == 0:
            raise InputError("score needs at least one row")
        return float(total[0] / total[1])

    def get_precision(self):
        """The inverse of get_covariance(), by the matrix inversion lemma (scikit-learn's
        formula)."""
        self._fitted()
        d = self.n_features_in_
        noise = self.noise_variance_
        if self.n_components_ == 0:
            return np.eye(d) / noise
        if noise == 0.0:
            return np.linalg.inv(self.get_covariance())
        W = self.components_
        ev = self.explained_variance_
        if self.whiten:
            W = W * np.sqrt(ev[:, None])
        diff = np.where(ev > noise, ev - noise, 0.0)
        with np.errstate(divide="ignore"):
            inner = W @ W.T / noise
            inner.flat[::len(inner) + 1] += 1.0 / diff
        P = W.T @ np.linalg.inv(inner) @ W
        P /= -(noise ** 2)
        P.flat[::len(P) + 1] += 1.0 / noise
        return P

    def get_feature_names_out(self, input_features=None):
        """Output feature names, as scikit-learn's: pca0, pca1, ..."""
        self._fitted()
        return np.asarray([f"pca{i}" for i in range(self.n_components_)], dtype=object)

    def get_covariance(self):
        """The model's covariance (scikit-learn's formula): components_^T diag(ev - noise)
        components_ + noise I; the data's covariance when all components are kept."""
        self._fitted()
        W = self.components_
        ev = self.explained_variance_
        if self.whiten:
            W = W * np.sqrt(ev[:, None])
        diff = np.where(ev > self.noise_variance_, ev - self.noise_variance_, 0.0)
        cov = (W.T * diff) @ W
        cov.flat[::len(cov) + 1] += self.noise_variance_
        return cov

    def inverse_transform(self, Z):
        """Back to feature space: Z @ components_ (* sqrt(explained_variance_) if whiten)
        + mean_."""
        self._fitted()
        Z, error = _host_rows(Z)
        if error:
            error = error.replace("X ", "Z ", 1)
        elif Z.shape[1] != self.n_components_:
            error = (f"Z has {Z.shape[1]} columns, but PCA has {self.n_components_} "
                     f"components")
        _agree(self.comm, error, "PCA.inverse_transform")
        W = self.components_ * self._scale()[:, None] if self.whiten else self.components_
        return (Z.astype(np.float64) @ W + self.mean_).astype(Z.dtype, copy=False)
