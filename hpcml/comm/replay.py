"""Run every rank's schedule in one process: the deadlock, matching and result checker.

Semantics follow the executor exactly: a step is a blocking ``Sendrecv`` (or a lone
``Send``/``Recv``) that completes only when its send has met the peer's receive and its
receive has met the peer's send (rendezvous: no buffering is assumed, so a schedule that
passes here cannot deadlock on a real MPI whatever its eager limit). The sent data is read
when the match happens; received data is applied when the step completes.
"""
import numpy as np

from .schedules import COPY, REDUCE, MODE_NAMES


class ScheduleError(AssertionError):
    """A schedule that deadlocks, mismatches lengths or writes what it is sending."""


def _describe(rank, pc, step):
    sp, s0, s1, rp, r0, r1, mode = step
    parts = []
    if sp >= 0:
        parts.append(f"send [{s0}:{s1}] to {sp}")
    if rp >= 0:
        parts.append(f"recv [{r0}:{r1}] from {rp} ({MODE_NAMES[mode]})")
    return f"rank {rank} step {pc}: " + ", ".join(parts)


def _check_step(rank, pc, step, n):
    sp, s0, s1, rp, r0, r1, mode = step
    if sp >= 0 and not 0 <= s0 <= s1 <= n:
        raise ScheduleError(f"{_describe(rank, pc, step)}: send range outside [0:{n}]")
    if rp >= 0 and not 0 <= r0 <= r1 <= n:
        raise ScheduleError(f"{_describe(rank, pc, step)}: recv range outside [0:{n}]")
    if sp >= 0 and rp >= 0 and mode == COPY and max(s0, r0) < min(s1, r1):
        raise ScheduleError(f"{_describe(rank, pc, step)}: receives into the range it sends")
    if sp < 0 and rp < 0:
        raise ScheduleError(f"{_describe(rank, pc, step)}: empty step")


def replay(schedules, buffers, ufunc=np.add):
    """Run `schedules[r]` (a Schedule or step list per rank) on `buffers[r]` in place.

    Returns the buffers. Raises ScheduleError on deadlock, unmatched or mismatched messages.
    """
    p = len(schedules)
    steps = [tuple(getattr(s, "steps", s)) for s in schedules]
    pc = [0] * p
    sent = [False] * p       # current step's send has matched
    got = [None] * p         # current step's received data (None = not yet)
    for r in range(p):
        for i, st in enumerate(steps[r]):
            _check_step(r, i, st, buffers[r].size)
    while True:
        progress = False
        for r in range(p):  # match r's pending send with its peer's pending receive
            if pc[r] >= len(steps[r]) or sent[r]:
                continue
            sp, s0, s1 = steps[r][pc[r]][:3]
            if sp < 0:
                sent[r] = True
                progress = True
                continue
            if not 0 <= sp < p:
                raise ScheduleError(f"{_describe(r, pc[r], steps[r][pc[r]])}: no rank {sp}")
            if pc[sp] < len(steps[sp]) and got[sp] is None:
                peer_step = steps[sp][pc[sp]]
                if peer_step[3] == r:
                    if peer_step[5] - peer_step[4] != s1 - s0:
                        raise ScheduleError(
                            f"{_describe(r, pc[r], steps[r][pc[r]])} meets "
                            f"{_describe(sp, pc[sp], peer_step)}: lengths differ")
                    got[sp] = buffers[r][s0:s1].copy()
                    sent[r] = True
                    progress = True
        for r in range(p):  # complete steps whose send and receive are both done
            if pc[r] >= len(steps[r]):
                continue
            _, _, _, rp, r0, r1, mode = steps[r][pc[r]]
            if rp < 0 and got[r] is None:
                got[r] = np.empty(0, buffers[r].dtype)
            if sent[r] and got[r] is not None:
                if rp >= 0:
                    dst = buffers[r][r0:r1]
                    if mode == COPY:
                        dst[...] = got[r]
                    elif mode == REDUCE:
                        ufunc(dst, got[r], out=dst)
                    else:
                        ufunc(got[r], dst, out=dst)
                pc[r] += 1
                sent[r], got[r] = False, None
                progress = True
        if all(pc[r] >= len(steps[r]) for r in range(p)):
            return buffers
        if not progress:
            stuck = [_describe(r, pc[r], steps[r][pc[r]]) for r in range(p)
                     if pc[r] < len(steps[r])]
            raise ScheduleError("deadlock: " + "; ".join(stuck))
