"""The asynchronous manager/worker protocol over MPI (see study.py).

Rank 0 manages; ranks 1.. form teams of g consecutive ranks (`teams`); a team's first rank
(its leader) exchanges JSON messages with the manager:

    leader -> manager  {"ask": team}                       (tag ASK)
    manager -> leader  {"trial": n, "params": {...}} | {"stop": true}
    leader -> manager  {"report": n, "step": k, "value": v} (tag ASK)
    manager -> leader  {"prune": bool}
    leader -> manager  {"finish": n, "state": ..., "value": ..., "seconds": ..., "error": ...}
                       (it also asks for the next trial: the reply is a trial or a stop)

A worker waiting for a trial that cannot be proposed yet (the lag rule) is answered when
it can; a waiting rank sleeps between tests of its receive (it leaves its core to the
ranks that compute). Messages are one fixed-size buffer (64 KiB) holding a length and the
JSON text, so a receive never needs a probe.
"""
import json
import time

import numpy as np

from hpcml import comm as hc

from .study import WAIT, Pruned, run_trial

TAG_ASK, TAG_REPLY = 7101, 7102
SIZE = 1 << 16


def _send(obj, dest, tag, comm):
    data = json.dumps(obj, allow_nan=True).encode()
    if len(data) > SIZE - 4:
        raise ValueError(f"a tune message of {len(data)} bytes (limit {SIZE - 4})")
    buf = np.zeros(SIZE, np.uint8)
    buf[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
    buf[4:4 + len(data)] = np.frombuffer(data, np.uint8)
    hc.send(buf, dest, tag, comm)


def _recv(source, tag, comm):
    buf = np.zeros(SIZE, np.uint8)
    hc.irecv(buf, source, tag, comm).wait(polite=True)
    n = int(np.frombuffer(buf[:4].tobytes(), np.uint32)[0])
    return json.loads(buf[4:4 + n].tobytes().decode())


def teams(size, g):
    """Team of each worker rank (1..size-1) and the team leaders."""
    if g < 1 or (size - 1) % g:
        raise ValueError(f"--ranks-per-trial {g}: the {size - 1} worker ranks (all but "
                         f"rank 0, the manager) must split into teams of {g}")
    return {r: (r - 1) // g for r in range(1, size)}, list(range(1, size, g))


def manager(engine, comm, leaders, log=print):
    """Serve the leaders until the study is complete; returns the busy share of the
    workers (time in trials / (leaders x wall time))."""
    waiting, active, busy = [], set(leaders), 0.0
    t0 = time.perf_counter()
    while active:
        msg = _recv(hc.ANY_SOURCE, TAG_ASK, comm)
        src = msg["from"]
        if "ask" in msg:
            waiting.append(src)
        elif "report" in msg:
            stop = engine.report(msg["report"], msg["step"], msg["value"])
            _send({"prune": stop}, src, TAG_REPLY, comm)
            continue
        elif "finish" in msg:
            engine.finish(msg["finish"], msg["state"], msg.get("value"), msg.get("seconds"),
                          msg.get("error"))
            busy += msg.get("seconds") or 0.0
            log(engine.trials[msg["finish"]])
            waiting.append(src)
        waiting = _serve(engine, comm, waiting, active)
    wall = time.perf_counter() - t0
    return busy / (len(leaders) * wall) if wall > 0 else 0.0


def _serve(engine, comm, waiting, active):
    still = []
    for src in waiting:
        nxt = engine.next_trial(f"rank {src}")
        if nxt == WAIT:
            still.append(src)
        elif nxt is None:
            if engine.complete() or not any(
                    t.state == "running" for t in engine.trials.values()):
                _send({"stop": True}, src, TAG_REPLY, comm)
                active.discard(src)
            else:  # other trials still run: this leader waits for the study's end
                still.append(src)
        else:
            _send({"trial": nxt[0], "params": nxt[1]}, src, TAG_REPLY, comm)
    return still


def worker(objective, comm, team_comm, leader):
    """A team's loop: get a trial, run it on the team's communicator, report."""
    me = comm.Get_rank()
    ask = {"ask": True, "from": me}  # then each finish message asks for the next trial
    while True:
        if me == leader:
            _send(ask, 0, TAG_ASK, comm)
            job = _recv(0, TAG_REPLY, comm)
        else:
            job = None
        job = hc.bcast_object(job, root=0, comm=team_comm) if team_comm.Get_size() > 1 \
            else job
        if job.get("stop"):
            return
        n, params = job["trial"], job["params"]
        last = {}

        def report(step, value, n=n):
            last["step"], last["value"] = step, float(value)
            stop = None
            if me == leader:
                _send({"report": n, "step": step, "value": float(value), "from": me}, 0,
                      TAG_ASK, comm)
                stop = _recv(0, TAG_REPLY, comm)["prune"]
            if team_comm.Get_size() > 1:
                stop = hc.bcast_object(stop, root=0, comm=team_comm)
            if stop:
                raise Pruned()
        state, value, seconds, error = run_trial(objective, n, params, report, team_comm)
        if state == "pruned":
            value = last.get("value")
        ask = {"finish": n, "state": state, "value": value, "seconds": seconds,
               "error": error, "from": me}
