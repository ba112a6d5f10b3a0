"""Least squares across ranks: LinearRegression and Ridge (scikit-learn's contracts).

    from hpcml.ml import Ridge
    model = Ridge(alpha=1.0, comm=comm).fit(X_mine, y_mine)   # each rank: its own rows
    model = Ridge(1.0).fit("data/regression")                # a dataset: its labels are y

Solvers:
* "normal" (the default): one pass. Each rank accumulates the weighted count, mean and
  centred scatter of [X | y] in float64, block by block (Chan et al.'s pairwise merge; the
  unweighted blocks through hpcml.kernels.covariance, BLAS syrk), so a mean of 1e5 over a
  spread of 1e-3 keeps its digits; ranks merge the same way (one all-reduce of the counts
  and weighted means, one of the scatters moved to the global mean). Rank 0 solves
  (Sxx + alpha I) coef = Sxy by Cholesky and broadcasts: every rank holds the same bytes.
  Its error grows with cond(X)^2: a design whose Gram matrix is too ill-conditioned for
  it is refused with the remedy named.
* "qr": two passes. The global mean first, then TSQR of the centred rows [Xc | yc]
  (weighted by sqrt(w)): each block's rows are folded into a running R factor, ranks
  all-gather their R factors and rank 0 takes the QR of their stack (with sqrt(alpha) I
  appended for Ridge) and solves R coef = r by least squares (an SVD of the small R: a
  rank-deficient design gets the minimum-norm solution, as scikit-learn's lstsq does).
  Its error grows with cond(X): the solver for ill-conditioned designs.

The intercept is y's mean less the features' means times coef (fit_intercept=False: the
rows are not centred). Learned attributes are float64: coef_, intercept_,
n_features_in_, n_samples_seen_ (rows, or the weights' sum with sample_weight), solver_.
"""
import numpy as np
import scipy.linalg

from hpcml.kernels import covariance as KC

from .base import (Estimator, Rows, allreduce_sum, broadcast, check_choice, check_int,
                   check_real, pass_over)
from .checks import InputError, check_backend

SOLVERS = ("auto", "normal", "qr")
#: the normal equations are refused when the Gram matrix's condition number estimate
#: passes this (their error is about cond^2 x 1e-16 relative)
MAX_NORMAL_COND = 1e10


