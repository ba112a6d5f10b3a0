"""Numba CPU kernels (and the NumPy backend itself) against the NumPy references."""
import numpy as np
import pytest

from hpcml import kernels as K
import kernel_cases as C

BACKENDS = ["cpu", "numpy", "auto"]
FLOATS = [np.float32, np.float64]
SHAPES = [(1, 1, 1), (1, 9, 7), (7, 9, 1), (5, 1, 6), (0, 3, 4), (3, 0, 4), (4, 3, 0),
          (33, 70, 17), (66, 1030, 13)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_shapes(backend, dtype, trans):
    for m, k, n in SHAPES:
        C.check_matmul(backend, dtype, m, k, n, *trans)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_nonfinite_propagates(backend):
    C.check_matmul_nonfinite(backend, np.float32)


def test_matmul_out_and_strided_inputs():
    a = np.arange(40, dtype=np.float64).reshape(5, 8)[:, ::2]  # non-contiguous
    b = np.ones((4, 3))
    out = np.empty((5, 3))
    assert K.matmul(a, b, out=out, backend="cpu") is out
    np.testing.assert_allclose(out, a @ b)


@pytest.mark.parametrize("act", K.ACTIVATIONS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_bias_act(act, dtype):
    for rows, feats in [(1, 9), (9, 1), (0, 5), (7, 13)]:
        C.check_bias_act("cpu", dtype, rows, feats, act)
    C.check_bias_act("cpu", dtype, 4, 5, act, edge=True)


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_xent(dtype):
    for rows, classes in [(1, 1), (1, 10), (10, 1), (64, 10), (0, 3)]:
        C.check_softmax_xent("cpu", dtype, rows, classes)
    C.check_softmax_xent("cpu", dtype, 16, 7, big=True)


def test_softmax_xent_nan_row_gives_nan_loss():
    logits = np.zeros((2, 3), np.float32)
    logits[1, 2] = np.nan
    loss, grad = K.softmax_xent(logits, np.array([0, 1]), backend="cpu")
    rloss, rgrad = K.reference.softmax_xent(logits, np.array([0, 1]))
    assert np.isnan(loss) and np.isnan(rloss)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(rgrad))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                  (0.9, True, 0.0), (0.9, True, 1e-2),
                                                  (0.0, False, 1e-2)])
def test_sgd_many_steps(dtype, momentum, nesterov, wd):
    C.check_sgd("cpu", dtype, 1001, momentum, nesterov, wd)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_and_adamw_many_steps(dtype, wd, decoupled):
    C.check_adam("cpu", dtype, 1001, wd, decoupled)


@pytest.mark.parametrize("dtype", FLOATS)
def test_clip_grad_norm(dtype):
    for n, max_norm in [(1, 0.5), (1000, 1.0), (1000, 1e9), (0, 1.0)]:
        C.check_clip("cpu", dtype, n, max_norm)


def test_adamw_with_gradient_aliasing_params():
    """The gradient is the value passed in, even when it is the parameter buffer itself."""
    p_ref, p = np.array([1.0, -2.0, 3.0]), np.array([1.0, -2.0, 3.0])
    m_ref, v_ref, m, v = (np.zeros(3) for _ in range(4))
    K.reference.adam_update(p_ref, p_ref, m_ref, v_ref, 1, 0.1, weight_decay=0.5,
                            decoupled=True)
    K.adam_update(p, p, m, v, 1, 0.1, weight_decay=0.5, decoupled=True, backend="cpu")
    np.testing.assert_allclose(m, m_ref)
    np.testing.assert_allclose(p, p_ref)


def test_clip_grad_norm_nonfinite_leaves_grads():
    g = np.array([1.0, np.inf, 2.0], np.float32)
    assert K.clip_grad_norm(g, 1.0, backend="cpu") == np.inf
    np.testing.assert_array_equal(g, [1.0, np.inf, 2.0])


