"""python -m hpcml.data <synth|info|verify> ...: make and check sharded datasets.

    python -m hpcml.data synth data/blobs --rows 100000 --features 32 --classes 10 --shards 8
    mpiexec -n 4 python -m hpcml.data synth data/big --rows 10000000 --features 64 --regression
    python -m hpcml.data convert table.csv data/table --shards 8 --label-column label \
        --test-fraction 0.1
    python -m hpcml.data info data/blobs
    mpiexec -n 4 python -m hpcml.data verify data/blobs
"""
import argparse
import os
import sys


from hpcml import comm as hc
from hpcml.comm.guard import entry_point


def main(argv=None):
    """Runs the command; a bad dataset or input ends every rank with the same one-line
    message on rank 0 and exit status 1 (no traceback, no abort)."""
    from hpcml.comm import CollectiveError
    from hpcml.config import ConfigError
    from hpcml.data import DataError
    try:
        return _main(argv)
    except ConfigError as e:  # a usage error: one message (rank 0), exit 2
        if hc.world().Get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except (DataError, CollectiveError) as e:
        if hc.world().Get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 1


@entry_point
def _main(argv=None):
    args = _parser().parse_args(argv)
    comm = hc.world()
    rank = comm.Get_rank()
    from hpcml import data
    if args.cmd == "synth":
        _check_synth(args)
    if args.cmd in ("synth", "convert"):
        from hpcml.data.output import abandon_output, begin_output, finish_output
        import time
        t0 = time.perf_counter()
        work = begin_output(args.output, args.overwrite, comm)
        try:
            out = _write(args, work, comm)
        except BaseException:
            abandon_output(args.output, work, comm)
            raise
        finish_output(args.output, work, comm)
        if rank == 0:  # each folder written, named as the user gave it
            if "shards" in out:  # synth, one dataset
                out = {args.output: out}
            elif args.cmd == "convert" and not args.test_fraction:
                out = {args.output: out["train"]}
            elif args.cmd == "convert":
                out = {os.path.join(args.output, k): v for k, v in out.items()}
            else:  # synth --test-rows: keyed by the work folder's train/ and test/
                out = {args.output + k[len(work):]: v for k, v in out.items()}
            for name, m in out.items():
                print(f"wrote {name}: {m['rows']:,} rows in {len(m['shards'])} shards")
            dropped = next(iter(out.values())).get("dropped_nonfinite")
            if dropped:
                lines = next(iter(out.values()))["dropped_lines"]
                kind = "lines" if args.input.endswith((".csv", ".txt")) else "rows"
                shown = ", ".join(map(str, lines[:5])) + (", ..." if dropped > 5 else "")
                print(f"left out {dropped:,} rows with a NaN or Inf feature ({kind} {shown})")
            import json  # the summary every job ends with: job, status, outputs, seconds
            print(json.dumps({"job": f"data {args.cmd}", "status": "done", "outputs": {
                name: os.path.abspath(name) for name in out}, "seconds":
                time.perf_counter() - t0, "ranks": comm.Get_size(), "rows": {
                name: m["rows"] for name, m in out.items()},
                "dropped_nonfinite": dropped or 0}), flush=True)
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


def _parser():
    """The command line: sub-commands synth, convert, info, verify, each flag with help
    and its default; no abbreviations, a mistyped flag gets "did you mean"."""
    from hpcml.config import _Parser

    class Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        def _get_help_string(self, action):  # a default where there is one to show
            if action.default is None or action.required or action.default is False:
                return action.help
            return super()._get_help_string(action)
    ap = _Parser(prog="python -m hpcml.data", description=__doc__, formatter_class=Fmt)
    import hpcml
    ap.add_argument("--version", action="version", version=f"hpcml {hpcml.__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{synth,convert,info,verify}")

    def parser(name, text):
        return sub.add_parser(name, help=text, description=text, formatter_class=Fmt)
    _synth_flags(parser("synth", "deterministic synthetic data: Gaussian blobs around random "
                        "class centres, or a random linear map plus noise (rank-parallel: "
                        "run it under mpiexec for big sets)"))
    _convert_flags(parser("convert", "CSV / .npy / .npz / .h5 -> sharded dataset (streamed; "
                          "rank-parallel under mpiexec)"))
    i = parser("info", "summarise a dataset (rows, features, classes, shards)")
    i.add_argument("path", help="a dataset folder or a built-in name (digits, digits:test)")
    v = parser("verify", "headers, every shard's checksum, and the values (NaN/Inf "
               "features, labels out of range)")
    v.add_argument("path", help="a dataset folder or a built-in name")
    v.add_argument("--no-scan", action="store_true", help="checksums only")
    return ap


