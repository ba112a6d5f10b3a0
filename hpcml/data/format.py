"""The sharded dataset format: a folder with manifest.json and shard-NNNNN.h5 files.

    manifest.json  {"format": "hpcml-sharded", "version": 1, "features": F,
                    "x_dtype": "float32", "y_dtype": "int64", "task": "classification",
                    "classes": C (classification only), "rows": N,
                    "shards": [{"file": "shard-00000.h5", "rows": n0, "sha256": "..."}, ...]}
    shard-NNNNN.h5 datasets x (rows x F) and y (rows), chunked by row blocks

The checksum of a shard is the SHA-256 of its x bytes then its y bytes (C order). Every
file is written under a temporary name in the same folder, fsynced and renamed, so a crash
never leaves a truncated shard or manifest behind a real name. Nothing is pickled.
"""
import hashlib
import json
import os

import numpy as np

from hpcml.atomic import atomic_h5, atomic_write_json

FORMAT, VERSION = "hpcml-sharded", 1
CHUNK_ROWS = 1024  # rows per HDF5 chunk: the unit of a row-block read
TASKS = ("classification", "regression")


class DataError(ValueError):
    """A dataset that cannot be used, with the file and the problem named."""


def shard_name(i):
    return f"shard-{i:05d}.h5"


def write_shard(folder, index, x, y):
    """Write one shard atomically; returns its manifest entry."""
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{shard_name(index)}: x must be rows x features and y (rows,), got "
                        f"{x.shape} and {y.shape}")
    name = shard_name(index)
    # built in memory, written as one image with the space reserved first (hpcml.atomic):
    # a full disk raises WriteError naming the file, never reaches HDF5
    with atomic_h5(os.path.join(folder, name)) as f:
        rows = max(1, min(CHUNK_ROWS, x.shape[0]))
        f.create_dataset("x", data=x, chunks=(rows, max(1, x.shape[1])))
        f.create_dataset("y", data=y, chunks=(rows,))
    h = hashlib.sha256()
    h.update(x.tobytes())
    h.update(y.tobytes())
    return {"file": name, "rows": int(x.shape[0]), "sha256": h.hexdigest()}


def write_manifest(folder, shards, features, x_dtype, y_dtype, task, classes=None, extra=None):
    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    m = {"format": FORMAT, "version": VERSION, "features": int(features),
         "x_dtype": np.dtype(x_dtype).name, "y_dtype": np.dtype(y_dtype).name, "task": task,
         "rows": int(sum(s["rows"] for s in shards)), "shards": list(shards)}
    if task == "classification":
        m["classes"] = int(classes)
    if extra:
        m.update(extra)
    atomic_write_json(os.path.join(folder, "manifest.json"), m)
    return m


def read_manifest(folder):
    """The manifest, validated for shape and types (not against the shard files)."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(folder):
        from .builtin import NAMES
        raise DataError(f"{folder}: not found (no such folder; built-in datasets: "
                        f"{', '.join(sorted(NAMES))})")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest.json (is {folder} a sharded dataset?)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest: {e}") from None
    try:
        if m.get("format") != FORMAT:
            raise DataError(f"format is {m.get('format')!r}, expected {FORMAT!r}")
        if m.get("version") != VERSION:
            raise DataError(f"format version {m.get('version')!r} is not supported "
                            f"(this hpcml reads version {VERSION})")
        if m.get("task") not in TASKS:
            raise DataError(f"task {m.get('task')!r} is not one of {', '.join(TASKS)}")
        np.dtype(m["x_dtype"])
        np.dtype(m["y_dtype"])
        if int(m["features"]) < 1:
            raise DataError("features must be >= 1")
        if m["task"] == "classification" and int(m["classes"]) < 1:
            raise DataError("classes must be >= 1")
        rows = 0
        for s in m["shards"]:
            if int(s["rows"]) < 0 or not str(s["file"]).startswith("shard-") \
                    or os.sep in str(s["file"]):
                raise DataError(f"bad shard entry {s!r}")
            sha = s.get("sha256")
            if not (isinstance(sha, str) and len(sha) == 64
                    and all(c in "0123456789abcdef" for c in sha)):
                raise DataError(f"shard entry {s.get('file')!r}: sha256 must be 64 hex "
                                f"digits, got {sha!r}")
            rows += int(s["rows"])
        if rows != int(m["rows"]):
            raise DataError(f"rows is {m['rows']} but the shards add up to {rows}")
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from None
    return m
