"""Pipeline schedules as data, and a replay simulator that runs every rank in one process.

A pipeline of S stages runs on p ranks; with v virtual stages per rank (interleaving),
S = p * v and rank r holds stages r, r + p, ..., r + (v - 1) p (Megatron-LM's layout). A
schedule is, per rank, the ordered list of its compute actions:

    F(s, m)  forward of micro-batch m through stage s
    B(s, m)  backward of micro-batch m through stage s (with W split off: the input
             gradient only)
    W(s, m)  the weight gradient of stage s for micro-batch m (zero-bubble schedules)

Text form, as torch.distributed.pipelining prints it: `2F0` (stage 2, forward, micro-batch
0), `1B3`, `0W5`. Communication is implied by the actions and never reordered: F(s, m)
with s > 0 first receives stage s - 1's output for m; F(s, m) with s < S - 1 then sends
its output to stage s + 1's rank (non-blocking, eager); B(s, m) with s < S - 1 first
receives stage s + 1's input gradient for m; B(s, m) with s > 0 then sends its own input
gradient to stage s - 1. So a rank only ever waits in a receive, and a schedule is
deadlock-free exactly when the replay below completes.

Generators: gpipe, 1f1b, interleaved (v virtual stages per rank), zb-h1 (Qi et al. 2023,
"Zero Bubble Pipeline Parallelism": 1F1B with B split into B and W, W postponed into the
cool-down bubbles).

    sched = make("1f1b", ranks=4, micro_batches=8)
    print(sched.text())                      # one line per rank
    sim = replay(sched, costs={"F": 1, "B": 2})
    sim.bubble, sim.peak_live                # idle share of the run; live activations per rank
"""
import dataclasses
import re

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb-h1")
KINDS = ("F", "B", "W")


class ScheduleError(ValueError):
    """A schedule that cannot run: the message names the rank and action, and for a
    deadlock shows the step x rank grid with the stuck actions marked."""


@dataclasses.dataclass(frozen=True, order=True)
class Action:
    stage: int
    kind: str
    micro: int

    def __str__(self):
        return f"{self.stage}{self.kind}{self.micro}"

    @staticmethod
    def parse(text):
        m = re.fullmatch(r"\s*(\d+)([FBW])(\d+)\s*", text)
        if not m:
            raise ScheduleError(f"not an action: {text!r} (expected e.g. 2F0, 1B3, 0W5)")
        return Action(int(m.group(1)), m.group(2), int(m.group(3)))


@dataclasses.dataclass
class Schedule:
    """Per-rank action lists for `ranks` ranks, `virtual` stages per rank, `micro_batches`
    micro-batches; `split_w`: backward split into B and W."""
    name: str
    ranks: int
    virtual: int
    micro_batches: int
    actions: list  # actions[r] = [Action, ...]
    split_w: bool = False

    @property
    def stages(self):
        return self.ranks * self.virtual

    def owner(self, stage):
        """The rank that holds `stage`."""
        return stage % self.ranks

    def stages_of(self, rank):
        return [rank + c * self.ranks for c in range(self.virtual)]

    def text(self):
        return "\n".join(f"rank {r}: " + " ".join(map(str, a))
                         for r, a in enumerate(self.actions))

    @staticmethod
    def from_text(text, name="custom", virtual=1, micro_batches=None):
        """A schedule from its text form (one `rank N: ...` line per rank)."""
        actions = []
        for line in text.strip().splitlines():
            body = line.split(":", 1)[1] if ":" in line else line
            actions.append([Action.parse(t) for t in body.split()])
        every = [a for acts in actions for a in acts]
        m = micro_batches if micro_batches is not None else (
            1 + max((a.micro for a in every), default=-1))
        return Schedule(name, len(actions), virtual, m, actions,
                        split_w=any(a.kind == "W" for a in every))


# --- generators ------------------------------------------------------------------------
def _check(ranks, micro_batches, virtual):
    for name, v in (("ranks", ranks), ("micro_batches", micro_batches),
                    ("virtual stages", virtual)):
        if not isinstance(v, int) or v < 1:
            raise ScheduleError(f"{name} must be an integer >= 1, got {v!r}")


def gpipe(ranks, micro_batches):
    """All forwards, then all backwards (GPipe): m micro-batches of activations live."""
    _check(ranks, micro_batches, 1)
    acts = [[Action(r, "F", i) for i in range(micro_batches)] +
            [Action(r, "B", i) for i in range(micro_batches)] for r in range(ranks)]
    return Schedule("gpipe", ranks, 1, micro_batches, acts)


