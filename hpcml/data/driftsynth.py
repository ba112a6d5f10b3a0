"""Synthetic streams with known drift points (python -m hpcml.data synth --drift ...).

Rows are in stream order: row r belongs to concept c = the number of drift points <= r,
and each concept has its own class centres (classification) or linear map (regression),
drawn from the seed and c alone, so a model of one concept is wrong for the next (an
abrupt drift). Shard i is generated from default_rng([seed, i, DRIFT_TAG]) and its rows'
global positions, so the stream does not depend on the number of ranks writing it.
"""
import numpy as np

from .format import DataError

DRIFT_TAG = 0xD21F7


def parse(text, rows):
    """Sorted drift positions from "20000,40000" (each in 1..rows-1)."""
    try:
        points = sorted({int(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise DataError(f"--drift {text!r}: expected row positions such as 20000,40000") \
            from None
    if not points or points[0] < 1 or points[-1] >= rows:
        raise DataError(f"--drift {text!r}: positions must lie in 1..{rows - 1} (the rows "
                        f"where a new concept starts)")
    return points


def _concept(seed, c, features, classes, regression):
    rng = np.random.default_rng([seed, c, DRIFT_TAG, 1 << 30])
    if regression:
        return rng.standard_normal(features)
    return rng.standard_normal((classes, features)) * 1.5


def make_shard(seed, index, rows, offset, features, classes, regression, dtype, points):
    """(x, y) of shard `index`, whose first row is row `offset` of the stream."""
    rng = np.random.default_rng([seed, index, DRIFT_TAG])
    concept = np.searchsorted(np.asarray(points), offset + np.arange(rows), side="right")
    x = rng.standard_normal((rows, features))
    if regression:
        y = np.empty(rows)
        for c in np.unique(concept):
            at = concept == c
            y[at] = x[at] @ _concept(seed, c, features, classes, True)
        y += 0.1 * rng.standard_normal(rows)
        return x.astype(dtype), y.astype(dtype)
    y = rng.integers(0, classes, rows)
    for c in np.unique(concept):
        at = concept == c
        x[at] += _concept(seed, c, features, classes, False)[y[at]]
    return x.astype(dtype), y.astype(np.int64)