def _synth_flags(s):
    """The synth sub-command's flags."""
    s.add_argument("output", help="folder to write (manifest.json + shards)")
    s.add_argument("--rows", type=int, required=True, help="rows (training rows with "
                   "--test-rows)")
    s.add_argument("--features", type=int, help="feature columns (needed but with --like)")
    kind = s.add_mutually_exclusive_group()
    kind.add_argument("--classes", type=int, help="classes (a classification dataset)")
    kind.add_argument("--regression", action="store_true",
                      help="real-valued targets instead of classes")
    s.add_argument("--shards", type=int, default=1, help="shard files (>= ranks that will "
                   "read it is a good choice)")
    s.add_argument("--seed", type=int, default=0, help="the data are a function of the seed "
                   "alone (not of the rank count)")
    s.add_argument("--test-rows", type=int, default=0, help="also write a test split of this "
                   "many rows from the same distribution: OUTPUT/train and OUTPUT/test "
                   "(train --data OUTPUT then finds both)")
    s.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="feature dtype")
    s.add_argument("--federated", metavar="ALPHA,BETA", help="FedProx's Synthetic(ALPHA, "
                   "BETA) over --clients clients (e.g. 1,1; --features 60 --classes 10 as "
                   "the paper); the last feature column is the client id (python -m "
                   "hpcml.federated --partition natural --client-column FEATURES)")
    s.add_argument("--like", choices=["digits"], help="rows made from a built-in dataset: "
                   "digits' 8x8 images shifted by up to a pixel, ink scaled, noise added "
                   "(train rows from digits:train, test rows from digits:test), e.g. "
                   "--rows 60000 --test-rows 10000 for an MNIST-sized set")
    s.add_argument("--drift", metavar="ROWS", help="a stream whose concept changes at these "
                   "row positions (e.g. 20000,40000: new class centres or linear map from "
                   "each; the manifest's generator.drift_points records them; python -m "
                   "hpcml.stream replays it)")
    s.add_argument("--clients", type=int, default=30, help="--federated: clients (sizes "
                   "follow a power law)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace a dataset already in OUTPUT (swapped in whole at the end)")
    s.add_argument("--log-every", type=float, default=30.0, help="seconds between rank 0's "
                   "progress lines when stderr is not a terminal (a bar when it is); 0: off")


def _convert_flags(c):
    """The convert sub-command's flags."""
    c.add_argument("input", help="a CSV file (header optional), .npy (label column inside), "
                   "or .npz/.h5 holding arrays x and y")
    c.add_argument("output", help="folder to write")
    c.add_argument("--shards", type=int, default=1, help="shard files")
    c.add_argument("--label-column", default="-1", help="index (negative from the end) or "
                   "header name")
    c.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="feature dtype")
    c.add_argument("--test-fraction", type=float, default=0.0, help="rows drawn (by --seed) "
                   "into OUTPUT/test; the rest go to OUTPUT/train")
    c.add_argument("--seed", type=int, default=0, help="seed of the test split")
    c.add_argument("--regression", action="store_true", help="real-valued targets")
    c.add_argument("--chunk-rows", type=int, default=65536, help="rows read per block "
                   "(bounds the memory)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace a dataset already in OUTPUT (swapped in whole at the end)")
    c.add_argument("--nonfinite", default="error", choices=["error", "drop"],
                   help="a row with a NaN or Inf feature: stop naming its line, or leave "
                   "it out (counted in the manifest's dropped_nonfinite)")
    c.add_argument("--log-every", type=float, default=30.0, help="seconds between rank 0's "
                   "progress lines when stderr is not a terminal (a bar when it is); 0: off")


def _check_synth(args):
    from hpcml.config import ConfigError
    if args.like:
        from hpcml.data.augment import check
        if args.federated or args.drift:
            raise ConfigError(f"--like and {'--federated' if args.federated else '--drift'}"
                              f": give one of them")
        try:
            check(args.like, args.features, args.classes, args.regression)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        args.features, args.classes = 64, 10
    elif args.features is None or (args.classes is None and not args.regression):
        raise ConfigError("synth needs --features and one of --classes / --regression "
                          "(or --like digits)")


def _write(args, folder, comm):
    from hpcml import data
    if args.cmd == "synth":
        fed = None
        if args.federated:
            from hpcml.data.fedsynth import parse
            fed = parse(args.federated)
        return data.synth(folder, args.rows, args.features, args.classes, args.regression,
                          args.shards, args.seed, args.dtype, comm=comm,
                          test_rows=args.test_rows, progress=args.log_every,
                          name=args.output, federated=fed, clients=args.clients,
                          like=args.like, drift=args.drift)
    # every rank converts its part of the input (streaming, bounded memory)
    return data.convert(args.input, folder, args.shards, args.label_column, args.dtype,
                        args.test_fraction, args.seed,
                        "regression" if args.regression else None, args.chunk_rows,
                        progress=args.log_every, comm=comm, nonfinite=args.nonfinite)


if __name__ == "__main__":
    sys.exit(main())
