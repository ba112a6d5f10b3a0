"""The training loop, written once for every strategy.

    trainer = Trainer(model, strategy, optimizer, loader, schedule, total=steps,
                      accumulation=K, global_rows=rows_of_micro_batch, ...)
    history, stopped = trainer.fit()

The Trainer owns: the step loop over the loader's epochs (resuming mid-epoch from the
loader's position), gradient accumulation (K micro-steps, the loss normalised by the global
rows of the step), errors agreed at the step they happen (a data error on one rank rides on
the gradient sync and is raised, with its message, on every rank), the stop flag
(SIGTERM/SIGUSR1 or a callback, agreed the same way), per-epoch metrics averaged over
ranks, the checkpoint cadence (each epoch, every N steps, the last step, on a stop), and
callbacks. The Strategy (base.py) owns how gradients and parameters move.

Callbacks: objects with optional `on_step(trainer, step)` and `on_epoch(trainer, entry)`;
returning True asks the run to stop. on_step's request rides on the next step's sync;
on_epoch's is summed over ranks at once; either way every rank stops at the same step,
after a checkpoint.
"""
import json
import signal
import sys
import time

import numpy as np

from hpcml import kernels as K
from hpcml import nn
from hpcml.comm.guard import agree
from hpcml.data import DataError

from .trace import Tracer, write_prometheus


class Preemption:
    """SIGTERM/SIGUSR1, and a first SIGINT (Ctrl-C), set a flag; the ranks agree on it at
    the next step boundary (checkpoint, one line, exit: 130 after Ctrl-C). A second SIGINT
    aborts the job at once."""

    def __init__(self):
        self.requested = False
        self.interrupted = False  # a SIGINT arrived
        self.old = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            try:
                self.old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (in-process ranks)
                pass

    def _handler(self, signum, frame):
        if signum == signal.SIGINT:
            if self.interrupted:
                from hpcml.comm.guard import abort
                abort("second Ctrl-C (SIGINT): aborting without a checkpoint", 130)
            self.interrupted = True
        self.requested = True

    def restore(self):
        for sig, h in self.old.items():
            signal.signal(sig, h)


