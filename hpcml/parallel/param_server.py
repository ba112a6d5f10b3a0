"""A parameter server (ps-lite / MXNet KVStore's dist_sync and dist_async, Petuum's SSP,
Chen et al.'s backup workers) as a Trainer strategy on the workers and a loop on the servers.

    world ranks 0..W-1 are workers (rank 0 logs), W..W+K-1 servers
    server k holds shard k of the flat parameters (contiguous, equal bytes) and the
    optimizer state of that shard; the optimizer runs there (server-side SGD/Adam)

A worker step: forward and backward on its slice of the batch (the Trainer), then push: to
every server a header (float64: kind, clock, version read, rows, denominator, lr, flags) and
its gradient shard (isend, NumPy buffers); then pull: every server's reply (a header and the
parameter shard) into the model. Consistency (`mode`):

* ``bsp``: a server applies one update per round, the gradients of every active worker
  summed in worker order (the loss normalised by the global batch, as data parallelism: at
  the same global batch the parameters equal data-parallel training's), then replies to all.
* ``asp``: each push is applied when it arrives (as its worker's own mini-batch step: the
  gradient rescaled to a mean over its rows), and answered at once.
* ``ssp:S``: as asp, but a worker that is S steps ahead of the slowest active worker gets
  its reply only when the slowest catches up (per-worker clocks on the servers).
* ``backup:B``: each round applies the first W-B gradients to arrive (summed in worker
  order, rescaled to their rows); a gradient computed on an older round is dropped and
  counted, and its worker gets the current parameters.

Staleness, Petuum's clock measure: the server's version is its clock, the number of steps
every active worker has completed (a round in bsp and backup); an applied update's
staleness is the step its worker computed (its clock) minus the version of the parameters
it computed on. bsp and backup: 0; ssp:S: at most S; asp: unbounded (measured). Each
server keeps a histogram; server 0 sends its own to every worker at the end.

`--clip`: in bsp the servers clip each round's gradient by its global norm (the squares
summed over the servers), as data parallelism does; in the other modes each worker clips
its own push (its mean gradient), a worker-side clip of each update alone.

Errors end the job: an exception on any rank aborts every rank (hpcml.comm's entry point;
under the in-process communicator every rank's next wait raises), one message naming the
rank; workers do not agree on errors with each other (they are not in step in asp).
"""
import sys
from collections import Counter

import numpy as np

from hpcml import comm as hc
from hpcml import kernels as K

from .base import StepFlags, Strategy

TAG_PUSH_HDR, TAG_PUSH, TAG_PULL_HDR, TAG_PULL, TAG_STATE = 71, 72, 73, 74, 75
PUSH, DONE, STATE = 0.0, 1.0, 2.0
HDR = 8  # kind, clock, version read, rows, denominator, lr, flags, worker rank
MODES = ("bsp", "asp", "ssp", "backup")


class WorkerError(RuntimeError):
    """A parameter-server worker failed; it ends the job (not one of the agreed errors)."""


class PSError(ValueError):
    """A parameter-server layout or mode that cannot run; the message names the setting."""


def parse_mode(text, workers=None):
    """("bsp"|"asp"|"ssp"|"backup", bound): bsp, asp, ssp:S (S >= 0), backup:B (B >= 1,
    B < workers)."""
    name, _, arg = str(text).partition(":")
    if name not in MODES:
        raise PSError(f"consistency {text!r}: must be bsp, asp, ssp:S or backup:B")
    if name in ("bsp", "asp"):
        if arg:
            raise PSError(f"consistency {text!r}: {name} takes no bound")
        return name, 0
    try:
        bound = int(arg)
    except ValueError:
        raise PSError(f"consistency {text!r}: {name} needs an integer, e.g. {name}:2") \
            from None
    if name == "ssp" and bound < 0:
        raise PSError(f"consistency {text!r}: the staleness bound must be >= 0")
    if name == "backup" and (bound < 1 or (workers is not None and bound >= workers)):
        raise PSError(f"consistency {text!r}: backup workers B must be >= 1 and fewer than "
                      f"the {workers} workers (each round needs W - B >= 1 gradients)")
    return name, bound


def layout(P, servers):
    """(workers, servers) of P ranks, checked."""
    if servers < 1 or servers >= P:
        raise PSError(f"--servers {servers} with {P} ranks: need 1 <= servers < ranks (at "
                      f"least one worker)")
    return P - servers, servers


def shard_bounds(n, servers):
    """Server k's [lo, hi) of the flat parameters: contiguous, equal in bytes."""
    return [int(b) for b in hc.chunk_bounds(n, servers)]


