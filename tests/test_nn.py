"""hpcml.nn: gradients against central finite differences (float64), layout, losses."""
import numpy as np
import pytest

from hpcml import nn


def _numeric_grad(f, params, eps=1e-6):
    g = np.empty_like(params)
    for i in range(params.size):
        old = params[i]
        params[i] = old + eps
        up = f()
        params[i] = old - eps
        down = f()
        params[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
@pytest.mark.parametrize("loss", ["xent", "mse"])
def test_gradients_match_finite_differences(act, loss):
    rng = np.random.default_rng(1)
    model = nn.mlp(5, [7, 6], 4, activation=act, dtype=np.float64, seed=3)
    x = rng.standard_normal((9, 5))
    y = rng.integers(0, 4, 9) if loss == "xent" else rng.standard_normal((9, 4))
    lossf = nn.cross_entropy if loss == "xent" else nn.mse

    def value():
        return lossf(model.forward(x), y)[0]
    _, dout = lossf(model.forward(x), y)
    dx = model.backward(dout)
    numeric = _numeric_grad(value, model.params)
    np.testing.assert_allclose(model.grads, numeric, rtol=1e-5, atol=1e-7)
    # d loss / d input too
    xs = x.ravel()

    def value_x():
        return lossf(model.forward(xs.reshape(x.shape)), y)[0]
    np.testing.assert_allclose(dx.ravel(), _numeric_grad(value_x, xs), rtol=1e-5, atol=1e-7)


def test_dropout_gradient_with_fixed_mask():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3),
                          dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 4))
    y = np.arange(8) % 3

    def value():
        return nn.cross_entropy(model.forward(x, rng=np.random.default_rng(7)), y)[0]
    _, d = nn.cross_entropy(model.forward(x, rng=np.random.default_rng(7)), y)
    model.backward(d)
    np.testing.assert_allclose(model.grads, _numeric_grad(value, model.params), rtol=1e-5,
                               atol=1e-7)
    out = model.forward(x, train=False)  # evaluation: no dropout, no rng needed
    np.testing.assert_array_equal(out, model.forward(x, train=False))
    with pytest.raises(ValueError, match="needs an rng"):
        model.forward(x)


def test_flat_buffers_and_views():
    model = nn.mlp(3, [4], 2, seed=0)
    assert model.size == 3 * 4 + 4 + 4 * 2 + 2 and model.params.dtype == np.float32
    W = model.layers[0].p[0]
    assert np.shares_memory(W, model.params) and W.shape == (3, 4)
    model.params[:] = 0
    assert not W.any()
    a, b = nn.mlp(3, [4], 2, seed=5), nn.mlp(3, [4], 2, seed=5)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, nn.mlp(3, [4], 2, seed=6).params)
    # PyTorch's default init bound 1/sqrt(fan_in)
    assert np.abs(a.layers[0].p[0]).max() <= 1 / np.sqrt(3)


def test_accumulate_adds_and_denom_splits_the_mean():
    """Two half batches with denom = the whole batch, accumulated, equal the whole batch."""
    rng = np.random.default_rng(2)
    model = nn.mlp(5, [8], 3, dtype=np.float64, seed=1)
    x, y = rng.standard_normal((10, 5)), rng.integers(0, 3, 10)
    model.backward(nn.cross_entropy(model.forward(x), y)[1])
    whole = model.grads.copy()
    model.backward(nn.cross_entropy(model.forward(x[:4]), y[:4], denom=10)[1])
    model.backward(nn.cross_entropy(model.forward(x[4:]), y[4:], denom=10)[1],
                   accumulate=True)
    np.testing.assert_allclose(model.grads, whole, rtol=1e-12, atol=1e-15)


def test_bad_arguments():
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match="init must be"):
        nn.Linear(2, 3, init="zeros")
    with pytest.raises(ValueError, match="activation must be"):
        nn.mlp(2, [3], 2, activation="swish")
    with pytest.raises(ValueError, match="input must be rows x 2"):
        nn.mlp(2, [3], 2).forward(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="dtype must be"):
        nn.Sequential(nn.Linear(2, 2), dtype=np.int32)


def test_backward_hook_sees_each_layers_final_gradients():
    """on_layer(i) runs as soon as layer i's gradients are complete, last layer first: what
    a strategy all-reduces there is what the whole backward pass leaves."""
    model = nn.mlp(5, [7, 6], 3, dtype=np.float64, seed=2)
    x = np.random.default_rng(0).standard_normal((4, 5))
    _, dl = nn.cross_entropy(model.forward(x), np.array([0, 1, 2, 1]))
    seen = {}
    regions = {}
    for i, _, shape, off in model.layout:
        lo, hi = regions.get(i, (off, off))
        regions[i] = (min(lo, off), max(hi, off + int(np.prod(shape))))
    order = []

    def hook(i):
        order.append(i)
        if i in regions:
            seen[i] = model.grads[slice(*regions[i])].copy()
    assert model.backward(dl, input_grad=False, on_layer=hook) is None
    assert order == list(range(len(model.layers) - 1, -1, -1))
    for i, g in seen.items():
        np.testing.assert_array_equal(g, model.grads[slice(*regions[i])])
    assert len(seen) == 3 and all(np.abs(g).sum() > 0 for g in seen.values())
