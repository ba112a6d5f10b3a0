"""t-SNE: kernels against their NumPy references, the approximations against the exact
sums, affinities and neighbours against scikit-learn, and the embedding's quality against
scikit-learn's TSNE (trustworthiness, KL) on the same data, perplexity and iterations."""
import numpy as np
import pytest

from hpcml.kernels import tsne as KT
from hpcml.ml import TSNE
from hpcml.ml.neighbors import knn

sklearn = pytest.importorskip("sklearn")
from sklearn.manifold import TSNE as SKTSNE, trustworthiness  # noqa: E402


def blobs(n=300, d=10, centers=4, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-8, 8, (centers, d))
    lab = rng.integers(0, centers, n)
    return (c[lab] + rng.normal(size=(n, d))).astype(np.float32), lab


def random_csr(n, r0, r1, k, rng):
    indptr = np.arange(0, (r1 - r0) * k + 1, k, dtype=np.int64)
    return indptr, rng.integers(0, n, (r1 - r0) * k).astype(np.int64), \
        rng.random((r1 - r0) * k) / n


# --- kernels -------------------------------------------------------------------------

def test_perplexity_search_cpu_matches_reference_and_hits_perplexity():
    rng = np.random.default_rng(0)
    d2 = rng.random((200, 31)) * 20
    d2[0] = 0.0  # all neighbours at distance 0: uniform
    got = KT.perplexity_search(d2, 10.0, backend="cpu")
    np.testing.assert_allclose(got, KT.perplexity_search(d2, 10.0, backend="numpy"),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    h = -(got * np.log(np.maximum(got, 1e-300))).sum(axis=1)
    np.testing.assert_allclose(np.exp(h[1:]), 10.0, rtol=1e-4)
    np.testing.assert_allclose(got[0], 1 / 31)  # no spread to calibrate: uniform


@pytest.mark.parametrize("d", [1, 2, 3])
def test_attractive_repulsive_kl_update_cpu_match_reference(d):
    rng = np.random.default_rng(d)
    y = rng.normal(size=(90, d)) * 4
    P = random_csr(90, 10, 70, 6, rng)
    np.testing.assert_allclose(KT.attractive(y, 10, *P, backend="cpu"),
                               KT.reference_attractive(y, 10, *P), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(KT.kl_terms(y, 10, *P, backend="cpu"),
                               KT.reference_kl_terms(y, 10, *P), rtol=1e-12)
    out, z = np.empty((60, d)), np.empty(60)
    KT.repulsive_exact(y, 10, out, z, backend="cpu")
    ref, zref = KT.reference_repulsive_exact(y, 10, 70)
    np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(z, zref, rtol=1e-12)
    g, u = rng.normal(size=(90, d)), rng.normal(size=(90, d))
    gains = rng.random((90, d)) + 0.5
    mine = [a.copy() for a in (y, g, u, gains)]
    n1 = KT.update(y, g, u, gains, 0.8, 200.0, 0.01, backend="cpu")
    n2 = KT.reference_update(*mine, 0.8, 200.0, 0.01)
    for a, b in zip((y, u, gains), (mine[0], mine[2], mine[3])):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    assert n1 == pytest.approx(n2, rel=1e-12)


def test_sq_distances_cpu_and_rows():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(30, 7)), rng.normal(size=(20, 7))
    ref = KT.reference_sq_distances(a, b)
    np.testing.assert_allclose(KT.sq_distances(a, b, backend="cpu"), ref, rtol=1e-10,
                               atol=1e-12)
    idx = rng.integers(0, 20, (30, 4))
    np.testing.assert_allclose(KT.sq_dist_rows(a, b, idx, backend="cpu"),
                               np.take_along_axis(ref, idx, axis=1), rtol=1e-13)


def clustered_embedding(n=1500, seed=0, spread=30):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-spread, spread, (8, 2))
    y = c[rng.integers(0, 8, n)] + rng.normal(size=(n, 2)) * 2
    y[5] = y[4]  # exact duplicates share a leaf
    y[6] = y[4]
    return np.ascontiguousarray(y)