class _Flat:
    """Parameters and gradients as an optimizer sees a model."""

    def __init__(self, params, grads):
        self.params, self.grads = params, grads
        self.size, self.dtype = params.size, params.dtype


class ParameterServer(Strategy):
    """The worker side (see the module docstring). `comm`: the world (workers first);
    `workers_comm`: the workers' own communicator (the loader and metrics use it)."""

    def __init__(self, model, comm, workers_comm, servers, mode="bsp"):
        self.model, self.world = model, comm
        self.comm = workers_comm  # the Trainer's: rank 0 logs, metrics
        self.mode, self.bound = parse_mode(mode)
        self.W, self.K = layout(comm.Get_size(), servers)
        self.rank = comm.Get_rank()
        self.servers = list(range(self.W, self.W + self.K))
        self.bounds = shard_bounds(model.size, self.K)
        self.version, self.clock = 0, 0
        self.comm_seconds = 0.0
        self._hdr = [np.zeros(HDR) for _ in self.servers]  # push headers, reused
        self._reply_hdr = [np.zeros(HDR) for _ in self.servers]  # pull headers, reused
        self.stats = None  # server 0's figures, after close()
        self._closed = False
        self.rows, self.denom = 0, 1
        self.tracer = None  # a parallel.trace.Tracer: push and pull spans
        self.epoch_staleness = Counter()  # this worker's pushes since the last epoch
        self._read, self._dropped = 0, False
        self._stop_asked = self._stop_seen = False
        self._opt_names = []  # the optimizer's state arrays (set by optimizer())
        self._serial = None  # worker 0: the parameters of the last state_dict()
        # a model on the GPU: gradients pushed from, parameters pulled into, pinned host
        # copies (the servers and MPI work on host memory)
        self._gh = self._ph = None
        if getattr(model, "device", "cpu") == "cuda":
            from numba import cuda
            self._gh = cuda.pinned_array(model.size, model.dtype)
            self._ph = cuda.pinned_array(model.size, model.dtype)

    def fail(self, error, step, epoch):
        """A worker's error (its data, say) is not agreed with the others (they are not in
        step in asp): raised here as a WorkerError naming the rank, which the entry point
        turns into one message and the end of every rank."""
        raise WorkerError(f"worker rank {self.rank}, training step {step} (epoch "
                          f"{epoch}): {error}") from error

    def backward(self, dy, accumulate=False, last=True, error=False, stop=False):
        self.model.backward(dy, accumulate, input_grad=False)

    def sync(self, error=False, stop=False):
        """This worker's error (raised on this rank, which ends the job) and the stop the
        servers announced: a stop asked here rides on this step's push, every server
        answers the round (bsp: every worker) with it, and each worker stops at its next
        step boundary, after a checkpoint (bsp: all at the same step)."""
        self._stop_asked = self._stop_asked or bool(stop)
        return StepFlags(1 if error else 0, 1 if self._stop_seen else 0)

    def optimizer(self, factory):
        """The optimizer runs on the servers: the worker's holds no state (an optimizer
        over zero parameters gives the Trainer its learning rate)."""
        empty = np.zeros(0, self.model.dtype)
        opt = factory(_Flat(empty, empty))
        self._opt_names = sorted(k for k, v in opt.state_dict().items()
                                 if isinstance(v, np.ndarray))
        return opt

    # --- checkpoints: worker 0 gathers the servers' state in the serial layout ----------
    def state_dict(self, optimizer):
        """Worker 0 (the checkpoint's writer): every server's parameter shard, optimizer
        state shards, step count and clocks, joined in the serial layout (each server's
        state as it is when the request arrives: in bsp after the round just answered).
        The other workers: {}."""
        if self.rank != 0:
            return {}
        n, dt = self.model.size, self.model.dtype
        params = np.zeros(n, dt)
        state = {name: np.zeros(n, dt) for name in self._opt_names}
        h = np.zeros(HDR)
        for k, s in enumerate(self.servers):
            lo, hi = self.bounds[k], self.bounds[k + 1]
            h[:] = 0
            h[0], h[7] = STATE, self.rank
            hc.send(h, s, TAG_PUSH_HDR, self.world)
            head, clocks = np.zeros(HDR), np.zeros(self.W)
            hc.recv(head, s, TAG_STATE, self.world)
            hc.recv(clocks, s, TAG_STATE, self.world)
            hc.recv(params[lo:hi], s, TAG_STATE, self.world)
            for name in self._opt_names:
                hc.recv(state[name][lo:hi], s, TAG_STATE, self.world)
            if k == 0:
                steps, version, kept = int(head[1]), int(head[0]), clocks.astype(int)
        self._serial = params
        return dict(state, steps=steps, ps_version=version, ps_clocks=kept.tolist())

    def serial_params(self):
        """Worker 0 after state_dict(): the servers' parameters; otherwise this worker's."""
        return self._serial if self._serial is not None else K.to_host(self.model.params)

    def load_state_dict(self, optimizer, state):
        """The servers load their own shards (train_ps.serve reads the checkpoint); a
        worker takes its clock and the version from it."""
        if "ps_clocks" in state:
            self.clock = int(state["ps_clocks"][min(self.rank, len(state["ps_clocks"]) - 1)])
            self.version = int(state["ps_version"])

    def step(self, optimizer, lr, clip=0.0):
        """Push this step's gradient shards (with lr), pull the parameters the servers
        answer with."""
        t = hc.wtime()
        g = self.model.grads
        if self._gh is not None:  # from the GPU: one copy into pinned memory
            g.copy_to_host(self._gh)
            g = self._gh
        if clip and self.mode != "bsp":  # bsp: the servers clip the round's gradient
            self._clip_own(g, clip)
        sends = []
        self._read = self.version
        span = self.tracer.span if self.tracer is not None else None
        if span is not None:  # the trace shows each push (its step and the version read)
            push = span("push", f"push step {self.clock} (read v{self.version})")
            push.__enter__()
        for k, s in enumerate(self.servers):
            lo, hi = self.bounds[k], self.bounds[k + 1]
            h = self._hdr[k]
            h[:] = (PUSH, self.clock, self.version, self.rows, self.denom, lr,
                    float(self._stop_asked), self.rank)
            sends.append(hc.isend(h, s, TAG_PUSH_HDR, self.world))
            sends.append(hc.isend(g[lo:hi], s, TAG_PUSH, self.world))
        if span is not None:
            push.__exit__(None, None, None)
            with span("pull", f"pull step {self.clock}"):
                self._pull()
        else:
            self._pull()
        hc.wait_all(sends)
        self.clock += 1
        self.comm_seconds += hc.wtime() - t
        # this step's staleness as the servers count it (asp/ssp: the step computed minus
        # the version read; rounds: 0 when applied, dropped when late)
        seen = self.clock - 1 - self._read if self.mode in ("asp", "ssp") else 0
        self.epoch_staleness["dropped" if self._dropped else seen] += 1

    def _clip_own(self, g, clip):
        """asp, ssp, backup: this push's gradient as the servers apply it (the mean over
        this worker's rows) clipped to L2 norm `clip`, PyTorch's rule (a worker-side clip:
        each update alone; a backup round's mean of clipped gradients stays within it)."""
        scale = self.denom / self.rows if self.rows and self.rows != self.denom else 1.0
        g64 = g.astype(np.float64)
        norm = float(np.sqrt(np.dot(g64, g64))) * scale
        coef = clip / (norm + 1e-6)
        if np.isfinite(norm) and coef < 1:
            g *= g.dtype.type(coef)

    def _pull(self):
        replies = []
        for k, s in enumerate(self.servers):
            lo, hi = self.bounds[k], self.bounds[k + 1]
            h = self._reply_hdr[k]
            replies.append((hc.irecv(h, s, TAG_PULL_HDR, self.world), h))
            replies.append((hc.irecv(self._pull_into()[lo:hi], s, TAG_PULL, self.world), None))
        for req, _ in replies:
            req.wait(polite=True)  # bsp: the slowest worker is computing
        if self._ph is not None:
            K.assign(self.model.params, self._ph)  # the pulled parameters onto the GPU
        self.version = int(replies[0][1][0])  # server 0's clock (all servers count alike)
        self._dropped = replies[0][1][1] > 0  # backup: this push came too late
        self._stop_seen = self._stop_seen or any(h[2] > 0 for _, h in replies
                                                 if h is not None)

    def _pull_into(self):
        """Where pulled parameters land: the model's (host) buffer, or the pinned copy."""
        return self._ph if self._ph is not None else self.model.params

    def set_rows(self, rows, denom):
        """The rows this worker's gradient covers and the loss's denominator (the
        Trainer's, before the step)."""
        self.rows, self.denom = rows, denom

    def allreduce_sums(self, values):
        """bsp: summed over the workers (they are in step); the other modes: this worker's
        own figures (a collective would make the fast workers wait for the slow)."""
        if self.mode == "bsp":
            return super().allreduce_sums(values)
        return np.asarray(values, np.float64).copy()

    def grad_bytes(self):
        return self.model.grads.nbytes

    def state_bytes(self, optimizer):
        return 0

    def epoch_metrics(self):
        """The epoch's staleness of this worker's updates (for --metrics and the epoch
        line): mean, max, and the count dropped (backup)."""
        c, self.epoch_staleness = self.epoch_staleness, Counter()
        applied = {k: v for k, v in c.items() if k != "dropped"}
        n = sum(applied.values())
        return {"staleness_mean": sum(k * v for k, v in applied.items()) / max(n, 1),
                "staleness_max": max(applied, default=0), "dropped": c.get("dropped", 0)}

    def close(self):
        """Tell every server this worker is done; receive the final parameters (after
        every worker is done) and server 0's figures."""
        if self._closed:
            return
        self._closed = True
        if sys.exc_info()[0] is not None:  # leaving on an error: it ends the job, no
            return  # handshake (the servers would wait for the other workers first)
        for s in self.servers:
            h = np.zeros(HDR)
            h[:3], h[7] = (DONE, self.clock, self.version), self.rank
            hc.send(h, s, TAG_PUSH_HDR, self.world)
        for k, s in enumerate(self.servers):
            lo, hi = self.bounds[k], self.bounds[k + 1]
            hc.recv(self._pull_into()[lo:hi], s, TAG_PULL, self.world)
        if self._ph is not None:
            K.assign(self.model.params, self._ph)
        self.stats = hc.bcast_object(None, root=self.W, comm=self.world)


