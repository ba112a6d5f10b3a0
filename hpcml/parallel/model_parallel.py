"""Data x pipeline x tensor parallelism as a Trainer strategy.

    strategy = ModelParallel(serial_model, comm, dp=2, pp=2, tp=2, schedule="1f1b",
                             micro_batches=8, zero=1)
    opt = strategy.optimizer(lambda m: optim.Adam(m, 1e-3))   # one per stage held here
    Trainer(serial_model, strategy, opt, loader, ...).fit()

World rank w = (d pp + p) tp + t is tensor-parallel rank t of pipeline stage p of
data-parallel replica d (TP ranks adjacent, then pipelines, as Megatron-LM places them).
Communicators: the pipeline (same d, t), the stage's replicas (same p, t: the DP axis),
the stage's TP ranks (same d, p) and one replica's pp x tp ranks (the model).

A Trainer micro-step is one pipeline step (`forward_backward`): the replica's slice of the
global micro-batch cut into the schedule's M micro-batches; accumulation adds more of them
before the optimizer step. `sync` sums each stage's gradients over its replicas (one
all-reduce per stage, or with ZeRO-1 a reduce-scatter: each replica keeps the optimizer
state of 1/dp of its stage), then one small all-reduce over the world carries the step's
two flags (a failed rank, a stop request: every rank learns both at the same step) and
the squared gradient norm summed over every shard, so --clip clips the global norm of the
serial model's gradient (a TP-replicated value counted once). Parameters and optimizer
state move to and from the serial layout (`serial_params`, `state_dict`), so checkpoints
written under one (dp, pp, tp) layout resume under any other.

On a GPU (device="cuda": every stage model moved there, as --device cuda does), the
stages compute on the device, activations and input gradients cross stage boundaries
through host buffers (pipe.py), the TP all-reduces and the replicas' gradient sum are
staged through pinned host memory (or passed to a CUDA-aware MPI, cuda_aware=True), and
what leaves the strategy (serial parameters, optimizer state, predictions) is a host copy.

DeepSpeed's pipeline engine allows ZeRO stage 1 only (stage 2 shards the gradients the
pipeline accumulates over micro-batches); so does this strategy.
"""
import numpy as np

from hpcml import comm as hc
from hpcml import kernels as K
from hpcml.comm.guard import agree

from .base import StepFlags, Strategy
from .pipe import PipelineError, PipelineRunner, balance, split
from .pipeline import ScheduleError, make
from .zero import ZeRO


def ranks_of(w, pp, tp):
    """(d, p, t) of world rank w."""
    return w // (tp * pp), (w // tp) % pp, w % tp


def _balanced(model, stages, rows):
    """Stage bounds balanced by measured time and parameters, or the error's message."""
    try:
        return balance(model, stages, rows)
    except PipelineError as e:
        return str(e)


class StageOptimizers:
    """The optimizers of the stages one rank holds, stepped together (what the Trainer
    sees as `optimizer`)."""

    def __init__(self, opts):
        self.opts = opts
        self.lr = next(iter(opts.values())).lr

    def step(self, lr=None):
        for o in self.opts.values():
            o.step(lr=lr)


