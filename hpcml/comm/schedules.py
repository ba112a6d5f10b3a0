"""Collective algorithms as data.

A schedule is, for one rank, a tuple of steps. Each step is a plain tuple

    (send_peer, s0, s1, recv_peer, r0, r1, mode)

meaning: send elements ``buf[s0:s1]`` to ``send_peer`` while receiving ``r1 - r0``
elements from ``recv_peer`` (``-1`` = no send / no receive in this step), then

* ``COPY``          - the received elements land in ``buf[r0:r1]``;
* ``REDUCE``        - ``buf[r0:r1] = op(buf[r0:r1], received)``  (local operand first);
* ``REDUCE_RECV``   - ``buf[r0:r1] = op(received, buf[r0:r1])``  (received operand first).

A step completes only when both its send and its receive have matched (blocking
``Sendrecv`` semantics). :mod:`hpcml.comm.executor` runs a schedule over MPI;
:mod:`hpcml.comm.replay` runs all ranks' schedules in one process, checks that every send
meets a receive of the same length and that nothing deadlocks, and computes the result.

Every generator is a pure function of (world size, rank, element count, options) and is
cached, so a hot loop pays for building a schedule once.
"""
from functools import lru_cache
from typing import NamedTuple, Tuple

COPY, REDUCE, REDUCE_RECV = 0, 1, 2
MODE_NAMES = {COPY: "copy", REDUCE: "reduce", REDUCE_RECV: "reduce_recv"}

Step = Tuple[int, int, int, int, int, int, int]


class Schedule(NamedTuple):
    """One rank's steps plus the scratch (elements) its reducing receives need."""

    steps: Tuple[Step, ...]
    scratch: int


