"""CUDA kernels against the NumPy references, on a GPU or on Numba's CUDA simulator.

CI runs this folder with NUMBA_ENABLE_CUDASIM=1 (tests/run_all.py); the simulator runs
every thread in Python, so sizes stay small but still cover several blocks, partial tiles
and grid-stride loops.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernel_cases as C  # noqa: E402
from hpcml import kernels as K  # noqa: E402
from hpcml.kernels.cuda import available, why_unavailable  # noqa: E402
from hpcml.kernels.cuda.matmul import TILES, matmul as cuda_matmul  # noqa: E402

pytestmark = pytest.mark.skipif(not available(), reason=str(why_unavailable()))
FLOATS = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul(dtype, trans):
    for m, k, n in [(1, 1, 1), (3, 9, 2), (0, 3, 4), (3, 0, 4), (5, 1, 7)]:
        C.check_matmul("cuda", dtype, m, k, n, *trans)


def test_matmul_several_blocks_and_partial_tiles():
    C.check_matmul("cuda", np.float32, 70, 11, 66, False, False)  # 2 x 2 blocks, ragged


@pytest.mark.parametrize("trans", [(False, False), (True, True)])
def test_matmul_double_buffer_over_several_k_steps(trans):
    """K = 29: four steps of 8 along k, so both shared buffers are filled twice, the last
    step ragged (the next tile's loads and stores alternate between the buffers)."""
    C.check_matmul("cuda", np.float64, 9, 29, 5, *trans)


@pytest.mark.parametrize("tile", TILES[1:])  # (the default is every other test's)
def test_every_tile_shape_computes_the_product(tile):
    """Each shape bench gpu times: two blocks of rows, three steps along k (the last
    ragged), a transposed operand; float64 where its buffers fit (else float32)."""
    BM, BN, BK = tile[:3]
    dtype = np.float64 if 2 * BK * (BM + BN) * 8 <= 48 * 1024 else np.float32
    rng = np.random.default_rng(sum(tile))
    a = rng.standard_normal((2 * BK + 3, BM + 1)).astype(dtype)  # op(a) = a^T
    b = rng.standard_normal((2 * BK + 3, 7)).astype(dtype)
    got = cuda_matmul(a, b, trans_a=True, tile=tile)
    np.testing.assert_allclose(got, a.T @ b, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_tile_shapes_are_checked_and_taken_from_the_environment(monkeypatch):
    from hpcml.kernels.cuda import matmul as mm
    for bad in ["64x64x8", (64, 64, 8, 3, 4), (64, 64, 8, 1, 1), (128, 128, 32, 8, 8)]:
        with pytest.raises(ValueError, match="CUDA matmul tile"):
            mm.check_tile(bad if not isinstance(bad, str) else bad.split("x"))
    monkeypatch.setenv("HPCML_CUDA_TILE", "128x64x8x8x4")
    assert mm.default_tile() == (128, 64, 8, 8, 4)
    monkeypatch.setenv("HPCML_CUDA_TILE", "128x64x8")
    with pytest.raises(ValueError, match="need 5 integers"):
        mm.default_tile()


def test_matmul_nonfinite_propagates():
    C.check_matmul_nonfinite("cuda", np.float32)


def test_matmul_out_aliasing_an_input():
    from numba import cuda
    C.check_out_aliasing("cuda")
    C.check_out_aliasing("cuda", cuda.to_device, lambda d: d.copy_to_host())


def test_non_contiguous_host_inputs():
    a = np.arange(40, dtype=np.float32).reshape(5, 8)[:, ::2]
    b = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(K.matmul(a, b, backend="cuda"), a @ b)
    x = np.ones((3, 8), np.float32)[:, ::2]
    np.testing.assert_allclose(K.bias_act(x, np.ones(4, np.float32), "relu", backend="cuda"),
                               2 * np.ones((3, 4)))


def test_device_arrays_stay_on_the_device():
    from numba import cuda
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.ones((4, 2), np.float32)
    out = K.matmul(cuda.to_device(a), cuda.to_device(b))  # auto -> cuda for device arrays
    assert hasattr(out, "copy_to_host")
    np.testing.assert_allclose(out.copy_to_host(), a @ b)
    with pytest.raises(TypeError, match="device arrays need backend"):
        K.matmul(cuda.to_device(a), cuda.to_device(b), backend="cpu")


def test_matmul_accumulates_on_the_device():
    from numba import cuda
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(8, dtype=np.float32).reshape(2, 4)
    c = np.ones((3, 2), np.float32)
    d = cuda.to_device(c)
    assert K.matmul(cuda.to_device(a), cuda.to_device(b), out=d, trans_b=True,
                    accumulate=True) is d
    np.testing.assert_allclose(d.copy_to_host(), c + a @ b.T)


@pytest.mark.parametrize("act", K.ACTIVATIONS)
def test_bias_act(act):
    C.check_bias_act("cuda", np.float32, 3, 5, act)
    C.check_bias_act("cuda", np.float64, 4, 3, act, edge=True)


def test_softmax_xent():
    C.check_softmax_xent("cuda", np.float32, 5, 4)
    C.check_softmax_xent("cuda", np.float64, 3, 6, big=True)
    C.check_softmax_xent("cuda", np.float32, 0, 3)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, True, 1e-2)])
def test_sgd(momentum, nesterov, wd):
    C.check_sgd("cuda", np.float32, 300, momentum, nesterov, wd, steps=5)


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-2, True)])
def test_adam(wd, decoupled):
    C.check_adam("cuda", np.float32, 300, wd, decoupled, steps=5)


def test_clip_grad_norm():
    C.check_clip("cuda", np.float32, 600, 1.0)  # 3 blocks: shared-memory tree + atomics
    C.check_clip("cuda", np.float64, 10, 1.0)   # clips
    C.check_clip("cuda", np.float64, 10, 1e9)   # does not clip


@pytest.mark.parametrize("op", ["sum", "prod", "max", "min"])
@pytest.mark.parametrize("incoming_first", [False, True])
def test_reduce_into(op, incoming_first):
    C.check_reduce_into("cuda", np.float32, op, incoming_first)
    C.check_reduce_into("cuda", np.float64, op, incoming_first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_assignment_kernel(dtype):
    """The CUDA assignment (shared-memory centres, and the global-memory form for many
    centres) against a float64 brute force; device arrays stay on the device."""
    from numba import cuda
    from hpcml.kernels import kmeans as KK
    rng = np.random.default_rng(5)
    for n, k in ((300, 7), (40, 700)):  # 700 x 6 > the shared-memory stage: global form
        X = rng.standard_normal((n, 6)).astype(dtype)
        C = rng.standard_normal((k, 6))
        d2 = ((X.astype(np.float64)[:, None, :] - C[None]) ** 2).sum(2)
        labels, dist = KK.assign(X, C, backend="cuda")
        np.testing.assert_array_equal(labels, np.argmin(d2, axis=1))
        np.testing.assert_allclose(dist, d2.min(axis=1), rtol=1e-12)
    dl, dd = KK.assign(cuda.to_device(X), cuda.to_device(C))  # auto -> cuda
    assert hasattr(dl, "copy_to_host")
    np.testing.assert_array_equal(dl.copy_to_host(), np.argmin(d2, axis=1))