class Trainer:
    """One training run (see the module docstring). `checkpoint()` saves the run's state
    (the caller's writer: it reads trainer.step and the loader's position); `evaluate()`
    returns (accuracy, loss) on held-out data, the same on every rank."""

    def __init__(self, model, strategy, optimizer, loader, schedule, *, total,
                 accumulation=1, global_rows=None, transform=None, seed=0, dropout=False,
                 clip=0.0, step=0, checkpoint=None, checkpoint_every=0, evaluate=None,
                 metrics=None, callbacks=(), log=print, progress=False, on_rank0=None,
                 tracer=None, prometheus=None, log_every=30.0, target=None, run_id=None):
        self.model, self.strategy, self.optimizer = model, strategy, optimizer
        self.loader, self.schedule, self.total = loader, schedule, int(total)
        self.K, self.step = int(accumulation), int(step)
        self.global_rows = global_rows or (lambda micro: loader.batch_size)
        self.transform = transform or (lambda x: x)
        self.seed, self.dropout, self.clip = seed, dropout, clip
        self.checkpoint, self.checkpoint_every = checkpoint, int(checkpoint_every)
        self.evaluate, self.metrics, self.callbacks = evaluate, metrics, list(callbacks)
        self.log, self.progress, self.on_rank0 = log, progress, on_rank0
        self.comm = strategy.comm
        self.rank = self.comm.Get_rank() if self.comm is not None else 0
        self.history, self.stopped, self.stop_reason = [], False, None
        self.tracer = tracer if tracer is not None else Tracer(self.comm)
        self.prometheus = prometheus
        self._callback_stop = False
        self.log_every = float(log_every)
        self._ticker = None
        self._step_rows = 0
        self.run_id = run_id  # written with every --metrics line
        # regression: (mean, std) of the targets; the network learns (y - mean) / std with
        # the MSE loss, and the metrics (RMSE, R^2) are in the targets' units
        self.target = None if target is None else (float(target[0]), float(target[1]))
        self.on_gpu = getattr(model, "device", "cpu") == "cuda" and \
            not hasattr(strategy, "forward_backward")

    # --- one optimizer step ------------------------------------------------------------
    def _micro_steps(self, it, first, last, stop):
        """Forward/backward of micro-batches first..last-1; (error or None, sums)."""
        denom = sum(self.global_rows(m) for m in range(first, last))
        self._step_rows = denom
        sums = np.zeros(4)  # loss*rows, correct (regression: sum y), rows, sum y^2
        span = self.tracer.span
        for m in range(first, last):
            try:
                with span("data"):
                    x, y = next(it)
            except (DataError, OSError) as e:  # agreed on in the sync below
                self.strategy.skip_backward(last - m, first=m == first, stop=stop)
                return e, sums
            pipeline = getattr(self.strategy, "forward_backward", None)
            if pipeline is not None:  # the strategy runs forward and backward itself
                with span("pipeline"):
                    sums += pipeline(self.transform(x), y, denom, (self.seed, self.step, m)
                                     if self.dropout else None, accumulate=m > first,
                                     target=self.target)
                continue
            rng = np.random.default_rng([self.seed, self.step, m, self.rank]) \
                if self.dropout else None
            if hasattr(self.strategy, "before_forward"):  # Hogwild's locked variant
                self.strategy.before_forward()
            with span("forward"):
                out = self.model.forward(x if self.on_gpu else self.transform(x),
                                         train=True, rng=rng)
                if self.target is None:
                    loss, dl = nn.cross_entropy(out, y, denom=denom)
                    hits = float((K.to_host(out).argmax(axis=1) == y).sum())
                else:
                    mean, std = self.target
                    loss, dl = nn.mse(out, (y - mean) / std, denom=denom)
                    y64 = y.astype(np.float64)
                    hits = (float(y64.sum()), float((y64 * y64).sum()))
            with span("backward"):
                self.strategy.backward(dl, accumulate=m > first, last=m == last - 1,
                                       error=False, stop=stop)
            sums += ((loss * len(y), hits, len(y), 0.0) if self.target is None else
                     (loss * len(y), hits[0], len(y), hits[1]))
        return None, sums

    def _optimizer_step(self, it, micro, epoch, stop):
        last = min(len(self.loader), micro + self.K)
        failed, sums = self._micro_steps(it, micro, last, stop)
        rows = getattr(self.strategy, "set_rows", None)
        if rows is not None:  # a parameter server's push says whose rows and what denom
            rows(sums[2], self._step_rows)
        with self.tracer.span("allreduce"):
            flags = self.strategy.sync(error=failed is not None, stop=stop)
        if flags.failed:  # agreed among the ranks in step (a parameter server's workers
            # are not: its strategy raises the error where it happened, ending the job)
            if failed is not None and hasattr(self.strategy, "fail"):
                self.strategy.fail(failed, self.step, epoch)
            agree(self.comm, str(failed) if failed else None,
                  what=f"training step {self.step} (epoch {epoch})")
        with self.tracer.span("optimizer"):
            self.strategy.step(self.optimizer, self.schedule(self.step), self.clip)
        self.step += 1
        return last, sums, flags

    # --- an epoch ------------------------------------------------------------------------
    def _epoch(self, preempt, bar):
        """Steps until the epoch ends, the run's last step, or a stop; the epoch's sums."""
        loader = self.loader
        epoch, micro = loader.epoch, loader.batches_done
        sums = np.zeros(5)  # loss*rows, correct (sum y), rows, sum y^2, steps
        it = iter(loader)
        if self.on_gpu:  # batches staged to the GPU one ahead (pinned memory, a stream)
            from .staging import BatchFeeder
            it = BatchFeeder(it, self.transform, self.model.dtype)
        try:
            while micro < len(loader) and self.step < self.total:
                stop = preempt.requested or self._callback_stop
                micro, s, flags = self._optimizer_step(it, micro, epoch, stop)
                sums += (*s, 1)
                if bar is not None:
                    bar.update(1)
                elif self._ticker is not None:
                    self._ticker.tick(self, micro, len(loader), s)
                if flags.stop:
                    loader.batches_done = micro  # the micro-batches consumed so far
                    self._save()
                    self.stopped = True
                    if self.rank == 0:
                        why = self.stop_reason or ("Ctrl-C" if preempt.interrupted else
                                                   "signal")
                        self.log(f"stop requested ({why}) on "
                                 f"{flags.stop} rank(s): checkpointed at step {self.step}, "
                                 f"exiting")
                    return epoch, sums
                for cb in self.callbacks:
                    if hasattr(cb, "on_step") and cb.on_step(self, self.step):
                        self._callback_stop, self.stop_reason = True, "callback"
                if self.checkpoint_every and self.step % self.checkpoint_every == 0 and \
                        micro < len(loader):
                    loader.batches_done = micro
                    self._save()
        finally:
            it.close()
        if micro >= len(loader):
            loader.epoch, loader.batches_done = epoch + 1, 0
        else:
            loader.batches_done = micro
        return epoch, sums

    def _save(self):
        if self.checkpoint is not None:
            with self.tracer.span("checkpoint"):
                self.checkpoint(self)

    def _end_of_epoch(self, epoch, sums, seconds, before, bar):
        comm_before, data_before = before
        g = self.strategy.allreduce_sums(sums[:4])
        entry = {"epoch": epoch + 1, "step": self.step, "train_loss": g[0] / max(g[2], 1)}
        if self.target is None:
            entry["train_accuracy"] = g[1] / max(g[2], 1)
        else:
            entry.update(regression_entry("train", g[0], g[1], g[2], g[3], self.target[1]))
        entry.update({"samples_per_s": g[2] / seconds,
                 "comm_fraction": (self.strategy.comm_seconds - comm_before) / seconds,
                 "data_wait_fraction": (self.tracer.seconds.get("data", 0.0) - data_before)
                 / seconds, "lr": self.schedule(max(self.step - 1, 0))})
        if hasattr(self.strategy, "epoch_metrics"):  # e.g. a parameter server's staleness
            entry.update(self.strategy.epoch_metrics())
        if self.evaluate is not None:
            with self.tracer.span("evaluation"):
                entry.update(self.evaluate())  # test_accuracy / test_rmse, test_r2; test_loss
        self.history.append(entry)
        if self.rank == 0:
            self.log_line(entry, bar)
        if self.metrics:
            line = {"run_id": self.run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **entry}

            def append():
                with open(self.metrics, "a") as f:
                    f.write(json.dumps(line) + "\n")
            self.on_rank0(append, f"appending to --metrics {self.metrics}")
        if self.prometheus:
            values = dict(entry, samples_per_second=entry["samples_per_s"])
            self.on_rank0(lambda: write_prometheus(self.prometheus, values),
                          f"writing --prometheus {self.prometheus}")
        loader, every = self.loader, self.checkpoint_every
        asked = any(hasattr(cb, "on_epoch") and cb.on_epoch(self, entry)
                    for cb in self.callbacks)
        if self.strategy.allreduce_sums([float(asked)])[0] > 0:
            self.stopped, self.stop_reason = True, "callback"
        if (not every or loader.batches_done == 0 or self.stopped
                or (self.step >= self.total and self.step % every)):
            self._save()  # each epoch's end, the last step (--max-steps mid-epoch), a stop

    def log_line(self, entry, bar=None):
        line = f"epoch {entry['epoch']:3d}  step {entry['step']:6d}  loss {entry['train_loss']:.4f}"
        for key, name in (("train_accuracy", "acc"), ("train_rmse", "rmse"), ("train_r2", "R2"),
                          ("test_accuracy", "test acc"), ("test_rmse", "test rmse"),
                          ("test_r2", "test R2")):
            if key in entry:
                line += f"  {name} {entry[key]:.4g}" if "rmse" in key else \
                    f"  {name} {entry[key]:.4f}"
        line += (f"  lr {entry['lr']:.3g}  {entry['samples_per_s']:,.0f} samples/s  comm "
                 f"{100 * entry['comm_fraction']:.0f}%")
        (bar.write if bar is not None else self.log)(line)

    # --- the run -------------------------------------------------------------------------
    def fit(self):
        """Train until `total` steps or a stop; returns (history, stopped)."""
        preempt = self.preemption = Preemption()
        bar = None
        if self.rank == 0 and self.progress and sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(total=self.total, initial=self.step, unit="step", dynamic_ncols=True)
        elif self.rank == 0 and self.progress and self.log_every > 0:
            self._ticker = _Ticker(self.log_every, self.step)  # stderr is a pipe or a file
        try:
            while self.step < self.total and not self.stopped:
                t0 = time.perf_counter()
                before = (self.strategy.comm_seconds, self.tracer.seconds.get("data", 0.0))
                epoch, sums = self._epoch(preempt, bar)
                if self.stopped:
                    break
                self._end_of_epoch(epoch, sums, time.perf_counter() - t0, before, bar)
        finally:
            self.strategy.close()
            preempt.restore()
            if bar is not None:
                bar.close()
        return self.history, self.stopped


