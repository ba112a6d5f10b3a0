"""What every hpcml.ml estimator shares: scikit-learn's parameter protocol (get_params,
set_params, repr, the `__sklearn_tags__` protocol), the communicator, parameters agreed
across ranks, this rank's rows (an array, or a sharded dataset split by the loader), and
input errors raised as the same InputError on every rank.

scikit-learn is never imported at run time: `__sklearn_tags__` is only called by
scikit-learn itself (its `get_tags`, `check_estimator`), so importing its tag classes
there costs nothing to a program that does not use it.
"""
import inspect
import numbers
import os

import numpy as np

from hpcml import comm as hc
from hpcml.comm.guard import same_everywhere
from hpcml.data import DataError, ShardedDataset

import warnings

from .checks import InputError, agree, conversion_warning, host_rows, not_fitted


class Estimator:
    """Base of the hpcml.ml estimators. Subclasses set `_kind` ("classifier",
    "regressor", "clusterer", "transformer" or None), `_tags` (overrides of scikit-learn's
    tag fields, as {"input_tags.allow_nan": True, ...}) and `_expected_failed_checks` (a
    dict check name -> why it cannot apply, for scikit-learn's check_estimator), and
    implement `_check_params()` (raise ValueError; the same on every rank)."""

    _kind = None
    _tags = {}
    _expected_failed_checks = {
        "check_dtype_object": "input that does not convert to float (an object array "
                              "holding a dict) is refused with hpcml's InputError, a "
                              "ValueError raised alike on every rank, where the check "
                              "wants a TypeError"}
    #: parameters allowed to differ across ranks (they shape no result)
    _local_params = ("comm", "backend", "verbose")

    # --- scikit-learn's parameter protocol ----------------------------------------------
    @classmethod
    def _param_names(cls):
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep=True):
        return {name: getattr(self, name) for name in self._param_names()}

    def _store(self, values):
        """A subclass's __init__ arguments (its locals()) as attributes, stored as given
        and checked at fit (scikit-learn's rule)."""
        for name in self._param_names():
            setattr(self, name, values[name])

    def set_params(self, **params):
        for name, value in params.items():
            if name not in self._param_names():
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; "
                                 f"valid: {', '.join(self._param_names())}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = inspect.signature(type(self).__init__).parameters
        changed = {}
        for k, v in self.get_params().items():
            d = defaults[k].default
            if isinstance(v, np.ndarray) or isinstance(d, np.ndarray):
                if not (isinstance(v, np.ndarray) and isinstance(d, np.ndarray)
                        and np.array_equal(v, d)):
                    changed[k] = v
            elif not (v is d or (type(v) is type(d) and v == d)):
                changed[k] = v
        return f"{type(self).__name__}(" + ", ".join(
            f"{k}={'array(...)' if isinstance(v, np.ndarray) else repr(v)}"
            for k, v in changed.items()) + ")"

    def __sklearn_tags__(self):
        """scikit-learn's Tags for this estimator (called by scikit-learn only)."""
        from sklearn.utils import (ClassifierTags, InputTags, RegressorTags, Tags,
                                   TargetTags, TransformerTags)
        kind = self._kind
        tags = Tags(estimator_type=kind if kind != "clusterer" else "clusterer",
                    target_tags=TargetTags(required=kind in ("classifier", "regressor")),
                    transformer_tags=TransformerTags(preserves_dtype=["float64", "float32"])
                    if hasattr(self, "transform") else None,
                    classifier_tags=ClassifierTags() if kind == "classifier" else None,
                    regressor_tags=RegressorTags() if kind == "regressor" else None,
                    input_tags=InputTags())
        for path, value in self._tags.items():
            obj = tags
            *parents, last = path.split(".")
            for p in parents:
                obj = getattr(obj, p)
            setattr(obj, last, value)
        return tags

    @classmethod
    def expected_failed_checks(cls):
        """{scikit-learn check name: why it cannot apply to this estimator}: pass it as
        check_estimator(est, expected_failed_checks=est.expected_failed_checks())."""
        out = {}
        for klass in reversed(cls.__mro__):
            out.update(klass.__dict__.get("_expected_failed_checks", {}))
        return out

    # --- parameters, agreed across ranks ------------------------------------------------
    def _check_params(self):
        """Raise ValueError for a bad parameter (depends on the parameters only)."""

    def _agree_params(self, comm):
        """Parameter errors as the same InputError on every rank, and a check that every
        rank holds the same parameters (collective)."""
        error = None
        try:
            self._check_params()
        except ValueError as e:
            error = str(e)
        if comm is not None and comm.Get_size() > 1:
            same = same_everywhere(comm, {k: v for k, v in self.get_params().items()
                                          if k not in self._local_params})
            if error is None and not same:
                error = (f"{type(self).__name__}'s parameters differ across ranks: every rank "
                         f"must pass the same ones (this rank: {self!r})")
        agree(comm, error, f"checking {type(self).__name__}'s parameters")

    def _comm_for(self, X):
        comm = getattr(self, "comm", None)
        if isinstance(X, ShardedDataset) and X.comm is not None:
            if comm is None:
                return X.comm
            if comm.Get_size() != X.comm.Get_size():
                raise ValueError(f"the dataset was opened on {X.comm.Get_size()} ranks, "
                                 f"{type(self).__name__}'s comm has {comm.Get_size()}")
        return comm

    def _fitted(self, *names):
        for n in names:
            if not hasattr(self, n):
                raise not_fitted(f"This {type(self).__name__} instance is not fitted yet: "
                                 f"call 'fit' with appropriate arguments first")


