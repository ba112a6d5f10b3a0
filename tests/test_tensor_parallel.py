"""Tensor parallelism (issue 16): Megatron's column-then-row pairs give, after 20 SGD steps
in float64, the parameters of one process (within 1e-12 relative) at T = 2 and 3 on the
in-process communicator, with one all-reduce in forward and one in backward per pair."""
import numpy as np
import pytest

from hpcml import comm as hc
from hpcml import nn, optim
from hpcml.comm.inproc import run_ranks
from hpcml.parallel.tensor import ColumnParallel, RowParallel, serial_params, tensor_parallel

F, H, C, N = 10, [12, 10, 9], 5, 30


def _data():
    rng = np.random.default_rng(5)
    return rng.standard_normal((N, F)), rng.integers(0, C, N)


def _train(model, steps=20):
    x, y = _data()
    opt = optim.SGD(model, 0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        _, d = nn.cross_entropy(model.forward(x), y)
        model.backward(d)
        opt.step()
    return model


@pytest.mark.parametrize("T", [2, 3])
def test_tensor_parallel_equals_one_process(T, monkeypatch):
    ref = _train(nn.mlp(F, H, C, dtype=np.float64, seed=2)).params.copy()
    calls = []
    real = hc.allreduce

    def counting(buf, *a, **k):
        calls.append(buf.shape)
        return real(buf, *a, **k)
    import hpcml.parallel.tensor as tensor
    monkeypatch.setattr(tensor.hc, "allreduce", counting)

    def body(comm):
        serial = nn.mlp(F, H, C, dtype=np.float64, seed=2)
        tp = tensor_parallel(serial, comm)
        kinds = [type(layer).__name__ for layer in tp.layers]
        assert kinds == ["ColumnParallel", "RowParallel", "ColumnParallel", "RowParallel"]
        assert tp.size < serial.size  # each rank holds 1/T of the split weights
        _train(tp, steps=20)
        return serial_params(tp, nn.mlp(F, H, C, dtype=np.float64, seed=2), comm), 0
    out = run_ranks(T, body)
    for params, _ in out:
        assert np.array_equal(params, out[0][0])
        rel = np.abs(params - ref).max() / np.abs(ref).max()
        assert rel < 1e-12, rel
    # per step and rank: 2 pairs x (1 forward + 1 backward) all-reduces, plus the one
    # that assembles the serial parameters at the end
    assert len(calls) == T * (20 * 2 * 2 + 1), len(calls)


def test_too_narrow_a_layer_is_refused():
    def body(comm):
        with pytest.raises(ValueError, match="layer 0 has 2 outputs to split, fewer than 3"):
            tensor_parallel(nn.mlp(4, [2, 5], 3), comm)
    run_ranks(3, body)
    assert issubclass(ColumnParallel, nn.Layer) and issubclass(RowParallel, nn.Layer)
