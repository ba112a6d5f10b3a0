"""ML estimators with backend="cuda" against the same estimator on the CPU (PCA and t-SNE
have theirs in test_covariance_cuda.py and test_tsne_cuda.py)."""
import numpy as np
import pytest

from hpcml.kernels.cuda import available, why_unavailable
from hpcml.ml import KMeans

pytestmark = pytest.mark.skipif(not available(), reason=str(why_unavailable()))


def test_kmeans_with_the_cuda_assignment_matches_cpu():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 0.6, (60, 3)) for c in (0, 2, 4)])
    cpu = KMeans(3, random_state=0, n_init=1, backend="cpu").fit(X)
    gpu = KMeans(3, random_state=0, n_init=1, backend="cuda").fit(X)
    np.testing.assert_array_equal(gpu.labels_, cpu.labels_)
    np.testing.assert_allclose(gpu.cluster_centers_, cpu.cluster_centers_, rtol=1e-12)
    assert gpu.inertia_ == pytest.approx(cpu.inertia_, rel=1e-12)
    assert gpu.n_iter_ == cpu.n_iter_ > 1
    np.testing.assert_array_equal(gpu.predict(X[::7]), cpu.predict(X[::7]))
