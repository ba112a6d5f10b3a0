"""L2-regularised logistic regression across ranks (scikit-learn's LogisticRegression).

    from hpcml.ml import LogisticRegression
    clf = LogisticRegression(C=1.0, comm=comm).fit(X_mine, y_mine)
    clf.predict_proba(X_mine)

The objective is scikit-learn's: (1 / W) sum_i w_i loss_i + ||coef||^2 / (2 C W), W the
sum of the sample weights over all ranks, the intercept not penalised; binary problems
have one coefficient vector and the logistic loss, more classes the multinomial (softmax)
loss with a vector per class. Each rank computes the loss and gradient of its own rows
in float64; one all-reduce per evaluation sums them (the same bytes on every rank), so
every rank runs the same optimizer on the same numbers and ends with the same model:
solver "lbfgs" (scipy's L-BFGS-B with scikit-learn's settings: gtol = tol, maxls 50) or
"newton" (Newton's method with the all-reduced Hessian, (d + 1) K squared; for few
features, converges in a handful of passes).
"""
import numpy as np
import scipy.linalg
import scipy.optimize
from scipy.special import expit, log_expit, logsumexp

from hpcml import comm as hc

from .base import (Estimator, Rows, allreduce_sum, check_choice, check_int, check_real,
                   require_rows)
from .checks import InputError
from .linear import _predict_rows

SOLVERS = ("lbfgs", "newton")


class LogisticRegression(Estimator):
    """Logistic regression, binary or multinomial, L2 (scikit-learn's contract).

    C (inverse regularisation strength, > 0), fit_intercept, solver ("lbfgs", "newton"),
    max_iter, tol (lbfgs: the projected gradient's tolerance; newton: the Newton
    decrement's), comm, batch_size (rows per block for a dataset).

    Attributes: classes_, coef_ (1 x d binary, K x d multinomial), intercept_, n_iter_,
    n_features_in_."""

    _kind = "classifier"
    #: False: the loss and gradient from the NumPy expressions (the reference the compiled
    #: pass is tested against)
    _use_kernel = True

    def __init__(self, C=1.0, *, fit_intercept=True, solver="lbfgs", max_iter=100,
                 tol=1e-4, comm=None, batch_size=65536):
        self.C = C
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.comm = comm
        self.batch_size = batch_size

    def _check_params(self):
        check_real("C", self.C, 0.0, strict=True)
        check_choice("solver", self.solver, SOLVERS)
        check_int("max_iter", self.max_iter, 1)
        check_real("tol", self.tol, 0.0)
        check_int("batch_size", self.batch_size, 1)
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            raise ValueError(f"fit_intercept must be True or False, got {self.fit_intercept!r}")

    def fit(self, X, y=None, sample_weight=None):
        """Fit on this rank's rows (collective with a communicator); returns self."""
        comm = self._comm_for(X)
        self._agree_params(comm)
        rows = Rows(X, comm, self.batch_size, y, sample_weight, need_y=True, labels=True)
        d, n = rows.agree("checking LogisticRegression's input")
        require_rows(n, d, "LogisticRegression")
        rows.check_weights("LogisticRegression")
        Xa, ya, w = rows.gather()
        classes = _classes(ya, comm)
        if len(classes) < 2:
            raise InputError(f"LogisticRegression needs samples of at least 2 classes in the "
                             f"data, but the data contain only one class: {classes[0]!r}")
        K = 1 if len(classes) == 2 else len(classes)
        Y = _targets(ya, classes, K)
        w = np.ones(len(Xa)) if w is None else w
        W = float(allreduce_sum(np.array([w.sum()]), comm)[0])
        if W <= 0:
            raise InputError("the sample weights sum to 0 over all ranks")
        idx = np.clip(np.searchsorted(classes, ya), 0, len(classes) - 1)
        prob = _Problem(np.ascontiguousarray(Xa), Y, w, W, K, 1.0 / self.C,
                        self.fit_intercept, comm, idx=idx if self._use_kernel else None)
        theta0 = np.zeros(prob.size)
        if self.solver == "lbfgs":
            theta, self.n_iter_ = _lbfgs(prob, theta0, self.max_iter, self.tol)
        else:
            theta, self.n_iter_ = _newton(prob, theta0, self.max_iter, self.tol)
        coef = theta.reshape(K, d + 1)
        if K > 1 and self.fit_intercept and self.solver == "newton":
            # the softmax ignores a constant added to every intercept: keep them summing
            # to 0, where L-BFGS from 0 stays (its gradients sum to 0 over the classes)
            coef[:, d] -= coef[:, d].mean()
        self.classes_ = classes
        self.coef_ = coef[:, :d].copy()
        self.intercept_ = coef[:, d].copy() if self.fit_intercept else np.zeros(K)
        self.n_features_in_ = d
        return self

    def decision_function(self, X):
        self._fitted("coef_")
        Xa = _predict_rows(X, self.n_features_in_, "LogisticRegression")
        z = Xa @ self.coef_.T + self.intercept_
        return z.ravel() if z.shape[1] == 1 else z

    def predict_proba(self, X):
        z = self.decision_function(X)
        if z.ndim == 1:
            p = expit(z)
            return np.column_stack([1 - p, p])
        return np.exp(z - logsumexp(z, axis=1, keepdims=True))

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        z = self.decision_function(X)
        idx = (z > 0).astype(int) if z.ndim == 1 else np.argmax(z, axis=1)
        return self.classes_[idx]

    def score(self, X, y, sample_weight=None):
        """Accuracy on this rank's rows."""
        y = np.asarray(y).ravel()
        return float(np.average(self.predict(X) == y, weights=sample_weight))

    def objective(self, X, y, sample_weight=None):
        """The fitted model's objective on (X, y) (scikit-learn's scaling; this rank's rows
        only, no communication): to compare solvers and libraries."""
        self._fitted("coef_")
        Xa = _predict_rows(X, self.n_features_in_, "LogisticRegression")
        y = np.asarray(y).ravel()
        K = self.coef_.shape[0]
        w = np.ones(len(Xa)) if sample_weight is None else np.asarray(sample_weight, float)
        theta = np.column_stack([self.coef_, self.intercept_]).ravel()
        prob = _Problem(Xa, _targets(y, self.classes_, K), w, float(w.sum()), K,
                        1.0 / self.C, self.fit_intercept, None)
        return prob.loss_grad(theta)[0]


