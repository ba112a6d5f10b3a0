"""Atomic file writes: temporary name in the same folder, fsync, os.replace.

A crash never leaves a truncated file behind the real name.
"""
import json
import os
import tempfile


def _umask_mode():
    """The mode a plainly created file gets (0666 less the umask), not mkstemp's 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path, data):
    """Write `data` to `path` atomically (same-folder temp file, fsync, rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, _umask_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)
    return path


def _fsync_folder(folder):
    """Make a rename in `folder` durable (best effort)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path, obj):
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def atomic_savefig(fig, path, **kwargs):
    """Save a matplotlib figure atomically as PNG."""
    import io
    out = io.BytesIO()
    fig.savefig(out, format="png", **kwargs)
    return atomic_write_bytes(path, out.getvalue())


class atomic_h5:
    """`with atomic_h5(path) as f:` writes an HDF5 file under a temporary name in the same
    folder; on success it is fsynced and renamed to `path` (and the rename made durable),
    on error removed."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __enter__(self):
        import h5py
        self.folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(self.folder, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.",
                                        suffix=".tmp", dir=self.folder)
        try:
            os.fchmod(fd, _umask_mode())
            os.close(fd)
            self.f = h5py.File(self.tmp, "w")
        except BaseException:
            os.unlink(self.tmp)
            raise
        return self.f

    def __exit__(self, etype, value, tb):
        try:
            self.f.close()
            if etype is None:
                with open(self.tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(self.tmp, self.path)
                _fsync_folder(self.folder)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False
