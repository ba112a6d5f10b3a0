#!/usr/bin/env python
"""Training benchmark (= python -m hpcml.bench train; see hpcml/bench/train.py).

    python benchmarks/train.py --ranks 1,2,4 --out benchmarks/results
"""
import sys

from hpcml.bench.train import main

if __name__ == "__main__":
    sys.exit(main())