@pytest.mark.parametrize("op", ["sum", "prod", "max", "min"])
@pytest.mark.parametrize("incoming_first", [False, True])
@pytest.mark.parametrize("dtype", FLOATS)
def test_reduce_into(op, incoming_first, dtype):
    C.check_reduce_into("cpu", dtype, op, incoming_first)


def test_matmul_out_aliasing_an_input():
    C.check_out_aliasing("cpu")


def test_matmul_accumulate_into_an_input_and_without_out():
    a = np.arange(9, dtype=np.float64).reshape(3, 3)
    want = a + a @ a
    assert K.matmul(a, a, out=a, accumulate=True) is a  # out is also both operands
    np.testing.assert_array_equal(a, want)
    with pytest.raises(ValueError, match="accumulate=True needs out"):
        K.matmul(a, a, accumulate=True)


def test_out_is_validated():
    x = np.ones((3, 4))
    buf = np.zeros((3, 4))
    with pytest.raises(ValueError, match="out must be 3x4 float64, got 2x4 float64"):
        K.bias_act(x, np.ones(4), "identity", out=buf[:2], backend="cpu")
    with pytest.raises(ValueError, match="out must be 3x4 float64, got 3x4 float32"):
        K.bias_act(x, np.ones(4), "identity", out=np.zeros((3, 4), np.float32))
    ro = np.zeros((3, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        K.matmul(x, x, trans_b=True, out=ro, backend="cpu")
    strided = np.zeros((3, 8))[:, ::2]
    assert K.bias_act(x, np.ones(4), "relu", out=strided, backend="cpu") is strided
    np.testing.assert_array_equal(strided, 2 * np.ones((3, 4)))


def test_reduce_into_dtypes_outside_the_compiled_set():
    z = np.ones(3, np.complex64)
    np.testing.assert_array_equal(K.reduce_into(z.copy(), z), 2 * z)  # auto -> numpy
    h = np.ones(3, np.float16)
    np.testing.assert_array_equal(K.reduce_into(h.copy(), h, "max"), h)
    with pytest.raises(TypeError, match="reduce_into: backend 'cpu' supports"):
        K.reduce_into(z.copy(), z, backend="cpu")


def test_argument_errors_name_the_argument():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        K.matmul(a, a)
    with pytest.raises(TypeError, match="a is float32 but b is float64"):
        K.matmul(a, np.ones((4, 2)))
    with pytest.raises(TypeError, match="float32 or float64"):
        K.matmul(np.ones((2, 2), np.int32), np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        K.bias_act(a, np.ones(4, np.float32), "swish")
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        K.softmax_xent(a, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="grads has shape"):
        K.sgd_update(np.ones(4, np.float32), np.ones(5, np.float32), None, 0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.adam_update(np.ones((4, 4))[:, ::2], np.ones((4, 2)), np.ones((4, 2)),
                      np.ones((4, 2)), 1, 0.1, backend="cpu")
    with pytest.raises(ValueError, match="step counts from 1"):
        K.adam_update(*(np.ones(3) for _ in range(4)), 0, 0.1)
    with pytest.raises(TypeError, match="step must be an integer"):
        K.adam_update(*(np.ones(3) for _ in range(4)), 2.5, 0.1)
    with pytest.raises(TypeError, match="labels must be an array"):
        K.softmax_xent(a, [0, 1, 2])
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        K.sgd_update(np.ones(3), np.ones(3), None, 0.1, nesterov=True)


def test_backend_selection():
    assert K.get_backend() in K.BACKENDS
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        K.set_backend("gpu")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        K.matmul(np.ones((2, 2)), np.ones((2, 2)), backend="tpu")
    assert K._pick("matmul", "auto", np.ones(2)) == K.AUTO["matmul"]
    assert K._pick("adam_update", "auto", np.ones(2)) == K.AUTO["adam_update"]


def test_threads_per_rank(monkeypatch):
    from hpcml.kernels import threads
    import numba
    monkeypatch.delenv("HPCML_NUM_THREADS", raising=False)
    cores = threads.available_cores()
    assert threads.configure(local_ranks=cores * 4) == 1          # 8 ranks on 2 cores: 1 each
    assert numba.get_num_threads() == 1
    assert threads.configure(local_ranks=1) == cores
    monkeypatch.setenv("HPCML_NUM_THREADS", "1")
    assert threads.configure(local_ranks=1) == 1
    monkeypatch.setenv("HPCML_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="HPCML_NUM_THREADS"):
        threads.configure()
    monkeypatch.delenv("HPCML_NUM_THREADS")
    threads.configure(local_ranks=1)


def test_blas_count_set_only_when_it_changes(monkeypatch):
    """configure() must not call openblas_set_num_threads with the count OpenBLAS already
    has (that call put the covariance workers on one core); it must call it otherwise."""
    from hpcml.kernels import threads
    state = {"n": 2, "sets": []}

    def get():
        return state["n"]

    def put(n):
        state["n"] = n.value
        state["sets"].append(n.value)
    monkeypatch.setattr(threads, "openblas",
                        lambda name: (get,) if name == "get_num_threads" else (put,))
    assert threads._blas_set(2)
    assert state["sets"] == []
    threads._blas_set(1)
    assert state["sets"] == [1] and state["n"] == 1
    with threads.blas_threads(2):
        assert state["n"] == 2
    assert state["n"] == 1


def test_autotune_sets_auto_from_measurement(monkeypatch):
    """autotune picks, per kernel, the backend its timer measured fastest: with a timer that
    runs each call once and reports made-up times, AUTO must follow the made-up ranking (and
    change where it says another backend wins)."""
    from hpcml.kernels import tune
    monkeypatch.setattr(K, "AUTO", dict(K.AUTO))
    fake = {"matmul": {"numpy": 3.0, "cpu": 1.0}, "bias_act": {"numpy": 1.0, "cpu": 2.0},
            "bias_act_backward": {"numpy": 2.0, "cpu": 1.5},
            "softmax_xent": {"numpy": 0.5, "cpu": 0.7}, "sgd_update": {"numpy": 9.0, "cpu": 4.0},
            "adam_update": {"numpy": 1e-3, "cpu": 1e-2},
            "clip_grad_norm": {"numpy": 5.0, "cpu": 6.0}, "reduce_into": {"numpy": 8.0, "cpu": 7.0}}
    calls = []

    def timer(f):
        kernel = list(fake)[len(calls) // 2]  # autotune times the kernels in this order
        calls.append((kernel, f.args[0]))
        f()  # the real kernel runs once on the backend being timed
        return fake[kernel][f.args[0]]
    monkeypatch.setattr(tune, "median_time", timer)
    times = tune.autotune()
    assert calls == [(k, be) for k in fake for be in ("numpy", "cpu")]
    assert set(times) == set(fake)
    assert K.AUTO == {"matmul": "cpu", "bias_act": "numpy", "bias_act_backward": "cpu",
                      "softmax_xent": "numpy", "sgd_update": "cpu", "adam_update": "numpy",
                      "clip_grad_norm": "numpy", "reduce_into": "cpu"}



def test_every_kernel_module_dispatches_through_one_function():
    """hpcml.kernels.pick chooses for the elementwise, covariance, t-SNE and k-means
    kernels alike: an unknown backend is the same error everywhere, 'numpy' is honoured
    everywhere, and a kernel without a CUDA version refuses cuda by name."""
    from hpcml.kernels import covariance as KC, kmeans as KK, tsne as KT
    x = np.ones((4, 3))
    c = np.zeros((2, 3))
    calls = {"matmul": lambda be: K.matmul(x, x.T, backend=be),
             "moments_block": lambda be: KC.moments_block(x, backend=be),
             "assign": lambda be: KK.assign(x, c, backend=be),
             "sq_distances": lambda be: KT.sq_distances(x, x, backend=be)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"{name}: unknown backend 'gpu'"):
            call("gpu")
        call("numpy")
    with pytest.raises(ValueError, match="moments_block: there is no CUDA version"):
        KC.moments_block(x, backend="cuda")
