"""hpcml.optim against hand-computed steps and an independent scalar oracle (PyTorch's
documented update rules, written out here), against the NumPy reference updates
(kernels/reference.py), schedules, state."""
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


# --- an oracle independent of kernels/reference.py -------------------------------------

P0, G1, G2 = [1.0, -2.0], [0.5, -1.0], [-0.25, 2.0]

#: parameters after steps 1 and 2 from P0 with gradients G1 then G2 at lr 0.1, worked out
#: by hand from PyTorch's documented rules (torch.optim.SGD / Adam / AdamW)
HAND = {
    # g = G + 0.01 p; p -= 0.1 g:  p1 = 1 - 0.1*0.51, -2 + 0.1*1.02
    "sgd": (dict(optimizer="sgd", weight_decay=0.01), [0.949, -1.898], None),
    # v1 = G1, p1 = P0 - 0.1 v1;  v2 = 0.9 v1 + G2 = [0.2, 1.1], p2 = p1 - 0.1 v2
    "momentum": (dict(optimizer="sgd", momentum=0.9), [0.95, -1.9], [0.93, -2.01]),
    # step = G + 0.9 v:  [0.95, -1.9] then [-0.07, 2.99]
    "nesterov": (dict(optimizer="sgd", momentum=0.9, nesterov=True), [0.905, -1.81],
                 [0.912, -2.109]),
    # with weight decay 0.01: g1 = [0.51, -1.02], v1 = g1, p1 = [0.949, -1.898];
    # g2 = G2 + 0.01 p1 = [-0.24051, 1.98102], v2 = 0.9 v1 + g2 = [0.21849, 1.06302]
    "momentum_wd": (dict(optimizer="sgd", momentum=0.9, weight_decay=0.01),
                    [0.949, -1.898], [0.927151, -2.004302]),
    # step 1: m^ = G1, v^ = G1^2, so p moves by lr * sign(G1) (eps 1e-8 aside)
    "adam": (dict(optimizer="adam"), [0.9, -1.9], None),
    # L2 decay (added to the gradient): step 1 is still lr * sign(g); the scalar oracle's
    # eight steps below see the decay
    "adam_l2": (dict(optimizer="adam", weight_decay=0.5), [0.9, -1.9], None),
    # AdamW: p *= 1 - 0.1*0.5 first ([0.95, -1.9]), then the same Adam move
    "adamw": (dict(optimizer="adamw", weight_decay=0.5), [0.85, -1.8], None),
}


def _make(model, optimizer, momentum=0.0, nesterov=False, weight_decay=0.0):
    if optimizer == "sgd":
        return optim.SGD(model, lr=0.1, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay)
    if optimizer == "adam":
        return optim.Adam(model, lr=0.1, weight_decay=weight_decay)
    return optim.AdamW(model, lr=0.1, weight_decay=weight_decay)


def _two_params():
    model = nn.mlp(1, [], 1, dtype=np.float64, seed=0)  # 1 weight + 1 bias
    model.params[:] = P0
    return model


@pytest.mark.parametrize("kind", sorted(HAND))
def test_optimizers_match_hand_computed_steps(kind):
    settings, after1, after2 = HAND[kind]
    model = _two_params()
    opt = _make(model, **settings)
    model.grads[:] = G1
    opt.step()
    np.testing.assert_allclose(model.params, after1, rtol=0, atol=2e-8)  # 2e-8: Adam's eps
    if after2 is not None:
        model.grads[:] = G2
        opt.step()
        np.testing.assert_allclose(model.params, after2, rtol=0, atol=1e-14)


def _scalar_oracle(settings, grads, lr):
    """PyTorch's update rules element by element in plain Python floats."""
    wd = settings.get("weight_decay", 0.0)
    mu, nest = settings.get("momentum", 0.0), settings.get("nesterov", False)
    p = list(P0)
    buf, m, v = [0.0] * len(p), [0.0] * len(p), [0.0] * len(p)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, (g_all, rate) in enumerate(zip(grads, lr), start=1):
        for i, g in enumerate(g_all):
            if settings["optimizer"] == "sgd":
                g = g + wd * p[i]
                if mu:
                    buf[i] = mu * buf[i] + g
                    g = g + mu * buf[i] if nest else buf[i]
                p[i] = p[i] - rate * g
            else:
                if settings["optimizer"] == "adamw":
                    p[i] = p[i] * (1 - rate * wd)
                else:
                    g = g + wd * p[i]
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                mhat, vhat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
                p[i] = p[i] - rate * mhat / (math.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("kind", sorted(HAND))
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_optimizers_follow_the_scalar_oracle(kind, backend, monkeypatch):
    """Eight steps with changing gradients and learning rates, on each CPU backend."""
    from hpcml import kernels
    monkeypatch.setattr(kernels, "_backend", backend)
    settings = HAND[kind][0]
    model = _two_params()
    opt = _make(model, **settings)
    rng = np.random.default_rng(3)
    grads = [list(rng.standard_normal(2) * 3) for _ in range(8)]
    lrs = [0.1 * (k + 1) / 8 for k in range(8)]
    for g, rate in zip(grads, lrs):
        model.grads[:] = g
        opt.step(lr=rate)
    # measured relative difference 0 to 2.1e-16 (operation order); 1e-13 leaves a wide margin; a
    # dropped term (bias correction, the Nesterov look-ahead, decay) moves p by > 1e-3
    np.testing.assert_allclose(model.params, _scalar_oracle(settings, grads, lrs),
                               rtol=1e-13, atol=0)


def test_optimizer_follows_a_rebound_gradient_buffer():
    """Built before DataParallel moves the gradients into its all-reduce buffer, the
    optimizer must still step with the gradients the model has now."""
    from mpi4py import MPI
    from hpcml.parallel import DataParallel
    model, ref = _model(), _model()
    opt = optim.SGD(model, lr=0.1)
    DataParallel(model, MPI.COMM_SELF)  # rebinds model.grads
    g = np.random.default_rng(0).standard_normal(model.size)
    model.grads[:] = g
    opt.step()
    np.testing.assert_allclose(model.params, ref.params - 0.1 * g, rtol=1e-14, atol=0)  # 1 ulp: FMA


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
    for bad, match in ((lambda: optim.SGD(m, lr=0), "SGD: lr must be > 0, got 0"),
                       (lambda: optim.SGD(m, momentum=1.0), r"momentum must be in \[0, 1\)"),
                       (lambda: optim.SGD(m, nesterov=True), "nesterov needs momentum > 0"),
                       (lambda: optim.Adam(m, betas=(1.0, 0.9)), r"Adam: betas must be in")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_clip_grad_norm():
    g = np.full(4, 3.0)
    assert optim.clip_grad_norm(g, 1.0) == 6.0
    assert math.isclose(np.linalg.norm(g), 1.0, rel_tol=1e-5)
