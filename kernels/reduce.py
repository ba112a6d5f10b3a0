"""Element-wise reductions the collectives use: combine a received block into an accumulator.

NumPy reference versions (one memory pass, in place). The ufuncs are exposed so a
hot loop can call them directly without a Python-level dispatch per block.
"""
import numpy as np

#: op name -> (ufunc, works on complex)
UFUNCS = {
    "sum": np.add,
    "prod": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
}

#: ops that are not a single ufunc: op name -> the ufunc that reduces first
DERIVED = {"mean": "sum"}

OP_NAMES = tuple(UFUNCS) + tuple(DERIVED)


def ufunc_for(op):
    """The ufunc that reduces for `op` ('mean' reduces with 'sum')."""
    try:
        return UFUNCS[DERIVED.get(op, op)]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OP_NAMES)}") from None


def reduce_into(acc, x, op="sum", incoming_first=False):
    """acc[...] = op(acc, x) (or op(x, acc) when incoming_first), in place; returns acc.

    The operand order is fixed so that ranks that combine the same two partial results
    produce the same bytes even for ops whose IEEE result depends on order (max of +0/-0).
    """
    f = ufunc_for(op)
    if incoming_first:
        return f(x, acc, out=acc)
    return f(acc, x, out=acc)