class ModelParallel(Strategy):
    """DP x PP x TP over `comm` (see the module docstring). `model`: the serial model,
    built the same on every rank (its parameters are copied into the stages)."""

    def __init__(self, model, comm, dp, pp, tp=1, schedule="1f1b", micro_batches=None,
                 virtual=1, recompute=False, algorithm="auto", zero=0, bounds="params",
                 loss="ce", balance_rows=64, dp_comm=None, device="cpu",
                 cuda_aware=False):
        if dp * pp * tp != comm.Get_size():
            raise ValueError(f"dp x pp x tp = {dp} x {pp} x {tp} != {comm.Get_size()} ranks")
        self.comm, self.model, self.algorithm = comm, model, algorithm
        self.dp, self.pp, self.tp = dp, pp, tp
        self.layout = {"dp": dp, "pp": pp, "tp": tp}
        self.d, self.p, self.t = ranks_of(comm.Get_rank(), pp, tp)
        d, p, t = self.d, self.p, self.t
        self.pp_comm = hc.split(comm, d * tp + t, p)
        # the stage's replicas (the caller's, when it split them already for its loader)
        self.dp_comm = dp_comm if dp_comm is not None else hc.split(comm, p * tp + t, d)
        self.tp_comm = hc.split(comm, d * pp + p, t)
        self.model_comm = hc.split(comm, d, p * tp + t)
        self.zero_stage = zero
        error, runner = None, None
        S = pp * virtual
        timed = None
        if bounds == "time":  # measured on rank 0 (times differ by rank): one cut for all
            timed = comm.bcast(_balanced(model, S, balance_rows) if comm.Get_rank() == 0
                               else None)
        try:
            if zero not in (0, 1):
                raise PipelineError(f"ZeRO stage {zero} with model parallelism: only stage 1 "
                                    "(DeepSpeed's pipeline engine allows 1 too: stage 2 "
                                    "shards the gradients the micro-batches accumulate)")
            sched = make(schedule, pp, micro_batches or 2 * pp, virtual)
            if timed is not None:
                if isinstance(timed, str):
                    raise PipelineError(timed)
                parts = timed
            else:
                parts = split(model, S, None if bounds == "params" else bounds)
            runner = PipelineRunner(model, parts, sched,
                                    self.pp_comm, loss=loss, recompute=recompute,
                                    tp_comm=self.tp_comm, cuda_aware=cuda_aware)
        except (PipelineError, ScheduleError, ValueError) as e:
            error = str(e)
        agree(comm, error, what="building the pipeline")
        self.device, self.staging = device, {}
        if device == "cuda":
            self._to_device(runner, cuda_aware)
        self.runner, self.stages = runner, runner.stages
        self.counts = runner.S - 1 in runner.mine and t == 0  # counts each row once
        self.zero = {s: ZeRO(st, self.dp_comm, algorithm, stage=1)
                     for s, st in self.stages.items()} if zero else None
        self._index()
        self.comm_seconds = 0.0
        self._norm_sq = 0.0
        self._rows = 0

    def _to_device(self, runner, cuda_aware):
        """The stages onto this rank's GPU (an allocation failure agreed on every rank),
        and per stage a pinned host buffer for the replicas' gradient sum."""
        from hpcml.nn import raise_device_memory
        from .staging import GradStaging
        error = None
        try:
            try:
                runner.to_device()
                if self.dp > 1 and not self.zero_stage:
                    self.staging = {s: GradStaging(st, cuda_aware)
                                    for s, st in runner.stages.items()}
            except Exception as e:  # CUDA_ERROR_OUT_OF_MEMORY, the simulator's MemoryError
                raise_device_memory(e, sum(2 * st.params.nbytes
                                           for st in runner.stages.values()),
                                    "this rank's pipeline stages")
        except MemoryError as e:
            error = f"rank {self.comm.Get_rank()}: {e}"
        agree(self.comm, error, what="placing the stages on the GPU")

    def _index(self):
        """Per stage: the serial position of each local element and whether this rank
        counts it (a value replicated over TP counted by t = 0)."""
        from .tensor import serial_index
        self.index = {}
        for s, st in self.stages.items():
            a = st.serial_range[0]
            if self.runner.tp_comm is not None:
                idx, owned = serial_index(st, self.runner.serial_stages[s], self.t == 0)
                self.index[s] = (a + idx, owned)
            else:
                self.index[s] = (a + np.arange(st.size, dtype=np.int64),
                                 np.ones(st.size, bool))

    # --- the step ------------------------------------------------------------------------
    def forward_backward(self, x, y, denom, rng=None, accumulate=False, target=None):
        """One pipeline step over this replica's rows; the metric sums [loss x rows,
        correct (regression: sum y), rows, sum y^2], non-zero on the counting ranks only."""
        self._rows = len(x)
        yy = y if target is None else (y - target[0]) / target[1]
        key = None if rng is None else (*rng, self.d)  # replicas draw their own masks
        loss = self.runner.step(x, yy, denom=denom, rng=key, accumulate=accumulate)
        if not self.counts:
            return np.zeros(4)
        if target is None:
            return np.array([loss, self.runner.correct, len(y), 0.0])
        y64 = y.astype(np.float64)
        return np.array([loss, y64.sum(), len(y), (y64 * y64).sum()])

    def skip_backward(self, micro_steps, first, stop=False):
        """This rank's data failed: it runs its part of the schedule on zeros (its
        pipeline peers wait for its messages) and keeps no gradients; the error is agreed
        on in sync()."""
        st0 = self.stages[min(self.stages)]
        x = np.zeros((self._rows, st0.layers[0].fan_in if hasattr(st0.layers[0], "fan_in")
                      else 1), st0.dtype)
        for _ in range(micro_steps):
            self.runner.step(x, np.zeros(self._rows, np.int64), denom=1)
        for st in self.stages.values():
            st.zero_grad()

    def sync(self, error=False, stop=False):
        t0 = hc.wtime()
        norm_sq = 0.0
        for s, st in self.stages.items():
            _, owned = self.index[s]
            if self.zero is not None:
                z = self.zero[s]
                z.sync()
                g, own = z.shard_grads(), owned[z.lo:z.hi]
            else:
                grads = self._replicas_sum(s, st)
                g, own = (grads, owned) if self.d == 0 else (grads[:0], owned[:0])
            g64 = K.to_host(g)[own].astype(np.float64)
            norm_sq += float(np.dot(g64, g64))
        v = np.array([1.0 if error else 0.0, 1.0 if stop else 0.0, norm_sq])
        hc.allreduce(v, "sum", comm=self.comm, algorithm="mpi")
        self._norm_sq = v[2]
        self.comm_seconds += hc.wtime() - t0
        return StepFlags(int(round(v[0])), int(round(v[1])))

    def _replicas_sum(self, s, st):
        """Stage s's gradients summed over its replicas (in place); returns them where
        the norm can read them (on the host: a GPU stage's staged copy)."""
        staging = self.staging.get(s)
        if self.dp == 1:
            return st.grads
        if staging is None:
            hc.allreduce(st.grads, "sum", comm=self.dp_comm, algorithm=self.algorithm)
            return st.grads
        if staging.cuda_aware:
            staging.allreduce_device(self.dp_comm, np.zeros(2))
            return st.grads
        n = st.size
        staging.all_to_host()  # the n gradients alone: the CPU run's call, the same bytes
        hc.allreduce(staging.host[:n], "sum", comm=self.dp_comm, algorithm=self.algorithm)
        staging.all_to_device()
        return staging.host[:n]

    def grad_norm(self):
        """The global L2 norm of the last step's summed gradient (the serial model's)."""
        return float(np.sqrt(self._norm_sq))

    def optimizer(self, factory):
        if self.zero is not None:
            return StageOptimizers({s: z.optimizer(factory) for s, z in self.zero.items()})
        return StageOptimizers({s: factory(st) for s, st in self.stages.items()})

    def step(self, optimizer, lr, clip=0.0):
        """Clip by the global norm (PyTorch's rule, as optim.clip_grad_norm), then each
        stage's optimizer step (ZeRO: its shard, then the parameters all-gathered)."""
        if clip:
            norm = self.grad_norm()
            coef = clip / (norm + 1e-6)
            if np.isfinite(norm) and coef < 1:
                for s, st in self.stages.items():
                    K.scale(self.zero[s].shard_grads() if self.zero else st.grads, coef)
        for s, o in optimizer.opts.items():
            if self.zero is not None:
                self.zero[s].step(o, lr, 0.0)
            else:
                o.step(lr=lr)

    # --- sizes ---------------------------------------------------------------------------
    def grad_bytes(self):
        """Gradient buffers (on a GPU: the device buffers and the pinned staging copies)."""
        staged = [g.host for g in self.staging.values()] + [
            z.staging.host for z in (self.zero or {}).values()
            if getattr(z, "staging", None) is not None]  # ZeRO-1's, on a GPU
        return sum(st.grads.nbytes for st in self.stages.values()) + \
            sum(h.nbytes for h in staged)

    def state_bytes(self, optimizer):
        return sum(v.nbytes for o in optimizer.opts.values()
                   for v in o.state_dict().values() if isinstance(v, np.ndarray))

    def param_bytes(self):
        return sum(st.params.nbytes for st in self.stages.values())

    # --- the serial layout ---------------------------------------------------------------
    def _to_serial(self, local, dtype):
        """{stage: local flat vector} -> the serial flat vector (collective over one
        replica's ranks: each element placed by the rank that counts it, the rest zeros,
        summed)."""
        out = np.zeros(self.model.size, dtype)
        for s, vec in local.items():
            idx, owned = self.index[s]
            out[idx[owned]] = K.to_host(vec)[owned]
        if self.model_comm.Get_size() > 1:
            hc.allreduce(out, "sum", comm=self.model_comm, algorithm="ring")
        return out

    def serial_params(self):
        """The serial model's flat parameters, on every rank (collective)."""
        return self._to_serial({s: st.params for s, st in self.stages.items()},
                               self.model.dtype)

    def load_serial_params(self, params):
        """Every stage's parameters (and TP shard) from the serial flat vector."""
        for s, st in self.stages.items():
            K.assign(st.params, params[self.index[s][0]])

    def state_dict(self, optimizer):
        """The optimizer state in the serial layout (collective): per-parameter arrays
        joined over ZeRO shards, TP shards and stages; scalars as they are."""
        states = {s: (self.zero[s].state_dict(o) if self.zero else o.state_dict())
                  for s, o in optimizer.opts.items()}
        first = next(iter(states.values()))
        out = {}
        for name, value in first.items():
            if isinstance(value, np.ndarray) and value.ndim == 1:
                out[name] = self._to_serial({s: st[name] for s, st in states.items()},
                                            value.dtype)
            else:
                out[name] = value
        return out

    def load_state_dict(self, optimizer, state):
        n = self.model.size
        for s, o in optimizer.opts.items():
            idx = self.index[s][0]
            mine = {k: (np.asarray(v)[idx] if np.ndim(v) == 1 and np.shape(v) == (n,) else v)
                    for k, v in state.items()}
            if self.zero is not None:
                self.zero[s].load_state_dict(o, mine)
            else:
                o.load_state_dict(mine)

    def predict(self, x):
        """Forward only through the pipeline: the outputs on the counting rank (last
        stage, TP rank 0), None elsewhere. Every rank of a replica passes the same x."""
        out = self.runner.predict(x)
        return out if self.counts else None

    def close(self):
        if self.zero is not None:
            for z in self.zero.values():
                z.close()
