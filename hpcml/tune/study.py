"""A study: deterministic proposals over an append-only journal, run by one process or by
an asynchronous manager and workers over MPI.

Determinism. Trial n is proposed from the results of the trials numbered below n - lag
(all finished by then: the study waits for them) and from the parameters of the `lag`
trials before n (as running trials, whatever their state), with a generator seeded by
(seed, n). So a study's trials are a function of the seed and the lag alone, however long
each trial took, and a study killed at any moment and resumed proposes the same trials.
With W workers the default lag is 2 (W - 1): a worker waits only when a trial started
2 (W - 1) trials earlier is still running. With one worker the lag is 0 (sequential).
Pruning decisions compare with the finished trials numbered below n - lag as well.

MPI: rank 0 is the manager (it holds the journal and the sampler and waits politely); the
other ranks are workers, in teams of --ranks-per-trial g consecutive ranks (a
communicator each, for a data-parallel hpcml.train); a team's first rank asks for a trial
as soon as its last one ended, reports intermediate values (and hears whether to stop),
and reports the result. Messages are small JSON documents on tags of their own.
"""
import contextlib
import math
import os
import socket
import threading
import time

import numpy as np

from .journal import Journal, JournalError, replay

WAIT = "wait"


class StudyError(ValueError):
    pass


class Pruned(Exception):
    """Raised by report() when the pruner stops the trial."""


class Engine:
    """The study's state and decisions (no MPI): journal, sampler, pruner."""

    def __init__(self, journal_path, space, sampler, pruner, definition, n_trials, lag,
                 direction="minimize", seed=0, shared=False, stale=60.0):
        """shared: several processes (Slurm array tasks) use this journal at once: each
        decision re-reads it under its lock, and a running trial is re-run by another
        process only once its owner has been silent (no start, report or heartbeat) for
        `stale` seconds."""
        self.journal = Journal(journal_path)
        self.space, self.sampler, self.pruner = space, sampler, pruner
        self.n_trials, self.lag, self.seed = int(n_trials), int(lag), int(seed)
        self.sign = 1.0 if direction == "minimize" else -1.0
        self.shared, self.stale, self._held = bool(shared), float(stale), False
        definition = _json_round(dict(definition, op="study"))
        with self.journal.locked():  # two array tasks starting at once write one definition
            study, self.trials = replay(self.journal.read())
            if study is None:
                self.journal.append(definition, lock=False)
        if study is not None and study != definition:
            diff = sorted(k for k in set(study) | set(definition)
                          if study.get(k) != definition.get(k))
            raise StudyError(f"{journal_path} holds another study (it differs in "
                             f"{', '.join(diff)}); give a new --journal or the same settings")
        self.restarts = [] if self.shared else \
            sorted(n for n, t in self.trials.items() if t.state == "running")

    @contextlib.contextmanager
    def _decision(self):
        """Shared journal: hold its lock and see every other process's records first."""
        if not self.shared or self._held:
            yield
            return
        with self.journal.locked():
            self._held = True
            try:
                self.trials = replay(self.journal.read())[1]
                now = time.time()
                self.restarts = sorted(n for n, t in self.trials.items()
                                       if t.state == "running" and now - t.seen > self.stale)
                yield
            finally:
                self._held = False

    def _append(self, record):
        self.journal.append(dict(record, time=time.time()), lock=not self._held)

    def loss(self, value):
        return None if value is None or not math.isfinite(value) else self.sign * value

    def _finished_before(self, n):
        return all(self.trials[k].state != "running" for k in range(max(0, n - self.lag)))

    def next_trial(self, owner=""):
        """A trial to run (number, params), WAIT, or None when the study is complete."""
        with self._decision():
            return self._next_trial(owner)

    def _next_trial(self, owner):
        if self.restarts:
            n = self.restarts.pop(0)
            t = self.trials[n]
            t.state, t.reports, t.owner = "running", {}, owner
            self._append({"op": "restart", "trial": n, "owner": owner})
            return n, t.params
        n = len(self.trials)
        if n >= self.n_trials:
            return None
        if not self._finished_before(n):
            return WAIT
        done = [(np.array(t.unit, dtype=np.float64), self.loss(t.value))
                for k, t in sorted(self.trials.items())
                if k < n - self.lag and t.state == "complete" and self.loss(t.value) is not None]
        pending = [np.array(self.trials[k].unit, dtype=np.float64)
                   for k in range(max(0, n - self.lag), n)]
        unit = self.sampler.propose(done, pending, np.random.default_rng([self.seed, n]), n)
        if unit is None:  # a grid that is done
            self.n_trials = n
            return None
        params = self.space.decode(unit)
        unit = [None if not math.isfinite(u) else float(u) for u in self.space.encode(params)]
        from .journal import Trial
        self.trials[n] = Trial(n, params, unit, owner, time.time())
        self._append({"op": "start", "trial": n, "params": params, "unit": unit,
                      "owner": owner})
        return n, params

    def report(self, n, step, value):
        """Record an intermediate value; True when the trial should stop."""
        with self._decision():
            return self._report(n, step, value)

    def beat(self, n, owner=""):
        """A heartbeat of a running trial (shared journals)."""
        self._append({"op": "beat", "trial": n, "owner": owner})

    def _report(self, n, step, value):
        self.trials[n].reports[step] = value
        self._append({"op": "report", "trial": n, "step": step, "value": value})
        loss = self.loss(value)
        if loss is None:
            return False
        others = {k: {s: self.loss(v) for s, v in t.reports.items()}
                  for k, t in self.trials.items()
                  if k < n - self.lag and t.state != "running"}
        return bool(self.pruner.should_prune(n, step, loss, others))

    def finish(self, n, state, value=None, seconds=None, error=None):
        with self._decision():
            self._finish(n, state, value, seconds, error)

    def _finish(self, n, state, value, seconds, error):
        t = self.trials[n]
        if state == "complete" and (value is None or not math.isfinite(value)):
            state, error = "failed", error or f"the objective returned {value!r}"
        if value is not None and not math.isfinite(value):  # kept as null, named in error
            value = None
        t.state, t.value, t.seconds, t.error = state, value, seconds, error
        self._append({"op": "finish", "trial": n, "state": state, "value": value,
                      "seconds": seconds, "error": error})

    def complete(self):
        return len(self.trials) >= self.n_trials and not self.restarts and \
            all(t.state != "running" for t in self.trials.values())

    def best(self):
        ok = [t for t in self.trials.values()
              if t.state == "complete" and self.loss(t.value) is not None]
        return min(ok, key=lambda t: (self.loss(t.value), t.number)) if ok else None


