"""Numba CPU-JIT kernels."""