class Server:
    """One server's loop (see the module docstring): shard k of `params` (the serial flat
    vector, the same initial values as the workers'), its optimizer from make_opt(flat)."""

    def __init__(self, comm, workers, k, servers, params, make_opt, mode="bsp", clip=0.0,
                 peers=None):
        self.comm, self.W, self.k = comm, workers, k
        self.clip, self.peers = float(clip), peers  # bsp --clip: the servers' communicator
        self.mode, self.bound = parse_mode(mode, workers)
        b = shard_bounds(params.size, servers)
        self.lo, self.hi = b[k], b[k + 1]
        self.params = params[self.lo:self.hi].copy()
        self.grads = np.zeros_like(self.params)
        self.opt = make_opt(_Flat(self.params, self.grads))
        n = self.hi - self.lo
        self.inbox = np.zeros((workers, n), params.dtype)  # each worker's last gradient
        self.heads = np.zeros((workers, HDR))
        self.clocks = np.zeros(workers, np.int64)  # steps applied (or received) per worker
        self.active = set(range(workers))
        self.version = 0
        self.staleness = Counter()
        self.dropped = 0
        self.waited = 0  # ssp: replies held back
        self.pending = []  # bsp/backup: workers whose gradient waits for the round
        self.held = []  # ssp: workers whose reply waits for the slowest
        self.updates = 0
        self.stop = 0.0  # told in replies: every worker stops at its next step
        # asked (a worker's push, a signal here); it becomes `stop` where a round starts
        # answering (bsp, backup: every worker of the round hears the same) or, in the
        # asynchronous modes, at the next reply
        self.stop_request = 0.0

    # --- the loop ----------------------------------------------------------------------
    def serve(self):
        """Until every worker said it is done; then the final shard to every worker, and
        the figures (a dict) on every server and worker from server 0."""
        h = np.zeros(HDR)
        while self.active:  # a server mostly waits: politely (the workers compute)
            hc.irecv(h, hc.ANY_SOURCE, TAG_PUSH_HDR, self.comm).wait(polite=True)
            src = int(h[7])
            if h[0] == DONE:
                self.active.discard(src)
                self._progress()
                continue
            if h[0] == STATE:
                self._send_state(src)
                continue
            self.stop_request = max(self.stop_request, h[6])
            self.heads[src] = h
            hc.recv(self.inbox[src], src, TAG_PUSH, self.comm)
            self._arrived(src)
        for w in range(self.W):
            hc.send(self.params, w, TAG_PULL, self.comm)
        stats = {"updates": self.updates, "dropped": self.dropped, "held": self.waited,
                 "staleness": {int(s): int(c) for s, c in sorted(self.staleness.items())},
                 "version": self.version}
        return hc.bcast_object(stats if self.k == 0 else None, root=self.W, comm=self.comm)

    def _arrived(self, w):
        h = self.heads[w]
        if self.mode in ("asp", "ssp"):
            self.stop = max(self.stop, self.stop_request)
            self._apply([w])
            self.clocks[w] += 1
            self._advance()
            if self.mode == "asp" or self._may_run(w):
                self._reply(w)
            else:
                self.held.append(w)
                self.waited += 1
            self._release()
            return
        if self.mode == "backup" and int(h[2]) < self.version:  # computed on an old round
            self.dropped += 1
            self._reply(w, dropped=True)
            return
        self.pending.append(w)
        self._progress()

    def _progress(self):
        """After an arrival or a worker's end: a round complete (bsp, backup) is applied
        and answered; ssp's held replies re-checked."""
        if self.mode in ("asp", "ssp"):
            self._advance()
            self._release()
            return
        need = len(self.active) if self.mode == "bsp" else \
            min(self.W - self.bound, len(self.active))
        if self.pending and len(self.pending) >= need:
            ws = sorted(self.pending)
            self.pending = []
            self._apply(ws)
            for w in ws:
                self.clocks[w] += 1
            self.version += 1
            self.stop = max(self.stop, self.stop_request)  # the same for the whole round
            for w in ws:
                self._reply(w)

    def _apply(self, ws):
        """One optimizer step on the sum of the gradients of workers ws (worker order),
        rescaled so that it is the mean over their rows."""
        heads = self.heads[ws]
        for w in ws:  # the step it computed minus the version it computed on (rounds:
            # the round applied minus the round read, 0 by construction)
            h = self.heads[w]
            self.staleness[int(h[1]) - int(h[2]) if self.mode in ("asp", "ssp")
                           else self.version - int(h[2])] += 1
        g = self.grads
        g[...] = self.inbox[ws[0]]
        for w in ws[1:]:
            g += self.inbox[w]
        rows, denom = heads[:, 3].sum(), heads[0, 4]
        if rows != denom and rows > 0:
            g *= g.dtype.type(denom / rows)
        if self.clip and self.mode == "bsp":
            self._clip_round(g)
        self.opt.step(lr=float(heads[0, 5]))
        self.updates += 1

    def _clip_round(self, g):
        """bsp: the round's gradient clipped by its global norm, the squares summed over
        the servers' shards (every server applies the same rounds in the same order), as
        data parallelism clips its all-reduced gradient."""
        sq = float(np.sum(g.astype(np.float64) ** 2))
        if self.peers is not None and self.peers.Get_size() > 1:
            sq = hc.reduce_value(sq, "sum", self.peers)
        norm = float(np.sqrt(sq))
        coef = self.clip / (norm + 1e-6)  # PyTorch's rule, as hpcml.kernels.clip_grad_norm
        if np.isfinite(norm) and coef < 1:
            g *= g.dtype.type(coef)

    def _advance(self):
        """asp/ssp: the version is the slowest active worker's clock."""
        live = [self.clocks[w] for w in self.active]
        self.version = int(min(live)) if live else int(self.clocks.max())

    def _may_run(self, w):
        return self.clocks[w] - self.version <= self.bound

    def _release(self):
        keep = []
        for w in self.held:
            if self._may_run(w) or w not in self.active:
                self._reply(w)
            else:
                keep.append(w)
        self.held = keep

    def _send_state(self, w):
        """A checkpoint's share: version, step count, clocks, the shard, its optimizer
        state arrays (sorted by name), to worker w."""
        h = np.zeros(HDR)
        h[0], h[1] = self.version, self.opt.steps
        hc.send(h, w, TAG_STATE, self.comm)
        hc.send(self.clocks.astype(np.float64), w, TAG_STATE, self.comm)
        hc.send(self.params, w, TAG_STATE, self.comm)
        state = self.opt.state_dict()
        for name in sorted(k for k, v in state.items() if isinstance(v, np.ndarray)):
            hc.send(np.ascontiguousarray(state[name]), w, TAG_STATE, self.comm)

    def load(self, ck_params, optim_state):
        """Resume: this shard of a checkpoint's serial parameters and optimizer state, the
        version and the clocks it recorded."""
        lo, hi = self.lo, self.hi
        self.params[...] = ck_params[lo:hi]
        mine = {k: (np.asarray(v)[lo:hi] if np.ndim(v) == 1 and np.size(v) == ck_params.size
                    else v) for k, v in optim_state.items() if not k.startswith("ps_")}
        self.opt.load_state_dict(mine)
        self.version = int(optim_state.get("ps_version", 0))
        clocks = optim_state.get("ps_clocks")
        if clocks is not None and len(clocks) == self.W:
            self.clocks[...] = clocks

    def _reply(self, w, dropped=False):
        h = np.zeros(HDR)
        h[0], h[1], h[2] = self.version, float(dropped), self.stop
        hc.send(h, w, TAG_PULL_HDR, self.comm)
        hc.send(self.params, w, TAG_PULL, self.comm)