@pytest.mark.parametrize("group", [1, 16])
def test_barnes_hut_close_to_exact_and_exact_at_theta_zero(group):
    y = clustered_embedding()
    n = len(y)
    ex, zex = np.empty((n, 2)), np.empty(n)
    KT.repulsive_exact(y, 0, ex, zex, backend="cpu")
    f, z = np.empty((n - 100, 2)), np.empty(n - 100)
    KT.RepulsionBH(0.5, group).compute(y, 100, n, f, z)  # a rank's rows
    assert np.linalg.norm(f - ex[100:]) / np.linalg.norm(ex[100:]) < 0.03
    assert abs(z.sum() / zex[100:].sum() - 1) < 0.01
    KT.RepulsionBH(0.0, group).compute(y, 100, n, f, z)
    np.testing.assert_allclose(f, ex[100:], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(z, zex[100:], rtol=1e-10)


def test_barnes_hut_rows_do_not_depend_on_the_split():
    y = clustered_embedding(seed=1)
    n = len(y)
    whole, zw = np.empty((n, 2)), np.empty(n)
    bh = KT.RepulsionBH(0.5)
    bh.compute(y, 0, n, whole, zw)
    for r0, r1 in [(0, 500), (500, 1001), (1001, n)]:
        part, zp = np.empty((r1 - r0, 2)), np.empty(r1 - r0)
        bh.compute(y, r0, r1, part, zp)
        assert np.array_equal(part, whole[r0:r1]) and np.array_equal(zp, zw[r0:r1])


def test_fft_interpolation_close_to_exact():
    y = clustered_embedding(spread=15)
    n = len(y)
    ex, zex = np.empty((n, 2)), np.empty(n)
    KT.repulsive_exact(y, 0, ex, zex, backend="cpu")
    for p, ipu, tol in [(3, 1.0, 0.1), (5, 2.0, 2e-3)]:
        f, z = np.empty((n, 2)), np.empty(n)
        KT.RepulsionFFT(p=p, intervals_per_unit=ipu, exact_fallback=False).compute(
            y, 0, n, f, z)
        assert np.linalg.norm(f - ex) / np.linalg.norm(ex) < tol
        assert abs(z.sum() / zex.sum() - 1) < tol / 10


# --- neighbours and affinities --------------------------------------------------------

def test_knn_matches_sklearn():
    from sklearn.neighbors import NearestNeighbors
    X, _ = blobs(700, 12)
    idx, d2 = knn(X[100:400], X, 15, self_offset=100)
    nn = NearestNeighbors(n_neighbors=15).fit(X.astype(np.float64))
    dist, ind = nn.kneighbors(X[100:400].astype(np.float64), 16)
    np.testing.assert_allclose(d2, dist[:, 1:] ** 2, rtol=1e-5, atol=1e-6)
    assert (idx == ind[:, 1:]).mean() > 0.999  # ties in float32 may swap
    assert not (idx == np.arange(100, 400)[:, None]).any()


def test_knn_far_from_the_origin_float32():
    """Centred before BLAS: float32 points around 1000 with spread 0.05 keep their
    neighbours (the raw |q|^2 + |r|^2 - 2 q.r form loses most of them to rounding)."""
    from sklearn.neighbors import NearestNeighbors
    rng = np.random.default_rng(7)
    X = (1000 + 0.05 * rng.standard_normal((300, 8))).astype(np.float32)
    idx, _ = knn(X, X, 31, self_offset=0)
    ind = NearestNeighbors(n_neighbors=32).fit(X.astype(np.float64)).kneighbors(
        X.astype(np.float64), 32)[1][:, 1:]
    assert (np.sort(idx, axis=1) == np.sort(ind, axis=1)).mean() > 0.99


def test_joint_probabilities_match_sklearn():
    from scipy.sparse import csr_matrix
    from sklearn.manifold._t_sne import _joint_probabilities_nn
    from sklearn.neighbors import NearestNeighbors
    X, _ = blobs(400, 8)
    ts = TSNE(perplexity=10)
    ts._counts = [400]
    indptr, indices, pvals = ts._affinities(X, 0, 400, 400)
    ours = csr_matrix((pvals, indices, indptr), shape=(400, 400)).toarray()
    nn = NearestNeighbors(n_neighbors=31).fit(X)
    D = nn.kneighbors_graph(mode="distance")
    D.data **= 2
    ref = _joint_probabilities_nn(D, 10, 0).toarray()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ours, ours.T, rtol=1e-12)
    assert ours.sum() == pytest.approx(1.0, rel=1e-12)


