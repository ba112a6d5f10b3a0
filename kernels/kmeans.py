"""k-means kernels: each row's nearest centre (assignment) and the per-cluster sums.

    from hpcml.kernels import kmeans as KK
    labels, dist = KK.assign(X, centers)              # int64[n], float64[n]: squared
    sums, counts = KK.cluster_sums(X, labels, k, w)   # float64 k x d, float64 k

Distances are the direct sum of squared differences, accumulated in float64 for float32
or float64 rows (not |x|^2 - 2 x.c + |c|^2, whose cancellation misassigns rows that sit
far from the origin relative to the clusters' spread); ties go to the lowest centre
index, as in scikit-learn. NaN in a row gives it distance NaN and label 0: callers check
their input first.

Backends (``backend=`` or the process-wide one, hpcml.kernels.set_backend):
* ``numpy``: the reference: (x - c)^2 summed per centre over row chunks, float64.
* ``cpu``: cpu/kmeans.py, one Numba pass over the rows (parallel over row blocks); the
  per-cluster sums likewise, per thread, merged in a fixed order (deterministic).
* ``cuda``: cuda/kmeans.py, a thread per row, the centres in shared memory; host arrays
  are copied to the device and the results back; device arrays stay.
``auto`` sends device arrays to cuda and host arrays to AUTO[kernel].
"""
import numpy as np

AUTO = {"assign": "cpu", "cluster_sums": "cpu", "lloyd_step": "cpu"}
CHUNK = 4096  # rows per chunk of the reference (bounds its temporary to CHUNK x k x d)


def reference_assign(x, centers):
    """(labels int64[n], squared distance float64[n]), the NumPy specification."""
    x = np.asarray(x)
    c = np.asarray(centers, np.float64)
    n = len(x)
    labels, dist = np.zeros(n, np.int64), np.zeros(n, np.float64)
    for a in range(0, n, CHUNK):
        xb = np.asarray(x[a:a + CHUNK], np.float64)
        d2 = ((xb[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
        labels[a:a + CHUNK] = np.argmin(d2, axis=1)
        dist[a:a + CHUNK] = d2[np.arange(len(xb)), labels[a:a + CHUNK]]
    return labels, dist


def reference_cluster_sums(x, labels, k, sample_weight=None):
    """(sums float64 k x d, counts float64 k): sum of the (weighted) rows of each
    cluster and the sum of their weights."""
    x = np.asarray(x, np.float64)
    w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x * w[:, None])
    return sums, np.bincount(labels, weights=w, minlength=k).astype(np.float64)


def _check(x, centers):
    from . import _is_device
    for name, a in (("X", x), ("centers", centers)):
        if len(a.shape) != 2:
            raise ValueError(f"kmeans: {name} must be 2-D, got shape {tuple(a.shape)}")
        if np.dtype(a.dtype) not in (np.float32, np.float64):
            raise TypeError(f"kmeans: {name} must be float32 or float64, got {a.dtype}")
        if not _is_device(a) and not isinstance(a, np.ndarray):
            raise TypeError(f"kmeans: {name} must be an array")
    if x.shape[1] != centers.shape[1]:
        raise ValueError(f"kmeans: X has {x.shape[1]} features, centers {centers.shape[1]}")
    if centers.shape[0] < 1:
        raise ValueError("kmeans: no centres")


def _backend(kernel, backend, *arrays):
    from . import pick
    return pick(kernel, backend, *arrays, table=AUTO)


def assign(x, centers, backend=None):
    """(labels int64[n], squared distance float64[n]) of each row's nearest centre."""
    _check(x, centers)
    be = _backend("assign", backend, x, centers)
    if be == "numpy":
        return reference_assign(x, centers)
    if be == "cuda":
        from .cuda.kmeans import assign as cuda_assign
        return cuda_assign(x, centers)
    from .cpu import kmeans as cpu
    xc = np.ascontiguousarray(x)
    c = np.ascontiguousarray(centers, dtype=np.float64)
    labels, dist = np.empty(len(xc), np.int64), np.empty(len(xc), np.float64)
    cpu.assign(xc, c, labels, dist)
    return labels, dist


def cluster_sums(x, labels, k, sample_weight=None, backend=None):
    """(sums float64 k x d, weights float64 k) of the rows of each of k clusters."""
    be = _backend("cluster_sums", backend, x)
    if be != "cpu":  # numpy, or cuda: the sums are k x d, formed on the host
        if hasattr(x, "copy_to_host"):
            x = x.copy_to_host()
        if hasattr(labels, "copy_to_host"):
            labels = labels.copy_to_host()
        return reference_cluster_sums(x, labels, k, sample_weight)
    from .cpu import kmeans as cpu
    xc = np.ascontiguousarray(x)
    w = np.ones(0) if sample_weight is None else np.ascontiguousarray(sample_weight,
                                                                       np.float64)
    return cpu.cluster_sums(xc, np.ascontiguousarray(labels, np.int64), int(k), w)


def lloyd_step(x, centers, sample_weight=None, backend=None):
    """(labels, squared distances, sums k x d, weights k): an assignment and the
    per-cluster sums of its rows (one fused pass on the cpu backend)."""
    _check(x, centers)
    be = _backend("lloyd_step", backend, x, centers)
    if be != "cpu":
        labels, dist = assign(x, centers, backend=be)
        sums, counts = cluster_sums(x, labels, centers.shape[0], sample_weight, backend=be)
        return labels, dist, sums, counts
    from .cpu import kmeans as cpu
    xc = np.ascontiguousarray(x)
    c = np.ascontiguousarray(centers, dtype=np.float64)
    w = np.empty(0) if sample_weight is None else np.ascontiguousarray(sample_weight,
                                                                       np.float64)
    labels, dist = np.empty(len(xc), np.int64), np.empty(len(xc), np.float64)
    sums, counts = cpu.lloyd_step(xc, c, w, labels, dist)
    return labels, dist, sums, counts
