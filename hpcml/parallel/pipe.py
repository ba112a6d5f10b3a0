"""Pipeline parallelism: a model split into stages, run by a schedule (pipeline.py) over
hpcml.comm point-to-point on NumPy buffers.

    bounds = split(model, stages=4)                     # or balance(model, 4, x_sample)
    runner = PipelineRunner(model, bounds, make("1f1b", ranks=4, micro_batches=8), comm)
    loss = runner.step(x, y, denom=len(x))              # forward and backward of one step
    for opt in runner.optimizers(lambda m: optim.SGD(m, 0.1)): opt.step()

Every rank builds the same serial model (same seed), keeps the layers of its own stages as
stage models (their parameters and gradients in their own flat buffers, as
hpcml.nn.Sequential does) and drops the rest. A stage keeps, per micro-batch in flight,
what its layers cache for backward (their inputs and pre-activations), so several
micro-batches can be in flight; with recompute=True it keeps only the stage's input and
runs the forward again just before the backward. Messages: activations forward, input
gradients backward, one `isend` each (waited at the end of the step) and one blocking
`recv` where the schedule needs it, tagged by (micro-batch, stage, kind): the schedule's
order, which the replay checked, is the only order.

Stages on a GPU (their models moved with `to_device()`, as ModelParallel does for
--device cuda) compute there; what crosses a stage boundary goes through the host: the
output or input gradient is copied off the GPU into the message buffer, and a received
buffer is copied onto the GPU when its action runs (Megatron-LM and DeepSpeed send device
tensors over NCCL; with the mpich wheel's MPI, which is not CUDA-aware, the host is the
way). The arithmetic is the CPU run's, kernel for kernel.
"""
import os
import time

import numpy as np

from hpcml import comm as hc
from hpcml import kernels as K
from hpcml import nn

from .pipeline import ScheduleError, replay

_CACHE = ("x", "z", "mask")  # what hpcml.nn layers keep from forward for backward


class PipelineError(ValueError):
    """A layout that cannot be built: stages without layers, a schedule for another
    layout, a model with too few layers; the message names the setting."""


def split(model, stages, bounds=None):
    """Layer ranges [(lo, hi), ...] of `stages` stages: explicit `bounds` (the first layer
    of every stage after the first, e.g. [2, 5] for 3 stages), or as equal as possible in
    parameters (each stage at least one parameterised layer)."""
    n = len(model.layers)
    if bounds is not None:
        cuts = [0, *bounds, n]
        if len(cuts) != stages + 1 or any(b <= a for a, b in zip(cuts, cuts[1:])):
            raise PipelineError(f"stage bounds {list(bounds)}: need {stages - 1} increasing "
                                f"layer indices in 1..{n - 1}, each stage with a layer")
        out = list(zip(cuts, cuts[1:]))
    else:
        sizes = [0] * n
        for i, (lo, hi) in model.layer_regions().items():
            sizes[i] = hi - lo
        out = _partition([max(s, 0) + 1e-9 for s in sizes], stages, model)
    for s, (lo, hi) in enumerate(out):
        if not any(_params(layer) for layer in model.layers[lo:hi]):
            raise PipelineError(f"stage {s} (layers {lo}..{hi - 1}) has no parameterised "
                                f"layer: {model!r} has too few layers for {stages} stages")
    return out


def _params(layer):
    """Whether the layer has parameters (from its shapes: the model may be unallocated)."""
    return any(int(np.prod(shape)) for _, shape in layer.shapes())


