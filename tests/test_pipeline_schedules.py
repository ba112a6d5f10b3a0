"""Pipeline schedules as data (issue 16): every schedule is complete and deadlock-free for
S = 1..8 ranks, M = 1..16 micro-batches, v = 1..3 virtual stages, replayed in one process;
the replay's bubble and live activations agree with the closed forms (GPipe and 1F1B
(p-1)/(m+p-1), interleaved (p-1)/(vm+p-1), ZB-H1 (p-1)/(3m+p-1) with tF = tB = tW); a
bad schedule is named, with the step x rank grid marking the stuck actions."""
import pytest

from hpcml.parallel.pipeline import (SCHEDULES, Action, Schedule, ScheduleError, grid, make,
                                     replay, theory_bubble)


def _cases():
    for name in SCHEDULES:
        for v in ((1, 2, 3) if name == "interleaved" else (1,)):
            yield name, v


@pytest.mark.parametrize("name,v", list(_cases()))
def test_every_schedule_completes_for_every_size(name, v):
    for p in range(1, 9):
        for m in range(1, 17):
            s = make(name, p, m, v)
            rep = replay(s)  # raises on a deadlock or a missing/duplicated action
            want = p * v * m * (3 if s.split_w else 2)
            assert len(rep.timeline) == want, (name, p, m, v)
            # every message that crosses ranks is sent once and received once: F and B of
            # every micro-batch between consecutive stages on different ranks
            assert rep.messages == 2 * m * sum(1 for st in range(1, p * v)
                                               if s.owner(st) != s.owner(st - 1))


@pytest.mark.parametrize("name,v", list(_cases()))
def test_bubble_matches_the_closed_form(name, v):
    for p, m in ((2, 4), (4, 8), (4, 16), (8, 16), (3, 9)):
        s = make(name, p, m, v)
        costs = {"F": 1.0, "B": 1.0, "W": 1.0} if s.split_w else {"F": 1.0, "B": 2.0}
        assert replay(s, costs).bubble == pytest.approx(theory_bubble(name, p, m, v),
                                                        abs=1e-12), (name, p, m, v)


def test_live_activations_gpipe_m_1f1b_at_most_p():
    for p, m in ((4, 8), (2, 16), (8, 8)):
        assert replay(make("gpipe", p, m)).peak_live == [m] * p
        assert replay(make("1f1b", p, m)).peak_live == [min(p - r, m) for r in range(p)]
        assert max(replay(make("zb-h1", p, m)).peak_live) == min(p, m)  # 1F1B's busiest


def test_zb_h1_idles_about_a_third_of_1f1b():
    zb, one = replay(make("zb-h1", 4, 16)), replay(make("1f1b", 4, 16))
    assert zb.bubble / one.bubble < 0.4  # 0.37 here; the paper: about a third


def test_text_form_round_trips_and_bad_schedules_are_named():
    s = make("1f1b", 2, 3)
    assert s.text() == ("rank 0: 0F0 0F1 0B0 0F2 0B1 0B2\n"
                        "rank 1: 1F0 1B0 1F1 1B1 1F2 1B2")
    t = Schedule.from_text(s.text())
    assert t.actions == s.actions and str(Action.parse(" 2W11 ")) == "2W11"
    with pytest.raises(ScheduleError, match="not an action: 'XF1'"):
        Action.parse("XF1")
    # rank 1 runs its backward of micro-batch 0 before its forward: it waits for itself
    bad = Schedule.from_text("rank 0: 0F0 0B0\nrank 1: 1B0 1F0")
    with pytest.raises(ScheduleError, match="deadlock") as e:
        replay(bad)
    assert "[0B0]" in str(e.value) and "[1B0]" in str(e.value), str(e.value)
    with pytest.raises(ScheduleError, match="rank 0, action 1 \\(1F0\\): stage 1 belongs "
                                            "to rank 1"):
        replay(Schedule.from_text("rank 0: 0F0 1F0 0B0\nrank 1: 1B0"))
    with pytest.raises(ScheduleError, match="incomplete: 1 action"):
        replay(Schedule.from_text("rank 0: 0F0 0B0\nrank 1: 1F0", micro_batches=1))
    with pytest.raises(ScheduleError, match="must be one of gpipe, 1f1b, interleaved, zb-h1"):
        make("pipedream", 2, 2)
    assert "rank 1" in grid(s).splitlines()[0]


def test_shared_cores_stretch_every_action_and_keep_busy_as_compute_time():
    """An oversubscribed node (ranks spin in their waits, the OS shares the cores alike):
    every action takes ranks / cores times its cost, so with no message latency the
    makespan is the dedicated one times ranks / cores exactly, the busy time stays the
    costs, and the bubble is 1 - (1 - dedicated bubble) x cores / ranks; cores >= ranks
    changes nothing."""
    for name, v in (("gpipe", 1), ("1f1b", 1), ("zb-h1", 1), ("interleaved", 2)):
        s = make(name, 4, 8, v)
        costs = {"F": 1.0, "B": 2.0, "W": 0.5}
        one, two = replay(s, costs), replay(s, costs, cores=2)
        assert two.makespan == pytest.approx(2 * one.makespan, rel=1e-12)
        assert two.busy == pytest.approx(one.busy, rel=1e-12)
        assert two.bubble == pytest.approx(1 - (1 - one.bubble) / 2, rel=1e-12)
        assert replay(s, costs, cores=4).makespan == one.makespan
    with pytest.raises(ValueError, match="cores"):
        replay(make("gpipe", 2, 2), cores=0)