def check_int(name, v, low=None, allow_none=False):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (
            low is not None and v < low):
        raise ValueError(f"{name} must be an int" + (f" >= {low}" if low is not None else "")
                         + f", got {v!r}")


def check_real(name, v, low=None, strict=False, allow_none=False):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or (
            low is not None and (v <= low if strict else v < low)):
        bound = "" if low is None else (f" > {low}" if strict else f" >= {low}")
        raise ValueError(f"{name} must be a finite number{bound}, got {v!r}")


def check_choice(name, v, choices):
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name}={v!r}: expected one of {', '.join(map(repr, choices))}")


def check_random_state(v):
    if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral)
                          or v < 0):
        raise ValueError(f"random_state must be an int >= 0 or None, got {v!r}")


class Rows:
    """This rank's rows of an array (with y and sample weights, when given) or of a
    sharded dataset (its labels as y), and the checks every rank agrees on."""

    def __init__(self, X, comm, batch_size=65536, y=None, sample_weight=None,
                 need_y=False, name="X", labels=False, check_finite=True):
        """check_finite=False: no pass looking for NaN/Inf (an estimator that finds them
        in its own sums, as PCA does)."""
        self.comm, self.batch_size, self.name = comm, batch_size, name
        self.labels, self.check_finite = labels, check_finite
        self.array = self.ds = self.error = self.y = self.w = None
        if isinstance(X, (str, bytes)) or hasattr(X, "__fspath__"):
            X = ShardedDataset(os.fsdecode(X), comm)  # collective: errors agreed there
        if isinstance(X, ShardedDataset):
            self.ds = X
            self.features, self.total, self.rows = X.features, X.rows, None
            if sample_weight is not None:
                self.error = "sample_weight is for arrays; a dataset's rows weigh 1"
            return
        self.array, self.error = host_rows(X)
        self.features = self.array.shape[1] if self.array is not None else -1
        self.rows = len(self.array) if self.array is not None else 0
        self.total = None
        if self.error is None:
            self.error = self._targets(y, sample_weight, need_y)
        if self.error is None and check_finite:
            self.error = _nonfinite(self.array, name)

    def _targets(self, y, sample_weight, need_y):
        if y is None and need_y:
            return ("this estimator requires y to be passed, but the target y is None "
                    "(it is supervised)")
        if y is not None:
            y = np.asarray(y)
            if y.ndim == 2 and y.shape[1] == 1:
                warnings.warn("A column-vector y was passed when a 1d array was expected. "
                              "Please change the shape of y to (n_samples,), for example "
                              "using ravel().", conversion_warning(), stacklevel=4)
                y = y.ravel()
            if y.ndim != 1:
                return f"y must be 1-D, got shape {y.shape}"
            if len(y) != self.rows:
                return f"X has {self.rows} rows but y has {len(y)}"
            if y.dtype.kind in "fc" and not np.isfinite(y).all():
                return f"y has a NaN or Inf value (row {int(np.argmin(np.isfinite(y)))})"
            if self.labels and y.dtype.kind in "fc" and np.any(y != np.round(y)):
                return ("Unknown label type: continuous. y holds non-integer numbers; a "
                        "classifier expects discrete classes (integers or strings), not a "
                        "regression target")
            self.y = y
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float64)
            if w.ndim == 0:
                w = np.full(self.rows, float(w))
            if w.shape != (self.rows,):
                return f"sample_weight has shape {w.shape}, expected ({self.rows},)"
            if not np.isfinite(w).all() or (w < 0).any():
                return "sample_weight must be finite and >= 0"
            self.w = w
        return None

    def check_weights(self, what):
        """Collective: the sample weights must not all be zero over the ranks (a dataset's
        rows weigh 1: nothing to check)."""
        if self.ds is not None or (self.w is None and not (
                self.comm is not None and self.comm.Get_size() > 1)):
            return
        total = np.array([float(self.w.sum()) if self.w is not None else float(self.rows)])
        allreduce_sum(total, self.comm)
        if total[0] <= 0:
            raise InputError(f"{what}: the sample weights are all zero over all ranks (rows "
                             f"weighted zero count for nothing)")

    def agree(self, what, fitted_features=None, who="estimator"):
        """Collective: agree on bad input and feature counts; returns (features, total
        rows over the ranks)."""
        comm, error, d = self.comm, self.error, self.features
        if comm is not None and self.ds is None:
            ends = np.array([d, -d] if error is None else [-1, -(1 << 62)], np.int64)
            hc.allreduce(ends, "max", comm=comm)
            if error is None and (ends[0] != d or -ends[1] != d):
                error = (f"{self.name} has {d} features on this rank, but between "
                         f"{-ends[1]} and {ends[0]} across ranks")
        if error is None and d < 1:
            error = f"{self.name} has no features (0 columns); at least 1 is required"
        if error is None and fitted_features is not None and d != fitted_features:
            error = (f"{self.name} has {d} features, but {who} is expecting "
                     f"{fitted_features} features as input")
        agree(comm, error, what)
        if self.ds is not None:
            return d, self.total
        n = np.array([self.rows], np.int64)
        if comm is not None:
            hc.allreduce(n, "sum", comm=comm)
        return d, int(n[0])

    def loader(self):
        ds = self.ds
        if ds.comm is None and self.comm is not None:  # split the rows among our ranks
            return ds.loader(self.batch_size, shuffle=False, rank=self.comm.Get_rank(),
                             ranks=self.comm.Get_size())
        return ds.loader(self.batch_size, shuffle=False)

    def chunks(self):
        """(row offset on this rank, float rows, y or None, weights or None) in order."""
        if self.array is not None:
            for a in range(0, max(self.rows, 1), self.batch_size):
                b = min(self.rows, a + self.batch_size)
                yield (a, self.array[a:b], None if self.y is None else self.y[a:b],
                       None if self.w is None else self.w[a:b])
            return
        offset = 0
        for x, y in self.loader():
            if x.dtype not in (np.float32, np.float64):
                x = x.astype(np.float64)
            bad = _nonfinite(x, "the dataset's", offset) if self.check_finite else None
            if bad:
                raise DataError(bad)
            yield offset, x, y, None
            offset += len(x)

    def gather(self):
        """This rank's rows in memory: (X, y or None, w or None)."""
        if self.array is not None:
            return self.array, self.y, self.w
        xs, ys = [], []
        for _, x, y, _ in self.chunks():
            xs.append(x)
            ys.append(y)
        X = np.concatenate(xs) if xs else np.zeros((0, self.features))
        y = np.concatenate(ys) if ys and ys[0] is not None else None
        return X, y, None


