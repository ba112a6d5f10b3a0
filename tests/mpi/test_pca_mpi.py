"""hpcml.ml.PCA on real ranks: each rank fits its own rows (or its share of a dataset) and
every rank ends with scikit-learn's PCA(svd_solver="full") of all rows (computed on rank 0
and broadcast), byte-identical across ranks; bad input on one rank fails on every rank."""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from hpcml.data import ShardedDataset, synth  # noqa: E402
from hpcml.ml import PCA  # noqa: E402
from hpcml.ml.pca import InputError  # noqa: E402
from mpi_helpers import (all_ranks, from_root, same_bytes_everywhere,  # noqa: E402
                         same_message_everywhere)


def _serial_tests():
    """tests/test_pca.py (its matrix generators), loaded by path: this file has its name."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "serial_test_pca", os.path.join(os.path.dirname(HERE), "test_pca.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


spectrum_matrix = _serial_tests().spectrum_matrix
low_rank_plus_noise = _serial_tests().low_rank_plus_noise

ATTRS = ("explained_variance_ratio_", "components_", "explained_variance_",
         "singular_values_", "mean_", "noise_variance_", "n_components_", "n_samples_")


def mine(comm, X):
    """Rows [r*N//p, (r+1)*N//p) of X for this rank."""
    p, r = comm.Get_size(), comm.Get_rank()
    return X[len(X) * r // p:len(X) * (r + 1) // p]


def bounds(comm, n):
    """[lo, hi) of the rows `mine` gives this rank out of n."""
    p, r = comm.Get_size(), comm.Get_rank()
    return n * r // p, n * (r + 1) // p


def sk_pca(X, **kwargs):
    from sklearn.decomposition import PCA as SkPCA
    return SkPCA(svd_solver="full", **kwargs).fit(np.asarray(X, np.float64))


def oracle(comm, X, **kwargs):
    """scikit-learn's full-SVD PCA of X (or of X() when X is a function) on rank 0, its
    attributes on every rank; a failure on rank 0 raises on every rank."""
    def fit():
        sk = sk_pca(X() if callable(X) else X, **kwargs)
        return {a: getattr(sk, a) for a in ATTRS}
    return from_root(comm, fit)


def check(comm, ours, want, components=None, ratio_tol=1e-10, comp_tol=1e-8):
    """Collective: ours matches want to the acceptance tolerances, with the same bytes on
    every rank."""
    r = ours.n_components_ if components is None else components
    problems = []
    if ours.n_components_ != want["n_components_"] or ours.n_samples_ != want["n_samples_"]:
        problems.append(f"k/n {ours.n_components_}/{ours.n_samples_} vs "
                        f"{want['n_components_']}/{want['n_samples_']}")
    else:
        err = np.abs(ours.explained_variance_ratio_ - want["explained_variance_ratio_"]).max()
        if err > ratio_tol:
            problems.append(f"ratio error {err:.2e}")
        err = np.abs(ours.components_[:r] - want["components_"][:r]).max()
        if err > comp_tol:
            problems.append(f"component error {err:.2e}")
        if not np.allclose(ours.mean_, want["mean_"], rtol=1e-12, atol=1e-12):
            problems.append("mean")
        if not np.isclose(ours.noise_variance_, want["noise_variance_"], rtol=1e-8,
                          atol=1e-12):
            problems.append("noise variance")
    all_ranks(comm, not problems, f"PCA differs from scikit-learn: {problems}")
    for a in ("components_", "explained_variance_", "mean_"):
        all_ranks(comm, same_bytes_everywhere(comm, getattr(ours, a)), f"{a} differs by rank")


@pytest.fixture(scope="module", autouse=True)
def threads_per_rank():
    """cores / ranks on the node for Numba and BLAS, as every hpcml job sets them (the
    ranks share the cores); the previous setting comes back afterwards."""
    import numba
    from hpcml.comm.guard import local_ranks
    from hpcml.kernels import threads
    get = (threads.openblas("get_num_threads") or (None,))[0]
    before = (numba.get_num_threads(), get() if get else None, threads._configured)
    threads.configure(local_ranks())
    yield
    numba.set_num_threads(before[0])
    if before[1] is not None:
        threads._blas_set(before[1])
    threads._configured = before[2]


@pytest.fixture(scope="module")
def big():
    from mpi4py import MPI
    X = spectrum_matrix(100_000, 64)
    return X, oracle(MPI.COMM_WORLD, X)


def test_100k_rows_split_across_ranks(comm, big):
    X, want = big
    ours = PCA(comm=comm).fit(mine(comm, X))
    check(comm, ours, want)


@pytest.mark.parametrize("k", [10, None, 0.9])
def test_digits_split_across_ranks(comm, k):
    from sklearn.datasets import load_digits
    X = load_digits().data
    ours = PCA(k, comm=comm).fit(mine(comm, X))
    check(comm, ours, oracle(comm, X, n_components=k), components=min(ours.n_components_, 61))


def test_builtin_digits_dataset(comm):
    ds = ShardedDataset("digits", comm)
    full = np.concatenate([x for x, _ in ShardedDataset("digits").loader(4096,
                                                                          shuffle=False)])
    want = oracle(comm, full, n_components=20)
    check(comm, PCA(20, comm=comm, batch_size=300).fit(ds), want)
    check(comm, PCA(20, comm=comm).fit("digits"), want)  # opened by PCA, split by the loader
    Z = PCA(20, comm=comm).fit(ds).transform(ds)  # this rank's share of the rows, in order
    # the rows this rank holds, from the loader's partition plan (unshuffled: stream order
    # is dataset order; rank r holds stream rows [r*N//p, (r+1)*N//p))
    first = np.cumsum([0] + ds.shard_rows)
    held = np.concatenate([np.arange(first[s] + a, first[s] + z) for _, s, a, z in
                           ds.loader(300, shuffle=False).share(0)])
    lo, hi = bounds(comm, ds.rows)
    all_ranks(comm, np.array_equal(held, np.arange(lo, hi)), "the plan's rows for this rank")
    ref = from_root(comm, lambda: sk_pca(full, n_components=20).transform(full))
    # Z is float32 (as the dataset): max |Z - ref| measured 0.95e-6 to 1.61e-6 at 2-4 ranks
    # (|ref| <= 35.4, a float32 ulp there is 3.8e-6); 1e-5 is a x6 margin, while a wrong
    # or shifted row is off by ~1 or more
    err = np.abs(Z - ref[held]).max() if Z.shape == (len(held), 20) else np.inf
    all_ranks(comm, err <= 1e-5, f"transform of each rank's rows: max errors by rank "
              f"{[f'{e:.2e}' for e in comm.allgather(err)]}")


def test_synthetic_sharded_dataset(comm, shared_dir):
    folder = os.path.join(shared_dir, "blobs")
    synth(folder, 30_011, 16, classes=5, shards=7, seed=3, comm=comm)
    want = oracle(comm, lambda: np.concatenate(  # all rows, read on rank 0 only
        [x for x, _ in ShardedDataset(folder).loader(8192, shuffle=False)]), n_components=6)
    check(comm, PCA(6, comm=comm, batch_size=2048).fit(folder), want)
    # randomized, streamed: 6 + 10 random directions span all 16 features, so exact
    ours = PCA(6, solver="randomized", comm=comm, batch_size=2048).fit(folder)
    check(comm, ours, want)


def test_transform_of_each_ranks_rows(comm, big):
    X, _ = big
    X = X[:20_000]
    ours = PCA(5, whiten=True, comm=comm).fit(mine(comm, X))
    Z = ours.transform(mine(comm, X))
    ref = from_root(comm, lambda: sk_pca(X, n_components=5, whiten=True).transform(X))
    lo, hi = bounds(comm, len(X))  # every rank checks its own rows
    ok = Z.shape == (hi - lo, 5) and np.allclose(Z, ref[lo:hi], rtol=1e-8, atol=1e-8)
    all_ranks(comm, ok, "transform of this rank's rows differs from scikit-learn")


def test_large_mean_tiny_variance(comm):
    rng = np.random.default_rng(7)
    X = 1e5 + 1e-3 * (rng.standard_normal((30_000, 6)) @ rng.standard_normal((6, 6)))
    xc = X - X.mean(axis=0)
    want = xc.T @ xc / (len(X) - 1)
    got = PCA(comm=comm).fit(mine(comm, X)).get_covariance()
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    all_ranks(comm, err <= 1e-6, f"covariance relative error {err:.2e}")


def test_partial_fit_across_ranks_equals_fit(comm, big):
    X, _ = big
    X = mine(comm, X[:40_000])
    whole = PCA(8, comm=comm).fit(X)
    pieces = PCA(8, comm=comm)
    cut = len(X) // 3
    pieces.partial_fit(X[:cut]).partial_fit(X[cut:])
    ok = np.allclose(pieces.explained_variance_, whole.explained_variance_, rtol=1e-12) and \
        np.allclose(pieces.components_, whole.components_, atol=1e-11) and \
        pieces.n_samples_ == whole.n_samples_ == 40_000
    all_ranks(comm, ok, "partial_fit in pieces differs from fit")


def test_randomized_across_ranks(comm):
    X = low_rank_plus_noise(400, 1200)
    want = oracle(comm, X, n_components=8)
    ours = PCA(8, solver="randomized", comm=comm).fit(mine(comm, X))
    check(comm, ours, want, ratio_tol=1e-6, comp_tol=1e-6)


def test_a_rank_without_rows(comm, big):
    X, _ = big
    X = X[:5000]
    part = X if comm.Get_rank() == 0 else X[:0]
    check(comm, PCA(4, comm=comm).fit(part), oracle(comm, X, n_components=4))
    part = X if comm.Get_rank() == comm.Get_size() - 1 else X[:0]
    ours = PCA(4, solver="randomized", comm=comm).fit(part)
    # this spectrum decays slowly (x0.93 per component): randomized reaches ~1e-5 here
    check(comm, ours, oracle(comm, X, n_components=4), ratio_tol=1e-8, comp_tol=1e-4)


@pytest.mark.parametrize("how,match", [
    ("nan", r"rank 1: X row 5 \(of this rank's rows\) has a NaN or Inf value"),
    ("features", r"X has 5 features on this rank, but between 5 and 6 across ranks"),
    ("1d", "rank 0: X must be 2-D"),
])
def test_bad_input_on_one_rank_fails_everywhere(comm, how, match):
    r = comm.Get_rank()
    X = spectrum_matrix(400, 6, seed=r)
    if how == "nan" and r == 1:
        X[5, 2] = np.nan
    if how == "features" and r == comm.Get_size() - 1:
        X = X[:, :5]
    if how == "1d" and r == 0:
        X = X[:, 0]
    with pytest.raises(InputError, match=match) as info:
        PCA(3, comm=comm).fit(X)
    same_message_everywhere(comm, info.value)


def test_too_many_components_fails_everywhere(comm):
    X = spectrum_matrix(3, 6, seed=comm.Get_rank())
    n = 3 * comm.Get_size()
    with pytest.raises(ValueError, match=rf"n_components=7 must be <= .*= min\({n}, 6\) = 6"):
        PCA(7, comm=comm).fit(X)
    with pytest.raises(ValueError, match="at least 2 rows in total"):
        PCA(1, comm=comm).fit(X[:1] if comm.Get_rank() == 0 else X[:0])


@pytest.mark.parametrize("how, match", [
    ("nan", r"rank 1: X row 7 \(of this rank's rows\) has a NaN or Inf value"),
    ("features", r"X has 3 features, but PCA is expecting 4 features"),
])
def test_transform_error_on_one_rank_fails_everywhere(comm, how, match):
    """transform is collective: one rank's bad rows raise on every rank, and the ranks
    can go on to the next collective (no rank is left waiting)."""
    r = comm.Get_rank()
    p = PCA(2, comm=comm).fit(spectrum_matrix(100, 4, seed=r))
    X = spectrum_matrix(100, 4, seed=10 + r)
    if how == "nan" and r == 1:
        X[7, 1] = np.nan
    if how == "features" and r == 0:
        X = X[:, :3]
    with pytest.raises(InputError, match=match) as info:
        p.transform(X)
    same_message_everywhere(comm, info.value)


def test_parameters_must_agree_across_ranks(comm):
    r = comm.Get_rank()
    X = spectrum_matrix(100, 6, seed=r)
    with pytest.raises(InputError, match="parameters differ across ranks"):
        PCA(2 + r, comm=comm).fit(X)       # each valid, but different
    with pytest.raises(InputError, match=r"rank 1: n_components=0 must be >= 1"):
        PCA(0 if r == 1 else 2, comm=comm).fit(X)  # invalid on one rank only
    PCA(np.int64(2) if r else 2, comm=comm).fit(X)  # the same value, another type: fine


def test_score_is_over_every_ranks_rows(comm, big):
    X, _ = big
    X = X[:6000]
    ours = PCA(5, comm=comm).fit(mine(comm, X))
    mine_ll = ours.score_samples(mine(comm, X))
    total = ours.score(mine(comm, X))

    def reference():
        sk = sk_pca(X, n_components=5)
        return sk.score(X), sk.score_samples(X)
    want_total, want_ll = from_root(comm, reference)
    lo, hi = bounds(comm, len(X))  # every rank checks its own rows' log-likelihoods
    all_ranks(comm, abs(total - want_total) <= 1e-9 * abs(want_total),
              f"score {total} differs from scikit-learn's {want_total}")
    all_ranks(comm, mine_ll.shape == (hi - lo,) and
              np.allclose(mine_ll, want_ll[lo:hi], rtol=1e-8),
              "score_samples of this rank's rows differs from scikit-learn")
    all_ranks(comm, len(set(comm.allgather(total))) == 1, "score differs across ranks")