def one_f_one_b(ranks, micro_batches):
    """1F1B (PipeDream-Flush): p - r - 1 warm-up forwards, then one forward and one
    backward in turn, then the remaining backwards; at most p micro-batches live."""
    _check(ranks, micro_batches, 1)
    acts = []
    for r in range(ranks):
        warm = min(ranks - r - 1, micro_batches)
        a = [Action(r, "F", i) for i in range(warm)]
        for i in range(micro_batches - warm):
            a += [Action(r, "F", warm + i), Action(r, "B", i)]
        a += [Action(r, "B", i) for i in range(micro_batches - warm, micro_batches)]
        acts.append(a)
    return Schedule("1f1b", ranks, 1, micro_batches, acts)


def _interleaved_order(ranks, micro_batches, virtual, backward):
    """The (chunk, micro) order of a rank's forwards (or backwards): micro-batches in
    groups of `ranks`; each group goes through chunk 0, 1, ... (backward: v-1, ..., 0)."""
    out = []
    for g0 in range(0, micro_batches, ranks):
        group = range(g0, min(micro_batches, g0 + ranks))
        chunks = range(virtual - 1, -1, -1) if backward else range(virtual)
        out += [(c, m) for c in chunks for m in group]
    return out


def interleaved(ranks, micro_batches, virtual):
    """Interleaved 1F1B (Megatron-LM): v model chunks per rank, warm-up of
    (p - r - 1) * 2 + (v - 1) * p forwards, then 1F1B over the chunks' order; bubble
    (p - 1) / (v m + p - 1) when p divides m. Any m: when the last group of micro-batches
    is partial, every rank's warm-up grows by the fewest forwards that make the replay
    complete (at most all of them: GPipe's order, which always completes)."""
    _check(ranks, micro_batches, virtual)
    total = micro_batches * virtual
    for extra in range(total + 1):
        s = _interleaved(ranks, micro_batches, virtual, extra)
        if micro_batches % ranks == 0 and extra == 0:
            return s
        try:
            replay(s)
            return s
        except ScheduleError:
            continue
    raise ScheduleError(f"interleaved: no deadlock-free warm-up for p={ranks}, "
                        f"m={micro_batches}, v={virtual} (a bug)")


def _interleaved(ranks, micro_batches, virtual, extra):
    total = micro_batches * virtual
    acts = []
    for r in range(ranks):
        fwd = [Action(r + c * ranks, "F", m)
               for c, m in _interleaved_order(ranks, micro_batches, virtual, False)]
        bwd = [Action(r + c * ranks, "B", m)
               for c, m in _interleaved_order(ranks, micro_batches, virtual, True)]
        warm = (ranks - r - 1) * 2 + (virtual - 1) * ranks if virtual > 1 else ranks - r - 1
        warm = min(total, warm + extra)
        a = fwd[:warm]
        for i in range(total - warm):
            a += [fwd[warm + i], bwd[i]]
        a += bwd[total - warm:]
        acts.append(a)
    return Schedule("interleaved", ranks, virtual, micro_batches, acts)


def zb_h1(ranks, micro_batches, costs=None):
    """ZB-H1: 1F1B's order of forwards and input-gradient backwards B, with each weight
    gradient W run where the rank would otherwise wait for its next F or B, and the rest at
    the end. Rank r starts a forward only while fewer than p - r micro-batches await their
    B (1F1B's order) and fewer than p await their W, so no rank holds more than 1F1B's
    busiest rank (p micro-batches: ZB-H1's memory bound). The W's are placed by
    playing the schedule forward with `costs` (default tF = tB = tW, as in Qi et al.,
    "Zero Bubble Pipeline Parallelism", 2023)."""
    _check(ranks, micro_batches, 1)
    costs = costs or {"F": 1.0, "B": 1.0, "W": 1.0}
    base = one_f_one_b(ranks, micro_batches).actions  # the F/B order
    S = ranks
    out = [[] for _ in range(ranks)]
    pos, clock = [0] * ranks, [0.0] * ranks
    pending = [[] for _ in range(ranks)]  # micro-batches whose W has not run
    live, done = [0] * ranks, {}  # live: forwards whose W has not run

    def ready_at(a):
        deps = [Action(a.stage - 1, "F", a.micro)] if a.kind == "F" and a.stage > 0 else []
        if a.kind == "B" and a.stage < S - 1:
            deps = [Action(a.stage + 1, "B", a.micro)]
        if any(d not in done for d in deps):
            return None
        return max([done[d] for d in deps], default=0.0)

    def run(r, a, start):
        clock[r] = start + costs[a.kind]
        done[a] = clock[r]
        out[r].append(a)
        if a.kind == "F":
            live[r] += 1
        elif a.kind == "B":
            pending[r].append(a.micro)
        else:
            live[r] -= 1

    remaining = sum(len(b) for b in base)
    while remaining or any(pending):
        # the rank furthest behind in time acts next (a deterministic event order)
        order = sorted(range(ranks), key=lambda r: (clock[r], r))
        for r in order:
            if pos[r] == len(base[r]):
                if pending[r]:
                    run(r, Action(r, "W", pending[r].pop(0)), clock[r])
                    break
                continue
            a = base[r][pos[r]]
            t = ready_at(a)
            must_free = a.kind == "F" and (live[r] >= ranks or
                                           live[r] - len(pending[r]) >= ranks - r)
            if pending[r] and (must_free or t is None or t > clock[r]):
                run(r, Action(r, "W", pending[r].pop(0)), clock[r])  # fill the wait
                break
            if t is None or must_free:
                continue  # waits for another rank
            run(r, a, max(clock[r], t))
            pos[r] += 1
            remaining -= 1
            break
        else:
            raise ScheduleError("zb-h1: the generator found no action to run (a bug)")
    return Schedule("zb-h1", ranks, 1, micro_batches, out, split_w=True)


