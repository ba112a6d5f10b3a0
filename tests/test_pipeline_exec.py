"""Pipeline execution (issue 16): every schedule the executor runs gives, after 20
optimizer steps in float64, the parameters of one process at the same global batch
(within 1e-12 relative), at S = 2, 3, 4 ranks, M = 1, 4, 5 micro-batches, with and without
recompute; on the in-process communicator (the bodies are plain functions of a comm, so
they can run under mpiexec too). Also: stage splitting and its errors."""
import numpy as np
import pytest

from hpcml import nn, optim
from hpcml.comm.inproc import run_ranks
from hpcml.parallel.pipe import PipelineError, PipelineRunner, balance, split
from hpcml.parallel.pipeline import make

F, H, C, N = 10, [12] * 7, 5, 40  # 8 Linear layers: up to 8 stages


def _data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((N, F)), rng.integers(0, C, N)


def _serial(steps=20):
    x, y = _data()
    model = nn.mlp(F, H, C, dtype=np.float64, seed=3)
    opt = optim.SGD(model, 0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        out = model.forward(x)
        _, d = nn.cross_entropy(out, y)
        model.backward(d)
        opt.step()
    return model.params.copy()


REFERENCE = {}


def _pipeline(comm, name, M, v=1, recompute=False, steps=20, tp=1):
    """The pipeline on comm (tp > 1: rank r is TP rank r % tp of stage r // tp)."""
    x, y = _data()
    model = nn.mlp(F, H, C, dtype=np.float64, seed=3)
    size = model.size
    tp_comm = None
    if tp > 1:
        from hpcml import comm as hc
        r = comm.Get_rank()
        tp_comm = hc.split(comm, r // tp, r % tp)
        comm = hc.split(comm, r % tp, r // tp)
    P = comm.Get_size()
    sched = make(name, P, M, v)
    runner = PipelineRunner(model, split(model, P * v), sched, comm, recompute=recompute,
                            tp_comm=tp_comm)
    opts = runner.optimizers(lambda m: optim.SGD(m, 0.05, momentum=0.9, weight_decay=1e-3))
    for _ in range(steps):
        runner.step(x, y, denom=N)
        for o in opts.values():
            o.step()
    return runner.serial_params(size), runner.peak_bytes


@pytest.mark.parametrize("name,v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2),
                                    ("zb-h1", 1)])
@pytest.mark.parametrize("S", [2, 3, 4])
@pytest.mark.parametrize("M", [1, 4, 5])
@pytest.mark.parametrize("recompute", [False, True])
def test_every_schedule_equals_one_process(name, v, S, M, recompute):
    ref = REFERENCE.setdefault("p", _serial())
    out = run_ranks(S, lambda comm: _pipeline(comm, name, M, v, recompute))
    for params, _ in out:
        assert np.array_equal(params, out[0][0])  # the same bytes everywhere
        rel = np.abs(params - ref).max() / np.abs(ref).max()
        assert rel < 1e-12, rel  # measured: 1.5e-16 (float64; the reductions are split)


@pytest.mark.parametrize("name,v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2),
                                    ("zb-h1", 1)])
@pytest.mark.parametrize("S,M,recompute", [(2, 4, False), (3, 5, True), (4, 1, False),
                                           (4, 5, True)])
def test_every_schedule_with_tensor_parallel_stages_equals_one_process(name, v, S, M,
                                                                       recompute):
    """TP = 2 inside every stage (2S ranks): the same parameters as one process."""
    ref = REFERENCE.setdefault("p", _serial())
    out = run_ranks(2 * S, lambda comm: _pipeline(comm, name, M, v, recompute, tp=2))
    for params, _ in out:
        assert np.array_equal(params, out[0][0])
        rel = np.abs(params - ref).max() / np.abs(ref).max()
        assert rel < 1e-12, rel  # measured: 1.3e-16


def test_1f1b_keeps_fewer_activations_than_gpipe_and_recompute_fewer_still():
    def peak(name, recompute=False):
        return max(p for _, p in run_ranks(4, lambda c: _pipeline(c, name, 8, recompute=
                                                                   recompute, steps=1)))
    g, o, r = peak("gpipe"), peak("1f1b"), peak("1f1b", True)
    micro = max(p for _, p in run_ranks(4, lambda c: _pipeline(c, "gpipe", 8, steps=1))) / 8
    assert o <= 4 / 8 * g + micro and r < o, (g, o, r)


def test_stages_split_balance_and_errors():
    model = nn.mlp(F, H, C, dtype=np.float64)
    assert split(model, 2, bounds=[4]) == [(0, 4), (4, 8)]
    parts = split(model, 3)
    assert parts[0][0] == 0 and parts[-1][1] == 8 and len(parts) == 3
    b = balance(nn.mlp(64, [512, 16, 16, 16], 10, dtype=np.float64), 2,
                np.random.default_rng(0).standard_normal((256, 64)))
    assert b[0] == (0, 1)  # the one wide layer alone against the four narrow ones
    lazy = nn.mlp(64, [512, 16, 16, 16], 10, dtype=np.float64, allocate=False)
    assert lazy.params is None and balance(lazy, 2, 256)[0] == (0, 1)  # layer by layer
    with pytest.raises(PipelineError, match="stage bounds \\[4, 4\\]"):
        split(model, 3, bounds=[4, 4])
    with pytest.raises(PipelineError, match="8 parameterised layers, fewer than 9 stages"):
        split(model, 9)
    with pytest.raises(PipelineError, match="schedule is for 3 ranks; the pipeline "
                                            "communicator has 2"):
        run_ranks(2, lambda c: PipelineRunner(nn.mlp(F, H, C), split(nn.mlp(F, H, C), 3),
                                              make("1f1b", 3, 4), c))


def test_split_backward_adds_exactly_what_backward_adds():
    """B (input gradient, bias gradients) then W (weight gradients) = one backward, to the
    bit: the same products in the same order."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((9, F)), rng.integers(0, C, 9)
    a, b = nn.mlp(F, [7, 6], C, dtype=np.float64), nn.mlp(F, [7, 6], C, dtype=np.float64)
    for m in (a, b):
        m.grads[...] = 0.5  # accumulating onto earlier gradients
    _, d = nn.cross_entropy(a.forward(x), y)
    dx_a = a.backward(d, accumulate=True)
    b.forward(x)
    dx_b, tasks = b.backward_input(d)
    assert len(tasks) == 3 and not np.array_equal(a.grads, b.grads)  # W still to come
    b.backward_weight(tasks)
    assert np.array_equal(a.grads, b.grads) and np.array_equal(dx_a, dx_b)


def test_polite_waits_give_the_same_parameters(monkeypatch):
    """HPCML_PIPE_WAIT=yield (test the receive and yield the core between tests) changes
    how a stage waits, not what it computes."""
    monkeypatch.setenv("HPCML_PIPE_WAIT", "yield")
    ref = REFERENCE.setdefault("p", _serial())
    out = run_ranks(3, lambda comm: _pipeline(comm, "1f1b", 5))
    assert all(np.abs(p - ref).max() / np.abs(ref).max() < 1e-12 for p, _ in out)
