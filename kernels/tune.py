"""Measure which CPU backend is fastest per kernel on this machine and use it for 'auto'.

    from hpcml.kernels import tune
    tune.autotune()          # about 5 s; updates hpcml.kernels.AUTO in place

Representative sizes: a 512^3 matmul, updates over 4M parameters, a 1024 x 512 layer and
1024 x 100 logits. Without calling it, AUTO holds the choices measured by
benchmarks/kernels.py on the CI machine.
"""
import functools
import time

import numpy as np


def median_time(f, reps=5, warmup=1):
    """Median seconds of `reps` calls of f() after `warmup` untimed calls."""
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def autotune(backends=("numpy", "cpu")):
    """Time each CPU backend on every kernel; set AUTO to the fastest. Returns the times."""
    from hpcml import kernels as K
    rng = np.random.default_rng(0)
    f32 = np.float32
    a = rng.standard_normal((512, 512)).astype(f32)
    n = 4 << 20
    p, g, m, v = (rng.standard_normal(n).astype(f32) for _ in range(4))
    v = np.abs(v)
    x = rng.standard_normal((1024, 512)).astype(f32)
    bias = rng.standard_normal(512).astype(f32)
    logits = rng.standard_normal((1024, 100)).astype(f32)
    labels = rng.integers(0, 100, 1024)
    cases = {
        "matmul": lambda be: K.matmul(a, a, backend=be),
        "bias_act": lambda be: K.bias_act(x, bias, "gelu", backend=be),
        "bias_act_backward": lambda be: K.bias_act_backward(x, x, bias, "relu", backend=be),
        "softmax_xent": lambda be: K.softmax_xent(logits, labels, backend=be),
        "sgd_update": lambda be: K.sgd_update(p, g, m, 1e-6, 0.9, backend=be),
        "adam_update": lambda be: K.adam_update(p, g, m, v, 10, 1e-6, backend=be),
        "clip_grad_norm": lambda be: K.clip_grad_norm(g, 1e30, backend=be),
        "reduce_into": lambda be: K.reduce_into(m, g, "max", backend=be),
    }
    times = {}
    for kernel, call in cases.items():
        times[kernel] = {be: median_time(functools.partial(call, be)) for be in backends}
        K.AUTO[kernel] = min(times[kernel], key=times[kernel].get)
    return times