def _classes(y, comm):
    """The sorted union of the ranks' labels (the same array on every rank)."""
    mine = np.unique(y)
    if comm is None or comm.Get_size() == 1:
        return mine
    kinds = hc.gather_objects([mine.dtype.kind, mine.tolist()], root=None, comm=comm)
    if len({k for k, labels in kinds if labels}) > 1:
        raise InputError("y's labels have different types on different ranks: "
                         + ", ".join(f"rank {r}: {k}" for r, (k, _) in enumerate(kinds)))
    union = [v for _, labels in kinds for v in labels]
    return np.unique(np.array(union, dtype=mine.dtype if len(mine) else None))


def _targets(y, classes, K):
    idx = np.searchsorted(classes, y)
    idx = np.clip(idx, 0, len(classes) - 1)
    if len(y) and not np.all(classes[idx] == y):
        raise InputError("y has labels that are not among the fitted classes")
    if K == 1:
        return idx.astype(np.float64)
    Y = np.zeros((len(y), K))
    Y[np.arange(len(y)), idx] = 1.0
    return Y


class _Problem:
    """Loss, gradient and Hessian over all ranks' rows; theta = K rows of (coef, b)."""

    def __init__(self, X, Y, w, W, K, lam, fit_intercept, comm, idx=None):
        """idx: the rows' class indices (0/1 when binary) for the compiled pass; None:
        the NumPy expressions (the reference)."""
        self.X, self.Y, self.w, self.W, self.K = X, Y, w, W, K
        self.idx = None if idx is None else np.ascontiguousarray(idx, np.int64)
        self.w_kernel = np.empty(0) if np.all(w == 1) else np.ascontiguousarray(w, float)
        self.lam, self.fit_intercept, self.comm = lam, fit_intercept, comm
        self.d = X.shape[1]
        self.size = K * (self.d + 1)
        self.evaluations = 0

    def _split(self, theta):
        t = theta.reshape(self.K, self.d + 1)
        b = t[:, self.d] if self.fit_intercept else np.zeros(self.K)
        return t[:, :self.d], b

    def loss_grad(self, theta):
        self.evaluations += 1
        coef, b = self._split(theta)
        X, w = self.X, self.w
        buf = np.zeros(1 + self.size)
        if len(X) and self.idx is not None:  # one compiled pass over the rows
            from hpcml.kernels.cpu.logistic import loss_grad
            buf[0], g = loss_grad(X, self.idx, self.w_kernel, np.ascontiguousarray(coef),
                                  np.ascontiguousarray(b), self.K)
            if not self.fit_intercept:
                g[:, self.d] = 0.0
            buf[1:] = g.ravel()
        elif len(X):
            z = X @ coef.T + b  # n x K
            if self.K == 1:
                y, z = self.Y, z[:, 0]
                buf[0] = -np.sum(w * (y * log_expit(z) + (1 - y) * log_expit(-z)))
                r = (w * (expit(z) - y))[:, None]  # n x 1
            else:
                lse = logsumexp(z, axis=1)
                buf[0] = np.sum(w * (lse - np.sum(self.Y * z, axis=1)))
                r = w[:, None] * (np.exp(z - lse[:, None]) - self.Y)  # n x K
            g = np.zeros((self.K, self.d + 1))
            g[:, :self.d] = r.T @ X
            if self.fit_intercept:
                g[:, self.d] = r.sum(axis=0)
            buf[1:] = g.ravel()
        allreduce_sum(buf, self.comm)
        loss, grad = buf[0] / self.W, buf[1:] / self.W
        reg = self.lam / self.W
        loss += 0.5 * reg * float(np.sum(coef * coef))
        grad.reshape(self.K, self.d + 1)[:, :self.d] += reg * coef
        return float(loss), grad

    def hessian(self, theta):
        coef, b = self._split(theta)
        X, w, K, d1 = self.X, self.w, self.K, self.d + 1
        Xb = np.hstack([X, np.ones((len(X), 1)) if self.fit_intercept else
                        np.zeros((len(X), 1))])
        H = np.zeros((K * d1, K * d1))
        if len(X):
            z = X @ coef.T + b
            if K == 1:
                p = expit(z[:, 0])
                H[:] = (Xb * (w * p * (1 - p))[:, None]).T @ Xb
            else:
                P = np.exp(z - logsumexp(z, axis=1, keepdims=True))
                for i in range(K):
                    for j in range(i, K):
                        s = w * P[:, i] * ((i == j) - P[:, j])
                        blk = (Xb * s[:, None]).T @ Xb
                        H[i * d1:(i + 1) * d1, j * d1:(j + 1) * d1] = blk
                        H[j * d1:(j + 1) * d1, i * d1:(i + 1) * d1] = blk.T
        allreduce_sum(H, self.comm)
        H /= self.W
        reg = np.zeros(K * d1)
        reg.reshape(K, d1)[:, :self.d] = self.lam / self.W
        if not self.fit_intercept:
            reg.reshape(K, d1)[:, self.d] = 1.0  # the unused intercept slot
        H[np.diag_indices_from(H)] += reg
        return H


