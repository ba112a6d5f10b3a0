"""Atomic file writes: temporary name in the same folder, space reserved, fsync, os.replace.

A crash never leaves a truncated file behind the real name, and a full disk is an error,
not a crash: the bytes are reserved (posix_fallocate) before any is written, and a failure
(ENOSPC, EDQUOT, EIO, ...) raises WriteError naming the path and the bytes it needed, with
the temporary file removed. HDF5 files are built in memory (the core driver) and written
as one image: HDF5 2.0 crashes (SIGSEGV) closing a chunked, checksummed file after a
write failed on disk, so HDF5 never writes to disk itself here.
"""
import errno
import json
import os
import tempfile
import uuid


class WriteError(OSError):
    """Writing a file failed (disk full, quota, I/O error): the message names the file and
    the bytes it needed; nothing temporary is left and an earlier file is untouched."""

    def __str__(self):
        return self.strerror or super().__str__()


def _write_error(path, nbytes, e):
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EIO: "I/O error", errno.EFBIG: "file too large"}.get(
        e.errno, e.strerror or str(e))
    return WriteError(e.errno, f"{path}: could not write {nbytes:,} bytes: {why}")


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
    data = memoryview(data).cast("B")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
    except OSError as e:
        raise _write_error(path, len(data), e) from None
    try:
        os.fchmod(fd, _umask_mode())
        with os.fdopen(fd, "wb") as f:
            if len(data):
                try:
                    os.posix_fallocate(f.fileno(), 0, len(data))  # all the space, or nothing
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(path, len(data), e) from None
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


def memory_h5(name="image"):
    """A new HDF5 file held in memory (nothing is written to disk); h5_image(f) is its
    bytes. The core driver grows the image 1 MiB at a time."""
    import h5py
    # the name only identifies the image to HDF5 (which refuses two open files of one name)
    return h5py.File(f"{name}-{uuid.uuid4().hex}", "w", driver="core", backing_store=False,
                     block_size=1 << 20)


def h5_image(f):
    """The bytes of an in-memory HDF5 file (after a flush)."""
    f.flush()
    return f.id.get_file_image()


class atomic_h5:
    """`with atomic_h5(path) as f:` builds an HDF5 file in memory; on success its image is
    written with atomic_write_bytes (temporary name, space reserved first, fsync, rename,
    rename made durable). On error nothing is written. A full disk raises WriteError."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.f = memory_h5(os.path.basename(self.path))
        return self.f

    def __exit__(self, etype, value, tb):
        try:
            image = h5_image(self.f) if etype is None else None
        finally:
            self.f.close()
        if image is not None:
            atomic_write_bytes(self.path, image)
        return False


def writable_folder(folder, name):
    """Create `folder` if needed and prove a file can be written there, before a job's work
    (an unwritable output found after hours of computing loses them); OSError naming the
    setting `name` otherwise."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OSError(f"{name} {folder}: cannot write there ({e.strerror})") from None
