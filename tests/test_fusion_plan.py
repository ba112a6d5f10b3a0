"""Tensor-fusion bucket planning (pure function: the same plan on every rank)."""
import numpy as np
import pytest

from hpcml.comm import plan_buckets


def test_packs_in_order_up_to_the_cap():
    plan = plan_buckets([40, 40, 40, 40], ["float32"] * 4, cap=100)
    assert [idx for _, idx in plan] == [[0, 1], [2, 3]]


def test_dtypes_never_share_a_bucket_and_keep_their_order():
    plan = plan_buckets([8, 8, 8, 8, 8], ["f4", "f8", "f4", "i8", "f8"], cap=1000)
    assert [(dt.name, idx) for dt, idx in plan] == [
        ("float32", [0, 2]), ("float64", [1, 4]), ("int64", [3])]


def test_an_array_above_the_cap_goes_alone():
    plan = plan_buckets([10, 500, 10], ["f4"] * 3, cap=100)
    assert [idx for _, idx in plan] == [[0], [1], [2]]


def test_every_array_exactly_once_and_caps_respected():
    rng = np.random.default_rng(0)
    sizes = list(rng.integers(0, 300, size=200))
    dts = list(rng.choice(["f4", "f8", "i4"], size=200))
    plan = plan_buckets(sizes, dts, cap=512)
    seen = sorted(i for _, idx in plan for i in idx)
    assert seen == list(range(200))
    for dt, idx in plan:
        assert all(np.dtype(dts[i]) == dt for i in idx)
        assert len(idx) == 1 or sum(sizes[i] for i in idx) <= 512
        assert idx == sorted(idx)


def test_bad_cap():
    with pytest.raises(ValueError, match="positive"):
        plan_buckets([1], ["f4"], cap=0)
