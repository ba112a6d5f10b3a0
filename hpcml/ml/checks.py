"""Input and parameter checks shared by the hpcml.ml estimators: the same error on every
rank (InputError), kernel backends checked before any kernel runs, host arrays."""
import functools
import sys

import numpy as np

from hpcml.comm.guard import CollectiveError, agree as _guard_agree


class InputError(ValueError, CollectiveError):
    """Bad input or parameters: the same message is raised on every rank."""


class NotFittedError(ValueError, AttributeError):
    """transform/inverse_transform before fit (scikit-learn's exception's bases)."""


class DataConversionWarning(UserWarning):
    """Input converted to what the estimator expects (scikit-learn's warning's name)."""


@functools.lru_cache(maxsize=None)
def _with_sklearn(ours, name):
    """`ours`, also a subclass of scikit-learn's class of the same role when scikit-learn
    is already loaded in this process (its checks test isinstance); never imports it."""
    sk = sys.modules.get("sklearn.exceptions")
    theirs = getattr(sk, name, None) if sk is not None else None
    if theirs is None:
        return ours
    return type(ours.__name__, (ours, theirs), {"__module__": ours.__module__})


def conversion_warning():
    """The warning class for converted input (scikit-learn's, when it is loaded)."""
    return _with_sklearn(DataConversionWarning, "DataConversionWarning")


def not_fitted(message):
    """The exception to raise for a method called before fit."""
    return _with_sklearn(NotFittedError, "NotFittedError")(message)


def agree(comm, error, what):
    """Raise the same InputError on every rank if any rank has an error (collective)."""
    if comm is None:
        if error:
            raise InputError(error)
        return
    try:
        _guard_agree(comm, error, what=what)
    except CollectiveError as e:
        raise InputError(str(e)) from None


def check_backend(backend):
    """ValueError for a kernel backend that is unknown or, for cuda (named, or the
    process-wide one), unusable on this rank; checked with the parameters, so the ranks
    agree on it before any kernel runs."""
    from hpcml import kernels as K
    b = backend if backend is not None else K.get_backend()
    if b not in K.BACKENDS:
        raise ValueError(f"backend={b!r}: expected one of {', '.join(K.BACKENDS)}")
    if b == "cuda":
        try:
            K._require_cuda()
        except RuntimeError as e:
            raise ValueError(str(e)) from None


def host_rows(X, name="X"):
    """(2-D float array, None) or (None, error message) for an array-like X."""
    if hasattr(X, "__cuda_array_interface__") or hasattr(X, "copy_to_host"):
        return None, f"{name} must be a host array (NumPy), not a device array"
    if hasattr(X, "tocsr") or hasattr(X, "toarray"):
        return None, (f"{name} is a sparse matrix: sparse input is not supported; pass a "
                      f"dense array ({name}.toarray())")
    try:
        a = np.asarray(X)
        if a.dtype == object:
            a = a.astype(np.float64)
    except (TypeError, ValueError) as e:
        return None, f"{name} is not an array of numbers ({e})"
    if a.dtype.kind == "c":
        return None, f"Complex data not supported: {name} has dtype {a.dtype}"
    if a.dtype.kind not in "fiub":
        return None, f"{name} must be real numbers, got dtype {a.dtype}"
    if a.ndim != 2:
        return None, (f"{name} must be 2-D (rows x features), got shape {a.shape}. "
                      f"Reshape your data either using array.reshape(-1, 1) if it has a "
                      f"single feature or array.reshape(1, -1) if it is a single sample")
    if a.shape[1] == 0:
        return None, (f"{name} has 0 feature(s) (shape={a.shape}) while a minimum of 1 "
                      f"is required.")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a, None
