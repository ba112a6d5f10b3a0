"""Input and parameter checks shared by the hpcml.ml estimators: the same error on every
rank (InputError), kernel backends checked before any kernel runs, host arrays."""
import numpy as np

from hpcml.comm.guard import CollectiveError, agree as _guard_agree


class InputError(ValueError, CollectiveError):
    """Bad input or parameters: the same message is raised on every rank."""


class NotFittedError(ValueError, AttributeError):
    """transform/inverse_transform before fit (scikit-learn's exception's bases)."""


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


def host_rows(X):
    """(2-D float array, None) or (None, error message) for an array-like X."""
    if hasattr(X, "__cuda_array_interface__") or hasattr(X, "copy_to_host"):
        return None, "X must be a host array (NumPy), not a device array"
    try:
        a = np.asarray(X)
    except (TypeError, ValueError) as e:
        return None, f"X is not an array ({e})"
    if a.dtype.kind not in "fiub":
        return None, f"X must be real numbers, got dtype {a.dtype}"
    if a.ndim != 2:
        return None, f"X must be 2-D (rows x features), got shape {a.shape}"
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a, None