def make(name, ranks, micro_batches, virtual=1):
    """A schedule by name (SCHEDULES); `virtual` only for interleaved."""
    if name not in SCHEDULES:
        raise ScheduleError(f"pipeline schedule must be one of {', '.join(SCHEDULES)}, got "
                            f"{name!r}")
    if virtual != 1 and name != "interleaved":
        raise ScheduleError(f"{name}: virtual stages are for the interleaved schedule only")
    if name == "gpipe":
        return gpipe(ranks, micro_batches)
    if name == "1f1b":
        return one_f_one_b(ranks, micro_batches)
    if name == "zb-h1":
        return zb_h1(ranks, micro_batches)
    return interleaved(ranks, micro_batches, virtual)


def theory_bubble(name, ranks, micro_batches, virtual=1):
    """The closed-form bubble share of a step with equal stages: (p-1)/(m+p-1) for GPipe
    and 1F1B, (p-1)/(v m+p-1) interleaved; ZB-H1: about a third of 1F1B's (Qi et al.:
    (p-1)(tF+tB-tW) against 1F1B's (p-1)(tF+tB+tW) of idle per rank)."""
    p, m = ranks, micro_batches
    if name == "interleaved":
        return (p - 1) / (virtual * m + p - 1)
    if name == "zb-h1":  # with tF = tB = tW: idle (p-1) tF against a busy 3 m tF
        return (p - 1) / (3 * m + p - 1)
    return (p - 1) / (m + p - 1)


# --- the replay ------------------------------------------------------------------------
@dataclasses.dataclass
class Replay:
    """What a replay found: per-rank start/end of every action, the makespan, the bubble
    (idle share of ranks x makespan), each rank's peak number of live activations (forwards
    whose backward, or W when split, has not run) and the order actions ran in."""
    makespan: float
    bubble: float
    busy: list
    peak_live: list
    timeline: list  # (rank, action, start, end)
    messages: int


def _validate(s):
    """Every (stage, micro) has one F and one B (and one W when split) on the stage's
    owner, in order on that rank; nothing else."""
    want = {"F", "B", "W"} if s.split_w else {"F", "B"}
    seen = {}
    for r, acts in enumerate(s.actions):
        for i, a in enumerate(acts):
            where = f"rank {r}, action {i} ({a})"
            if a.kind not in want:
                raise ScheduleError(f"{s.name}: {where}: {a.kind} is not used by this schedule")
            if not (0 <= a.stage < s.stages and 0 <= a.micro < s.micro_batches):
                raise ScheduleError(f"{s.name}: {where}: stage or micro-batch out of range "
                                    f"({s.stages} stages, {s.micro_batches} micro-batches)")
            if s.owner(a.stage) != r:
                raise ScheduleError(f"{s.name}: {where}: stage {a.stage} belongs to rank "
                                    f"{s.owner(a.stage)}")
            if (a.stage, a.kind, a.micro) in seen:
                raise ScheduleError(f"{s.name}: {where}: runs twice (also at "
                                    f"{seen[(a.stage, a.kind, a.micro)]})")
            seen[(a.stage, a.kind, a.micro)] = where
    missing = [f"{st}{k}{m}" for st in range(s.stages) for m in range(s.micro_batches)
               for k in sorted(want) if (st, k, m) not in seen]
    if missing:
        raise ScheduleError(f"{s.name}: incomplete: {len(missing)} action(s) never run, e.g. "
                            + ", ".join(missing[:6]))


