"""python -m hpcml.comm.selftest: check hpcml's collectives against the MPI library's.

Runs every collective and algorithm on a few sizes against MPI's own collective as the
oracle and prints a table on rank 0; exits 1 if anything differs. On a new cluster, run it
once under the real launcher (srun --mpi=pmi2 -n N python -m hpcml.comm.selftest).

Failure drills (what the test suite uses to prove no hangs):
  --fail-rank N   rank N raises while the others wait in an all-reduce: every rank must
                  end within seconds, with rank N's traceback prefixed "[rank N]".
  --hang-rank N   rank N sleeps while the others wait in an all-reduce; with HPCML_TIMEOUT
                  set, the waiting ranks report the step and peer and abort the job.
"""
import argparse
import sys
import time

import numpy as np
from mpi4py import MPI

from . import collectives as C
from .fusion import allreduce_many
from .guard import entry_point

_MPI_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}


def _data(n, dtype, rank):
    return ((np.arange(n) % 5) + rank + 1).astype(dtype)


def _cases(comm):
    p, rank = comm.Get_size(), comm.Get_rank()
    for n in (0, 1, p + 1, 1000, 100_003):
        for dtype in ("float32", "float64", "int32", "int64"):
            for op in ("sum", "max", "min", "prod"):
                for alg in ("ring", "tree", "rhd", "auto"):
                    buf, ref = _data(n, dtype, rank), _data(n, dtype, rank)
                    C.allreduce(buf, op, comm, alg, segment_bytes=4096)
                    comm.Allreduce(MPI.IN_PLACE, ref, op=_MPI_OPS[op])
                    yield f"allreduce {alg} {op} {dtype} n={n}", np.array_equal(buf, ref)
        for alg in ("ring", "tree", "auto"):
            for root in range(p):
                buf = _data(n, "float64", rank)
                ref = buf.copy()
                C.broadcast(buf, root, comm, alg)
                comm.Bcast(ref, root)
                yield f"broadcast {alg} root={root} n={n}", np.array_equal(buf, ref)
                buf = _data(n, "int64", rank)
                ref = np.empty_like(buf)
                comm.Reduce(buf, ref, MPI.SUM, root)
                C.reduce(buf, root, "sum", comm, alg)
                yield f"reduce {alg} root={root} n={n}", rank != root or np.array_equal(buf, ref)
    arrays = [_data(7, "float32", rank), _data(12, "float64", rank).reshape(3, 4)]
    refs = [a.copy() for a in arrays]
    allreduce_many(arrays, "sum", comm, bucket_bytes=64)
    for r in refs:
        comm.Allreduce(MPI.IN_PLACE, r)
    yield "allreduce_many", all(np.array_equal(a, r) for a, r in zip(arrays, refs))


@entry_point
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.comm.selftest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fail-rank", type=int, default=None)
    ap.add_argument("--hang-rank", type=int, default=None)
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if args.fail_rank is not None or args.hang_rank is not None:
        buf = np.ones(16)
        C.allreduce(buf.copy(), "sum", comm, "ring")  # set up: the drill is in the next one
        if rank == args.fail_rank:
            time.sleep(0.5)  # let the others block in the collective first
            raise RuntimeError(f"injected failure on rank {rank}")
        if rank == args.hang_rank:
            time.sleep(3600)
        C.allreduce(buf, "sum", comm, "ring")
        return 0
    failed = 0
    total = 0
    for name, ok in _cases(comm):
        ok = bool(comm.allreduce(int(ok), op=MPI.MIN))
        total += 1
        if not ok:
            failed += 1
            if rank == 0:
                print(f"FAIL {name}", flush=True)
    if rank == 0:
        print(f"hpcml.comm selftest on {comm.Get_size()} ranks: {total - failed}/{total} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
