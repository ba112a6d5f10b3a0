#!/usr/bin/env python
"""All-reduce benchmark: hpcml's ring/tree/rhd/auto against MPI_Allreduce.

Same as `python -m hpcml.bench allreduce` (see hpcml/bench/allreduce.py for the method):

    mpiexec -n 2 python benchmarks/allreduce.py --out benchmarks/results
    mpiexec -n 4 python benchmarks/allreduce.py --out benchmarks/results

Writes allreduce-p<ranks>.json (one record per algorithm and size) and a PNG of bus
bandwidth and latency against message size.
"""
import sys

from hpcml.bench.allreduce import main

if __name__ == "__main__":
    sys.exit(main())