def chunk_bounds(n, p):
    """Start offsets of p nearly equal blocks of n elements (block i is [b[i], b[i+1]))."""
    return tuple(n * i // p for i in range(p + 1))


def _finish(steps):
    scratch = max((s[5] - s[4] for s in steps if s[6] != COPY and s[3] >= 0), default=0)
    return Schedule(tuple(steps), scratch)


def _segments(lo_a, hi_a, lo_b, hi_b, seg, length):
    """Split the paired ranges [lo_a, hi_a) and [lo_b, hi_b) into aligned segments.

    `length` is the largest block of the whole collective, so every rank cuts every block
    into the same number of segments and segment j on the sender meets segment j on the
    receiver (blocks differ by one element at most; a segment may be empty).
    """
    if length == 0:
        return [(lo_a, hi_a, lo_b, hi_b)]
    out = []
    for o in range(0, length, seg):
        out.append((min(lo_a + o, hi_a), min(lo_a + o + seg, hi_a),
                    min(lo_b + o, hi_b), min(lo_b + o + seg, hi_b)))
    return out


def _ring_reduce_scatter_steps(p, rank, n, seg, bounds=None):
    """Ring reduce-scatter after which `rank` holds the fully reduced block `rank`."""
    b = chunk_bounds(n, p) if bounds is None else bounds
    longest = -(-n // p) if bounds is None else max(b[i + 1] - b[i] for i in range(p))
    right, left = (rank + 1) % p, (rank - 1) % p
    steps = []
    for k in range(p - 1):
        sc, rc = (rank - k - 1) % p, (rank - k - 2) % p
        for s0, s1, r0, r1 in _segments(b[sc], b[sc + 1], b[rc], b[rc + 1], seg, longest):
            steps.append((right, s0, s1, left, r0, r1, REDUCE_RECV))
    return steps


def _ring_allgather_steps(p, rank, n, seg):
    """Ring all-gather starting from each rank holding its own block."""
    b = chunk_bounds(n, p)
    right, left = (rank + 1) % p, (rank - 1) % p
    steps = []
    for k in range(p - 1):
        sc, rc = (rank - k) % p, (rank - k - 1) % p
        for s0, s1, r0, r1 in _segments(b[sc], b[sc + 1], b[rc], b[rc + 1], seg, -(-n // p)):
            steps.append((right, s0, s1, left, r0, r1, COPY))
    return steps


@lru_cache(maxsize=512)
def ring_allreduce(p, rank, n, seg=1 << 62):
    """Bandwidth-optimal all-reduce: ring reduce-scatter then ring all-gather.

    The reduce-scatter is cut into segments of `seg` elements so each received segment is
    reduced while it is still in cache; 2(p-1) latency terms per segment, 2(p-1)/p * n
    elements sent per rank.
    """
    seg = max(1, seg)
    if p == 1:
        return Schedule((), 0)
    return _finish(_ring_reduce_scatter_steps(p, rank, n, seg)
                   + _ring_allgather_steps(p, rank, n, max(seg, n)))


@lru_cache(maxsize=512)
def ring_reduce_scatter(p, rank, n, seg=1 << 62, bounds=None):
    """Reduce-scatter: afterwards buf[b[rank]:b[rank+1]] holds the reduced block, with b =
    `bounds` (p + 1 non-decreasing offsets from 0 to n; blocks may differ in size or be
    empty) or chunk_bounds(n, p). Each element's sum is formed in the order fixed by its
    block's owner alone, so a sub-range reduced with the owners of the whole buffer gets
    the bytes the whole buffer's reduce-scatter (and ring all-reduce) gives it."""
    if p == 1:
        return Schedule((), 0)
    return _finish(_ring_reduce_scatter_steps(p, rank, n, max(1, seg), bounds))


@lru_cache(maxsize=512)
def ring_allgather(p, rank, n, seg=1 << 62):
    """All-gather of the blocks chunk_bounds(n, p): rank r contributes block r."""
    if p == 1:
        return Schedule((), 0)
    return _finish(_ring_allgather_steps(p, rank, n, max(1, seg, n)))


def _pof2_below(p):
    q = 1
    while q * 2 <= p:
        q *= 2
    return q


@lru_cache(maxsize=512)
def tree_allreduce(p, rank, n):
    """Latency-optimal all-reduce: recursive doubling, lg p exchanges of the whole buffer.

    For p not a power of two, the ranks q..p-1 above the largest power of two q first fold
    their data into rank r - q and get the result back at the end (2 extra latency terms).
    At every exchange the lower rank's partial result is the left operand on both sides, so
    all ranks compute the same bytes.
    """
    if p == 1:
        return Schedule((), 0)
    q = _pof2_below(p)
    steps = []
    if rank >= q:  # folded rank: hand data over, then wait for the result
        steps.append((rank - q, 0, n, -1, 0, 0, COPY))
        steps.append((-1, 0, 0, rank - q, 0, n, COPY))
        return _finish(steps)
    if rank + q < p:
        steps.append((-1, 0, 0, rank + q, 0, n, REDUCE))
    mask = 1
    while mask < q:
        peer = rank ^ mask
        steps.append((peer, 0, n, peer, 0, n, REDUCE if rank < peer else REDUCE_RECV))
        mask <<= 1
    if rank + q < p:
        steps.append((rank + q, 0, n, -1, 0, 0, COPY))
    return _finish(steps)


@lru_cache(maxsize=512)
def rhd_allreduce(p, rank, n, seg=1 << 62):
    """Rabenseifner all-reduce: recursive-halving reduce-scatter + recursive-doubling all-gather.

    The ring's volume (2(q-1)/q * n per rank) in 2 lg q steps instead of 2(p-1), each step a
    pairwise exchange: fewer synchronisations, which matters when ranks share cores. For p
    not a power of two, ranks q..p-1 fold into rank r - q first (as in tree_allreduce).
    """
    seg = max(1, seg)
    if p == 1:
        return Schedule((), 0)
    q = _pof2_below(p)
    steps = []
    if rank >= q:
        steps.append((rank - q, 0, n, -1, 0, 0, COPY))
        steps.append((-1, 0, 0, rank - q, 0, n, COPY))
        return _finish(steps)
    if rank + q < p:
        steps.append((-1, 0, 0, rank + q, 0, n, REDUCE))
    b = chunk_bounds(n, q)
    lo, hi = 0, q  # block range this rank is responsible for
    mask = q >> 1
    while mask:
        peer, mid = rank ^ mask, (lo + hi) // 2
        keep, give = ((lo, mid), (mid, hi)) if rank & mask == 0 else ((mid, hi), (lo, mid))
        mode = REDUCE if rank < peer else REDUCE_RECV
        s0, s1, r0, r1 = b[give[0]], b[give[1]], b[keep[0]], b[keep[1]]
        for a0, a1, c0, c1 in _segments(s0, s1, r0, r1, seg, max(s1 - s0, r1 - r0)):
            steps.append((peer, a0, a1, peer, c0, c1, mode))
        lo, hi = keep
        mask >>= 1
    mask = 1
    while mask < q:
        peer = rank ^ mask
        size = hi - lo  # the peer holds the adjacent range of the same size
        plo = lo + size if rank & mask == 0 else lo - size
        steps.append((peer, b[lo], b[hi], peer, b[plo], b[plo + size], COPY))
        lo, hi = min(lo, plo), max(hi, plo + size)
        mask <<= 1
    if rank + q < p:
        steps.append((rank + q, 0, n, -1, 0, 0, COPY))
    return _finish(steps)


@lru_cache(maxsize=512)
def binomial_broadcast(p, rank, n, root=0):
    """Binomial-tree broadcast from root: lg p rounds, the whole buffer each."""
    vr = (rank - root) % p
    steps = []
    mask = 1
    while mask < p:  # receive from the parent (clear the lowest set bit of vr)
        if vr & mask:
            steps.append((-1, 0, 0, (vr - mask + root) % p, 0, n, COPY))
            break
        mask <<= 1
    mask >>= 1
    while mask > 0:  # then send to children vr + mask for each lower bit
        if vr + mask < p:
            steps.append(((vr + mask + root) % p, 0, n, -1, 0, 0, COPY))
        mask >>= 1
    return _finish(steps)


@lru_cache(maxsize=512)
def scatter_allgather_broadcast(p, rank, n, root=0):
    """Bandwidth-optimal broadcast (van de Geijn): root scatters blocks, then ring all-gather.

    Sends about 2(p-1)/p * n per rank instead of lg p * n for the binomial tree.
    """
    if p == 1:
        return Schedule((), 0)
    b = chunk_bounds(n, p)
    steps = []
    if rank == root:
        for k in range(1, p):
            dst = (root + k) % p
            steps.append((dst, b[dst], b[dst + 1], -1, 0, 0, COPY))
    else:
        steps.append((-1, 0, 0, root, b[rank], b[rank + 1], COPY))
    return _finish(steps + _ring_allgather_steps(p, rank, n, max(1, n)))


@lru_cache(maxsize=512)
def binomial_reduce(p, rank, n, root=0):
    """Binomial-tree reduce to root: lg p rounds; non-root buffers are used as scratch."""
    vr = (rank - root) % p
    steps = []
    mask = 1
    while mask < p:
        if vr & mask:
            steps.append(((vr - mask + root) % p, 0, n, -1, 0, 0, COPY))
            break
        if vr + mask < p:
            steps.append((-1, 0, 0, (vr + mask + root) % p, 0, n, REDUCE))
        mask <<= 1
    return _finish(steps)


@lru_cache(maxsize=512)
def ring_reduce(p, rank, n, root=0, seg=1 << 62):
    """Bandwidth-optimal reduce (Rabenseifner): ring reduce-scatter, then gather to root."""
    if p == 1:
        return Schedule((), 0)
    b = chunk_bounds(n, p)
    steps = _ring_reduce_scatter_steps(p, rank, n, max(1, seg))
    if rank == root:
        for k in range(1, p):
            src = (root + k) % p
            steps.append((-1, 0, 0, src, b[src], b[src + 1], COPY))
    else:
        steps.append((root, b[rank], b[rank + 1], -1, 0, 0, COPY))
    return _finish(steps)


#: algorithm name -> generator(p, rank, n, **options) for all-reduce
ALLREDUCE = {"ring": ring_allreduce, "tree": tree_allreduce, "rhd": rhd_allreduce}