def _partition(costs, stages, model):
    """Contiguous ranges of `costs` into `stages` parts minimising the largest part's sum
    (the linear partition problem, exact by dynamic programming), each part holding at
    least one parameterised layer."""
    n = len(costs)
    has = [bool(_params(layer)) for layer in model.layers]
    if sum(has) < stages:
        raise PipelineError(f"{model!r} has {sum(has)} parameterised layers, fewer than "
                            f"{stages} stages")
    pre = np.concatenate([[0.0], np.cumsum(costs)])
    cnt = np.concatenate([[0], np.cumsum(has)])
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                if best[k - 1][i] == inf or cnt[j] - cnt[i] < 1:
                    continue
                v = max(best[k - 1][i], pre[j] - pre[i])
                if v < best[k][j]:
                    best[k][j], cut[k][j] = v, i
    out, j = [], n
    for k in range(stages, 0, -1):
        i = cut[k][j]
        out.append((i, j))
        j = i
    return out[::-1]


def balance(model, stages, x, repeats=3):
    """Layer ranges balanced by each layer's measured forward + backward time plus its
    share of the parameters: cost = time / total time + parameters / total parameters.
    x: sample rows (an array), or a row count (random rows). Each layer is timed alone on
    temporaries (median of `repeats`), so the model may be unallocated
    (Sequential(allocate=False)): a rank measures without holding the whole model."""
    rng = np.random.default_rng(0)
    if np.ndim(x) == 0:
        h = rng.standard_normal((int(x), model.layers[0].fan_in)).astype(model.dtype)
    else:
        h = np.asarray(x, model.dtype)
    times = np.zeros(len(model.layers))
    sizes = np.zeros(len(model.layers))
    for i, layer in enumerate(model.layers):
        shapes = [shape for _, shape in layer.shapes()]
        tmp = [rng.standard_normal(shape).astype(model.dtype) * 0.1 for shape in shapes]
        grads = [np.zeros_like(t) for t in tmp]
        bound = (getattr(layer, "p", None), getattr(layer, "g", None))
        layer.bind(tmp, grads)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            y = layer.forward(h, train=True, rng=np.random.default_rng(0))
            layer.backward(np.ones_like(y), accumulate=True)
            ts.append(time.perf_counter() - t)
        times[i] = np.median(ts)
        sizes[i] = sum(t.size for t in tmp)
        h = layer.forward(h, train=False)
        layer.bind(*bound)
    cost = times / max(times.sum(), 1e-12) + sizes / max(sizes.sum(), 1)
    return _partition(list(cost + 1e-12), stages, model)


def stage_models(model, bounds, keep):
    """{stage: Sequential of its layers} for the stages in `keep`, with the serial model's
    parameter values (the serial model's layers are moved into them). An unallocated
    serial model (Sequential(allocate=False)) gives its initial values layer by layer, so
    a rank never holds more than its stages and one layer's temporaries."""
    regions = model.layer_regions()
    wanted = {i for s in keep for i in range(*bounds[s])}
    values = model.init_values(wanted) if model.params is None else None
    out = {}
    for s in keep:
        lo, hi = bounds[s]
        layers = model.layers[lo:hi]
        spans = [regions[i] for i in range(lo, hi) if i in regions]
        st = nn.Sequential(*layers, dtype=model.dtype) if values is None else \
            _filled(layers, model.dtype, values, lo)
        if spans and values is None:
            st.params[...] = model.params[spans[0][0]:spans[-1][1]]
        st.serial_range = (spans[0][0], spans[-1][1]) if spans else (0, 0)
        out[s] = st
    return out


def _filled(layers, dtype, values, first):
    """A Sequential of `layers` whose parameters are `values` ({serial layer index: arrays})."""
    st = nn.Sequential(*layers, dtype=dtype, seed=0)
    for k, layer in enumerate(layers):
        for p, v in zip(getattr(layer, "p", []) or [], values.get(first + k, [])):
            p[...] = v
    return st


def _nbytes(keep):
    """Bytes of a kept stage input or of kept layer caches (host or GPU arrays)."""
    if not isinstance(keep, list):
        return keep.nbytes
    return sum(v.nbytes for c in keep for v in c.values() if hasattr(v, "nbytes"))


def _host(a):
    """The contiguous host array to send: a GPU stage's output or input gradient is
    copied to the host (hpcml's point-to-point messages are host buffers: the mpich
    wheel's MPI is not CUDA-aware)."""
    return np.ascontiguousarray(K.to_host(a))


