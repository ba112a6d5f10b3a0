"""hpcml.ml's linear models and k-means on P ranks equal one process (issue 20): each rank
fits its own rows (uneven shares; with 3 or more ranks one rank has none), every rank ends
with the same bytes, and the model equals the one-process fit of all rows within float64
rounding (the ranks only change the order of the sums). Bad input on one rank is one
error on every rank. Run under mpiexec (2, 3, 4 ranks) and, through
tests/test_ml.py, on the in-process communicator."""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from hpcml.ml import KMeans, LinearRegression, LogisticRegression, Ridge  # noqa: E402
from hpcml.ml.checks import InputError  # noqa: E402
from mpi_helpers import all_ranks, same_bytes_everywhere, same_message_everywhere  # noqa: E402


def shares(comm, n):
    """Uneven row ranges: rank r gets a share proportional to r + 1, rank 1 none when
    there are 3 or more ranks."""
    p, r = comm.Get_size(), comm.Get_rank()
    weights = np.arange(1, p + 1, dtype=float)
    if p >= 3:
        weights[1] = 0
    ends = np.concatenate([[0], np.round(np.cumsum(weights) / weights.sum() * n)]).astype(int)
    return slice(ends[r], ends[r + 1])


def regression_data(n=3000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = 1e5 + 1e-3 * rng.standard_normal((n, d))  # a large mean over a tiny spread
    y = (X - 1e5) @ rng.standard_normal(d) * 1e3 + 0.01 * rng.standard_normal(n) + 7
    return X, y, rng.random(n)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("solver", ["normal", "qr"])
def test_least_squares_on_p_ranks_equal_one_process(comm, solver):
    X, y, w = regression_data()
    s = shares(comm, len(X))
    for make in (lambda c: LinearRegression(solver=solver, comm=c),
                 lambda c: Ridge(0.3, solver=solver, comm=c)):
        for weights in (None, w):
            par = make(comm).fit(X[s], y[s], None if weights is None else weights[s])
            one = make(None).fit(X, y, weights)
            all_ranks(comm, same_bytes_everywhere(comm, np.r_[par.coef_, par.intercept_]),
                      "coefficients differ across ranks")
            # measured: at most 3e-12 (normal) and 2e-14 (qr) relative
            all_ranks(comm, rel(par.coef_, one.coef_) < 1e-10, f"{solver}: coef differs")
            all_ranks(comm, abs(par.intercept_ - one.intercept_) < 1e-8 * abs(one.intercept_),
                      "intercept differs")


@pytest.mark.parametrize("classes", [2, 4])
def test_logistic_on_p_ranks_equals_one_process(comm, classes):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 5))
    y = np.argmax(X @ rng.standard_normal((5, classes)) + rng.gumbel(size=(2000, classes)), 1)
    labels = np.array(["cat", "dog", "eel", "fox"])[y]  # string labels, as users have
    s = shares(comm, len(X))
    for solver in ("lbfgs", "newton"):
        par = LogisticRegression(C=0.7, solver=solver, tol=1e-10, comm=comm).fit(X[s], labels[s])
        one = LogisticRegression(C=0.7, solver=solver, tol=1e-10).fit(X, labels)
        both = np.column_stack([par.coef_, par.intercept_])
        all_ranks(comm, same_bytes_everywhere(comm, both), "model differs across ranks")
        all_ranks(comm, list(par.classes_) == list(one.classes_), "classes differ")
        all_ranks(comm, rel(both, np.column_stack([one.coef_, one.intercept_])) < 1e-7,
                  f"{solver}: model differs from one process")


def test_kmeans_on_p_ranks_equals_one_process(comm):
    rng = np.random.default_rng(2)
    centers = 20 * np.eye(5, 4)  # well apart: every start should find them
    X = centers[rng.integers(0, 5, 3000)] + rng.standard_normal((3000, 4))
    w = rng.random(3000)
    s = shares(comm, len(X))
    init = X[:5] + 0.5  # the same start on every rank and in the one-process fit
    par = KMeans(5, init=init, comm=comm).fit(X[s], sample_weight=w[s])
    one = KMeans(5, init=init).fit(X, sample_weight=w)
    all_ranks(comm, same_bytes_everywhere(comm, par.cluster_centers_), "centres differ")
    all_ranks(comm, rel(par.cluster_centers_, one.cluster_centers_) < 1e-12, "centres")
    all_ranks(comm, abs(par.inertia_ - one.inertia_) < 1e-10 * one.inertia_, "inertia")
    all_ranks(comm, par.n_iter_ == one.n_iter_, "iterations differ")
    all_ranks(comm, np.array_equal(par.labels_, one.labels_[s]), "labels differ")
    best = KMeans(5, init=centers).fit(X).inertia_  # from the true centres
    for init in ("k-means||", "k-means++", "random"):  # every rank draws the same start,
        # and the one process draws it too (k-means||: row i's draw is draw i of one
        # counter-based stream, whatever the ranks)
        km = KMeans(5, init=init, random_state=3, comm=comm).fit(X[s])
        alone = KMeans(5, init=init, random_state=3).fit(X)
        all_ranks(comm, same_bytes_everywhere(comm, km.cluster_centers_), init)
        all_ranks(comm, rel(km.cluster_centers_, alone.cluster_centers_) < 1e-12,
                  f"{init}: the centres depend on the rank count")
        all_ranks(comm, km.inertia_ <= best * (1 + 1e-9), f"{init}: {km.inertia_} > {best}")
    # several initialisations: the generator every rank shares stays in step (rank 0's
    # k-means++ reduction draws from a generator of its own)
    km = KMeans(5, init="k-means++", n_init=3, random_state=3, comm=comm).fit(X[s])
    alone = KMeans(5, init="k-means++", n_init=3, random_state=3).fit(X)
    all_ranks(comm, rel(km.cluster_centers_, alone.cluster_centers_) < 1e-12, "n_init=3")


