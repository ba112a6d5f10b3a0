"""Datasets shipped inside the package, usable by name: ShardedDataset("digits").

`digits`: the 1,797 8x8 handwritten digits (64 integer pixels 0..16 as float32, 10 classes)
of the UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak,
1998; CC BY 4.0), taken from the copy that scikit-learn ships
(sklearn/datasets/data/digits.csv.gz in scikit-learn 1.9.1, BSD-3). Fixed split: a
permutation from default_rng(0); the first 1,438 rows (80 %) are `digits` (= `digits:train`),
the other 359 are `digits:test`. build_digits() below made the shipped shards.
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = {"digits": "digits/train", "digits:train": "digits/train", "digits:test": "digits/test"}


def resolve(name):
    """The folder of a built-in dataset, or None if `name` is not one."""
    sub = NAMES.get(name)
    return os.path.join(HERE, sub) if sub else None


def build_digits(csv_gz, out=os.path.join(HERE, "digits")):
    """Write digits/train and digits/test from scikit-learn's digits.csv.gz."""
    from ..format import write_shard, write_manifest
    a = np.loadtxt(csv_gz, delimiter=",")
    if a.shape != (1797, 65):
        raise ValueError(f"{csv_gz}: expected 1797 x 65, got {a.shape}")
    order = np.random.default_rng(0).permutation(len(a))
    cut = int(round(0.8 * len(a)))
    for split, rows in (("train", order[:cut]), ("test", order[cut:])):
        folder = os.path.join(out, split)
        os.makedirs(folder, exist_ok=True)
        entry = write_shard(folder, 0, a[rows, :64].astype(np.float32),
                            a[rows, 64].astype(np.int64))
        write_manifest(folder, [entry], 64, "float32", "int64", "classification", 10,
                       extra={"name": f"digits:{split}", "source": "UCI optdigits test set "
                              "via scikit-learn 1.9.1 digits.csv.gz", "license": "CC BY 4.0"})
