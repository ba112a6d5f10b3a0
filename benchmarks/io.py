#!/usr/bin/env python
"""I/O benchmark (= python -m hpcml.bench io; see hpcml/bench/io.py).

    mpiexec -n 2 python benchmarks/io.py --out benchmarks/results
"""
import sys

from hpcml.bench.io import main

if __name__ == "__main__":
    sys.exit(main())