class _LeastSquares(Estimator):
    _kind = "regressor"

    def _check_params(self):
        check_choice("solver", self.solver, SOLVERS)
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            raise ValueError(f"fit_intercept must be True or False, got {self.fit_intercept!r}")
        check_int("batch_size", self.batch_size, 1)
        check_real("alpha", self._alpha(), 0.0)
        check_real("forgetting", self.forgetting, 0.0, strict=True)
        if self.forgetting > 1:
            raise ValueError(f"forgetting must be in (0, 1], got {self.forgetting!r}")
        check_backend(self.backend)

    def _alpha(self):
        return 0.0

    def _tol(self):
        return np.finfo(float).eps * 4

    def fit(self, X, y=None, sample_weight=None):
        """Fit on this rank's rows of X and y (or a dataset and its labels); returns self.
        Collective when the estimator has a communicator."""
        comm = self._comm_for(X)
        self._agree_params(comm)
        rows = Rows(X, comm, self.batch_size, y, sample_weight, need_y=True)
        d, n = rows.agree(f"checking {type(self).__name__}'s input")
        rows.check_weights(type(self).__name__)
        if n < 2 and self.fit_intercept:
            raise InputError(f"{type(self).__name__} with an intercept needs at least 2 "
                             f"rows, got {n} sample")
        if n < 1:
            raise InputError(f"{type(self).__name__} needs at least 1 row, got 0 samples")
        solver = "normal" if self.solver == "auto" else self.solver
        if solver == "normal":
            W, mean, S = _scatter(rows, comm, d, self.fit_intercept, self.backend)
            coef = self._solve_normal(S, d, comm)
            self._stats = (W, mean, S)
        else:
            self._stats = None
            W, mean = _mean(rows, comm, d, self.fit_intercept)
            R = _tsqr_rows(rows, comm, mean, d)
            coef = self._solve_qr(R, d, comm)
        self.coef_ = coef
        self.intercept_ = float(mean[d] - mean[:d] @ coef) if self.fit_intercept else 0.0
        self.n_features_in_, self.n_samples_seen_, self.solver_ = d, W, solver
        return self

    def partial_fit(self, X, y, sample_weight=None):
        """Add these rows to the normal equations and solve again (whatever `solver`:
        TSQR's R is not kept between calls); returns self. The
        statistics kept so far are first weighted by `forgetting` (1: every row counts
        alike, as one fit on all of them; < 1: exponential forgetting, for streams whose
        relation drifts). Collective with a communicator."""
        comm = self._comm_for(X)
        self._agree_params(comm)
        old = getattr(self, "_stats", None)
        rows = Rows(X, comm, self.batch_size, y, sample_weight, need_y=True)
        d, n = rows.agree(f"checking {type(self).__name__}'s input",
                          getattr(self, "n_features_in_", None), type(self).__name__)
        W, mean, S = _scatter(rows, comm, d, self.fit_intercept, self.backend)
        if old is not None:
            lam = float(self.forgetting)
            old = (lam * old[0], old[1], lam * old[2])
            if self.fit_intercept:
                W, mean, S = KC.merge_scatter(old, (W, mean, S))
            else:
                W, mean, S = old[0] + W, mean, old[2] + S
        if W <= 0 or (self.fit_intercept and n + (0 if old is None else 2) < 2):
            raise InputError(f"{type(self).__name__}.partial_fit: at least 2 rows are "
                             f"needed before the first solve, got n_samples = {n}")
        self.coef_ = self._solve_normal(S, d, comm)
        self._stats = (W, mean, S)
        self.intercept_ = float(mean[d] - mean[:d] @ self.coef_) if self.fit_intercept \
            else 0.0
        self.n_features_in_, self.n_samples_seen_, self.solver_ = d, W, "normal"
        return self

    def _solve_normal(self, S, d, comm):
        out = np.empty(d + 1)  # coef, then 0 / 1 (failed: singular)
        if comm is None or comm.Get_rank() == 0:
            out[:] = _cholesky_solve(S[:d, :d] + self._alpha() * np.eye(d), S[:d, d])
        broadcast(out, comm)
        if out[d]:
            raise InputError(self._singular("normal"))
        return out[:d].copy()

    def _solve_qr(self, R, d, comm):
        out = np.empty(d + 1)
        if comm is None or comm.Get_rank() == 0:
            a = self._alpha()
            if a > 0:
                R = np.linalg.qr(np.vstack([R, np.hstack([np.sqrt(a) * np.eye(d),
                                                          np.zeros((d, 1))])]), mode="r")
            out[:d], rank = _lstsq(R[:d, :d], R[:d, d], self._tol())
            out[d] = 0.0
        broadcast(out, comm)
        return out[:d].copy()

    def _singular(self, solver):
        return (f"{type(self).__name__}: the design is singular or too ill-conditioned for "
                f"the normal equations (a column is constant or a combination of others, "
                f"or cond(X)^2 > {MAX_NORMAL_COND:.0e}); remedies: Ridge(alpha > 0), "
                f"solver='qr' (least squares on TSQR's R; minimum-norm when rank-deficient), "
                f"or drop the redundant columns")

    def predict(self, X):
        """X @ coef_ + intercept_ for this rank's rows (float64)."""
        self._fitted("coef_")
        Xa = _predict_rows(X, self.n_features_in_, type(self).__name__)
        return Xa @ self.coef_ + self.intercept_

    def score(self, X, y, sample_weight=None):
        """R^2 of the predictions on this rank's rows (scikit-learn's r2_score)."""
        y = np.asarray(y, np.float64).ravel()
        p = self.predict(X)
        w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, float)
        num = np.sum(w * (y - p) ** 2)
        den = np.sum(w * (y - np.average(y, weights=w)) ** 2)
        if den == 0:
            return 1.0 if num == 0 else 0.0
        return float(1 - num / den)


class LinearRegression(_LeastSquares):
    """Ordinary least squares (scikit-learn's LinearRegression) across ranks.

    fit_intercept, solver ("auto" = "normal", or "qr"), forgetting (partial_fit: the
    weight of the rows seen so far at each call, in (0, 1]), tol (solver "qr": singular values
    of the centred rows below tol x the largest count as zero, scikit-learn's cut in its
    lstsq), comm, batch_size (rows per block), backend (the scatter kernel's). See the
    module's docstring for the solvers."""

    _expected_failed_checks = {
        "check_sample_weight_equivalence_on_dense_data":
            "zero weights leave the check's design with fewer weighted rows than "
            "features: the default normal-equations solver refuses a singular design, "
            "naming the remedies, where scikit-learn returns lstsq's minimum-norm "
            "solution; LinearRegression(solver='qr') passes this check"}

    def __init__(self, *, fit_intercept=True, solver="auto", tol=1e-6, forgetting=1.0,
                 comm=None, batch_size=65536, backend=None):
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.forgetting = forgetting
        self.solver = solver
        self.comm = comm
        self.batch_size = batch_size
        self.backend = backend


    def _tol(self):
        return self.tol

    def _check_params(self):
        super()._check_params()
        check_real("tol", self.tol, 0.0)


