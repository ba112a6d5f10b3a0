"""Where a step's time goes: per-rank spans merged into one Chrome trace, and live metrics
for Prometheus.

    tracer = Tracer(comm)                 # Tracer(None): records nothing, costs nothing
    with tracer.span("forward"): ...
    tracer.write("trace.json")            # collective: rank 0 writes every rank's spans

The trace is Chrome's trace-event JSON (`traceEvents`, complete "X" events in
microseconds, one process row per rank, named "rank N"): it opens in Perfetto
(ui.perfetto.dev) and chrome://tracing, as Horovod's timeline and PyTorch's profiler
traces do. Span kinds: data (waiting for the loader), forward, backward, allreduce
(the gradient sync), optimizer, checkpoint, evaluation.

`write_prometheus(path, values)` writes a node_exporter textfile-collector file (HELP and
TYPE lines, gauges named hpcml_*), atomically, so a scrape never reads half a file.
"""
import json
import time

from hpcml import comm as hc
from hpcml.atomic import atomic_write_bytes

KINDS = ("data", "forward", "backward", "allreduce", "optimizer", "checkpoint", "evaluation")


class _Span:
    __slots__ = ("tracer", "name", "label", "t0")

    def __init__(self, tracer, name, label=None):
        self.tracer, self.name, self.label = tracer, name, label or name

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        t1 = time.perf_counter()
        self.tracer.seconds[self.name] = self.tracer.seconds.get(self.name, 0.0) + t1 - self.t0
        if self.tracer.events is not None:
            self.tracer.events.append((self.label, self.t0, t1))
        return False


class Tracer:
    """Span timings per kind (always summed in `seconds`); events kept only when a trace
    file was asked for."""

    def __init__(self, comm=None, keep_events=False):
        self.comm = comm
        self.seconds = {}
        self.events = [] if keep_events else None
        self.origin = time.perf_counter()

    def span(self, name, label=None):
        """A context manager timing `name` (summed in `seconds`); the trace event is
        called `label` when given (e.g. a pipeline action "F3 s1" of kind "F")."""
        return _Span(self, name, label)

    def gather(self):
        """Collective: every rank's events gathered (as JSON) to rank 0, as one Chrome
        trace (a dict); None on the other ranks."""
        mine = [[n, round((a - self.origin) * 1e6, 1), round((b - a) * 1e6, 1)]
                for n, a, b in (self.events or [])]
        comm = self.comm if self.comm is not None else hc.self_comm()
        # a common time origin: each rank's clock offset from rank 0's, by wall clock
        wall = hc.gather_objects(time.time() - (time.perf_counter() - self.origin),
                                 root=None, comm=comm)
        every = hc.gather_objects(mine, root=0, comm=comm)
        if every is None:
            return None
        events = []
        for rank, spans in enumerate(every):
            shift = (wall[rank] - wall[0]) * 1e6
            events.append({"name": "process_name", "ph": "M", "pid": rank, "tid": 0,
                           "args": {"name": f"rank {rank}"}})
            events += [{"name": n, "cat": n, "ph": "X", "ts": ts + shift, "dur": dur,
                        "pid": rank, "tid": 0} for n, ts, dur in spans]
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"ranks": len(every)}}


def write_trace(path, trace):
    atomic_write_bytes(path, json.dumps(trace).encode())


#: gauge name -> help text (the values come from the Trainer's epoch entry)
GAUGES = {
    "step": "optimizer steps done",
    "epoch": "epochs done",
    "samples_per_second": "training samples per second (all ranks) in the last epoch",
    "train_loss": "mean training loss in the last epoch",
    "train_accuracy": "training accuracy in the last epoch",
    "test_accuracy": "test accuracy after the last epoch",
    "comm_fraction": "share of the last epoch spent in gradient communication",
    "data_wait_fraction": "share of the last epoch spent waiting for data",
}


def write_prometheus(path, values, labels=None):
    """A node_exporter textfile-collector file of the hpcml_* gauges in `values`."""
    tag = ("{" + ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items())) + "}"
           if labels else "")
    lines = []
    for name, help_text in GAUGES.items():
        if name in values and values[name] is not None:
            lines += [f"# HELP hpcml_{name} {help_text}", f"# TYPE hpcml_{name} gauge",
                      f"hpcml_{name}{tag} {float(values[name])!r}"]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
