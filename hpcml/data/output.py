"""Where `convert` and `synth` write: never over an existing dataset by accident.

    work = begin_output(out, overwrite, comm)   # collective
    ... write the dataset into `work` ...
    finish_output(out, work, comm)              # collective; abandon_output on failure

A folder that already holds a dataset (a manifest.json, shard files, or train/ and test/
datasets) is refused, naming what it holds, unless `overwrite`: then the new dataset is
written into a fresh sibling folder and swapped in whole at the end (two renames), so the
old dataset stays intact until the new one is complete and no stale shard of it survives.
"""
import glob
import os
import shutil
import tempfile

from hpcml import comm as hc
from hpcml.comm.guard import agree

from .format import DataError


def _held(out):
    """What of a dataset `out` holds (a short description), or None."""
    if not os.path.isdir(out):
        return None
    found = []
    for sub in ("", "train", "test"):
        folder = os.path.join(out, sub)
        if os.path.isfile(os.path.join(folder, "manifest.json")):
            found.append(os.path.join(sub, "manifest.json") if sub else "manifest.json")
        shards = glob.glob(os.path.join(folder, "shard-*.h5"))
        if shards:
            found.append(f"{len(shards)} shard file(s)" + (f" in {sub}/" if sub else ""))
    return ", ".join(found) or None


def _agreed(comm, fn, what):
    """fn() on rank 0, its result broadcast; an error there raised on every rank."""
    result, error = None, None
    if comm is None or comm.Get_rank() == 0:
        try:
            result = fn()
        except (DataError, OSError) as e:
            error = str(e)
    if comm is None:
        if error:
            raise DataError(error)
        return result
    agree(comm, error, what=what)
    return hc.bcast_object(result, comm=comm)


def begin_output(out, overwrite=False, comm=None):
    """The folder to write the dataset into (collective)."""
    def decide():
        held = _held(out)
        if held is None:
            return out
        if not overwrite:
            raise DataError(f"{out} already holds a dataset ({held}): pass --overwrite to "
                            f"replace it, or choose another folder")
        parent = os.path.dirname(os.path.abspath(out))
        return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.new-",
                                dir=parent)
    return _agreed(comm, decide, f"preparing {out}")


def finish_output(out, work, comm=None):
    """Swap the finished dataset in `work` into `out` (collective; a no-op if the same)."""
    if work == out:
        return

    def swap():
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.old-",
                               dir=os.path.dirname(os.path.abspath(out)))
        os.rename(out, os.path.join(old, "data"))
        os.rename(work, out)
        shutil.rmtree(old, ignore_errors=True)
    _agreed(comm, swap, f"replacing {out}")


def abandon_output(out, work, comm=None):
    """After a failed run: remove the fresh folder (rank 0); `out` is untouched."""
    if work != out and (comm is None or comm.Get_rank() == 0):
        shutil.rmtree(work, ignore_errors=True)
