"""Objectives for tests/test_tune.py (importable as tune_objectives:NAME with tests/ on
the path)."""
import math
import time

import numpy as np


def quadratic(p):
    return (p["x"] - 0.3) ** 2 + (0.0 if p.get("kind", "a") == "a" else 0.1)


def flaky(p):
    """Raises for x < 0.2, returns NaN for x > 0.8, else a quadratic."""
    if p["x"] < 0.2:
        raise RuntimeError(f"x = {p['x']:.3f} is too small")
    if p["x"] > 0.8:
        return float("nan")
    return (p["x"] - 0.5) ** 2


def slow(p):
    """A quadratic that takes 50 ms (the kill/resume test stops it mid-study)."""
    time.sleep(0.05)
    return (p["x"] - 0.3) ** 2 + (p["y"] - 0.6) ** 2


def sleepy(p):
    """Sleeps a time drawn from the parameters (0.1-1 s scaled by SCALE), returns x."""
    d = 0.1 + 0.9 * ((math.sin(1e3 * p["x"]) + 1) / 2)
    time.sleep(d * SCALE)
    return p["x"]


SCALE = 0.2


def curves(p, report):
    """Reports 9 'epochs' of a learning curve whose level is set by x; a pruned trial
    stops early."""
    for step in range(1, 10):
        report(step, (p["x"] - 0.3) ** 2 + 1.0 / step)
    return (p["x"] - 0.3) ** 2


def rng_free(p):
    return float(np.sum([p[k] for k in sorted(p)]))