@pytest.mark.parametrize("case", ["nan", "features", "singular", "k"])
def test_bad_input_on_one_rank_is_one_error_everywhere(comm, case):
    if case == "features" and comm.Get_size() == 1:
        pytest.skip("needs 2 ranks to disagree")
    X, y, _ = regression_data(600, 3)
    s = shares(comm, len(X))
    Xr, yr = X[s].copy(), y[s]
    last = comm.Get_rank() == comm.Get_size() - 1
    if case == "nan" and last:
        Xr[len(Xr) // 2, 1] = np.nan
    if case == "features" and last:
        Xr = Xr[:, :2]
    if case == "singular":
        Xr = np.column_stack([Xr, Xr[:, 0]])  # a repeated column
    est = KMeans(601, comm=comm) if case == "k" else LinearRegression(comm=comm)
    with pytest.raises(InputError) as info:
        est.fit(Xr) if case == "k" else est.fit(Xr, yr)
    same_message_everywhere(comm, info.value)
    expected = {"nan": "NaN or Inf", "features": "features on this rank",
                "singular": "Ridge(alpha > 0)", "k": "n_samples=600 should be >= n_clusters"}
    all_ranks(comm, expected[case] in str(info.value), str(info.value))


def test_sgd_sync_on_p_ranks_equals_one_process(comm):
    """Synchronous mini-batch SGD: with the rows dealt equally (1,200 rows, 10 steps of 120
    per epoch: every rank's share of a step is whole) P ranks take the same global steps as
    one process given the rows in step order (rank 0's share, rank 1's, ...); Adam,
    elastic net, averaging. Local SGD averaging after every step of plain SGD at a constant
    rate is the same computation (equal shares)."""
    from hpcml.ml import SGDClassifier
    p, r = comm.Get_size(), comm.Get_rank()
    rng = np.random.default_rng(5)
    X = rng.standard_normal((1200, 4))
    y = np.array(["a", "b", "c"])[np.argmax(X @ rng.standard_normal((4, 3)), axis=1)]
    n, steps = 1200 // p, 10
    mine = slice(r * n, (r + 1) * n)
    order = [q * n + np.arange(n * s // steps, n * (s + 1) // steps)
             for s in range(steps) for q in range(p)]
    serial = np.concatenate(order)
    kw = dict(loss="log_loss", optimizer="adam", learning_rate="constant", eta0=0.01,
              penalty="elasticnet", average=True, batch_size=120, max_iter=2, tol=None,
              shuffle=False)
    par = SGDClassifier(**kw, comm=comm).fit(X[mine], y[mine])
    one = SGDClassifier(**kw).fit(X[serial], y[serial])
    all_ranks(comm, same_bytes_everywhere(comm, par.coef_), "coef differs across ranks")
    all_ranks(comm, rel(par.coef_, one.coef_) < 1e-10, "sync SGD differs from one process")
    plain = dict(kw, optimizer="sgd", average=False, penalty="l2")
    sync = SGDClassifier(**plain, comm=comm).fit(X[mine], y[mine])
    local = SGDClassifier(**plain, mode="local", local_steps=1, comm=comm).fit(X[mine], y[mine])
    all_ranks(comm, rel(local.coef_, sync.coef_) < 1e-10, "local SGD (k=1) differs from sync")
    far = SGDClassifier(**plain, mode="local", local_steps=4, comm=comm).fit(X[mine], y[mine])
    all_ranks(comm, same_bytes_everywhere(comm, far.coef_), "local SGD ends apart")


def test_models_fit_a_sharded_dataset_as_its_rows(comm):
    """A dataset (the built-in digits, each rank reading its share through the loader)
    gives the model of the same rows passed as an array to one process."""
    from hpcml.data import ShardedDataset
    ds = ShardedDataset("digits", comm)
    X, y = (np.concatenate(p) for p in zip(*ShardedDataset("digits").loader(
        4096, shuffle=False)))
    par = Ridge(1.0, comm=comm).fit(ds)
    one = Ridge(1.0).fit(X.astype(np.float64), y.astype(np.float64))
    all_ranks(comm, rel(par.coef_, one.coef_) < 1e-10, "ridge on a dataset")
    init = X[:10].astype(np.float64)
    km = KMeans(10, init=init, comm=comm).fit(ds)
    alone = KMeans(10, init=init).fit(X)
    all_ranks(comm, abs(km.inertia_ - alone.inertia_) < 1e-9 * alone.inertia_,
              "k-means on a dataset")


def test_minibatch_kmeans_on_p_ranks_equals_one_process(comm):
    """The batches are drawn from one global permutation per epoch: P ranks take the
    steps one process takes, to rounding (the batch sums are added in another order)."""
    from hpcml.ml import MiniBatchKMeans
    rng = np.random.default_rng(4)
    X = 20 * np.eye(6, 5)[rng.integers(0, 6, 4000)] + rng.standard_normal((4000, 5))
    s = shares(comm, len(X))
    par = MiniBatchKMeans(6, batch_size=256, random_state=2, comm=comm).fit(X[s])
    one = MiniBatchKMeans(6, batch_size=256, random_state=2).fit(X)
    all_ranks(comm, same_bytes_everywhere(comm, par.cluster_centers_), "centres differ")
    all_ranks(comm, rel(par.cluster_centers_, one.cluster_centers_) < 1e-10,
              "mini-batch k-means differs from one process")
    all_ranks(comm, par.n_steps_ == one.n_steps_, "steps differ")