def regression_entry(prefix, loss_rows, sum_y, rows, sum_y2, std):
    """RMSE and R^2 in the targets' units from summed (loss*rows in standardised units,
    sum y, rows, sum y^2)."""
    n = max(rows, 1)
    sse = loss_rows * std * std
    sst = sum_y2 - sum_y * sum_y / n
    return {f"{prefix}_rmse": float(np.sqrt(max(sse, 0.0) / n)),
            f"{prefix}_r2": float(1 - sse / sst) if sst > 0 else float("nan")}


class TensorBoard:
    """Trainer callback: each epoch's figures (loss, accuracy or RMSE/R^2, test metrics,
    learning rate, samples/s, communication share) as TensorBoard scalars at the step,
    written by rank 0 through tensorboardX's SummaryWriter (the `tensorboard` extra)."""

    def __init__(self, logdir, rank, run_id=None):
        self.writer = None
        if rank == 0:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(logdir, filename_suffix=f".{run_id}" if run_id else "")

    def on_epoch(self, trainer, entry):
        if self.writer is not None:
            for key, value in entry.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, entry["step"])
            self.writer.flush()
        return False

    def close(self):
        if self.writer is not None:
            self.writer.close()


class Straggler:
    """Trainer callback for experiments (--straggler RANK:FACTOR): after each step, this
    rank sleeps (factor - 1) x the step's compute time (its data, forward and backward
    spans), so it runs `factor` times slower than its peers."""

    def __init__(self, factor):
        self.factor, self.done = float(factor), 0.0

    def on_step(self, trainer, step):
        busy = sum(trainer.tracer.seconds.get(k, 0.0) for k in ("data", "forward",
                                                                "backward", "pipeline"))
        time.sleep((self.factor - 1) * (busy - self.done))
        self.done = busy
        return False


