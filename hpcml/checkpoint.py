"""Atomic training checkpoints: one HDF5 file per step, a `latest` pointer, the last N kept.

    folder/step-00000120.h5   params, optim/<name> arrays; attrs: step, format, version,
                              config (JSON), state (JSON: loader position, counters...)
              model/ (spec and standardiser: hpcml.load_model reads a checkpoint)
    folder/latest             {"file": "step-00000120.h5", "step": 120} (JSON)

Every file is written under a temporary name, fsynced and renamed, so a kill at any moment
leaves the previous checkpoint intact. `find_latest` trusts nothing: it opens candidates
newest first and returns the first that reads back completely. Nothing is pickled.
"""
import glob
import json
import os
import re

import h5py
import numpy as np

from hpcml.atomic import atomic_h5, atomic_write_json

FORMAT, VERSION = "hpcml-checkpoint", 1
_NAME = re.compile(r"step-(\d{8,})\.h5$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and the problem named."""


def save(folder, step, params, optim_state, state, config, keep=3, model=None):
    """Write the checkpoint for `step` atomically, point `latest` at it, and delete all but
    the newest `keep` checkpoints. Call on one rank. Returns the path. model: (spec,
    arrays) of hpcml.model, written to the `model` group so the checkpoint predicts."""
    os.makedirs(folder, exist_ok=True)
    name = f"step-{step:08d}.h5"
    path = os.path.join(folder, name)
    with atomic_h5(path) as f:  # temporary name, fsync, rename; the umask's mode (0644)
        f.attrs["format"], f.attrs["version"] = FORMAT, VERSION
        f.attrs["step"] = int(step)
        f.attrs["config"] = json.dumps(config)
        f.attrs["state"] = json.dumps(state)
        f.create_dataset("params", data=params, **_checked(params))
        g = f.create_group("optim")
        scalars = {}
        for key, value in optim_state.items():
            if isinstance(value, np.ndarray):
                g.create_dataset(key, data=value, **_checked(value))
            else:
                scalars[key] = value
        g.attrs["scalars"] = json.dumps(scalars)
        if model is not None:
            from hpcml.model import write_group
            write_group(f.create_group("model"), model[0], f["params"], model[1])
    atomic_write_json(os.path.join(folder, "latest"), {"file": name, "step": int(step)})
    # keep the newest `keep` by step, but never the file just written (after resuming from
    # an older step, the higher-numbered files are the ones to go)
    others = sorted(c for c in _checkpoints(folder) if os.path.abspath(c[1]) !=
                    os.path.abspath(path))
    for old in (others[:len(others) - (keep - 1)] if keep > 0 else []):
        os.unlink(old[1])
    return path


def _checked(a):
    """HDF5's Fletcher-32 checksum on an array's chunks (verified by every read: a flipped
    byte is an unreadable checkpoint, not silently wrong weights); none for empty arrays,
    which HDF5 cannot chunk."""
    return {"fletcher32": True} if a.size else {}


def _checkpoints(folder):
    out = []
    for p in glob.glob(os.path.join(folder, "step-*.h5")):
        m = _NAME.search(os.path.basename(p))
        if m:
            out.append((int(m.group(1)), p))
    return out


def load(path):
    """{"step", "params", "optim", "state", "config"} from one checkpoint file; raises
    CheckpointError naming the file when it is not a complete hpcml checkpoint."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not an hpcml checkpoint")
            if int(f.attrs["version"]) != VERSION:
                raise CheckpointError(f"{path}: checkpoint version {f.attrs['version']}, "
                                      f"this hpcml reads {VERSION}")
            optim = {k: f["optim"][k][()] for k in f["optim"]}
            optim.update(json.loads(f["optim"].attrs["scalars"]))
            return {"step": int(f.attrs["step"]), "params": f["params"][()],
                    "optim": optim, "state": json.loads(f.attrs["state"]),
                    "config": json.loads(f.attrs["config"]), "path": path}
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") \
            from None


def find_latest(folder):
    """The newest checkpoint in `folder` that reads back completely (loaded), or None.
    Unreadable newer files are skipped (and reported in the returned 'skipped')."""
    skipped = []
    for _, path in sorted(_checkpoints(folder), reverse=True):
        try:
            ck = load(path)
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        ck["skipped"] = skipped
        return ck
    if skipped:  # checkpoints exist but none loads: not a fresh start
        raise CheckpointError(f"{folder}: no readable checkpoint ({'; '.join(skipped)})")
    return None