class Ridge(_LeastSquares):
    """Least squares with an L2 penalty alpha ||coef||^2 (scikit-learn's Ridge; the
    intercept is not penalised) across ranks. Parameters as LinearRegression's (no tol),
    and alpha >= 0."""

    def __init__(self, alpha=1.0, *, fit_intercept=True, solver="auto", forgetting=1.0,
                 comm=None, batch_size=65536, backend=None):
        self.alpha = alpha
        self.forgetting = forgetting
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.comm = comm
        self.batch_size = batch_size
        self.backend = backend

    def _alpha(self):
        return self.alpha


def _predict_rows(X, features, who):
    from .checks import host_rows
    from .base import _nonfinite
    Xa, error = host_rows(X)
    if error is None and Xa.shape[1] != features:
        error = f"X has {Xa.shape[1]} features, but {who} is expecting {features} features as input"
    if error is None:
        error = _nonfinite(Xa, "X")
    if error:
        raise InputError(error)
    return Xa


def _augmented(x, y, fit_intercept, shift=None):
    """[x | y] - shift in x's float dtype (float32 rows stay float32, y cast to it as
    scikit-learn casts y to X's dtype; the scatter kernels accumulate in float64 either
    way), written in one pass."""
    z = np.empty((len(x), x.shape[1] + 1), np.float32 if x.dtype == np.float32 else
                 np.float64)
    if shift is None:
        z[:, :-1] = x
        z[:, -1] = y
    else:
        np.subtract(x, shift[:-1], out=z[:, :-1], casting="unsafe")
        z[:, -1] = y - shift[-1]
    return z


def _weighted_block(z, w):
    W = float(w.sum())
    if W == 0:
        return 0.0, np.zeros(z.shape[1]), np.zeros((z.shape[1], z.shape[1]))
    mean = (w @ z) / W
    zc = z - mean
    return W, mean, (zc * w[:, None]).T @ zc


def _scatter(rows, comm, d, fit_intercept, backend):
    """(W, mean of [X | y], scatter of [X | y]) over all ranks' rows: centred about the
    mean (fit_intercept) or about 0. The same bytes on every rank.

    Every row is first shifted by a row of the data (this rank's first row, K_r): with a
    mean of 1e5 over a spread of 1e-3, z - K_r is exact and every later sum is of numbers
    the size of the spread. The ranks' sums are moved to one common shift K (the first
    rank's with rows) through D = K_r - K, also exact, before the all-reduce, so no step
    subtracts two per-rank means of 1e5 (each known to 1e-11 only: 1e-10 relative error
    in the scatter, measured before this shift)."""
    if not fit_intercept:
        return _second_moments(rows, comm, d)
    acc = [(0.0, np.zeros(d + 1), np.zeros((d + 1, d + 1)))]
    shift = [None]

    def add(offset, x, y, w):
        if shift[0] is None and len(x):
            shift[0] = _augmented(x[:1], y[:1], True)[0]
        # (the subtraction in z's dtype: exact for values near the shift)
        z = _augmented(x, y, True, shift[0])
        part = KC.scatter_block(z, backend=backend) if w is None else _weighted_block(z, w)
        acc[0] = KC.merge_scatter(acc[0], (float(part[0]), part[1], part[2]))
    pass_over(rows, comm, add, "accumulating the normal equations")
    W, m, M2 = acc[0]
    K_r = shift[0].astype(np.float64) if shift[0] is not None else np.zeros(d + 1)
    K = _common_shift(K_r, W > 0, comm)
    D = K_r - K  # exact: two rows of the data
    s = W * m                                  # sum w (z - K_r)
    S = M2 + W * np.outer(m, m)                # sum w (z - K_r)(z - K_r)^T
    buf = np.empty(1 + (d + 1) + (d + 1) ** 2)
    buf[0] = W
    buf[1:d + 2] = s + W * D                   # sum w (z - K)
    buf[d + 2:] = (S + np.outer(s, D) + np.outer(D, s) + W * np.outer(D, D)).ravel()
    allreduce_sum(buf, comm)
    total = buf[0]
    mk = buf[1:d + 2] / total
    M = buf[d + 2:].reshape(d + 1, d + 1) - total * np.outer(mk, mk)
    return total, K + mk, (M + M.T) / 2


