"""hpcml.optim against the NumPy reference updates (kernels/reference.py), schedules, state."""
import math

import numpy as np
import pytest

from hpcml import nn, optim
from hpcml.kernels import reference as ref


def _model():
    return nn.mlp(6, [5], 3, dtype=np.float64, seed=0)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_updates_match_reference_over_steps(kind):
    model = _model()
    p = model.params.copy()
    state = {"v": np.zeros_like(p), "m": np.zeros_like(p), "a": np.zeros_like(p)}
    opt = {"sgd": lambda: optim.SGD(model, lr=0.1, weight_decay=0.01),
           "momentum": lambda: optim.SGD(model, lr=0.1, momentum=0.9),
           "nesterov": lambda: optim.SGD(model, lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=1e-3),
           "adam": lambda: optim.Adam(model, lr=0.01, weight_decay=0.01),
           "adamw": lambda: optim.AdamW(model, lr=0.01, weight_decay=0.1)}[kind]()
    rng = np.random.default_rng(1)
    for step in range(1, 6):
        g = rng.standard_normal(p.size)
        model.grads[:] = g
        lr = 0.05 * step
        opt.step(lr=lr)
        if kind == "sgd":
            ref.sgd_update(p, g, None, lr, 0.0, False, 0.01)
        elif kind in ("momentum", "nesterov"):
            ref.sgd_update(p, g, state["v"], lr, 0.9, kind == "nesterov",
                           1e-3 if kind == "nesterov" else 0.0)
        else:
            ref.adam_update(p, g, state["m"], state["a"], step, lr, 0.9, 0.999, 1e-8,
                            0.01 if kind == "adam" else 0.1, kind == "adamw")
        np.testing.assert_allclose(model.params, p, rtol=1e-12, atol=1e-14)


def test_state_dict_resumes_exactly():
    a, b = _model(), _model()
    oa, ob = optim.Adam(a, lr=0.01), optim.Adam(b, lr=0.01)
    rng = np.random.default_rng(0)
    gs = [rng.standard_normal(a.size) for _ in range(6)]
    for g in gs[:3]:
        a.grads[:] = g
        oa.step()
    b.params[:] = a.params
    ob.load_state_dict({k: np.copy(v) for k, v in oa.state_dict().items()})
    for g in gs[3:]:
        a.grads[:] = g
        b.grads[:] = g
        oa.step()
        ob.step()
    np.testing.assert_array_equal(a.params, b.params)
    with pytest.raises(ValueError, match="shape"):
        optim.Adam(nn.mlp(2, [2], 2), lr=0.1).load_state_dict(oa.state_dict())


def test_schedules():
    s = optim.Schedule(1.0, warmup=4, decay="cosine", total=14, min_lr=0.1)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0 and math.isclose(s(9), 0.55) and math.isclose(s(14), 0.1)
    assert math.isclose(s(100), 0.1)
    st = optim.Schedule(0.1, decay="step", step_size=10, gamma=0.5)
    assert [st(0), st(9), st(10), st(25)] == [0.1, 0.1, 0.05, 0.025]
    assert optim.scaled_lr(0.1, 1024, 256) == 0.4
    with pytest.raises(ValueError, match="cosine decay needs total"):
        optim.Schedule(0.1, decay="cosine")


def test_bad_arguments():
    m = _model()
    for bad in (lambda: optim.SGD(m, lr=0), lambda: optim.SGD(m, momentum=1.0),
                lambda: optim.SGD(m, nesterov=True), lambda: optim.Adam(m, betas=(1.0, 0.9))):
        with pytest.raises(ValueError):
            bad()


def test_clip_grad_norm():
    g = np.full(4, 3.0)
    assert optim.clip_grad_norm(g, 1.0) == 6.0
    assert math.isclose(np.linalg.norm(g), 1.0, rel_tol=1e-5)
