"""Per-element math shared by the CPU and CUDA kernels, written once.

Plain Python over scalars (math only), compiled twice: inlined by Numba's CPU JIT in
cpu/elementwise.py and as CUDA device functions in cuda/elementwise.py. The rules follow
reference.py; zero/one arrive typed like the data so float32 work stays float32.
"""
import math

GELU_C = math.sqrt(2.0 / math.pi)


def act(z, code, zero):
    """Activation by code: 0 identity, 1 relu (keeps nan, as np.maximum), 2 tanh, 3 gelu
    (tanh approximation)."""
    if code == 1:
        return z if (z > 0 or z != z) else zero
    if code == 2:
        return math.tanh(z)
    if code == 3:
        return 0.5 * z * (1 + math.tanh(GELU_C * (z + 0.044715 * z * z * z)))
    return z


def act_grad(z, code, zero, one):
    """d act / dz at z (relu: 0 at 0, nan for nan)."""
    if code == 1:
        if z > 0:
            return one
        return zero if z == z else z
    if code == 2:
        t = math.tanh(z)
        return 1 - t * t
    if code == 3:
        u = GELU_C * (z + 0.044715 * z * z * z)
        t = math.tanh(u)
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * GELU_C * (1 + 3 * 0.044715 * z * z)
    return one


def sgd_step(p, g, v, lr, momentum, nesterov, weight_decay):
    """One parameter of PyTorch's SGD; returns (new p, new velocity)."""
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        v = momentum * v + g
        g = g + momentum * v if nesterov else v
    return p - lr * g, v


def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, bc1, bc2, one):
    """One parameter of Adam (decoupled: AdamW); returns (new p, new m, new v)."""
    if weight_decay != 0:
        if decoupled:
            p = p * (one - lr * weight_decay)
        else:
            g = g + weight_decay * p
    m = beta1 * m + (one - beta1) * g
    v = beta2 * v + (one - beta2) * g * g
    return p - lr * (m / bc1) / (math.sqrt(v / bc2) + eps), m, v


def combine(a, b, code):
    """code 0 sum, 1 prod, 2 max, 3 min, exactly as np.maximum/np.minimum: nan propagates,
    and of two equal values (+0 and -0) the second operand is returned."""
    if code == 0:
        return a + b
    if code == 1:
        return a * b
    if code == 2:
        return a if (a > b or a != a) else b
    return a if (a < b or a != a) else b
