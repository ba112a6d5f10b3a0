"""Measure the cost model on this communicator and save it for HPCML_COMM_MODEL.

    mpiexec -n 4 python -m hpcml.bench calibrate --out results/model-p4.json
    HPCML_COMM_MODEL=results/model-p4.json mpiexec -n 4 python -m hpcml.train ...
"""
import argparse
import json
import sys


from hpcml import comm as hc
from hpcml.atomic import atomic_write_json
from hpcml.comm.model import allreduce_choices
from .common import environment, human


@hc.entry_point
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hpcml.bench calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=None, help="JSON file to write (rank 0)")
    args = ap.parse_args(argv)
    comm = hc.world()
    model = hc.calibrate(comm, reps=args.reps)
    p = comm.Get_size()
    choices = allreduce_choices(model, p, hc.config.segment_bytes)
    env = environment(comm)
    if comm.Get_rank() == 0:
        print(f"alpha {model.alpha * 1e6:.2f} us  beta {1e-9 / model.beta:.2f} GB/s  "
              f"gamma {1e-9 / model.gamma:.2f} GB/s")
        for name, ranks, pts in model.curves:
            print(f"allreduce {name:4s} on {ranks} ranks (us): "
                  + "  ".join(f"{human(n)}={t * 1e6:.0f}" for n, t in pts))
        print(f"auto at {p} ranks: " + ", ".join(f"{a} from {human(b)}" for b, a in choices))
        if args.out:
            atomic_write_json(args.out, {"model": json.loads(model.to_json()),
                                         "choice_from_bytes": choices, "environment": env})
            print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
