"""The CUDA covariance kernel (kernels/cuda/covariance.py) against the NumPy reference, on a
GPU or on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, as tests/run_all.py runs this
folder): small sizes that still cover partial tiles, several tiles and several row slices."""
import numpy as np
import pytest

from hpcml.kernels import covariance as KC
from hpcml.kernels.cuda import available, why_unavailable

pytestmark = pytest.mark.skipif(not available(), reason=str(why_unavailable()))


def data(n, d, dtype, seed=0, mean=50.0):
    rng = np.random.default_rng(seed)
    return (mean + rng.standard_normal((n, d)) @ rng.standard_normal((d, d))).astype(dtype)


def check(got, x, rtol):
    want = KC.reference_scatter(x)
    assert got[0] == want[0] == len(x)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    scale = max(np.abs(want[2]).max(), 1e-300)
    np.testing.assert_allclose(got[2], want[2], rtol=rtol, atol=rtol * scale)
    assert np.array_equal(got[2], got[2].T)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d", [(1, 1), (5, 3), (19, 17)])  # 17: two tiles, one partial
def test_scatter_block_matches_reference(dtype, n, d):
    x = data(n, d, dtype, seed=n)
    check(KC.scatter_block(x, backend="cuda"), x, 1e-10)


def test_several_row_slices_are_summed(monkeypatch):
    from hpcml.kernels.cuda import covariance as cc
    monkeypatch.setattr(cc, "MIN_SLICE_ROWS", 4)  # 18 rows -> 5 slices of 4 (one partial)
    x = data(18, 5, np.float64, seed=3)
    assert cc._slices(18, 5) == 5
    check(KC.scatter_block(x, backend="cuda"), x, 1e-10)


def test_large_mean_small_spread_keeps_its_digits():
    x = data(12, 4, np.float64, seed=4, mean=0.0) * 1e-3 + 1e5
    check(KC.scatter_block(x, backend="cuda"), x, 1e-6)


def test_device_array_goes_to_cuda_under_auto():
    from numba import cuda
    x = data(9, 6, np.float32, seed=5)
    check(KC.scatter_block(cuda.to_device(x)), x, 1e-10)  # auto -> cuda for device arrays
    with pytest.raises(TypeError, match="device arrays need backend"):
        KC.scatter_block(cuda.to_device(x), backend="cpu")


def test_empty_block():
    n, mean, M2 = KC.scatter_block(np.empty((0, 3), np.float32), backend="cuda")
    assert n == 0 and mean.shape == (3,) and M2.shape == (3, 3) and not M2.any()


def test_pca_with_the_cuda_backend_matches_cpu():
    from hpcml.ml import PCA
    x = data(24, 5, np.float64, seed=6)
    gpu = PCA(3, backend="cuda").fit(x)
    cpu = PCA(3, backend="cpu").fit(x)
    np.testing.assert_allclose(gpu.explained_variance_, cpu.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(gpu.components_, cpu.components_, atol=1e-9)