def _onto(st, a):
    """A received host array where stage `st` computes (copied to its GPU)."""
    if st.device != "cuda":
        return a
    from numba import cuda
    return cuda.to_device(a)


def _width_out(stage):
    for layer in reversed(stage.layers):
        if hasattr(layer, "fan_out"):
            return layer.fan_out
    raise PipelineError("a stage without a Linear layer")


def _width_in(stage):
    for layer in stage.layers:
        if hasattr(layer, "fan_in"):
            return layer.fan_in
    raise PipelineError("a stage without a Linear layer")


class PipelineRunner:
    """Runs one rank's part of a pipeline schedule (see the module docstring). `model`:
    the serial model, built the same on every rank; `bounds`: layer ranges per stage
    (split/balance); `schedule`: pipeline.make(...) for comm's size; loss: "ce" (softmax
    cross-entropy on class labels) or "mse"."""

    def __init__(self, model, bounds, schedule, comm, loss="ce", recompute=False,
                 tp_comm=None, cuda_aware=False):
        P = comm.Get_size() if comm is not None else 1
        if schedule.ranks != P:
            raise PipelineError(f"the {schedule.name} schedule is for {schedule.ranks} ranks; "
                                f"the pipeline communicator has {P}")
        if len(bounds) != schedule.stages:
            raise PipelineError(f"{len(bounds)} stages of layers for a schedule of "
                                f"{schedule.stages} stages ({schedule.ranks} ranks x "
                                f"{schedule.virtual} virtual)")
        replay(schedule)  # complete and deadlock-free, or ScheduleError here (every rank)
        self.comm, self.schedule, self.rank = comm, schedule, comm.Get_rank() if comm else 0
        self.loss, self.recompute = loss, bool(recompute)
        self.bounds = bounds
        self.mine = schedule.stages_of(self.rank)
        self.stages = stage_models(model, bounds, self.mine)
        self.tp_comm = tp_comm if tp_comm is not None and tp_comm.Get_size() > 1 else None
        if self.tp_comm is not None:  # each stage's Linear pairs split over the TP ranks
            from .tensor import tensor_parallel
            self.serial_stages = self.stages
            self.stages = {}
            for s, st in self.serial_stages.items():
                self.stages[s] = tensor_parallel(st, self.tp_comm, cuda_aware)
                self.stages[s].serial_range = st.serial_range
        self.S = schedule.stages
        if self.S * schedule.micro_batches * 2 > 32767:
            raise PipelineError("stages x micro-batches x 2 must stay below MPI's tag bound "
                                "32767")
        self.peak_bytes = 0  # the most bytes kept for backward at once on this rank
        self.tracer = None  # a parallel.trace.Tracer: a span per action and per wait
        self.polite = os.environ.get("HPCML_PIPE_WAIT", "") == "yield"
        self.correct = 0

    def to_device(self):
        """Move this rank's stage models to the current GPU (their buffers; the serial
        stages a TP split was made from stay on the host: layouts only)."""
        for st in self.stages.values():
            st.to_device()
        return self

    # --- one step ------------------------------------------------------------------------
    def _tag(self, kind, stage, micro):
        return (micro * self.S + stage) * 2 + kind

    def step(self, x, y, denom=None, rng=None, accumulate=False):
        """Forward and backward of the global batch (x, y) as the schedule's micro-batches
        (consecutive rows, as equal as possible; with fewer rows than micro-batches some
        are empty); gradients land in each stage model's `grads` (overwritten, or added to
        with accumulate). Returns this rank's sum of loss x rows (last stage; 0
        elsewhere) and sets `correct` (rows classified right there). Every rank passes
        the same x and y (only the first stage reads x and the last y). rng: a key
        (tuple of ints) for dropout: stage s of micro-batch m draws from
        default_rng((*key, s, m)), again when it recomputes."""
        M = self.schedule.micro_batches
        n = len(x)
        denom = max(n, 1) if denom is None else denom
        cuts = [n * i // M for i in range(M + 1)]
        if not accumulate:
            for st in self.stages.values():
                st.zero_grad()
        self.correct = 0
        saved, grads, sends, wtasks = {}, {}, [], {}
        self._loss_sum, self._kept = 0.0, 0
        posted = self._post_receives(cuts)
        span = self.tracer.span if self.tracer is not None else None
        for a in self.schedule.actions[self.rank]:
            if sends:  # MPI progresses a large (rendezvous) send only inside MPI calls:
                # test the pending ones between actions, or a receiver waits for this
                # rank's next blocking call
                sends = [(q, b) for q, b in sends if not q.test()]
            rng_a = None if rng is None else np.random.default_rng((*rng, a.stage, a.micro))
            args = (a, x, y, cuts, denom, rng_a, posted, saved, grads, sends, wtasks)
            if span is None:
                self._action(*args)
            else:
                # a trace shows the schedule, and its gaps: "F3 s1" (stage 1's forward of
                # micro-batch 3), summed by kind (pipeline F/B/W) in the run's span seconds
                with span(f"pipeline {a.kind}", f"{a.kind}{a.micro} s{a.stage}"):
                    self._action(*args)
        if sends:
            hc.wait_all([r for r, _ in sends])
        return self._loss_sum

    def _wait(self, req):
        if self.tracer is None:
            self._block(req)
        else:
            with self.tracer.span("pipeline wait"):
                self._block(req)

    def _block(self, req):
        """Wait for a receive: MPI's wait (it spins on its core), or with polite=True test
        and yield the core between tests, so that on a node with more ranks than cores a
        waiting stage does not take the core a computing stage needs."""
        if not self.polite:
            req.wait()
            return
        while not req.test():
            os.sched_yield()

    def _action(self, a, x, y, cuts, denom, rng, posted, saved, grads, sends, wtasks):
        """One action of the schedule (F, B or W of a stage and micro-batch)."""
        st = self.stages[a.stage]
        rows = cuts[a.micro + 1] - cuts[a.micro]
        if a.kind == "F":
            if a.stage == 0:
                h = np.ascontiguousarray(x[cuts[a.micro]:cuts[a.micro + 1]], st.dtype)
            else:
                req, h = posted.pop((0, a.stage - 1, a.micro))
                self._wait(req)
            out = st.forward(h, train=True, rng=rng)
            saved[(a.stage, a.micro)] = keep = self._keep(st, h)
            self._kept += _nbytes(keep)
            self.peak_bytes = max(self.peak_bytes, self._kept)
            if a.stage == self.S - 1:
                yy = y[cuts[a.micro]:cuts[a.micro + 1]]
                if self.loss == "ce":
                    lo, d = nn.cross_entropy(out, yy, denom=denom)
                    self.correct += int((K.to_host(out).argmax(axis=1) == yy).sum()) \
                        if rows else 0
                else:
                    lo, d = nn.mse(out, yy, denom=denom)
                self._loss_sum += lo * rows
                grads[(a.stage, a.micro)] = d
            else:
                buf = _host(out)
                sends.append((hc.isend(buf, self.schedule.owner(a.stage + 1),
                                       self._tag(0, a.stage, a.micro), self.comm), buf))
        elif a.kind == "W":  # the weight gradients B left (zero-bubble schedules)
            st.backward_weight(wtasks.pop((a.stage, a.micro)))
        else:  # B
            if a.stage == self.S - 1:
                dy = grads.pop((a.stage, a.micro))
            else:
                req, dy = posted.pop((1, a.stage + 1, a.micro))
                self._wait(req)
                dy = _onto(st, dy)
            keep = saved.pop((a.stage, a.micro))
            self._kept -= _nbytes(keep)
            self._restore(st, keep, rng)
            if self.schedule.split_w:  # input gradient now, weight gradient at W
                dx, wtasks[(a.stage, a.micro)] = st.backward_input(dy, a.stage > 0)
            else:
                dx = st.backward(dy, accumulate=True, input_grad=a.stage > 0)
            if a.stage > 0:
                buf = _host(dx)
                sends.append((hc.isend(buf, self.schedule.owner(a.stage - 1),
                                       self._tag(1, a.stage, a.micro), self.comm), buf))

    def _keep(self, st, h):
        """What micro-batch backward needs from its forward: the stage input (recompute)
        or every layer's caches."""
        if self.recompute:
            return h
        return [{k: getattr(layer, k, None) for k in _CACHE} for layer in st.layers]

    def _restore(self, st, keep, rng):
        """Put a micro-batch's forward state back before its backward."""
        if self.recompute:
            st.forward(keep, train=True, rng=rng)  # the caches again
            return
        for layer, c in zip(st.layers, keep):
            for k, v in c.items():
                if v is not None or hasattr(layer, k):
                    setattr(layer, k, v)

    def predict(self, x):
        """Forward only, train=False, the whole of x as one micro-batch stage by stage:
        the outputs (rows x outputs) on the rank that holds the last stage, None
        elsewhere. Every rank passes the same x."""
        out = None
        for s in sorted(self.mine):
            st = self.stages[s]
            if s == 0:
                h = np.ascontiguousarray(x, st.dtype)
            else:
                h = np.empty((len(x), _width_in(st)), st.dtype)
                hc.recv(h, self.schedule.owner(s - 1), self._tag(0, s - 1, 0), self.comm)
            y = _host(st.forward(h, train=False))
            if s == self.S - 1:
                out = y
            else:
                hc.send(y, self.schedule.owner(s + 1), self._tag(0, s, 0), self.comm)
        return out

    def _post_receives(self, cuts):
        """Every message this rank receives in the step, posted up front (irecv into its
        own buffer): a sender's data can move as soon as it is sent, while this rank
        computes. {(kind, sending stage, micro): (request, buffer)}."""
        posted = {}
        for a in self.schedule.actions[self.rank]:
            rows = cuts[a.micro + 1] - cuts[a.micro]
            st = self.stages[a.stage]
            if a.kind == "F" and a.stage > 0:
                key, src = (0, a.stage - 1, a.micro), self.schedule.owner(a.stage - 1)
                buf = np.empty((rows, _width_in(st)), st.dtype)
            elif a.kind == "B" and a.stage < self.S - 1:
                key, src = (1, a.stage + 1, a.micro), self.schedule.owner(a.stage + 1)
                buf = np.empty((rows, _width_out(st)), st.dtype)
            else:
                continue
            posted[key] = (hc.irecv(buf, src, self._tag(*key), self.comm), buf)
        return posted

    # --- parameters ----------------------------------------------------------------------
    def optimizers(self, make_opt):
        """{stage: make_opt(stage model)}: one optimizer per stage this rank holds."""
        return {s: make_opt(st) for s, st in self.stages.items()}

    def serial_params(self, size):
        """The serial model's flat parameter vector, assembled on every rank (a sum over
        the pipeline ranks of each rank's stages placed at their serial offsets; with
        tensor parallelism each stage first joins its shards over the TP ranks).
        Collective over the pipeline (and TP) communicators."""
        out = np.zeros(size, next(iter(self.stages.values())).dtype)
        for s, st in self.stages.items():
            a, b = st.serial_range
            if self.tp_comm is not None:  # the stage's shards joined over its TP ranks
                from .tensor import serial_params
                out[a:b] = serial_params(st, self.serial_stages[s], self.tp_comm)
            else:
                out[a:b] = K.to_host(st.params)
        if self.comm is not None and self.comm.Get_size() > 1:
            hc.allreduce(out, "sum", comm=self.comm, algorithm="ring")
        return out


__all__ = ["split", "balance", "stage_models", "PipelineRunner", "PipelineError",
           "ScheduleError"]