# --- the estimator --------------------------------------------------------------------

@pytest.mark.parametrize("method", ["barnes_hut", "exact"])
def test_quality_matches_sklearn(method):
    from sklearn.datasets import load_digits
    X = load_digits().data[::3].astype(np.float32)  # 599 points
    kw = dict(perplexity=30, max_iter=500, random_state=0)
    ours = TSNE(method=method, **kw)
    E = ours.fit_transform(X)
    # the same P (k = 3 * perplexity neighbours); "exact" is the exact repulsion, which is
    # scikit-learn's Barnes-Hut at angle 0 (its method="exact" uses a dense P)
    sk = SKTSNE(method="barnes_hut", angle=0.5 if method == "barnes_hut" else 0.0, **kw)
    E2 = sk.fit_transform(X)
    t1, t2 = trustworthiness(X, E, n_neighbors=10), trustworthiness(X, E2, n_neighbors=10)
    assert t1 > t2 - 0.005, (t1, t2)
    assert ours.kl_divergence_ < sk.kl_divergence_ * 1.05, (ours.kl_divergence_,
                                                            sk.kl_divergence_)
    assert E.shape == (599, 2) and ours.n_iter_ == 500
    assert ours.learning_rate_ == pytest.approx(max(599 / 12 / 4, 50))


def test_kl_divergence_is_the_exact_kl_of_the_embedding():
    X, _ = blobs(200, 6)
    kw = dict(perplexity=10, method="exact", random_state=0)
    m = TSNE(max_iter=300, **kw).fit(X)
    # as scikit-learn's, the KL reported is that of the embedding before the last step,
    # which is where a run one iteration shorter ends
    y = TSNE(max_iter=299, **kw).fit(X).embedding_
    ts = TSNE(perplexity=10)
    ts._counts = [200]
    indptr, indices, pvals = ts._affinities(X, 0, 200, 200)
    diff = y[:, None] - y[None]
    w = 1 / (1 + (diff ** 2).sum(-1))
    np.fill_diagonal(w, 0)
    q = w / w.sum()
    rows = np.repeat(np.arange(200), np.diff(indptr))
    kl = (pvals * np.log(pvals / q[rows, indices])).sum()
    assert m.kl_divergence_ == pytest.approx(kl, rel=1e-10)


def test_fit_on_builtin_dataset_and_random_init():
    m = TSNE(perplexity=20, max_iter=250, init="random", random_state=1)
    E = m.fit_transform("digits")
    assert E.shape == (m.embedding_.shape[0], 2) and np.isfinite(E).all()
    assert m.labels_ is not None and m.labels_.shape[0] == E.shape[0]


def test_stop_during_exaggeration_still_runs_the_second_stage():
    X, _ = blobs(150, 5)
    m = TSNE(perplexity=10, min_grad_norm=1e3, random_state=0).fit(X)
    # scikit-learn: the first check (iteration 50) stops the exaggerated stage; the second
    # stage then runs from iteration 51 to its own first check (100), which stops it
    assert m.n_iter_ == 100


def test_fft_grid_per_axis():
    rng = np.random.default_rng(0)
    y = np.ascontiguousarray(np.column_stack([1000 + 3 * rng.normal(size=400),
                                              3 * rng.normal(size=400)]))
    ex, z = np.empty_like(y), np.empty(400)
    KT.repulsive_exact(y, 0, ex, z, backend="cpu")
    f, zf = np.empty_like(y), np.empty(400)
    fft = KT.RepulsionFFT(exact_fallback=False)
    fft.compute(y, 0, 400, f, zf)
    assert fft.last_grid[2] < 100  # boxes per axis follow the extent, not the offset
    assert np.linalg.norm(f - ex) / np.linalg.norm(ex) < 0.01


