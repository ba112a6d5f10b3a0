"""t-SNE across MPI ranks (scikit-learn's contract and optimisation schedule).

Each rank owns a run of rows (its rows of the input). Affinities: the k = 3*perplexity + 1
exact nearest neighbours of the rank's rows among all rows (hpcml.ml.neighbors), the
perplexity binary search per row, then the symmetrised P for the rank's rows built from
every rank's conditional rows. Optimisation: every rank holds the whole embedding; each
iteration it computes the gradient of its own rows (attractive term over its P rows,
repulsive term over all points), updates them (gains and momentum), and the rows are
all-gathered. The repulsive term is the FFT-accelerated interpolation (method "fft", 2-D,
O(N)), or exact (O(N^2), "exact"; also the CUDA path: an exact tiled kernel).

With method "fft" every quantity a rank computes depends only on the whole embedding,
never on how rows are split, so P ranks give the same embedding as one process.
"""
import inspect
import math
import numbers
import time

import numpy as np

from hpcml import comm as hc
from hpcml.comm.guard import same_everywhere
from hpcml.comm.rows import RowGather, allgather_rows, row_counts
from hpcml.kernels import tsne as KT

from .base import Estimator
from .checks import agree as _agree, check_backend as _check_backend  # one error everywhere
from .checks import host_rows
from .neighbors import knn

EXPLORATION_ITER = 250  # scikit-learn's early-exaggeration phase
CHECK_EVERY = 50  # KL and stopping checks (scikit-learn's _N_ITER_CHECK)
METHODS = ("auto", "exact", "barnes_hut", "fft")


def _local_data(X, comm):
    """(this rank's rows as a 2-D float array, labels or None) from an array or a sharded
    dataset (path, built-in name or ShardedDataset: rows split by the loader)."""
    from hpcml.data import ShardedDataset
    if isinstance(X, (str, bytes)) or hasattr(X, "__fspath__"):
        X = ShardedDataset(X, comm)
    if isinstance(X, ShardedDataset):
        xs, ys = [], []
        if X.comm is None and comm is not None:  # split the rows among our ranks
            loader = X.loader(65536, shuffle=False, rank=comm.Get_rank(),
                              ranks=comm.Get_size())
        else:
            loader = X.loader(65536, shuffle=False)
        for x, y in loader:
            xs.append(x)
            ys.append(y)
        f = X.features
        xdt = np.dtype(X.manifest["x_dtype"])
        return (np.concatenate(xs) if xs else np.empty((0, f), xdt),
                np.concatenate(ys) if ys else np.empty(0))
    x, error = host_rows(X)
    if error:
        raise ValueError(error)
    return x, None


def _real(v):
    """A finite real number (NumPy scalars too), not a bool."""
    return (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
            and math.isfinite(v))