def _lbfgs(prob, theta0, max_iter, tol):
    res = scipy.optimize.minimize(prob.loss_grad, theta0, method="L-BFGS-B", jac=True,
                                  options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                                           "ftol": 64 * np.finfo(float).eps})
    return res.x, int(res.nit)


def _newton(prob, theta, max_iter, tol):
    """Damped Newton (backtracking on the all-reduced loss); stops when the largest
    gradient entry is at most tol (L-BFGS-B's gtol test). The multinomial Hessian is
    singular along "add a constant to every class" when the intercepts are free (the
    softmax does not change): the step is then the least-squares one."""
    loss, grad = prob.loss_grad(theta)
    singular = prob.K > 1 and prob.fit_intercept
    for it in range(1, max_iter + 1):
        if np.max(np.abs(grad)) <= tol:
            return theta, it - 1
        H = prob.hessian(theta)
        if singular:
            step = scipy.linalg.lstsq(H, grad, lapack_driver="gelsy", check_finite=False)[0]
        else:
            step = scipy.linalg.cho_solve(scipy.linalg.cho_factor(H, check_finite=False),
                                          grad, check_finite=False)
        dec = float(grad @ step)
        if dec <= 4 * np.finfo(float).eps * abs(loss):
            return theta, it  # at the optimum to rounding: the gradient's floor
        t = 1.0
        while t > 1e-10:
            new = theta - t * step
            new_loss, new_grad = prob.loss_grad(new)
            if new_loss <= loss - 1e-4 * t * dec:
                break
            t /= 2
        else:
            return theta, it  # no step lowers the loss: rounding, not the optimum's distance
        theta, loss, grad = new, new_loss, new_grad
    return theta, max_iter
