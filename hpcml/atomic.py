"""Atomic file writes: temporary name in the same folder, fsync, os.replace.

A crash never leaves a truncated file behind the real name.
"""
import json
import os
import tempfile


def atomic_write_bytes(path, data):
    """Write `data` to `path` atomically (same-folder temp file, fsync, rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
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
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_write_json(path, obj):
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def atomic_savefig(fig, path, **kwargs):
    """Save a matplotlib figure atomically as PNG."""
    import io
    out = io.BytesIO()
    fig.savefig(out, format="png", **kwargs)
    return atomic_write_bytes(path, out.getvalue())
