"""hpcml.ml.PCA and its kernels in one process, against scikit-learn's PCA(svd_solver="full")
and two-pass NumPy; the python -m hpcml.pca CLI end to end."""
import json
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA as SkPCA

from hpcml.data import ShardedDataset, synth
from hpcml.kernels import covariance as KC
from hpcml.ml import PCA
from hpcml.ml.pca import InputError, NotFittedError
import procs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NONNULL_DIGITS = 61  # load_digits has 3 constant pixels: the last 3 components are arbitrary


def spectrum_matrix(n, d, seed=0, mean=3.0):
    """Rows with a well-separated spectrum (geometric scales) in a random basis."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    return (rng.standard_normal((n, d)) * np.geomspace(10, 0.1, d)) @ basis + mean


def low_rank_plus_noise(n, d, rank=20, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((n, rank))
    right = rng.standard_normal((rank, d)) * np.geomspace(10, 1, rank)[:, None]
    return left @ right + noise * rng.standard_normal((n, d)) + 1.0


def assert_matches(ours, sk, components=None, ratio_tol=1e-10, comp_tol=1e-8):
    """Ratios to ratio_tol (absolute), components (the first `components`) to comp_tol
    (signs as they come: both follow the largest-entry-positive rule)."""
    r = ours.n_components_ if components is None else components
    assert ours.n_components_ == sk.n_components_
    np.testing.assert_allclose(ours.explained_variance_ratio_, sk.explained_variance_ratio_,
                               rtol=0, atol=ratio_tol)
    np.testing.assert_allclose(ours.components_[:r], sk.components_[:r], rtol=0, atol=comp_tol)
    np.testing.assert_allclose(ours.explained_variance_[:r], sk.explained_variance_[:r],
                               rtol=1e-10)
    np.testing.assert_allclose(ours.singular_values_[:r], sk.singular_values_[:r], rtol=1e-9)
    np.testing.assert_allclose(ours.mean_, sk.mean_, rtol=1e-12, atol=1e-12)
    assert ours.noise_variance_ == pytest.approx(sk.noise_variance_, rel=1e-9, abs=1e-12)
    assert (ours.n_samples_, ours.n_features_in_) == (sk.n_samples_, sk.n_features_in_)


@pytest.fixture(scope="module")
def digits():
    return load_digits().data


@pytest.fixture(scope="module")
def big():
    X = spectrum_matrix(100_000, 64)
    return X, SkPCA(svd_solver="full").fit(X)


# --- accuracy against scikit-learn ------------------------------------------------------

@pytest.mark.parametrize("k", [10, None, 0.9])
def test_digits_matches_sklearn_full(digits, k):
    ours = PCA(k).fit(digits)
    sk = SkPCA(k, svd_solver="full").fit(digits)
    assert_matches(ours, sk, components=min(ours.n_components_, NONNULL_DIGITS))
    assert ours.solver_ == "covariance"


def test_builtin_digits_dataset_matches_sklearn():
    ds = ShardedDataset("digits")
    X = np.concatenate([x for x, _ in ds.loader(4096, shuffle=False)]).astype(np.float64)
    ours = PCA(20, batch_size=500).fit(ds)  # several streamed batches, merged
    assert_matches(ours, SkPCA(20, svd_solver="full").fit(X))
    assert_matches(PCA(20).fit("digits"), SkPCA(20, svd_solver="full").fit(X))


def test_100k_by_64_matches_sklearn_full(big):
    X, sk = big
    assert_matches(PCA().fit(X), sk)


def test_float32_input(big):
    X, _ = big
    X32 = X[:20_000].astype(np.float32)
    ours = PCA(8).fit(X32)
    assert_matches(ours, SkPCA(8, svd_solver="full").fit(X32.astype(np.float64)))
    assert ours.components_.dtype == np.float64
    assert ours.transform(X32).dtype == np.float32


def test_variance_fraction_picks_the_smallest_k(digits):
    for f in (0.5, 0.8, 0.95, 0.999):
        ours = PCA(f).fit(digits)
        sk = SkPCA(f, svd_solver="full").fit(digits)
        assert ours.n_components_ == sk.n_components_
        cum = np.cumsum(ours.explained_variance_ratio_)
        assert cum[-1] >= f and (len(cum) == 1 or cum[-2] < f)


def test_large_mean_tiny_variance_matches_two_pass():
    rng = np.random.default_rng(3)
    d = 8
    X = 1e5 + 1e-3 * (rng.standard_normal((50_000, d)) @ rng.standard_normal((d, d)))
    xc = X - X.mean(axis=0)
    want = xc.T @ xc / (len(X) - 1)  # two-pass float64 reference
    for backend in ("cpu", "numpy"):
        n, mean, M2 = KC.scatter_block(X, backend=backend, block_rows=1000)
        assert np.linalg.norm(M2 / (n - 1) - want) <= 1e-10 * np.linalg.norm(want)
    got = PCA(solver="covariance", batch_size=7000).fit(X).get_covariance()
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)
    naive = (X.T @ X - len(X) * np.outer(X.mean(0), X.mean(0))) / (len(X) - 1)
    assert np.linalg.norm(naive - want) > 1e-2 * np.linalg.norm(want)  # the test has teeth


def test_transform_inverse_and_whiten_match_sklearn(digits):
    for whiten in (False, True):
        ours = PCA(12, whiten=whiten).fit(digits)
        sk = SkPCA(12, whiten=whiten, svd_solver="full").fit(digits)
        Z = ours.transform(digits)
        np.testing.assert_allclose(Z, sk.transform(digits), rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(ours.fit_transform(digits), Z, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.inverse_transform(Z), sk.inverse_transform(Z),
                                   rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(ours.get_covariance(), sk.get_covariance(), rtol=1e-8,
                                   atol=1e-8)
        if whiten:
            np.testing.assert_allclose(Z.std(axis=0, ddof=1), 1.0, rtol=1e-9)


def test_partial_fit_in_pieces_equals_fit(big):
    X, _ = big
    X = X[:30_000]
    whole = PCA(6).fit(X)
    pieces = PCA(6)
    for lo, hi in [(0, 7), (7, 10_000), (10_000, 10_001), (10_001, 30_000)]:
        pieces.partial_fit(X[lo:hi])
    assert pieces.n_samples_ == len(X)
    np.testing.assert_allclose(pieces.mean_, whole.mean_, rtol=1e-13)
    np.testing.assert_allclose(pieces.explained_variance_, whole.explained_variance_,
                               rtol=1e-12)
    np.testing.assert_allclose(pieces.components_, whole.components_, atol=1e-12)
    pieces.fit(X[:100])  # fit starts over
    assert pieces.n_samples_ == 100
    bad = X[:50].copy()
    bad[7, 0] = np.nan
    with pytest.raises(InputError, match="row 7"):
        pieces.partial_fit(bad)  # a failed piece leaves the statistics as they were
    pieces.partial_fit(X[100:200])
    ref = PCA(6).fit(X[:200])
    assert pieces.n_samples_ == 200
    np.testing.assert_allclose(pieces.explained_variance_, ref.explained_variance_,
                               rtol=1e-12)


def test_randomized_on_wide_low_rank_data():
    X = low_rank_plus_noise(500, 1500)
    ours = PCA(10).fit(X)  # auto: 1,500 features, 10 components -> randomized
    assert ours.solver_ == "randomized"
    sk = SkPCA(10, svd_solver="full").fit(X)
    np.testing.assert_allclose(ours.explained_variance_ratio_, sk.explained_variance_ratio_,
                               rtol=1e-6)
    np.testing.assert_allclose(ours.components_, sk.components_, atol=1e-6)
    assert ours.noise_variance_ == pytest.approx(sk.noise_variance_, rel=1e-6)
    np.testing.assert_allclose(ours.transform(X), sk.transform(X), rtol=1e-5, atol=1e-5)
    again = PCA(10, solver="randomized", iterated_power=2, random_state=5).fit(X)
    np.testing.assert_allclose(again.explained_variance_ratio_,
                               sk.explained_variance_ratio_, rtol=1e-3)


def test_randomized_from_a_dataset_equals_from_the_array(tmp_path):
    folder = str(tmp_path / "wide")
    synth(folder, 600, 1100, classes=4, shards=3, seed=2)
    X = np.concatenate([x for x, _ in ShardedDataset(folder).loader(4096, shuffle=False)])
    streamed = PCA(3, batch_size=128).fit(folder)  # 5 batches per pass, 17 passes
    assert streamed.solver_ == "randomized"
    array = PCA(3).fit(X)
    np.testing.assert_allclose(streamed.explained_variance_, array.explained_variance_,
                               rtol=1e-10)
    np.testing.assert_allclose(streamed.components_, array.components_, atol=1e-10)
    sk = SkPCA(3, svd_solver="full").fit(X.astype(np.float64))
    np.testing.assert_allclose(streamed.explained_variance_ratio_,
                               sk.explained_variance_ratio_, rtol=1e-6)


def test_auto_solver_choice():
    assert PCA(3).fit(spectrum_matrix(300, 20)).solver_ == "covariance"
    X = low_rank_plus_noise(200, 1100, rank=5)
    assert PCA(5).fit(X).solver_ == "randomized"
    assert PCA(150).fit(X).solver_ == "covariance"  # many components


def test_sign_rule_and_determinism(digits):
    a = PCA(30).fit(digits)
    rows = np.arange(30)
    top = a.components_[rows, np.argmax(np.abs(a.components_), axis=1)]
    assert (top > 0).all()
    b = PCA(30).fit(digits[::-1].copy())  # another row order: same components
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-10)
    c = PCA(30).fit(digits)
    assert a.components_.tobytes() == c.components_.tobytes()


def test_sklearn_contract(digits):
    from sklearn.base import clone
    p = PCA(5, whiten=True, solver="covariance")
    assert p.get_params()["n_components"] == 5 and p.fit(digits) is p
    q = clone(p)
    assert q.get_params() == p.get_params() and not hasattr(q, "components_")
    assert "whiten=True" in repr(p)
    with pytest.raises(ValueError, match="invalid parameter"):
        p.set_params(nope=1)
    PCA(n_components="bad")  # __init__ stores parameters untouched


@pytest.mark.parametrize("k, whiten", [(10, False), (10, True), (0.9, False), (None, False)])
def test_probabilistic_model_matches_sklearn(digits, k, whiten):
    """get_precision, score_samples, score and get_feature_names_out against scikit-learn
    (digits has 3 constant pixels: with all components kept the covariance is singular)."""
    from sklearn.decomposition import PCA as SkPCA
    X = digits[:, digits.std(axis=0) > 0]
    ours = PCA(k, whiten=whiten).fit(X)
    sk = SkPCA(k, whiten=whiten, svd_solver="full").fit(X)
    P = ours.get_precision()
    np.testing.assert_allclose(P, sk.get_precision(), rtol=1e-7, atol=1e-9 * np.abs(P).max())
    np.testing.assert_allclose(P @ ours.get_covariance(), np.eye(X.shape[1]), atol=1e-6)
    np.testing.assert_allclose(ours.score_samples(X), sk.score_samples(X), rtol=1e-8)
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-9)
    assert list(ours.get_feature_names_out()) == list(sk.get_feature_names_out())


def test_partial_fit_after_a_randomized_fit_is_refused():
    X = low_rank_plus_noise(300, 1200, rank=5)
    p = PCA(5).fit(X)
    assert p.solver_ == "randomized"
    with pytest.raises(InputError, match="randomized solver: that fit kept no covariance"):
        p.partial_fit(X)
    assert p.n_samples_ == 300


def test_overflow_across_pieces_is_an_error_and_keeps_the_state():
    """Each piece's scatter is finite, their merge is not: an error, and the statistics
    of the earlier pieces are kept."""
    big = np.array([[8e153, 0.0], [-8e153, 1.0]])  # scatter 1.28e308: just finite
    good = spectrum_matrix(50, 2)
    p = PCA(1).partial_fit(good).partial_fit(big)
    with pytest.raises(InputError, match="overflows float64"):
        p.partial_fit(big)  # 2.56e308 once merged
    q = PCA(1).fit(np.vstack([good, big]))
    assert p.n_samples_ == 52 and np.isfinite(p.explained_variance_).all()
    np.testing.assert_allclose(p.explained_variance_, q.explained_variance_, rtol=1e-12)
    p.partial_fit(good)  # the model still takes rows
    assert p.n_samples_ == 102


def test_failed_fit_keeps_the_earlier_fits_statistics(digits):
    p = PCA(3).fit(digits[:1000])
    bad = digits[1000:].copy()
    bad[7, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        p.fit(bad)
    p.partial_fit(digits[1000:])
    q = PCA(3).fit(digits)
    np.testing.assert_allclose(p.explained_variance_, q.explained_variance_, rtol=1e-12)


# --- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("X, kwargs, match", [
    (np.ones(5), {}, "must be 2-D"),
    (np.ones((1, 3)), {}, "at least 2 rows"),
    (np.ones((4, 3)), {"n_components": 4}, r"n_components=4 must be <= min\(n_samples"),
    (np.ones((4, 3)), {"n_components": 1.0}, r"a float must be in \(0, 1\)"),
    (np.ones((4, 3)), {"n_components": 0}, "must be >= 1"),
    (np.ones((4, 3)), {"n_components": "x"}, "must be an int, a float"),
    (np.ones((4, 3)), {"solver": "arpack"}, "expected one of auto, covariance, randomized"),
    (np.ones((4, 3)), {"n_components": 0.5, "solver": "randomized"}, "needs an int"),
    (np.ones((4, 3)), {"batch_size": 0}, "batch_size must be an int >= 1"),
    (np.ones((4, 3)), {"random_state": -1}, "random_state must be an int >= 0 or None"),
    (np.ones((4, 3), complex), {}, "Complex data not supported"),
    (np.ones((4, 0)), {}, "0 feature\\(s\\)"),
])
def test_bad_input_is_a_clear_value_error(X, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PCA(**kwargs).fit(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_row_is_named(bad):
    X = spectrum_matrix(5000, 6)
    X[3217, 4] = bad
    with pytest.raises(InputError, match="row 3217 .*NaN or Inf"):
        PCA(2).fit(X)
    with pytest.raises(InputError, match="row 3217 .*NaN or Inf"):
        PCA(2).fit(spectrum_matrix(100, 6)).transform(X)


def test_transform_errors(digits):
    with pytest.raises(NotFittedError, match="not fitted"):
        PCA(2).transform(digits)
    p = PCA(2).fit(digits)
    with pytest.raises(ValueError, match="X has 63 features, but PCA is expecting 64 features"):
        p.transform(digits[:, :63])
    with pytest.raises(ValueError, match="Z has 3 columns, but PCA has 2 components"):
        p.inverse_transform(np.ones((2, 3)))
    with pytest.raises(ValueError, match="partial_fit was called before with 64"):
        PCA(2).partial_fit(digits).partial_fit(digits[:, :10])
    with pytest.raises(ValueError, match="partial_fit accumulates covariance"):
        PCA(2, solver="randomized").partial_fit(digits)


def test_nonfinite_row_in_a_dataset_names_the_file(tmp_path):
    from hpcml.data import write_shard, write_manifest
    x = spectrum_matrix(300, 4).astype(np.float32)
    x[123, 1] = np.nan
    folder = str(tmp_path / "bad")
    os.makedirs(folder)
    entry = write_shard(folder, 0, x, np.zeros(300, np.int64))
    write_manifest(folder, [entry], 4, "float32", "int64", "classification", 1)
    with pytest.raises(InputError, match=r"shard-00000.h5: row 123 \(row 123 of the "
                                         r"dataset, from 0\) has a NaN or Inf"):
        PCA(2).fit(folder)


# --- kernels: reference vs cpu ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d, rows", [(1, 1, 256), (5, 3, 2), (1000, 7, 64),
                                        (70_000, 3, 256), (300, 40, 1000)])
def test_scatter_block_cpu_matches_reference(dtype, n, d, rows):
    x = (spectrum_matrix(n, d, seed=n + d, mean=50.0)).astype(dtype)
    want = KC.reference_scatter(x)
    for got in (KC.scatter_block(x, backend="cpu", block_rows=rows),
                KC.scatter_block(x, backend="cpu", block_rows=rows, threads=3),
                KC.scatter_block(np.asfortranarray(x), backend="cpu", block_rows=rows)):
        assert got[0] == want[0] == n
        np.testing.assert_allclose(got[1], want[1], rtol=1e-13)
        scale = max(np.abs(want[2]).max(), 1e-300)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-10, atol=1e-11 * scale)
        assert np.array_equal(got[2], got[2].T)
    m = KC.moments_block(x, block_rows=rows)
    ref = KC.reference_moments(x)
    np.testing.assert_allclose(m[1], ref[1], rtol=1e-13)
    np.testing.assert_allclose(m[2], ref[2], rtol=1e-10, atol=1e-12 * max(ref[2].max(), 1))


def test_threaded_scatter_restores_blas_threads():
    from hpcml.kernels.threads import openblas
    get = (openblas("get_num_threads") or (None,))[0]
    x = spectrum_matrix(40_000, 8)
    before = get() if get is not None else None
    one = KC.scatter_block(x, block_rows=1000, threads=1)
    three = KC.scatter_block(x, block_rows=1000, threads=3)  # 3 shares of ~13 blocks
    assert KC._workers(3, len(x), 1000) == 3 and KC._workers(3, 5000, 1000) == 1
    np.testing.assert_allclose(three[2], one[2], rtol=1e-12, atol=1e-12 * one[2].max())
    if get is not None:
        assert get() == before


def test_merge_scatter_equals_the_stacked_block():
    x = spectrum_matrix(2000, 5, mean=1e4)
    parts = [KC.scatter_block(x[a:b]) for a, b in [(0, 1), (1, 2), (2, 1500), (1500, 2000)]]
    total = (0, np.zeros(5), np.zeros((5, 5)))
    for p in parts:
        total = KC.merge_scatter(total, p)
    want = KC.reference_scatter(x)
    assert total[0] == 2000
    np.testing.assert_allclose(total[1], want[1], rtol=1e-14)
    np.testing.assert_allclose(total[2], want[2], rtol=1e-10, atol=1e-10 * want[2].max())
    diag = KC.merge_scatter(KC.moments_block(x[:700]), KC.moments_block(x[700:]))
    np.testing.assert_allclose(diag[2], np.diag(want[2]), rtol=1e-10)
    about = KC.scatter_about(KC.scatter_block(x[:700]), want[1]) + \
        KC.scatter_about(KC.scatter_block(x[700:]), want[1])
    np.testing.assert_allclose(about, want[2], rtol=1e-10, atol=1e-10 * want[2].max())


def test_kernel_helpers_and_errors():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(KC.center_rows(x, [1, 2, 3]), x - np.array([1, 2, 3]))
    np.testing.assert_array_equal(KC.center_rows(x, [1, 2, 3], backend="numpy"),
                                  x - np.array([1, 2, 3]))
    assert KC.find_nonfinite(x) == -1
    x[2, 1] = np.inf
    assert KC.find_nonfinite(x) == 2
    n, mean, M2 = KC.scatter_block(x)
    assert n == 4 and not np.isfinite(mean[1])  # NaN/Inf propagate
    assert KC.scatter_block(np.empty((0, 3)))[0] == 0
    with pytest.raises(TypeError, match="float32 or float64"):
        KC.scatter_block(np.ones((3, 2), np.int64))
    with pytest.raises(ValueError, match="rows x features"):
        KC.scatter_block(np.ones(3))
    with pytest.raises(ValueError, match="no CUDA version"):
        KC.moments_block(np.ones((3, 2)), backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        KC.scatter_block(np.ones((3, 2)), backend="gpu")


# --- the CLI ------------------------------------------------------------------------------

def _cli(*args, timeout=60):
    env = dict(os.environ, HPCML_NUM_THREADS="1")
    return procs.run([sys.executable, "-m", "hpcml.pca", *args], cwd=ROOT, env=env,
                     limit=timeout)


def test_cli_end_to_end(tmp_path):
    data = str(tmp_path / "blobs")
    synth(data, 5000, 12, classes=3, shards=3, seed=1)
    out = tmp_path / "out"
    r = _cli(data, "--components", "4", "--output", str(out), "--batch-size", "1000")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    X = np.concatenate([x for x, _ in ShardedDataset(data).loader(4096, shuffle=False)])
    sk = SkPCA(4, svd_solver="full").fit(X.astype(np.float64))
    with h5py.File(out / "pca.h5", "r") as f:
        np.testing.assert_allclose(f["explained_variance_ratio"][()],
                                   sk.explained_variance_ratio_, atol=1e-10)
        np.testing.assert_allclose(f["components"][()], sk.components_, atol=1e-8)
        np.testing.assert_allclose(f["mean"][()], sk.mean_, rtol=1e-12)
        assert f["singular_values"].shape == (4,) and f["explained_variance"].shape == (4,)
        assert json.loads(f.attrs["settings"])["components"] == "4"
        assert f.attrs["n_samples"] == 5000 and f.attrs["solver"] == "covariance"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["explained_variance_ratio"] == summary["explained_variance_ratio"]
    assert on_disk["n_components"] == 4 and on_disk["rows"] == 5000
    assert (out / "explained_variance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    mpiexec = shutil.which("mpiexec")
    if mpiexec:  # the same job on 2 ranks writes the same numbers
        r = procs.run([mpiexec, "-n", "2", sys.executable, "-m", "hpcml.pca", data,
                       "--components", "4", "--output", str(tmp_path / "out2")],
                      cwd=ROOT, limit=60, env=dict(os.environ, HPCML_TIMEOUT="30"))
        assert r.returncode == 0, r.stderr
        two = json.loads((tmp_path / "out2" / "summary.json").read_text())
        assert two["ranks"] == 2
        np.testing.assert_allclose(two["explained_variance_ratio"],
                                   summary["explained_variance_ratio"], rtol=1e-12)


def test_cli_errors(tmp_path):
    r = _cli("digits", "--components", "100", "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "components = 100" in r.stderr and "at most 64" in r.stderr
    r = _cli("digits", "--components", "two")
    assert r.returncode == 2 and "components = 'two'" in r.stderr
    r = _cli(str(tmp_path / "missing"), "--output", str(tmp_path / "o"))
    assert r.returncode == 1 and "missing: not found (no such folder; built-in datasets: digits" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "o")


def test_cli_settings_checked_before_the_run():
    """Bad settings are ConfigErrors (exit 2, one message) before any data is read."""
    from hpcml.config import ConfigError
    from hpcml.pca import parse_args
    with pytest.raises(ConfigError, match="iterated-power = '²': must be 'auto' or an int"):
        parse_args(["--iterated-power", "²"])  # "²".isdigit() is True
    for job in ("hpcml.pca", "hpcml.tsne", "hpcml.train"):  # every job's seed
        import importlib
        with pytest.raises(ConfigError, match="seed = -1: must be >= 0"):
            importlib.import_module(job).parse_args(["--seed", "-1"])
