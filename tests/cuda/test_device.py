"""--device cuda's pieces in one process (simulator in CI, GPU when lent): a model on the
device against the same model on the CPU, the device-aware array helpers, the optimizer
state, the batch feeder, gradient staging, device selection and the out-of-memory
message. The oracle is always the CPU path (NumPy / Numba CPU) on the same inputs."""
import numpy as np
import pytest

from hpcml import device, kernels as K, nn, optim
from hpcml.kernels.cuda import available, why_unavailable

pytestmark = pytest.mark.skipif(not available(), reason=str(why_unavailable()))
cuda = pytest.importorskip("numba.cuda")

#: float32 after a few steps: measured max |cpu - cuda| 3e-8 (one step) to 6e-8 (20 steps
#: of hpcml.train); float64 5e-16
TOL = {np.float32: 1e-6, np.float64: 1e-13}


@pytest.fixture(autouse=True)
def _small_tile(monkeypatch):
    """The matmul with 16 threads a block (see test_device_train.SMALL_TILE): the
    simulator's cost is per thread; the default tile is tested in test_kernels_cuda.py."""
    monkeypatch.setenv("HPCML_CUDA_TILE", "16x16x8x4x4")


def _pair(make, dtype):
    cpu, gpu = make(dtype), make(dtype)
    gpu.to_device()
    assert gpu.device == "cuda" and K.to_host(gpu.params).dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cpu.params, gpu.host_params())
    return cpu, gpu


def _steps(model, x, y, steps=2, dropout=False, opt=None, accumulate=False):
    opt = opt or optim.Adam(model, 1e-2)
    loss = None
    for s in range(steps):
        for micro in range(2 if accumulate else 1):
            rng = np.random.default_rng([7, s, micro]) if dropout else None
            out = model.forward(x, train=True, rng=rng)
            loss, dl = nn.cross_entropy(out, y, denom=2 * len(y))
            model.backward(dl, accumulate=micro > 0, input_grad=False)
        opt.step()
    return loss


@pytest.mark.parametrize("dtype,act,dropout", [(np.float32, "relu", 0.0),
                                               (np.float64, "gelu", 0.3)])
def test_mlp_on_the_device_follows_the_cpu(dtype, act, dropout):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 6)), rng.integers(0, 3, 9)
    cpu, gpu = _pair(lambda dt: nn.mlp(6, [5, 4], 3, act, dropout, dtype=dt, seed=3), dtype)
    l_cpu = _steps(cpu, x, y, steps=1, dropout=bool(dropout), accumulate=True)
    l_gpu = _steps(gpu, x, y, steps=1, dropout=bool(dropout), accumulate=True)
    assert abs(l_cpu - l_gpu) < TOL[dtype] * 10
    np.testing.assert_allclose(K.to_host(gpu.grads), cpu.grads, atol=TOL[dtype])
    np.testing.assert_allclose(gpu.host_params(), cpu.params, atol=TOL[dtype])
    assert not np.array_equal(cpu.params, nn.mlp(6, [5, 4], 3, act, dropout, dtype=dtype,
                                                  seed=3).params)  # it trained


def test_separate_activation_layers_and_linear_bias_on_the_device():
    make = lambda dt: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3),  # noqa
                                    nn.Tanh(), nn.Linear(3, 2), dtype=dt, seed=1)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((7, 4)), rng.integers(0, 2, 7)
    cpu, gpu = _pair(make, np.float64)
    for model in (cpu, gpu):
        _steps(model, x, y, steps=1, opt=optim.SGD(model, 0.1, momentum=0.9),
               accumulate=True)
    np.testing.assert_allclose(gpu.host_params(), cpu.params, atol=1e-13)


def test_mse_regression_on_the_device():
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((8, 3)), rng.standard_normal(8)
    cpu, gpu = _pair(lambda dt: nn.mlp(3, [4], 1, dtype=dt, seed=2), np.float64)
    for model in (cpu, gpu):
        loss, d = nn.mse(model.forward(x), t, denom=8)
        model.backward(d)
        model.loss = loss
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-13)
    np.testing.assert_allclose(K.to_host(gpu.grads), cpu.grads, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_helpers_match_numpy(dtype):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 4)).astype(dtype), rng.standard_normal((5, 4)).astype(dtype)
    da, db = cuda.to_device(a), cuda.to_device(b)
    np.testing.assert_array_equal(K.to_host(K.zeros_like(da)), np.zeros_like(a))
    np.testing.assert_array_equal(K.to_host(K.multiply(da, db)), a * b)
    np.testing.assert_array_equal(K.to_host(K.scale(cuda.to_device(a), 0.3)),
                                  a * np.dtype(dtype).type(0.3))
    out = cuda.to_device(np.ones(4, dtype))
    K.column_sums(da, out, accumulate=True)
    np.testing.assert_allclose(K.to_host(out), 1 + a.sum(axis=0), rtol=TOL[dtype])
    K.column_sums(da, out)
    np.testing.assert_allclose(K.to_host(out), a.sum(axis=0), rtol=TOL[dtype])
    K.assign(da, b)
    np.testing.assert_array_equal(K.to_host(da), b)
    K.assign(da, 2.5)
    assert (K.to_host(da) == 2.5).all()
    K.fill(da, 0)
    assert not K.to_host(da).any()