class TSNE(Estimator):
    """t-distributed Stochastic Neighbor Embedding.

    Parameters follow scikit-learn's TSNE (same defaults and schedule: 250 iterations of
    early exaggeration with momentum 0.5, then momentum 0.8; learning_rate "auto" =
    max(N / early_exaggeration / 4, 50); init "pca" scaled to std 1e-4).
    method: "barnes_hut" (quadtree, `angle` as scikit-learn's, 2-D), "fft" (FIt-SNE's
    interpolation on a grid + FFT, 2-D; faster for very large N, less accurate at its
    default 3 points per interval), "exact" (O(N^2)), "auto" ("exact" under 1,000 points
    or for n_components != 2, else "barnes_hut"). comm: an mpi4py communicator;
    each rank then passes its own rows. backend: kernel backend ("cpu", "numpy", "cuda";
    "cuda" computes the repulsion with the exact tiled GPU kernel).

    Attributes: embedding_ (all rows, on every rank), kl_divergence_, n_iter_,
    learning_rate_, n_features_in_.
    """

    def __init__(self, n_components=2, *, perplexity=30.0, early_exaggeration=12.0,
                 learning_rate="auto", max_iter=1000, n_iter_without_progress=300,
                 min_grad_norm=1e-7, init="pca", method="auto", angle=0.5,
                 random_state=None, verbose=0, comm=None, backend=None,
                 n_interpolation_points=3, min_num_intervals=50, intervals_per_unit=1.0):
        self.n_components = n_components
        self.perplexity = perplexity
        self.early_exaggeration = early_exaggeration
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.n_iter_without_progress = n_iter_without_progress
        self.min_grad_norm = min_grad_norm
        self.init = init
        self.method = method
        self.angle = angle
        self.random_state = random_state
        self.verbose = verbose
        self.comm = comm
        self.backend = backend
        self.n_interpolation_points = n_interpolation_points
        self.min_num_intervals = min_num_intervals
        self.intervals_per_unit = intervals_per_unit

    def _comm_(self):
        """The communicator of the fit in progress: comm, or the dataset's."""
        return getattr(self, "_fit_comm", self.comm)

    # --- checks ------------------------------------------------------------------------
    def _check_params(self, n):
        _check_backend(self.backend)
        if n < 2:
            raise ValueError(f"t-SNE needs at least 2 rows, got n_samples = {n}")
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {self.n_components!r}")
        if not self.perplexity > 0:
            raise ValueError(f"perplexity must be > 0, got {self.perplexity}")
        if self.perplexity >= n:
            raise ValueError(f"perplexity ({self.perplexity}) must be less than the number "
                             f"of samples ({n})")
        if not (_real(self.early_exaggeration) and self.early_exaggeration >= 1):
            raise ValueError(f"early_exaggeration must be a finite number >= 1, got "
                             f"{self.early_exaggeration!r}")
        lr = self.learning_rate
        if not (isinstance(lr, str) and lr == "auto" or _real(lr) and lr > 0):
            raise ValueError(f"learning_rate must be 'auto' or a finite number > 0, got "
                             f"{lr!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {self.max_iter!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 <= self.angle <= 1:
            raise ValueError(f"angle must be in [0, 1], got {self.angle}")
        method = self.method
        if method == "auto":
            method = "exact" if (n < 1000 or self.n_components != 2) else "barnes_hut"
        if self.backend == "cuda":
            from hpcml.kernels.cuda import available, why_unavailable
            from hpcml.kernels.cuda.tsne import MAX_DIM
            if not available():
                raise ValueError(f"backend 'cuda': {why_unavailable()}")
            if self.n_components > MAX_DIM:
                raise ValueError(f"backend 'cuda' embeds in at most {MAX_DIM} dimensions; "
                                 f"n_components is {self.n_components}")
            method = "exact"
        if method in ("fft", "barnes_hut") and self.n_components != 2:
            raise ValueError(f"method {method!r} embeds in 2 dimensions; n_components is "
                             f"{self.n_components} (use method='exact')")
        if not (isinstance(self.init, np.ndarray) or self.init in ("pca", "random")):
            raise ValueError(f"init must be 'pca', 'random' or an array, got {self.init!r}")
        return method

    # --- affinities --------------------------------------------------------------------
    def _affinities(self, X_all, lo, hi, n):
        """CSR (indptr, indices, pvals) of the symmetrised, normalised P for rows [lo, hi)."""
        comm = self._comm_()
        k = min(n - 1, int(3.0 * self.perplexity + 1))
        t = time.perf_counter()
        bar = None
        if self.verbose and (comm is None or comm.Get_rank() == 0):
            from hpcml.progress import Progress
            p = comm.Get_size() if comm is not None else 1
            bar = Progress(hi - lo, f"[t-SNE] {k} nearest neighbours" + (
                f" (rank 0 of {p})" if p > 1 else ""))
        idx, d2 = knn(X_all[lo:hi], X_all, k, self_offset=lo,
                      backend="cuda" if self.backend == "cuda" else None, progress=bar)
        if bar is not None:
            bar.close()
        self._log(f"[t-SNE] {k} nearest neighbours of {hi - lo} rows per rank in "
                  f"{time.perf_counter() - t:.2f} s")
        cond = KT.perplexity_search(d2, self.perplexity, backend=self.backend or "cpu")
        counts = self._counts
        idx_all = allgather_rows(idx, comm, counts)
        cond_all = allgather_rows(cond, comm, counts)
        total = 2.0 * float(cond_all.sum())
        rows_all = np.repeat(np.arange(n, dtype=np.int64), k)
        cols_all = idx_all.reshape(-1)
        vals_all = cond_all.reshape(-1)
        # entries of rows [lo, hi): the rows' own conditionals, then the transposed ones
        t_mask = (cols_all >= lo) & (cols_all < hi)
        r = np.concatenate([rows_all[lo * k:hi * k], cols_all[t_mask]])
        c = np.concatenate([cols_all[lo * k:hi * k], rows_all[t_mask]])
        v = np.concatenate([vals_all[lo * k:hi * k], vals_all[t_mask]])
        key = r * n + c
        order = np.argsort(key, kind="stable")
        key, v = key[order], v[order]
        first = np.ones(key.size, bool)
        first[1:] = key[1:] != key[:-1]
        starts = np.flatnonzero(first)
        vals = np.add.reduceat(v, starts) / total if key.size else v
        key = key[starts]
        rows, cols = key // n, key % n
        indptr = np.zeros(hi - lo + 1, np.int64)
        np.cumsum(np.bincount(rows - lo, minlength=hi - lo), out=indptr[1:])
        return indptr, np.ascontiguousarray(cols), np.ascontiguousarray(vals)

    # --- helpers -----------------------------------------------------------------------
    def _log(self, text):
        if self.verbose and (self._comm_() is None or self._comm_().Get_rank() == 0):
            print(text, flush=True)

    def _host_backend(self):
        return "numpy" if self.backend == "numpy" else "cpu"

    def _sum(self, values):
        """Sum a few floats over ranks (identical on every rank)."""
        buf = np.array(values, np.float64)
        if self._comm_() is not None and self._comm_().Get_size() > 1:
            hc.allreduce(buf, "sum", comm=self._comm_())
        return buf

    def _initial(self, X_all, n, lo, hi):
        d = self.n_components
        if isinstance(self.init, np.ndarray):
            if self.init.shape != (n, d):
                raise ValueError(f"init array has shape {self.init.shape}, expected {(n, d)}")
            if not np.isfinite(self.init).all():
                bad = int(np.flatnonzero(~np.isfinite(self.init).all(axis=1))[0])
                raise ValueError(f"init array row {bad} has a NaN or Inf value")
            return np.array(self.init[lo:hi], np.float64)
        if self.init == "random":
            rng = np.random.default_rng(self.random_state)
            return 1e-4 * rng.standard_normal((n, d))[lo:hi]
        # every rank holds all rows: the same PCA on each, whatever the split of the rows
        from .pca import PCA
        y = PCA(n_components=d).fit_transform(X_all).astype(np.float64)
        s = y[:, 0].std()
        if not (np.isfinite(s) and s > 0):  # constant data: no direction to start from
            rng = np.random.default_rng(0 if self.random_state is None else self.random_state)
            return 1e-4 * rng.standard_normal((n, d))[lo:hi]
        return (y / s * 1e-4)[lo:hi]

    # --- fit ---------------------------------------------------------------------------
    def fit(self, X, y=None):
        self._fit(X)
        return self

    def fit_transform(self, X, y=None):
        """The embedding of X's rows: this rank's rows when X is an array (with comm),
        every row (dataset order) when X is a sharded dataset."""
        local = self._fit(X)
        return self.embedding_ if local is None else self.embedding_[local[0]:local[1]]

    def _fit(self, X):
        from hpcml.data import ShardedDataset
        comm = self.comm
        if isinstance(X, ShardedDataset) and X.comm is not None:  # as PCA: the dataset's
            if comm is None:
                comm = X.comm
            elif comm.Get_size() != X.comm.Get_size():
                raise ValueError(f"the dataset was opened on {X.comm.Get_size()} ranks, "
                                 f"t-SNE's comm has {comm.Get_size()}")
        self._fit_comm = comm
        if comm is not None:
            from hpcml.kernels import threads
            from hpcml.comm.guard import local_ranks
            if threads.current() is None:
                threads.configure(local_ranks(comm))
        is_data = not isinstance(X, np.ndarray) and not isinstance(X, (list, tuple))
        error, x = None, None
        try:
            x, labels = _local_data(X, comm)
            if x.size and not np.isfinite(x).all():
                bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
                raise ValueError(f"X has NaN or Inf in row {bad}" +
                                 (f" of rank {comm.Get_rank()}" if comm is not None else ""))
        except (ValueError, OSError) as e:  # DataError is a ValueError
            error = str(e)
        _agree(comm, error, "t-SNE input")
        # float32 only if every rank has float32 rows: the all-gathers need one dtype
        f = np.array([x.shape[1], -x.shape[1], x.dtype != np.float32], np.int64)
        if comm is not None and comm.Get_size() > 1:
            hc.allreduce(f, "max", comm=comm)
            if f[0] != -f[1]:
                error = (f"ranks disagree on the feature count ({-f[1]} to {f[0]}); rank "
                         f"{comm.Get_rank()} has {x.shape[1]}")
        x = np.ascontiguousarray(x, np.float64 if f[2] else np.float32)
        counts = row_counts(x.shape[0], comm)
        n = sum(counts)
        try:
            if error is None:
                method = self._check_params(n)
        except ValueError as e:
            error = str(e)
        if comm is not None and comm.Get_size() > 1:
            names = [k for k in inspect.signature(type(self).__init__).parameters
                     if k not in ("self", "comm", "backend", "verbose")]
            same = same_everywhere(comm, {k: getattr(self, k) for k in names})
            if error is None and not same:  # else the all-gathers would not match: a hang
                error = ("t-SNE's parameters differ across ranks: every rank must pass the "
                         "same " + ", ".join(names))
        _agree(comm, error, "t-SNE settings")
        self._counts = counts
        rank = comm.Get_rank() if comm is not None else 0
        lo = sum(counts[:rank])
        hi = lo + counts[rank]
        t0 = time.perf_counter()
        X_all = allgather_rows(x, comm, counts)
        P = self._affinities(X_all, lo, hi, n)
        self._log(f"[t-SNE] affinities of {n} points in {time.perf_counter() - t0:.2f} s")
        g = RowGather(n, (self.n_components,), np.float64, comm, counts=counts)
        g.local[...] = self._initial(X_all, n, lo, hi)
        del X_all
        lr = self.learning_rate
        if lr == "auto":
            lr = max(n / self.early_exaggeration / 4, 50)
        self.learning_rate_ = lr
        self._optimize(g, P, n, lo, hi, method, lr)
        self.n_features_in_ = x.shape[1]
        self.labels_ = None
        if is_data and labels is not None:
            self.labels_ = allgather_rows(np.asarray(labels, np.int64), comm, counts)
        return None if is_data else (lo, hi)

    def _optimize(self, g, P, n, lo, hi, method, lr):
        indptr, indices, pvals = P
        d = self.n_components
        cuda = self.backend == "cuda"
        be = self._host_backend()
        if method == "fft":
            approx = KT.RepulsionFFT(self.n_interpolation_points, self.min_num_intervals,
                                     self.intervals_per_unit)
        elif method == "barnes_hut":
            approx = KT.RepulsionBH(self.angle, 32)
        else:
            approx = None
        # per-row parts of Z, gathered and summed in row order: the same Z on every rank
        # and for every split of the rows
        zg = RowGather(n, (), np.float64, self._comm_(), counts=self._counts)
        if cuda:  # P stays on the GPU; the embedding (n x d) is copied per iteration
            from numba import cuda as nbcuda
            indptr, indices, pvals = (nbcuda.to_device(a) for a in (indptr, indices, pvals))
        y = g.gather()
        attr = np.empty((hi - lo, d))
        rep = np.empty((hi - lo, d))
        grad = np.empty((hi - lo, d))
        upd = np.zeros((hi - lo, d))
        gains = np.ones((hi - lo, d))
        mine = g.local
        best_kl, best_it, kl, z, stopped = np.inf, 0, np.nan, 1.0, False
        t_check = t_start = time.perf_counter()
        prof = np.zeros(4)  # seconds: attractive, repulsive, all-gathers, the rest
        it = 0
        stages = [(min(EXPLORATION_ITER, self.max_iter), self.early_exaggeration, 0.5),
                  (self.max_iter, 1.0, 0.8)]
        start = 0
        for stage, (stop, exag, momentum) in enumerate(stages):
            # as scikit-learn, a stop during the exaggeration still runs the second stage
            stopped = False
            upd[...] = 0.0  # scikit-learn restarts the descent (gains too) for each stage
            gains[...] = 1.0
            for it in range(start, stop):
                t0 = time.perf_counter()
                KT.attractive(y, lo, indptr, indices, pvals, attr,
                              backend="cuda" if cuda else be)
                t1 = time.perf_counter()
                if approx is not None:
                    approx.compute(y, lo, hi, rep, zg.local)
                else:
                    KT.repulsive_exact(y, lo, rep, zg.local, backend="cuda" if cuda else be)
                t2 = time.perf_counter()
                z = float(zg.gather().sum())
                t3 = time.perf_counter()
                np.multiply(attr, 4.0 * exag, out=grad)
                grad -= (4.0 / z) * rep
                check = (it + 1) % CHECK_EVERY == 0 or it == self.max_iter - 1
                if check:  # KL(P || Q) of the current embedding (P without exaggeration)
                    a, b = KT.kl_terms(y, lo, indptr, indices, pvals,
                                       backend="cuda" if cuda else be)
                    s = self._sum([a, b, float((grad * grad).sum())])
                    kl, gnorm = s[0] + s[1] + math.log(z), math.sqrt(s[2])
                    from hpcml.progress import hms
                    spent = time.perf_counter() - t_start
                    self._log(f"[t-SNE] Iteration {it + 1}: error = {kl:.7f}, gradient norm "
                              f"= {gnorm:.7f} ({time.perf_counter() - t_check:.3f} s since "
                              f"the last report; elapsed {hms(spent)}, ETA "
                              f"{hms(spent / (it + 1) * (self.max_iter - it - 1))})")
                    t_check = time.perf_counter()
                t4 = time.perf_counter()
                KT.update(mine, grad, upd, gains, momentum, lr, backend=be)
                t5 = time.perf_counter()
                y = g.gather()
                t6 = time.perf_counter()
                prof += (t1 - t0, t2 - t1, t3 - t2 + t6 - t5, t4 - t3 + t5 - t4)
                if check and exag == 1.0:
                    if kl < best_kl:
                        best_kl, best_it = kl, it
                    elif it - best_it > self.n_iter_without_progress:
                        self._log(f"[t-SNE] Iteration {it + 1}: no progress during the last "
                                  f"{self.n_iter_without_progress} iterations")
                        stopped = True
                        break
                if check and gnorm < self.min_grad_norm:
                    self._log(f"[t-SNE] Iteration {it + 1}: gradient norm {gnorm}")
                    stopped = True
                    break
            start = it + 1
            if stopped and stage == 1:
                break
        self.kl_divergence_ = float(kl)
        self.n_iter_ = it + 1
        self.timings_ = dict(zip(("attractive", "repulsive", "allgather", "other"),
                                 prof.tolist()))
        if hasattr(approx, "seconds"):
            self.timings_.update(zip(("tree_build", "tree_groups", "tree_traversal"),
                                     approx.seconds.tolist()))
        self._log("[t-SNE] seconds in " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                     self.timings_.items()))
        self.embedding_ = y.copy()