def _json_round(d):
    import json
    return json.loads(json.dumps(d, sort_keys=True))


def owner_name():
    return f"{socket.gethostname()}:{os.getpid()}"


def run_trial(objective, number, params, report, comm=None):
    """(state, value, seconds, error) of one evaluation."""
    t0 = time.perf_counter()
    try:
        value = objective(params, report, comm)
        value = float(value)
        state, error = ("complete", None) if math.isfinite(value) else \
            ("failed", f"the objective returned {value}")
    except Pruned:
        state, value, error = "pruned", None, None
    except Exception as e:  # a failing trial is recorded; the study goes on
        state, value, error = "failed", None, f"{type(e).__name__}: {e}"[:2000]
    return state, value, time.perf_counter() - t0, error


def _run_and_record(engine, objective, n, params, on_finish):
    """Run trial n in this process, its reports through the engine (a prune stops it, its
    value the last one reported), and record how it ended."""
    last = {}

    def report(step, value):
        last["step"] = step
        if engine.report(n, step, float(value)):
            raise Pruned()
    state, value, seconds, error = run_trial(objective, n, params, report)
    if state == "pruned":
        value = engine.trials[n].reports.get(last.get("step"))
    engine.finish(n, state, value, seconds, error)
    if on_finish is not None:
        on_finish(engine.trials[n])


def run_serial(engine, objective, on_finish=None):
    """The study in this process alone (lag 0: each trial sees every earlier result)."""
    while True:
        nxt = engine.next_trial(owner_name())
        if nxt is None:
            return engine
        if nxt == WAIT:  # cannot happen with lag 0
            raise JournalError("the study waits for a trial no one runs")
        _run_and_record(engine, objective, *nxt, on_finish)


def run_shared(engine, objective, on_finish=None, poll=0.2):
    """This process as one of several sharing engine's journal (Slurm array tasks): take
    the next trial under the journal's lock, run it while a thread beats every stale / 4
    seconds, record it; wait (polling) while the lag rule or other processes' running
    trials hold the study; return when it is complete."""
    owner = owner_name()
    while True:
        nxt = engine.next_trial(owner)
        if nxt is None and engine.complete():
            return engine
        if nxt is None or nxt == WAIT:
            time.sleep(poll)
            continue
        stop = threading.Event()
        beat = threading.Thread(target=_beats, args=(engine, nxt[0], owner, stop),
                                daemon=True)
        beat.start()
        try:
            _run_and_record(engine, objective, *nxt, on_finish)
        finally:
            stop.set()
            beat.join()


def _beats(engine, n, owner, stop):
    while not stop.wait(max(engine.stale / 4, 0.05)):
        engine.beat(n, owner)
