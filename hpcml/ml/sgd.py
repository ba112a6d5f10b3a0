"""Linear models by stochastic gradient descent across ranks (scikit-learn's SGDClassifier
and SGDRegressor contracts, with mini-batches, optimizers and two distributed modes).

    from hpcml.ml import SGDClassifier
    clf = SGDClassifier(loss="log_loss", optimizer="adam", batch_size=256, comm=comm)
    for X_mine, y_mine in stream:                        # each rank: its own rows
        clf.partial_fit(X_mine, y_mine, classes=[0, 1, 2])

A step takes a global mini-batch of `batch_size` rows: each rank its share, proportional
to its rows (a rank's epoch is cut into the same number of steps everywhere). Modes:
* "sync" (default): the ranks' gradient sums and row counts are summed in one all-reduce
  and every rank applies the same update, so P ranks follow one process that takes the
  same global batches (test: tests/mpi/test_ml_mpi.py).
* "local": each rank steps on its own rows alone and the ranks average their parameters
  every `local_steps` steps and at the end of each call (local SGD; optimizer states stay
  per rank).

Per step t (from 1): g = X_b^T dL/dz / B + the L2 part of the penalty; the learning rate
is "constant" (eta0), "optimal" (1 / (alpha (t + t0)), t0 from Bottou's heuristic, as
scikit-learn), "invscaling" (eta0 / t^power_t) or "adaptive" (eta0, divided by 5 after
n_iter_no_change epochs without the loss improving by tol); the optimizer is "sgd",
"momentum", "adagrad", "rmsprop" or "adam"; an L1 part of the penalty is applied after
the step as its proximal map (soft thresholding by eta alpha l1_ratio). average=True
(or an int: after that many steps) keeps the running mean of the parameters, which
coef_ then holds (averaged SGD). Several classes: one-vs-rest, one column per class, as
scikit-learn. Losses: classification "hinge", "log_loss", "modified_huber",
"squared_hinge", "perceptron"; regression "squared_error", "huber",
"epsilon_insensitive", "squared_epsilon_insensitive".
"""
import numpy as np

from hpcml import comm as hc

from .base import (Estimator, Rows, allreduce_sum, check_choice, check_int, check_random_state,
                   check_real, require_rows)
from .checks import InputError
from .linear import _predict_rows
from .logistic import _classes

CLASS_LOSSES = ("hinge", "log_loss", "modified_huber", "squared_hinge", "perceptron")
REG_LOSSES = ("squared_error", "huber", "epsilon_insensitive", "squared_epsilon_insensitive")
PENALTIES = ("l2", "l1", "elasticnet", None)
SCHEDULES = ("constant", "optimal", "invscaling", "adaptive")
OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")
MODES = ("sync", "local")


def dloss(loss, z, y, epsilon):
    """(loss per row, dL/dz per row) for margins/predictions z and targets y (+-1 for
    classification)."""
    if loss == "hinge":
        m = y * z
        return np.maximum(0, 1 - m), np.where(m < 1, -y, 0.0)
    if loss == "perceptron":
        m = y * z
        return np.maximum(0, -m), np.where(m <= 0, -y, 0.0)
    if loss == "squared_hinge":
        h = np.maximum(0, 1 - y * z)
        return h * h, -2 * y * h
    if loss == "log_loss":
        m = y * z
        return np.logaddexp(0, -m), -y / (1 + np.exp(np.clip(m, -700, 700)))
    if loss == "modified_huber":
        m = y * z
        val = np.where(m >= -1, np.maximum(0, 1 - m) ** 2, -4 * m)
        return val, np.where(m >= 1, 0.0, np.where(m >= -1, -2 * y * (1 - m), -4 * y))
    r = z - y
    if loss == "squared_error":
        return 0.5 * r * r, r
    if loss == "huber":
        a = np.abs(r)
        return (np.where(a <= epsilon, 0.5 * r * r, epsilon * (a - 0.5 * epsilon)),
                np.where(a <= epsilon, r, epsilon * np.sign(r)))
    if loss == "epsilon_insensitive":
        a = np.abs(r)
        return np.maximum(0, a - epsilon), np.where(a > epsilon, np.sign(r), 0.0)
    a = np.maximum(0, np.abs(r) - epsilon)  # squared_epsilon_insensitive
    return a * a, 2 * a * np.sign(r)


