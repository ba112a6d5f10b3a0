"""Built-in test functions with their spaces and known minima (Surjanovic & Bingham's
Virtual Library of Simulation Experiments; the forms BoTorch and Optuna's benchmarks use).

    branin      x1 in [-5, 10], x2 in [0, 15]            f* = 0.397887 (three minima)
    hartmann6   x1..x6 in [0, 1]                          f* = -3.32237
    rosenbrock  x1..x4 in [-5, 10]                        f* = 0 at (1, 1, 1, 1)
"""
import math

import numpy as np

from .space import Param, Space


def branin(p):
    x1, x2 = p["x1"], p["x2"]
    b, c = 5.1 / (4 * math.pi ** 2), 5 / math.pi
    return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * \
        math.cos(x1) + 10


_H_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                 [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886],
                        [2329, 4135, 8307, 3736, 1004, 9991],
                        [2348, 1451, 3522, 2883, 3047, 6650],
                        [4047, 8828, 8732, 5743, 1091, 381]])
_H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(p):
    x = np.array([p[f"x{i}"] for i in range(1, 7)])
    return float(-np.sum(_H_ALPHA * np.exp(-np.sum(_H_A * (x - _H_P) ** 2, axis=1))))


def rosenbrock(p):
    x = [p[f"x{i}"] for i in range(1, 5)]
    return float(sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(3)))


BUILTIN = {
    "branin": (branin, Space([Param("x1", "float", -5.0, 10.0),
                              Param("x2", "float", 0.0, 15.0)]), 0.397887),
    "hartmann6": (hartmann6, Space([Param(f"x{i}", "float", 0.0, 1.0)
                                    for i in range(1, 7)]), -3.32237),
    "rosenbrock": (rosenbrock, Space([Param(f"x{i}", "float", -5.0, 10.0)
                                      for i in range(1, 5)]), 0.0),
}
