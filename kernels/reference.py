"""NumPy reference versions of every kernel: the specification the compiled ones must match.

Each is written as the straightforward multi-pass NumPy expression of the published rule;
the Numba CPU and CUDA kernels in cpu/ and cuda/ have the same signatures.
"""
import numpy as np

ACTIVATIONS = ("identity", "relu", "tanh", "gelu")
_GELU_C = np.sqrt(2.0 / np.pi)


def matmul(a, b, out=None, trans_a=False, trans_b=False):
    """out = op(a) @ op(b), op = transpose when asked."""
    return np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)


def _act(z, act):
    if act == "identity":
        return z
    if act == "relu":
        return np.maximum(z, 0)  # nan stays nan
    if act == "tanh":
        return np.tanh(z)
    if act == "gelu":  # tanh approximation (Hendrycks & Gimpel; GPT-2)
        return 0.5 * z * (1 + np.tanh(_GELU_C * (z + 0.044715 * z ** 3)))
    raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")


def _act_grad(z, act):
    if act == "identity":
        return np.ones_like(z)
    if act == "relu":
        return np.where(z > 0, 1, np.where(np.isnan(z), np.nan, 0)).astype(z.dtype)
    if act == "tanh":
        return 1 - np.tanh(z) ** 2
    if act == "gelu":
        u = _GELU_C * (z + 0.044715 * z ** 3)
        t = np.tanh(u)
        du = _GELU_C * (1 + 3 * 0.044715 * z ** 2)
        return 0.5 * (1 + t) + 0.5 * z * (1 - t ** 2) * du
    raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")


def bias_act(x, bias, act="relu", out=None):
    """y = act(x + bias) for x (rows x features), bias (features). The sum is formed in the
    array dtype; the activation is evaluated in float64 and stored in the array dtype."""
    y = _act((x + bias).astype(np.float64), act).astype(x.dtype)
    if out is None:
        return y
    out[...] = y
    return out


def bias_act_backward(dy, x, bias, act="relu"):
    """Gradients of y = act(x + bias): (dx, dbias); the pre-activation is recomputed and
    the activation's derivative evaluated in float64, as in bias_act."""
    dz = (dy * _act_grad((x + bias).astype(np.float64), act)).astype(x.dtype)
    return dz, dz.sum(axis=0, dtype=np.float64).astype(x.dtype)


def softmax_xent(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and d loss/d logits."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(s[:, 0]) - z[rows, labels])) if n else 0.0
    grad = e / s
    grad[rows, labels] -= 1
    grad /= max(n, 1)
    return loss, grad.astype(logits.dtype, copy=False)


def sgd_update(params, grads, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """PyTorch's SGD: g += wd*p; v = mu*v + g; step = g + mu*v (Nesterov) or v; p -= lr*step."""
    g = grads + weight_decay * params if weight_decay else grads.copy()
    if momentum:
        velocity *= momentum
        velocity += g
        g = g + momentum * velocity if nesterov else velocity.copy()
    params -= lr * g
    return params


def adam_update(params, grads, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, decoupled=False):
    """Adam (Kingma & Ba) with bias correction; decoupled=True is AdamW (Loshchilov & Hutter):
    weight decay scales the parameters directly instead of being added to the gradient."""
    g = grads.copy()  # the gradient as passed, even if it aliases params
    if weight_decay and not decoupled:
        g += weight_decay * params
    if weight_decay and decoupled:
        params *= 1 - lr * weight_decay
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** step)
    vhat = v / (1 - beta2 ** step)
    params -= lr * mhat / (np.sqrt(vhat) + eps)
    return params


def clip_grad_norm(grads, max_norm):
    """Scale grads in place by max_norm / (norm + 1e-6) when that is below 1 (PyTorch's
    rule); returns the global L2 norm before clipping (accumulated in float64). A nan/inf
    norm leaves grads untouched and is returned, so the caller can skip the step."""
    norm = float(np.sqrt(np.sum(grads.astype(np.float64) ** 2)))
    coef = max_norm / (norm + 1e-6)  # PyTorch's clip_grad_norm_ rule
    if np.isfinite(norm) and coef < 1:
        grads *= grads.dtype.type(coef)
    return norm
