#!/usr/bin/env python
"""Kernel benchmark (= python -m hpcml.bench kernels; see hpcml/bench/kernels.py).

    python benchmarks/kernels.py --out benchmarks/results
"""
import sys

from hpcml.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
