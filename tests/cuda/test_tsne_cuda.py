"""t-SNE CUDA kernels against the NumPy references (simulator in CI, GPU when lent)."""
import numpy as np
import pytest

from hpcml.kernels import tsne as KT
from hpcml.kernels.cuda import available, why_unavailable

pytestmark = pytest.mark.skipif(not available(), reason=str(why_unavailable()))


def _csr(n, r0, r1, k, rng):
    indptr = np.arange(0, (r1 - r0) * k + 1, k, dtype=np.int64)
    indices = rng.integers(0, n, (r1 - r0) * k).astype(np.int64)
    pvals = rng.random((r1 - r0) * k) / n
    return indptr, indices, pvals


@pytest.mark.parametrize("d", [1, 2, 3])
def test_repulsive_exact_tiled(d):
    rng = np.random.default_rng(d)
    n = 150  # two tiles, the second ragged
    y = rng.normal(size=(n, d)) * 3
    r0, r1 = 7, 140  # a rank's rows: two blocks, the second partly idle
    out, z = np.empty((r1 - r0, d)), np.empty(r1 - r0)
    KT.repulsive_exact(y, r0, out, z, backend="cuda")
    ref, zref = KT.reference_repulsive_exact(y, r0, r1)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(z, zref, rtol=1e-12)


def test_attractive_and_kl_terms():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(40, 2))
    P = _csr(40, 5, 30, 4, rng)
    out = KT.attractive(y, 5, *P, backend="cuda")
    np.testing.assert_allclose(out, KT.reference_attractive(y, 5, *P), rtol=1e-12)
    np.testing.assert_allclose(KT.kl_terms(y, 5, *P, backend="cuda"),
                               KT.reference_kl_terms(y, 5, *P), rtol=1e-12)


def test_perplexity_search():
    rng = np.random.default_rng(2)
    d2 = rng.random((37, 12)) * 5
    got = KT.perplexity_search(d2, 4.0, backend="cuda")
    np.testing.assert_allclose(got, KT.reference_perplexity_search(d2, 4.0), rtol=1e-10)
    h = -(got * np.log(got)).sum(axis=1)
    np.testing.assert_allclose(np.exp(h), 4.0, rtol=1e-4)


def test_sq_distances_and_update():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(130, 5)), rng.normal(size=(9, 5))
    np.testing.assert_allclose(KT.sq_distances(a, b, backend="cuda"),
                               KT.reference_sq_distances(a, b), rtol=1e-12)
    y, g, u = (rng.normal(size=(20, 2)) for _ in range(3))
    gains = rng.random((20, 2)) + 0.5
    want = [a.copy() for a in (y, g, u, gains)]
    n1 = KT.update(y, g, u, gains, 0.5, 10.0, 0.01, backend="cuda")
    n2 = KT.reference_update(want[0], want[1], want[2], want[3], 0.5, 10.0, 0.01)
    for got, ref in zip((y, u, gains), (want[0], want[2], want[3])):
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert n1 == pytest.approx(n2)


def test_tsne_cuda_backend_small():
    from hpcml.ml import TSNE
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(c, 0.3, (12, 4)) for c in (0, 4)])
    cpu = TSNE(perplexity=5, max_iter=30, method="exact", random_state=0,
               init="random").fit(X)
    gpu = TSNE(perplexity=5, max_iter=30, random_state=0, init="random",
               backend="cuda").fit(X)
    np.testing.assert_allclose(gpu.embedding_, cpu.embedding_, rtol=1e-6, atol=1e-9)
    assert gpu.kl_divergence_ == pytest.approx(cpu.kl_divergence_, rel=1e-6)
