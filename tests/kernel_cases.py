"""Kernel checks shared by the CPU tests and the CUDA (simulator or GPU) tests: every kernel
against its NumPy reference (hpcml.kernels.reference), across shapes, dtypes, edge values."""
import numpy as np

from hpcml import kernels as K

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
EDGE = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e-30, 3.5])


def rng(seed=0):
    return np.random.default_rng(seed)


def close(actual, expected, dtype, scale=1.0):
    tol = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"] * scale,
                               atol=tol["atol"] * scale, equal_nan=True)


def check_matmul(backend, dtype, m, k, n, trans_a, trans_b, seed=0):
    r = rng(seed)
    a = r.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = r.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    got = K.matmul(a, b, trans_a=trans_a, trans_b=trans_b, backend=backend)
    # the oracle is NumPy's float64 product written out here, not kernels/reference.py
    # (which *is* the numpy backend, and what auto picks for matmul)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(
        np.float64)
    assert got.shape == (m, n) and got.dtype == np.dtype(dtype)
    close(got, want, dtype, scale=max(1.0, np.sqrt(k)))
    # accumulate: out += the product, in place (a C-contiguous out and a strided one)
    for out in (r.standard_normal((m, n)).astype(dtype),
                r.standard_normal((m, 2 * n)).astype(dtype)[:, ::2]):
        before = out.astype(np.float64)
        res = K.matmul(a, b, out=out, trans_a=trans_a, trans_b=trans_b, backend=backend,
                       accumulate=True)
        assert res is out
        close(out, before + want, dtype, scale=max(1.0, np.sqrt(k)))


def check_matmul_nonfinite(backend, dtype):
    a = np.ones((3, 4), dtype)
    b = np.ones((4, 2), dtype)
    a[0, 1] = np.nan
    a[1, 2] = np.inf
    b[3, 1] = np.inf
    got = K.matmul(a, b, backend=backend)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(a @ b))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(a @ b))


def check_bias_act(backend, dtype, rows, feats, act, edge=False, seed=0):
    r = rng(seed)
    x = r.standard_normal((rows, feats)).astype(dtype) * 3
    if edge and x.size:
        x.flat[: min(x.size, EDGE.size)] = EDGE[: min(x.size, EDGE.size)].astype(dtype)
    bias = r.standard_normal(feats).astype(dtype)
    close(K.bias_act(x, bias, act, backend=backend), K.reference.bias_act(x, bias, act), dtype)
    dy = r.standard_normal((rows, feats)).astype(dtype)
    dx, db = K.bias_act_backward(dy, x, bias, act, backend=backend)
    rdx, rdb = K.reference.bias_act_backward(dy, x, bias, act)
    close(dx, rdx, dtype)
    close(db, rdb, dtype, scale=max(1.0, rows))


def check_softmax_xent(backend, dtype, rows, classes, big=False, seed=0):
    r = rng(seed)
    logits = r.standard_normal((rows, classes)).astype(dtype) * (1000 if big else 3)
    labels = r.integers(0, classes, rows) if classes else np.zeros(rows, np.int64)
    loss, grad = K.softmax_xent(logits, labels, backend=backend)
    rloss, rgrad = K.reference.softmax_xent(logits, labels)
    assert np.isfinite(loss) or not np.isfinite(rloss)
    close(np.array([loss]), np.array([rloss]), dtype, scale=10)
    close(grad, rgrad, dtype)


def check_sgd(backend, dtype, n, momentum, nesterov, weight_decay, steps=50, seed=0):
    r = rng(seed)
    p_ref = r.standard_normal(n).astype(dtype)
    p = p_ref.copy()
    v_ref, v = np.zeros(n, dtype), np.zeros(n, dtype)
    for _ in range(steps):
        g = r.standard_normal(n).astype(dtype)
        K.reference.sgd_update(p_ref, g, v_ref, 0.05, momentum, nesterov, weight_decay)
        K.sgd_update(p, g, v if momentum else None, 0.05, momentum, nesterov, weight_decay,
                     backend=backend)
    close(p, p_ref, dtype, scale=5)
    if momentum:
        close(v, v_ref, dtype, scale=5)


def check_adam(backend, dtype, n, weight_decay, decoupled, steps=50, seed=0):
    r = rng(seed)
    p_ref = r.standard_normal(n).astype(dtype)
    p = p_ref.copy()
    m_ref, v_ref, m, v = (np.zeros(n, dtype) for _ in range(4))
    for step in range(1, steps + 1):
        g = r.standard_normal(n).astype(dtype)
        K.reference.adam_update(p_ref, g, m_ref, v_ref, step, 1e-2, 0.9, 0.999, 1e-8,
                                weight_decay, decoupled)
        K.adam_update(p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay, decoupled,
                      backend=backend)
    close(p, p_ref, dtype, scale=5)
    close(m, m_ref, dtype, scale=5)
    close(v, v_ref, dtype, scale=5)


def check_clip(backend, dtype, n, max_norm, seed=0):
    r = rng(seed)
    g_ref = (r.standard_normal(n) * 5).astype(dtype)
    g = g_ref.copy()
    norm_ref = K.reference.clip_grad_norm(g_ref, max_norm)
    norm = K.clip_grad_norm(g, max_norm, backend=backend)
    close(np.array([norm]), np.array([norm_ref]), dtype)
    close(g, g_ref, dtype)


def check_reduce_into(backend, dtype, op, incoming_first):
    r = rng(1)
    acc = r.standard_normal(37).astype(dtype)
    x = r.standard_normal(37).astype(dtype)
    acc[:EDGE.size] = EDGE.astype(dtype)
    x[3:3 + EDGE.size] = EDGE.astype(dtype)
    want = K.reference_reduce(acc.copy(), x, op, incoming_first)
    got = K.reduce_into(acc.copy(), x, op, incoming_first, backend=backend)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))  # +0 / -0 as NumPy


def check_out_aliasing(backend, to_device=lambda a: a, to_host=lambda a: a):
    """matmul with out= one of its inputs gives what NumPy gives (inputs read first)."""
    r = rng(3)
    # out spans two 64-wide tiles of the CUDA kernel (blocks read what others write);
    # the other side is kept thin (9): the simulator's cost is per block
    a = r.standard_normal((9, 65))
    b = r.standard_normal((65, 65))
    want = a @ b
    da, db = to_device(a.copy()), to_device(b)
    got = K.matmul(da, db, out=da, backend=backend)
    close(to_host(got), want, np.float64, scale=10)
    a, b = r.standard_normal((65, 65)), r.standard_normal((65, 9))
    want = a @ b
    da, db = to_device(a), to_device(b.copy())
    got = K.matmul(da, db, out=db, backend=backend)
    close(to_host(got), want, np.float64, scale=10)