def _deps(s, a):
    """(rank, action) pairs that must be done before `a` can start (besides its rank's
    own previous action): the message it receives, or its own earlier phase."""
    S = s.stages
    if a.kind == "F":
        return [Action(a.stage - 1, "F", a.micro)] if a.stage > 0 else []
    if a.kind == "B":
        own = Action(a.stage, "F", a.micro)
        return [own] + ([Action(a.stage + 1, "B", a.micro)] if a.stage < S - 1 else [])
    return [Action(a.stage, "B", a.micro)]


def replay(s, costs=None, latency=0.0, cores=None):
    """Run every rank's list in one process with the executor's semantics (eager sends,
    blocking receives): returns a Replay, or raises ScheduleError with the step x rank grid
    when the ranks deadlock. costs: {"F": tF, "B": tB, "W": tW} (B is the whole backward
    without W), or a function (rank, action) -> seconds of a core; latency: per message.
    cores: when the ranks share fewer cores than there are ranks (an oversubscribed node),
    how many: a waiting rank spins in its receive (MPI's wait), so the OS shares the cores
    among all ranks alike and every action takes ranks / cores times its cost; a rank's
    busy time stays its computing time (the costs), as a CPU-time measurement counts it."""
    _validate(s)
    if costs is None:
        costs = {"F": 1.0, "B": 1.0 if s.split_w else 2.0, "W": 1.0}
    cost = costs if callable(costs) else (lambda r, a: float(costs[a.kind]))
    if cores is not None and cores < s.ranks:
        if cores <= 0:
            raise ValueError(f"cores must be > 0, not {cores}")
        slow = s.ranks / cores
        rep = replay(s, lambda r, a: cost(r, a) * slow, latency)
        rep.busy = [b / slow for b in rep.busy]
        rep.bubble = 1.0 - sum(rep.busy) / (s.ranks * rep.makespan) if rep.makespan else 0.0
        return rep
    done = {}  # action -> end time
    pos = [0] * s.ranks
    clock = [0.0] * s.ranks
    busy = [0.0] * s.ranks
    live, peak = [0] * s.ranks, [0] * s.ranks
    timeline, messages = [], 0
    free_kind = "W" if s.split_w else "B"
    remaining = sum(len(a) for a in s.actions)
    while remaining:
        progressed = False
        for r in range(s.ranks):
            while pos[r] < len(s.actions[r]):
                a = s.actions[r][pos[r]]
                deps = _deps(s, a)
                if any(d not in done for d in deps):
                    break
                ready = clock[r]
                for d in deps:
                    cross = s.owner(d.stage) != r
                    ready = max(ready, done[d] + (latency if cross else 0.0))
                    messages += cross
                t = cost(r, a)
                clock[r] = ready + t
                busy[r] += t
                done[a] = clock[r]
                timeline.append((r, a, ready, clock[r]))
                if a.kind == "F":
                    live[r] += 1
                    peak[r] = max(peak[r], live[r])
                elif a.kind == free_kind:
                    live[r] -= 1
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise ScheduleError(f"{s.name}: deadlock: every rank waits in a receive\n"
                                + grid(s, pos))
    makespan = max(clock) if clock else 0.0
    bubble = 1.0 - sum(busy) / (s.ranks * makespan) if makespan > 0 else 0.0
    return Replay(makespan, bubble, busy, peak, timeline, messages)


def grid(s, pos=None):
    """The schedule as a step x rank table; with `pos` (each rank's next action), the
    actions run are plain, the stuck ones marked [..] and the rest dimmed with a dot."""
    width = max(4, max((len(str(a)) for acts in s.actions for a in acts), default=1) + 2)
    rows = max((len(a) for a in s.actions), default=0)
    head = "step " + "".join(f"{'rank ' + str(r):>{width + 1}}" for r in range(s.ranks))
    lines = [head]
    for i in range(rows):
        cells = []
        for r, acts in enumerate(s.actions):
            if i >= len(acts):
                cells.append("")
                continue
            t = str(acts[i])
            if pos is not None and i == pos[r]:
                t = f"[{t}]"
            elif pos is not None and i > pos[r]:
                t = f".{t}"
            cells.append(t)
        lines.append(f"{i:4d} " + "".join(f"{c:>{width + 1}}" for c in cells))
    return "\n".join(lines)