def test_optimizer_state_is_host_arrays_and_resumes_on_the_device():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    make = lambda: nn.mlp(3, [4], 2, dtype=np.float64, seed=4).to_device()  # noqa: E731
    a = make()
    opt_a = optim.Adam(a, 1e-2)
    _steps(a, x, y, steps=1, opt=opt_a)
    state = opt_a.state_dict()
    assert all(isinstance(v, np.ndarray) for k, v in state.items() if k != "steps")
    b = make()
    K.assign(b.params, a.host_params())
    opt_b = optim.Adam(b, 1e-2)
    opt_b.load_state_dict(state)
    _steps(a, x, y, steps=1, opt=opt_a)
    _steps(b, x, y, steps=1, opt=opt_b)
    np.testing.assert_array_equal(a.host_params(), b.host_params())


def test_batch_feeder_stages_in_order_and_raises_errors_at_their_batch():
    from hpcml.parallel.staging import BatchFeeder
    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal((4, 3)), np.arange(4) + i) for i in range(3)]

    def source():
        yield from batches[:2]
        raise OSError("shard 2 unreadable")
    feeder = BatchFeeder(source(), lambda x: x * 2, np.float32)
    for x, y in batches[:2]:
        dx, dy = next(feeder)
        np.testing.assert_array_equal(K.to_host(dx), (x * 2).astype(np.float32))
        np.testing.assert_array_equal(dy, y)
    with pytest.raises(OSError, match="shard 2"):
        next(feeder)
    feeder.close()
    done = BatchFeeder(iter(batches[:1]), lambda x: x, np.float64)
    next(done)
    with pytest.raises(StopIteration):
        next(done)


def test_gradient_staging_copies_regions_and_back():
    from hpcml.parallel.staging import GradStaging
    model = nn.mlp(3, [4], 2, dtype=np.float64, seed=6).to_device()
    grads = np.arange(model.size, dtype=np.float64)
    K.assign(model.grads, grads)
    st = GradStaging(model)
    got = []
    st.region_to_host(2, 9, then=lambda: got.append(st.host[2:9].copy()))
    np.testing.assert_array_equal(got[0], grads[2:9])
    st.all_to_host()
    np.testing.assert_array_equal(st.host[:model.size], grads)
    st.host[:model.size] *= 3
    st.all_to_device()
    np.testing.assert_array_equal(K.to_host(model.grads), grads * 3)


def test_select_names_the_problem(monkeypatch):
    from hpcml import comm as hc
    comm = hc.self_comm()
    dev = device.select("cuda", comm)
    assert dev.is_cuda and dev.gpu == 0 and dev.summary()["comm"] == "staged"
    assert device.select("cpu", comm).summary() == {"device": "cpu"}
    with pytest.raises(device.DeviceError, match=r"--gpus-per-node 5 .* shows 1 GPU"):
        device.select("cuda", comm, gpus_per_node=5)
    monkeypatch.setattr(hc, "node_rank", lambda c: (2, 3))  # 3 ranks on this node ...
    monkeypatch.setattr(hc, "node_objects", lambda o, c: [o, o, o])  # ... on one GPU
    with pytest.raises(device.DeviceError, match=r"3 ranks on .* 1 GPU\(s\).*--share-gpus"):
        device.select("cuda", comm)
    shared = device.select("cuda", comm, share=True)
    assert shared.gpu == 0 and shared.shared
    # Slurm's per-task binding: each rank sees one GPU (its device 0), a different one
    monkeypatch.setattr(hc, "node_objects", lambda o, c: ["GPU-a", "GPU-b", o])
    own = device.select("cuda", comm)
    assert own.gpu == 0 and not own.shared
    monkeypatch.setattr(device, "_visible_gpus", lambda: (0, "no CUDA GPU here", False))
    with pytest.raises(device.DeviceError, match="no CUDA GPU here; or use --device cpu"):
        device.select("cuda", comm)
    with pytest.raises(ValueError, match="device must be one of"):
        device.select("gpu", comm)


def test_out_of_device_memory_is_one_clear_message(monkeypatch):
    model = nn.mlp(3, [4], 2, seed=0)

    def oom(a, *args, **kw):
        raise RuntimeError("[2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")
    monkeypatch.setattr(cuda, "to_device", oom)
    with pytest.raises(MemoryError, match=r"out of GPU memory allocating .* MiB .*"
                                          r"--device cpu"):
        model.to_device()
    assert model.device == "cpu" and isinstance(model.params, np.ndarray)


@pytest.mark.parametrize("momentum", [0.0, 0.9])  # the sparse update; the optimizer's
def test_hogwild_on_the_device_writes_the_shared_host_copy(momentum):
    """A GPU rank's gradient comes back to the host and its update lands in the shared
    copy, as a CPU rank's does; closing puts the shared copy on the GPU."""
    from hpcml.comm.inproc import run_ranks
    from hpcml.parallel.hogwild import Hogwild

    def body(comm, gpu):
        model = nn.mlp(4, [], 3, dtype=np.float64, seed=0)
        if gpu:
            model.to_device()
        hog = Hogwild(model, comm)
        opt = hog.optimizer(lambda m: optim.SGD(m, 0.5, momentum=momentum))
        for step in range(2):
            hog.before_forward()
            g = np.zeros(model.size)
            g[2], g[7] = 1.0, -2.0 * (step + 1)
            K.assign(model.grads, g)
            hog.set_rows(1, 1)
            hog.step(opt, 0.5)
        shared = hog.serial_params()
        hog.close()
        return hog.sparse_steps, shared, K.to_host(model.params)
    cpu = run_ranks(1, lambda c: body(c, False))[0]
    gpu = run_ranks(1, lambda c: body(c, True))[0]
    assert gpu[0] == cpu[0] == (2 if momentum == 0 else 0)
    assert not np.array_equal(cpu[1], nn.mlp(4, [], 3, dtype=np.float64, seed=0).params)
    np.testing.assert_array_equal(gpu[1], cpu[1])
    np.testing.assert_array_equal(gpu[2], cpu[1])