def _second_moments(rows, comm, d):
    """(W, zeros, sum w z z^T) over all ranks (no intercept: the scatter about 0)."""
    buf = np.zeros(1 + (d + 1) ** 2)

    def add(offset, x, y, w):
        z = _augmented(x, y, False).astype(np.float64, copy=False)
        buf[0] += len(z) if w is None else w.sum()
        buf[1:] += ((z.T @ z) if w is None else (z * w[:, None]).T @ z).ravel()
    pass_over(rows, comm, add, "accumulating the normal equations")
    allreduce_sum(buf, comm)
    return float(buf[0]), np.zeros(d + 1), buf[1:].reshape(d + 1, d + 1)


def _common_shift(K_r, has_rows, comm):
    """The shift of the lowest rank that has rows, on every rank."""
    if comm is None or comm.Get_size() == 1:
        return K_r
    p, r = comm.Get_size(), comm.Get_rank()
    table = np.zeros((p, len(K_r) + 1))
    table[r, 0] = 1.0 if has_rows else 0.0
    table[r, 1:] = K_r
    allreduce_sum(table, comm)  # each rank fills its own row: the sum is the table
    first = int(np.argmax(table[:, 0] > 0))
    return table[first, 1:].copy()


def _mean(rows, comm, d, fit_intercept):
    """(W, weighted mean of [X | y]) over all ranks (zeros without an intercept)."""
    buf = np.zeros(d + 2)

    def add(offset, x, y, w):
        z = _augmented(x, y, fit_intercept)
        if w is None:
            buf[0] += len(z)
            buf[1:] += z.sum(axis=0, dtype=np.float64)
        else:
            buf[0] += w.sum()
            buf[1:] += w @ z
    pass_over(rows, comm, add, "the rows' mean")
    allreduce_sum(buf, comm)
    mean = buf[1:] / buf[0] if (buf[0] and fit_intercept) else np.zeros(d + 1)
    return float(buf[0]), mean


def _tsqr_rows(rows, comm, mean, d):
    """R of the centred, sqrt-weighted rows [Xc | yc] of all ranks (TSQR); rank 0's is
    the one used (the others return theirs, unused)."""
    R = [np.zeros((0, d + 1))]

    def add(offset, x, y, w):
        z = _augmented(x, y, True) - mean
        if w is not None:
            z *= np.sqrt(w)[:, None]
        R[0] = np.linalg.qr(np.vstack([R[0], z]), mode="r")
    pass_over(rows, comm, add, "TSQR of the rows")
    mine = np.zeros((d + 1, d + 1))
    mine[:len(R[0])] = R[0]
    if comm is None or comm.Get_size() == 1:
        return mine
    p = comm.Get_size()
    stack = np.zeros(p * (d + 1) * (d + 1))
    r = comm.Get_rank()
    stack[r * mine.size:(r + 1) * mine.size] = mine.ravel()
    allreduce_sum(stack, comm)  # each rank fills its own slot: the sum is the stack
    return np.linalg.qr(stack.reshape(p * (d + 1), d + 1), mode="r")


def _cholesky_solve(A, b):
    """(coef, 0) from A coef = b by Cholesky of the equilibrated D A D (D = diag(A)^-1/2,
    so a column's units do not count as ill-conditioning), or (zeros, 1) when A is
    singular or the condition number estimate of D A D exceeds MAX_NORMAL_COND."""
    d = len(b)
    out = np.zeros(d + 1)
    diag = np.diag(A).copy()
    if not np.all(np.isfinite(A)) or np.any(diag <= 0):
        out[d] = 1
        return out
    s = 1 / np.sqrt(diag)
    try:
        c = scipy.linalg.cho_factor(A * s[:, None] * s[None, :], lower=False,
                                    check_finite=False)
    except np.linalg.LinAlgError:
        out[d] = 1
        return out
    r = np.abs(np.diag(c[0]))
    if not np.all(np.isfinite(r)) or r.min() <= r.max() * MAX_NORMAL_COND ** -0.5:
        out[d] = 1
        return out
    out[:d] = s * scipy.linalg.cho_solve(c, s * b, check_finite=False)
    return out


def _lstsq(A, b, cond):
    """Minimum-norm least squares by SVD (scipy's gelsd): singular values below cond x
    the largest count as zero. A is TSQR's R of the centred rows, whose singular values
    are the rows' own: the cut is the one scikit-learn's lstsq makes on the rows."""
    x, _, rank, _ = scipy.linalg.lstsq(A, b, cond=cond, lapack_driver="gelsd",
                                       check_finite=False)
    return x, rank
