#!/usr/bin/env python
"""PCA and t-SNE against scikit-learn and openTSNE (= python -m hpcml.bench dimred; see
hpcml/bench/dimred.py).

    python benchmarks/dimred.py --out benchmarks/results
"""
import sys

from hpcml.bench.dimred import main

if __name__ == "__main__":
    sys.exit(main())