def require_rows(n, d, who, minimum=1):
    """InputError (the same on every rank: n and d are global) below `minimum` rows."""
    if n < minimum:
        raise InputError(f"{who}: X has {n} sample(s) (shape=({n}, {d})) while a minimum "
                         f"of {minimum} is required.")


def _nonfinite(x, name, offset=0):
    """A message naming the first row with a NaN or Inf, or None."""
    if x.size == 0 or np.isfinite(x).all():
        return None
    row = int(np.argmax(~np.isfinite(x).all(axis=1)))
    return (f"{name} row {offset + row} (of this rank's rows) has a NaN or Inf value; "
            f"input contains NaN or infinity")


def pass_over(rows, comm, fn, what):
    """fn(offset, x, y, w) over this rank's chunks; errors (bad rows, unreadable shards)
    are agreed on at the end of the pass, so no rank is left waiting (collective)."""
    error = None
    try:
        for chunk in rows.chunks():
            fn(*chunk)
    except (DataError, OSError, InputError) as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - agreed on too: no rank waits
        error = f"{type(e).__name__}: {e}"
    agree(comm, error, what)


def allreduce_sum(buf, comm):
    """Sum a float64 buffer over the ranks in place (nothing without a communicator)."""
    if comm is not None and comm.Get_size() > 1:
        hc.allreduce(buf, "sum", comm=comm)
    return buf


def broadcast(buf, comm):
    if comm is not None and comm.Get_size() > 1:
        hc.broadcast(buf, root=0, comm=comm)
    return buf
