"""Element-wise reductions (hpcml.kernels.reduce) against NumPy."""
import numpy as np
import pytest

from hpcml.kernels.reduce import reduce_into, ufunc_for, OP_NAMES


@pytest.mark.parametrize("op,ref", [("sum", np.add), ("prod", np.multiply),
                                    ("max", np.maximum), ("min", np.minimum)])
def test_reduce_into_matches_numpy(op, ref):
    a = np.array([1.0, -2.0, np.inf, np.nan, 0.5])
    b = np.array([3.0, 4.0, 1.0, 2.0, np.nan])
    out = reduce_into(a.copy(), b, op)
    np.testing.assert_array_equal(out, ref(a, b))  # nan/inf propagate as in NumPy


def test_operand_order_is_explicit():
    acc, x = np.array([0.0]), np.array([-0.0])
    assert np.signbit(reduce_into(acc.copy(), x, "max", incoming_first=True))  == \
        np.signbit(np.maximum(x, acc))
    assert np.signbit(reduce_into(acc.copy(), x, "max")) == np.signbit(np.maximum(acc, x))


def test_mean_reduces_with_sum_and_unknown_op_is_named():
    assert ufunc_for("mean") is np.add
    assert set(OP_NAMES) == {"sum", "prod", "max", "min", "mean"}
    with pytest.raises(ValueError, match="unknown op 'avg'"):
        ufunc_for("avg")
