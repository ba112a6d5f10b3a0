"""Every schedule, every world size 1..16, replayed in one process against a NumPy oracle.

The replay (hpcml.comm.replay) has rendezvous semantics: a step finishes only when its send
met the peer's receive of the same length, so passing here means no deadlock on any MPI.
"""
import numpy as np
import pytest

from hpcml.comm import schedules as S
from hpcml.comm.replay import replay, ScheduleError

WORLD = range(1, 17)


def lengths(p):
    return sorted({0, 1, max(p - 1, 0), p, p + 1, 7, 64, 101})


def inputs(p, n, seed=0):
    rng = np.random.default_rng(seed + 1000 * p + n)
    return [rng.integers(-50, 50, size=n).astype(np.int64) for _ in range(p)]


@pytest.mark.parametrize("p", WORLD)
@pytest.mark.parametrize("name", ["ring", "tree", "rhd"])
def test_allreduce_schedules(p, name):
    for n in lengths(p):
        for seg in (1, 3, 1 << 62):
            bufs = inputs(p, n)
            expected = np.sum(bufs, axis=0) if p else None
            if name == "tree":
                scheds = [S.tree_allreduce(p, r, n) for r in range(p)]
            else:
                scheds = [S.ALLREDUCE[name](p, r, n, seg) for r in range(p)]
            replay(scheds, bufs)
            for r in range(p):
                assert np.array_equal(bufs[r], expected), (name, p, n, seg, r)


@pytest.mark.parametrize("p", WORLD)
@pytest.mark.parametrize("name", ["ring", "tree", "rhd"])
def test_allreduce_float_bytes_identical_on_all_ranks(p, name):
    """Order-dependent float rounding must still give every rank the same bytes, within
    the summation bound of the exact sum, and the bound must be tight enough to notice any
    one rank's contribution missing."""
    rng = np.random.default_rng(p)
    n = 53
    bufs = [(rng.standard_normal(n) * 10.0 ** rng.uniform(-1.5, 1.5)).astype(np.float32)
            for _ in range(p)]
    exact = np.sum(np.array(bufs, np.float64), axis=0)  # float64: error ~1e-16, negligible
    # any order of p - 1 float32 additions: |error| <= (p - 1) * u * sum|x| (u = eps / 2);
    # p * eps * sum|x| is twice that; the measured error reaches 0.23 of it (p = 1..16)
    bound = p * np.finfo(np.float32).eps * np.sum(np.abs(np.array(bufs, np.float64)), axis=0)
    for r in range(p if p > 1 else 0):  # the check can fail: without rank r's term the
        # result moves by |x_r| - (rounding <= bound), past the bound where |x_r| > 2 bound
        assert (np.abs(bufs[r]) > 2 * bound).any(), f"rank {r}'s contribution undetectable"
    if name == "tree":
        scheds = [S.tree_allreduce(p, r, n) for r in range(p)]
    else:
        scheds = [S.ALLREDUCE[name](p, r, n, 5) for r in range(p)]
    replay(scheds, bufs)
    for r in range(1, p):
        assert bufs[r].tobytes() == bufs[0].tobytes()
    err = np.abs(bufs[0].astype(np.float64) - exact)
    assert (err <= bound).all(), f"error {err.max():.3g} above the bound at {err.argmax()}"


@pytest.mark.parametrize("p", WORLD)
def test_reduce_scatter_and_allgather(p):
    for n in lengths(p):
        b = S.chunk_bounds(n, p)
        bufs = inputs(p, n)
        total = np.sum(bufs, axis=0)
        replay([S.ring_reduce_scatter(p, r, n, 2) for r in range(p)], bufs)
        for r in range(p):
            assert np.array_equal(bufs[r][b[r]:b[r + 1]], total[b[r]:b[r + 1]])
        gathered = [np.where(np.isin(np.arange(n), np.arange(b[r], b[r + 1])), total, -999)
                    for r in range(p)]
        replay([S.ring_allgather(p, r, n) for r in range(p)], gathered)
        for r in range(p):
            assert np.array_equal(gathered[r], total)