class _Ticker:
    """Rank 0's progress lines when no bar can show (stderr is a pipe under mpiexec and
    Slurm): the first after a third of `every` seconds (so a short run shows its pace and
    ETA early), then one every `every` seconds, from rank 0's own numbers (no
    communication)."""

    def __init__(self, every, step):
        self.every, self.first_step = every, step
        self.start = self.last = time.perf_counter()
        self.wait = every / 3  # until the first line
        self.rows = 0.0
        self.loss = np.zeros(2)  # rank 0's loss*rows, rows since the last line

    def tick(self, trainer, micro, micros, sums):
        self.rows += trainer._step_rows
        self.loss += (sums[0], sums[2])
        now = time.perf_counter()
        if now - self.last < self.wait:
            return
        self.wait = self.every
        done = trainer.step - self.first_step
        elapsed = now - self.start
        eta = elapsed / max(done, 1) * (trainer.total - trainer.step)
        loss = self.loss[0] / max(self.loss[1], 1)
        trainer.log(f"step {trainer.step}/{trainer.total}  epoch {trainer.loader.epoch + 1} "
                    f"{100 * micro / max(micros, 1):.0f}%  {self.rows / (now - self.last):,.0f} "
                    f"samples/s  loss {loss:.4f} (rank 0)  lr "
                    f"{trainer.schedule(max(trainer.step - 1, 0)):.3g}  elapsed "
                    f"{_hms(elapsed)}  ETA {_hms(eta)}")
        self.last, self.rows, self.loss = now, 0.0, np.zeros(2)


def _hms(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