class _State:
    """Parameters (d + 1) x K (last row: intercepts), optimizer moments, averages."""

    def __init__(self, d, K):
        self.W = np.zeros((d + 1, K))
        self.m1 = np.zeros_like(self.W)
        self.m2 = np.zeros_like(self.W)
        self.avg = np.zeros_like(self.W)
        self.steps = 0
        self.averaged = 0
        self.eta_scale = 1.0
        self.best = np.inf
        self.stale = 0


class _BaseSGD(Estimator):
    _losses = ()
    #: False: every step through the NumPy `_step` (the reference the kernel is tested
    #: against), also alone
    _use_kernel = True

    def _check_params(self):
        check_choice("loss", self.loss, self._losses)
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty={self.penalty!r}: expected one of 'l2', 'l1', "
                             f"'elasticnet', None")
        check_real("alpha", self.alpha, 0.0)
        check_real("l1_ratio", self.l1_ratio, 0.0)
        if self.l1_ratio > 1:
            raise ValueError(f"l1_ratio must be in [0, 1], got {self.l1_ratio!r}")
        check_int("max_iter", self.max_iter, 1)
        check_real("tol", self.tol, None, allow_none=True)
        check_int("n_iter_no_change", self.n_iter_no_change, 1)
        check_real("epsilon", self.epsilon, 0.0)
        check_choice("learning_rate", self.learning_rate, SCHEDULES)
        check_real("eta0", self.eta0, 0.0, strict=self.learning_rate != "optimal")
        check_real("power_t", self.power_t, None)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_real("momentum", self.momentum, 0.0)
        check_real("beta2", self.beta2, 0.0)
        check_int("batch_size", self.batch_size, 1)
        if not isinstance(self.average, (bool, np.bool_)):
            check_int("average", self.average, 1)
        check_choice("mode", self.mode, MODES)
        check_int("local_steps", self.local_steps, 1)
        check_random_state(self.random_state)
        if self.learning_rate == "optimal" and self.alpha == 0:
            raise ValueError("learning_rate='optimal' needs alpha > 0 (eta = 1 / (alpha (t + "
                             "t0))); choose another schedule or a positive alpha")
        for name in ("fit_intercept", "shuffle"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    # --- fitting -----------------------------------------------------------------------
    def fit(self, X, y, sample_weight=None):
        """Up to max_iter epochs over the rows from a fresh model; returns self."""
        for attr in ("_state", "coef_", "intercept_", "classes_"):
            self.__dict__.pop(attr, None)
        return self._fit(X, y, sample_weight, self.max_iter, classes=None)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over these rows, continuing the model (classifiers: `classes` on the
        first call, scikit-learn's rule); returns self."""
        return self._fit(X, y, sample_weight, 1, classes=classes)

    def _fit(self, X, y, sample_weight, epochs, classes):
        comm = self._comm_for(X)
        self._agree_params(comm)
        rows = Rows(X, comm, 1 << 30, y, sample_weight, need_y=True,
                    labels=self._kind == "classifier")
        d, n = rows.agree(f"checking {type(self).__name__}'s input",
                          getattr(self, "n_features_in_", None), type(self).__name__)
        require_rows(n, d, type(self).__name__)
        rows.check_weights(type(self).__name__)
        Xa, ya, w = rows.gather()
        Y = self._targets(ya, classes, comm)
        st = getattr(self, "_state", None) or _State(d, Y.shape[1])
        self._state, self.n_features_in_ = st, d
        rng = np.random.default_rng([self._seed(comm), st.steps,
                                     comm.Get_rank() if comm is not None else 0])
        eta0 = self._eta0_optimal() if self.learning_rate == "optimal" else self.eta0
        self.n_iter_ = 0
        for _ in range(epochs):
            loss = self._epoch(Xa, Y, w, n, comm, rng, eta0)
            self.n_iter_ += 1
            if self._converged(st, loss, epochs):
                break
        self._publish(st)
        return self

    def _seed(self, comm):
        if self.random_state is not None:
            return int(self.random_state)
        if not hasattr(self, "_drawn_seed"):
            seed = np.array([np.random.SeedSequence().entropy % (1 << 62)], np.int64)
            if comm is not None and comm.Get_size() > 1:
                hc.broadcast(seed, root=0, comm=comm)
            self._drawn_seed = int(seed[0])
        return self._drawn_seed

    def _epoch(self, X, Y, w, n, comm, rng, eta0):
        """One pass: the same number of steps on every rank; returns the mean loss."""
        st = self._state
        steps = max(1, -(-n // self.batch_size))
        order = rng.permutation(len(X)) if self.shuffle else np.arange(len(X))
        bounds = len(X) * np.arange(steps + 1, dtype=np.int64) // steps
        total = np.zeros(2)
        alone = comm is None or comm.Get_size() == 1
        if (alone or self.mode == "local") and self._use_kernel:  # no per-step messages
            every = steps if alone else self.local_steps
            for a in range(0, steps, every):
                total += self._kernel_steps(X, Y, w, order, bounds[a:a + every + 1], eta0)
                if not alone:
                    _average_params(st, comm)
            allreduce_sum(total, comm)
            return total[0] / max(total[1], 1e-300)
        for s in range(steps):
            idx = order[bounds[s]:bounds[s + 1]]
            total += self._step(X[idx], Y[idx], None if w is None else w[idx], comm, eta0)
        return total[0] / max(total[1], 1e-300)

    def _kernel_steps(self, X, Y, w, order, bounds, eta0):
        """Steps bounds[s]:bounds[s + 1] of `order` on this rank alone (kernels/cpu/sgd.py,
        the same arithmetic as _step)."""
        from hpcml.kernels.cpu import sgd as KS
        st = self._state
        l2, l1 = self._penalties()
        state = np.array([st.steps, st.averaged], np.float64)
        start = 1 if self.average is True else (int(self.average) if self.average else 0)
        out = KS.epoch(np.ascontiguousarray(X, np.float64), np.ascontiguousarray(Y),
                       np.empty(0) if w is None else np.ascontiguousarray(w, np.float64),
                       order.astype(np.int64), np.ascontiguousarray(bounds, np.int64), st.W,
                       st.m1, st.m2, st.avg, state, KS.LOSSES.index(self.loss),
                       KS.SCHEDULES.index(self.learning_rate),
                       KS.OPTIMIZERS.index(self.optimizer), l2, l1, float(self.alpha),
                       float(self.epsilon), float(eta0), float(self.power_t),
                       float(st.eta_scale), float(self.momentum), float(self.beta2),
                       bool(self.fit_intercept), start)
        st.steps, st.averaged = int(state[0]), int(state[1])
        return np.array(out)

    def _step(self, xb, yb, wb, comm, eta0):
        st = self._state
        d = xb.shape[1]
        z = xb @ st.W[:d] + st.W[d]
        lval, g = dloss(self.loss, z, yb, self.epsilon)
        if wb is not None:
            lval, g = lval * wb[:, None], g * wb[:, None]
        buf = np.empty(st.W.size + 2)
        buf[:d * st.W.shape[1]] = (xb.T @ g).ravel()
        buf[d * st.W.shape[1]:st.W.size] = g.sum(axis=0) if self.fit_intercept else 0.0
        buf[-2] = lval.sum()
        buf[-1] = len(xb) if wb is None else wb.sum()
        if self.mode == "sync":
            allreduce_sum(buf, comm)
        B = max(buf[-1], 1e-300)
        grad = buf[:st.W.size].reshape(st.W.shape) / B
        st.steps += 1
        eta = self._eta(st, eta0)
        l2, l1 = self._penalties()
        grad[:d] += l2 * st.W[:d]
        _apply(self, st, grad, eta)
        if l1:
            st.W[:d] = np.sign(st.W[:d]) * np.maximum(np.abs(st.W[:d]) - eta * l1, 0.0)
        self._accumulate_average(st)
        return buf[-2:].copy()

    def _penalties(self):
        a = self.alpha
        if self.penalty == "l2":
            return a, 0.0
        if self.penalty == "l1":
            return 0.0, a
        if self.penalty == "elasticnet":
            return a * (1 - self.l1_ratio), a * self.l1_ratio
        return 0.0, 0.0

    def _eta(self, st, eta0):
        t = st.steps
        if self.learning_rate == "optimal":
            return 1.0 / (self.alpha * (t + 1.0 / (eta0 * self.alpha)))
        if self.learning_rate == "invscaling":
            return self.eta0 / t ** self.power_t
        return self.eta0 * st.eta_scale

    def _eta0_optimal(self):
        """Bottou's heuristic (scikit-learn's): the initial rate for a typical weight."""
        typw = np.sqrt(1.0 / np.sqrt(self.alpha))
        one = np.array([[1.0]])
        d = abs(float(dloss(self.loss, -typw * one, one, self.epsilon)[1][0, 0]))
        return typw / max(1.0, d)

    def _accumulate_average(self, st):
        start = 1 if self.average is True else (int(self.average) if self.average else 0)
        if start and st.steps >= start:
            st.averaged += 1
            st.avg += (st.W - st.avg) / st.averaged

    def _converged(self, st, loss, epochs):
        if self.tol is None or epochs == 1:
            return False
        if loss > st.best - self.tol:
            st.stale += 1
        else:
            st.stale = 0
        st.best = min(st.best, loss)
        if st.stale < self.n_iter_no_change:
            return False
        if self.learning_rate == "adaptive" and self.eta0 * st.eta_scale > 1e-6:
            st.eta_scale /= 5
            st.stale = 0
            return False
        return True

    def _publish(self, st):
        W = st.avg if (self.average and st.averaged) else st.W
        d = W.shape[0] - 1
        self.coef_ = W[:d].T.copy()
        self.intercept_ = W[d].copy()
        self.t_ = float(st.steps)

    def _decision(self, X):
        self._fitted("coef_")
        Xa = _predict_rows(X, self.n_features_in_, type(self).__name__)
        return Xa @ self.coef_.T + self.intercept_


def _apply(est, st, grad, eta):
    o = est.optimizer
    if o == "sgd":
        st.W -= eta * grad
    elif o == "momentum":
        st.m1 = est.momentum * st.m1 + grad
        st.W -= eta * st.m1
    elif o == "adagrad":
        st.m2 += grad * grad
        st.W -= eta * grad / (np.sqrt(st.m2) + 1e-8)
    elif o == "rmsprop":
        st.m2 = est.beta2 * st.m2 + (1 - est.beta2) * grad * grad
        st.W -= eta * grad / (np.sqrt(st.m2) + 1e-8)
    else:  # adam
        b1, b2, t = est.momentum, est.beta2, st.steps
        st.m1 = b1 * st.m1 + (1 - b1) * grad
        st.m2 = b2 * st.m2 + (1 - b2) * grad * grad
        st.W -= eta * (st.m1 / (1 - b1 ** t)) / (np.sqrt(st.m2 / (1 - b2 ** t)) + 1e-8)


def _average_params(st, comm):
    """Local SGD: the ranks' mean parameters (and averages) on every rank."""
    if comm is None or comm.Get_size() == 1:
        return
    p = comm.Get_size()
    buf = np.concatenate([st.W.ravel(), st.avg.ravel()])
    allreduce_sum(buf, comm)
    buf /= p
    st.W[:] = buf[:st.W.size].reshape(st.W.shape)
    st.avg[:] = buf[st.W.size:].reshape(st.avg.shape)


class SGDClassifier(_BaseSGD):
    """Linear classifier by SGD (scikit-learn's SGDClassifier; see the module's
    docstring). Attributes: classes_, coef_ (1 x d binary, K x d one-vs-rest),
    intercept_, n_iter_ (epochs of the last call), t_ (steps so far)."""

    _kind = "classifier"
    _losses = CLASS_LOSSES
    _expected_failed_checks = {
        "check_sample_weight_equivalence_on_dense_data":
            "a row weighted 2 and the same row twice fall into different mini-batches and "
            "steps; scikit-learn lists this check as an expected failure of its own SGD "
            "estimators"}

    def __init__(self, loss="hinge", *, penalty="l2", alpha=1e-4, l1_ratio=0.15,
                 fit_intercept=True, max_iter=1000, tol=1e-3, n_iter_no_change=5,
                 shuffle=True, epsilon=0.1, learning_rate="optimal", eta0=0.01, power_t=0.5,
                 optimizer="sgd", momentum=0.9, beta2=0.999, batch_size=1, average=False,
                 mode="sync", local_steps=8, random_state=None, comm=None):
        self._store(locals())

    def _targets(self, y, classes, comm):
        if not hasattr(self, "classes_"):
            if classes is not None:
                self.classes_ = np.unique(np.asarray(classes))
            else:
                self.classes_ = _classes(y, comm)
            if len(self.classes_) < 2:
                raise InputError(f"SGDClassifier needs samples of at least 2 classes; the "
                                 f"data contain {len(self.classes_)} class: "
                                 f"{list(self.classes_)}")
        cls = self.classes_
        idx = np.clip(np.searchsorted(cls, y), 0, len(cls) - 1)
        if len(y) and not np.all(cls[idx] == y):
            raise InputError(f"y has labels outside classes {list(cls)} (pass every class "
                             f"to the first partial_fit)")
        if len(cls) == 2:
            return np.where(idx == 1, 1.0, -1.0)[:, None]
        Y = -np.ones((len(y), len(cls)))
        Y[np.arange(len(y)), idx] = 1.0
        return Y

    def decision_function(self, X):
        z = self._decision(X)
        return z.ravel() if z.shape[1] == 1 else z

    def predict(self, X):
        z = self.decision_function(X)
        return self.classes_[(z > 0).astype(int) if z.ndim == 1 else np.argmax(z, axis=1)]

    @property
    def predict_proba(self):
        """Probabilities for log_loss (one-vs-rest, normalised) and modified_huber; the
        attribute does not exist for the other losses (scikit-learn's rule)."""
        self._check_proba()
        return self._predict_proba

    @property
    def predict_log_proba(self):
        self._check_proba()
        return lambda X: np.log(self._predict_proba(X))

    def _check_proba(self):
        if self.loss not in ("log_loss", "modified_huber"):
            raise AttributeError(f"probability estimates need loss 'log_loss' or "
                                 f"'modified_huber', not {self.loss!r}")

    def _predict_proba(self, X):
        z = self._decision(X)
        p = 1 / (1 + np.exp(-z)) if self.loss == "log_loss" else (np.clip(z, -1, 1) + 1) / 2
        if p.shape[1] == 1:
            return np.column_stack([1 - p[:, 0], p[:, 0]])
        s = p.sum(axis=1, keepdims=True)
        return np.where(s > 0, p / np.where(s > 0, s, 1), 1.0 / p.shape[1])

    def score(self, X, y, sample_weight=None):
        return float(np.average(self.predict(X) == np.asarray(y).ravel(),
                                weights=sample_weight))


class SGDRegressor(_BaseSGD):
    """Linear regression by SGD (scikit-learn's SGDRegressor; see the module's docstring).
    Attributes: coef_ (d,), intercept_ (1,), n_iter_, t_."""

    _kind = "regressor"
    _losses = REG_LOSSES
    _expected_failed_checks = SGDClassifier._expected_failed_checks

    def __init__(self, loss="squared_error", *, penalty="l2", alpha=1e-4, l1_ratio=0.15,
                 fit_intercept=True, max_iter=1000, tol=1e-3, n_iter_no_change=5,
                 shuffle=True, epsilon=0.1, learning_rate="invscaling", eta0=0.01,
                 power_t=0.25, optimizer="sgd", momentum=0.9, beta2=0.999, batch_size=1,
                 average=False, mode="sync", local_steps=8, random_state=None, comm=None):
        self._store(locals())

    def partial_fit(self, X, y, sample_weight=None):
        return self._fit(X, y, sample_weight, 1, classes=None)

    def _targets(self, y, classes, comm):
        return np.asarray(y, np.float64)[:, None]

    def _publish(self, st):
        super()._publish(st)
        self.coef_ = self.coef_.ravel()

    def predict(self, X):
        return self._decision(X).ravel()

    def score(self, X, y, sample_weight=None):
        y = np.asarray(y, np.float64).ravel()
        p = self.predict(X)
        w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, float)
        den = np.sum(w * (y - np.average(y, weights=w)) ** 2)
        return 1.0 if den == 0 else float(1 - np.sum(w * (y - p) ** 2) / den)
