"""python -m hpcml.data <synth|info|verify> ...: make and check sharded datasets.

    python -m hpcml.data synth data/blobs --rows 100000 --features 32 --classes 10 --shards 8
    mpiexec -n 4 python -m hpcml.data synth data/big --rows 10000000 --features 64 --regression
    python -m hpcml.data convert table.csv data/table --shards 8 --label-column label \
        --test-fraction 0.1
    python -m hpcml.data info data/blobs
    mpiexec -n 4 python -m hpcml.data verify data/blobs
"""
import argparse
import sys


from hpcml import comm as hc
from hpcml.comm.guard import entry_point


def main(argv=None):
    """Runs the command; a bad dataset or input ends every rank with the same one-line
    message on rank 0 and exit status 1 (no traceback, no abort)."""
    from hpcml.comm import CollectiveError
    from hpcml.data import DataError
    try:
        return _main(argv)
    except (DataError, CollectiveError) as e:
        if hc.world().Get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 1


@entry_point
def _main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="deterministic synthetic data (rank-parallel)")
    s.add_argument("output")
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--features", type=int, required=True)
    kind = s.add_mutually_exclusive_group(required=True)
    kind.add_argument("--classes", type=int)
    kind.add_argument("--regression", action="store_true")
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    s.add_argument("--overwrite", action="store_true",
                   help="replace a dataset already in OUTPUT (swapped in whole at the end)")
    c = sub.add_parser("convert", help="CSV / .npy / .npz / .h5 -> sharded dataset")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--shards", type=int, default=1)
    c.add_argument("--label-column", default="-1", help="index (negative from the end) or "
                   "header name")
    c.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    c.add_argument("--test-fraction", type=float, default=0.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--regression", action="store_true", help="real-valued targets")
    c.add_argument("--chunk-rows", type=int, default=65536)
    c.add_argument("--overwrite", action="store_true",
                   help="replace a dataset already in OUTPUT (swapped in whole at the end)")
    i = sub.add_parser("info", help="summarise a dataset")
    i.add_argument("path")
    v = sub.add_parser("verify", help="headers, every shard's checksum, and the values "
                       "(NaN/Inf features, labels out of range)")
    v.add_argument("path")
    v.add_argument("--no-scan", action="store_true", help="checksums only")
    args = ap.parse_args(argv)
    comm = hc.world()
    rank = comm.Get_rank()
    from hpcml import data
    if args.cmd in ("synth", "convert"):
        from hpcml.data.output import abandon_output, begin_output, finish_output
        work = begin_output(args.output, args.overwrite, comm)
        try:
            out = _write(args, work, comm)
        except BaseException:
            abandon_output(args.output, work, comm)
            raise
        finish_output(args.output, work, comm)
        if rank == 0 and args.cmd == "synth":
            m = out
            print(f"wrote {args.output}: {m['rows']:,} rows in {len(m['shards'])} shards")
        elif rank == 0:
            for name, m in out.items():
                print(f"wrote {name}: {m['rows']:,} rows in {len(m['shards'])} shards")
    elif args.cmd == "info":
        if rank == 0:
            print(data.info(args.path))
    else:
        data.ShardedDataset(args.path, comm)  # headers: present, readable, shapes, dtypes
        n = data.verify(args.path, comm)
        msg = f"{args.path}: {n} shards, all checksums match"
        if not args.no_scan:
            rows = comm.allreduce(data.scan(args.path, comm))
            msg += f"; {rows:,} rows, all values valid"
        if rank == 0:
            print(msg)
    return 0


def _write(args, folder, comm):
    from hpcml import data
    if args.cmd == "synth":
        return data.synth(folder, args.rows, args.features, args.classes, args.regression,
                          args.shards, args.seed, args.dtype, comm=comm)
    # every rank converts its part of the input (streaming, bounded memory)
    return data.convert(args.input, folder, args.shards, args.label_column, args.dtype,
                        args.test_fraction, args.seed,
                        "regression" if args.regression else None, args.chunk_rows,
                        progress=True, comm=comm)


if __name__ == "__main__":
    sys.exit(main())
