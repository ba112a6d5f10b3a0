"""An MNIST-sized dataset made from the built-in digits: `python -m hpcml.data synth OUT
--like digits --rows 60000 --test-rows 10000`.

MNIST cannot be downloaded here, and `digits` has 1,438 training rows, 1/40 of MNIST's
60,000: federated experiments in McMahan et al.'s layout (100 clients of 600 rows) need
the larger size. Each row is one of digits' 8x8 images (training rows from `digits:train`,
test rows from `digits:test`, so no test image's source is seen in training) moved by a
random shift of -1, 0 or +1 pixel in each direction (pixels moved in from outside are 0),
its ink scaled by a factor drawn from U(0.8, 1.2), plus Gaussian noise of standard
deviation 1 (on the 0..16 pixel scale), clipped to 0..16. Labels are the source image's.

Everything derives from the seed: shard i of split s (0 train, 1 test) from
numpy.random.default_rng([seed, i, s, 8]), so the data do not depend on how many ranks
write them.
"""
import numpy as np

from .format import DataError

LIKE = ("digits",)


def _source(split):
    import h5py
    from .builtin import resolve
    from .format import read_manifest
    import os
    folder = resolve("digits:test" if split else "digits:train")
    m = read_manifest(folder)
    with h5py.File(os.path.join(folder, m["shards"][0]["file"]), "r") as h:
        return h["x"][...].astype(np.float64), h["y"][...].astype(np.int64)


def make_shard(seed, index, rows, split=0, dtype="float32", noise=1.0, ink=(0.8, 1.2)):
    """(x, y) of shard `index`: `rows` augmented digits (split 0 from digits:train, 1 from
    digits:test); noise: the Gaussian noise's standard deviation, ink: the range of the
    ink scale."""
    x0, y0 = _source(split)
    rng = np.random.default_rng([seed, index, split, 8])
    pick = rng.integers(0, len(x0), rows)
    img = x0[pick].reshape(rows, 8, 8)
    pad = np.zeros((rows, 10, 10))
    pad[:, 1:9, 1:9] = img
    dy, dx = rng.integers(-1, 2, rows), rng.integers(-1, 2, rows)
    r = np.arange(8)
    rows_idx = (1 - dy)[:, None] + r[None, :]  # output row i reads padded row i + 1 - dy
    cols_idx = (1 - dx)[:, None] + r[None, :]
    out = pad[np.arange(rows)[:, None, None], rows_idx[:, :, None], cols_idx[:, None, :]]
    out *= rng.uniform(*ink, rows)[:, None, None]
    out += noise * rng.standard_normal(out.shape)
    np.clip(out, 0.0, 16.0, out=out)
    return out.reshape(rows, 64).astype(dtype), y0[pick]


def check(like, features, classes, regression):
    if like not in LIKE:
        raise DataError(f"--like {like!r}: one of {', '.join(LIKE)}")
    if regression or (features not in (None, 64)) or (classes not in (None, 10)):
        raise DataError("--like digits makes 64 features and 10 classes: leave --features "
                        "and --classes out (or give 64 and 10), no --regression")