@pytest.mark.parametrize("p", WORLD)
@pytest.mark.parametrize("kind", ["binomial", "scatter_allgather"])
def test_broadcast_every_root(p, kind):
    gen = S.binomial_broadcast if kind == "binomial" else S.scatter_allgather_broadcast
    for root in range(p):
        for n in lengths(p):
            bufs = inputs(p, n, seed=root)
            expected = bufs[root].copy()
            replay([gen(p, r, n, root) for r in range(p)], bufs)
            assert all(np.array_equal(b, expected) for b in bufs), (kind, p, root, n)


@pytest.mark.parametrize("p", WORLD)
@pytest.mark.parametrize("kind", ["binomial", "ring"])
def test_reduce_every_root(p, kind):
    for root in range(p):
        for n in lengths(p):
            bufs = inputs(p, n, seed=root)
            expected = np.sum(bufs, axis=0)
            if kind == "binomial":
                scheds = [S.binomial_reduce(p, r, n, root) for r in range(p)]
            else:
                scheds = [S.ring_reduce(p, r, n, root, 3) for r in range(p)]
            replay(scheds, bufs)
            assert np.array_equal(bufs[root], expected), (kind, p, root, n)


def test_ops_other_than_sum():
    p, n = 5, 20
    bufs = inputs(p, n)
    expected = np.maximum.reduce(bufs)
    replay([S.ring_allreduce(p, r, n, 3) for r in range(p)], bufs, np.maximum)
    assert all(np.array_equal(b, expected) for b in bufs)


def test_chunk_bounds_cover_exactly():
    for p in WORLD:
        for n in lengths(p):
            b = S.chunk_bounds(n, p)
            sizes = np.diff(b)
            assert b[0] == 0 and b[-1] == n and sizes.max() - sizes.min() <= 1


def test_step_counts_follow_the_algorithms():
    """ring: 2(p-1) steps per segment; tree: lg p exchanges (+2 when folding)."""
    assert len(S.ring_allreduce(8, 0, 800).steps) == 14
    assert len(S.ring_allreduce(8, 0, 800, 50).steps) == 7 * 2 + 7
    assert len(S.tree_allreduce(8, 3, 10).steps) == 3
    assert len(S.tree_allreduce(6, 5, 10).steps) == 2  # folded: send, then receive
    assert len(S.tree_allreduce(6, 1, 10).steps) == 4  # fold in, 2 exchanges, send back
    assert len(S.rhd_allreduce(8, 0, 800).steps) == 6


def test_replay_detects_deadlock():
    # both ranks receive first: a classic head-to-head deadlock
    a = [(-1, 0, 0, 1, 0, 4, S.COPY), (1, 0, 4, -1, 0, 0, S.COPY)]
    b = [(-1, 0, 0, 0, 0, 4, S.COPY), (0, 0, 4, -1, 0, 0, S.COPY)]
    with pytest.raises(ScheduleError, match="deadlock"):
        replay([a, b], [np.zeros(4), np.zeros(4)])


def test_replay_detects_blocking_send_cycle():
    """Two blocking Sends facing each other deadlock without buffering: caught."""
    a = [(1, 0, 4, -1, 0, 0, S.COPY), (-1, 0, 0, 1, 0, 4, S.COPY)]
    b = [(0, 0, 4, -1, 0, 0, S.COPY), (-1, 0, 0, 0, 0, 4, S.COPY)]
    with pytest.raises(ScheduleError, match="deadlock"):
        replay([a, b], [np.zeros(4), np.zeros(4)])


def test_replay_detects_length_mismatch_and_bad_ranges():
    a = [(1, 0, 4, 1, 4, 8, S.COPY)]
    b = [(0, 0, 3, 0, 4, 7, S.COPY)]
    with pytest.raises(ScheduleError, match="lengths differ"):
        replay([a, b], [np.zeros(8), np.zeros(8)])
    with pytest.raises(ScheduleError, match="receives into the range it sends"):
        replay([[(0, 0, 4, 0, 2, 6, S.COPY)]], [np.zeros(8)])
    with pytest.raises(ScheduleError, match="outside"):
        replay([[(0, 0, 9, 0, 0, 0, S.REDUCE)]], [np.zeros(8)])