def test_deterministic():
    X, _ = blobs(250, 5)
    a = TSNE(perplexity=10, max_iter=300, random_state=3).fit_transform(X)
    b = TSNE(perplexity=10, max_iter=300, random_state=3).fit_transform(X)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kw, match", [
    (dict(perplexity=500), "perplexity .* must be less than"),
    (dict(method="fft", n_components=3), "embeds in 2 dimensions"),
    (dict(method="nope"), "method must be one of"),
    (dict(init=np.zeros((3, 2))), "init array has shape"),
    (dict(learning_rate=-1), "learning_rate"),
    (dict(angle=2), "angle"),
])
def test_bad_settings(kw, match):
    X, _ = blobs(100, 4)
    with pytest.raises(ValueError, match=match):
        TSNE(**kw).fit(X)


def test_bad_input():
    X, _ = blobs(100, 4)
    X[17, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf in row 17"):
        TSNE().fit(X)
    with pytest.raises(ValueError, match="2-D"):
        TSNE().fit(X[0])


# --- the CLI --------------------------------------------------------------------------

def test_cli_writes_h5_json_png(tmp_path):
    import json
    import h5py
    from hpcml import tsne as cli
    out = tmp_path / "out"
    rc = cli.main(["digits", "--output", str(out), "--max-iter", "260", "--perplexity",
                   "20", "--verbose", "false"])
    assert rc == 0
    with h5py.File(out / "embedding.h5") as f:
        emb, labels = f["embedding"][...], f["labels"][...]
        assert emb.shape == (1438, 2) and labels.shape == (1438,)
        assert json.loads(f.attrs["settings"])["perplexity"] == 20.0
        kl = float(f.attrs["kl_divergence"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 1438 and summary["kl_divergence"] == pytest.approx(kl)
    assert (out / "embedding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["embedding.h5", "embedding.png",
                                                     "summary.json"]  # no temporaries


def test_cli_bad_setting_exits_2(tmp_path):
    import sys
    from procs import run
    r = run([sys.executable, "-m", "hpcml.tsne", "digits", "--perplexity", "-3",
             "--output", str(tmp_path)], limit=50)
    assert r.returncode == 2 and "perplexity = -3.0: must be > 0" in r.stderr
    r = run([sys.executable, "-m", "hpcml.tsne", str(tmp_path / "missing"),
             "--output", str(tmp_path)], limit=50)
    assert r.returncode == 1 and "missing" in r.stderr


def test_constant_data_gets_a_finite_embedding():
    """PCA init of constant data has no spread to scale by: the random init is used."""
    X = np.ones((60, 4))
    for method in ("exact", "barnes_hut", "fft"):
        Y = TSNE(perplexity=5, max_iter=300, method=method, random_state=0).fit_transform(X)
        assert np.isfinite(Y).all(), method


def test_fft_on_a_few_far_apart_points_uses_the_exact_sum():
    """30 points spread over hundreds of units: the FFT grid would have (6 * 600)^2 nodes;
    the exact sum is cheaper and is used instead (decided on the whole embedding)."""
    from hpcml.kernels.tsne import RepulsionFFT, repulsive_exact
    y = np.random.default_rng(0).uniform(-300, 300, (30, 2))
    fft = RepulsionFFT()
    out, z = np.empty((30, 2)), np.empty(30)
    fft.compute(y, 0, 30, out, z)
    assert fft.last_grid is None
    want, zw = np.empty((30, 2)), np.empty(30)
    repulsive_exact(y, 0, want, zw, backend="numpy")
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(z, zw, rtol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rate": float("inf")}, "learning_rate must be 'auto' or a finite number"),
    ({"early_exaggeration": float("nan")}, "early_exaggeration must be a finite number"),
    ({"init": np.vstack([np.zeros((5, 2)), [[np.nan, 0]], np.zeros((24, 2))])},
     "init array row 5 has a NaN or Inf"),
])
def test_bad_numbers_are_refused(kwargs, match):
    X = np.random.default_rng(0).standard_normal((30, 5))
    with pytest.raises(ValueError, match=match):
        TSNE(perplexity=5, max_iter=250, **kwargs).fit(X)


def test_numpy_scalar_learning_rate_is_a_number():
    X = np.random.default_rng(0).standard_normal((30, 5))
    a = TSNE(perplexity=5, max_iter=250, learning_rate=np.float32(100), random_state=0).fit(X)
    b = TSNE(perplexity=5, max_iter=250, learning_rate=100.0, random_state=0).fit(X)
    np.testing.assert_array_equal(a.embedding_, b.embedding_)
