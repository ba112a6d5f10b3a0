"""Row-range reads from one shard, straight from the file when its layout allows.

h5py's slicing costs a selection, a type-conversion plan and a temporary array per call;
for the loader's small row blocks that overhead is as large as the copy itself. When a
dataset is stored plainly, HDF5's own index tells where its bytes are, and a row range is
one os.preadv per chunk it touches, straight into the caller's buffer (the GIL is released
while the kernel copies). "Plainly" means, checked when the shard is opened:

* layout chunked with chunks spanning whole rows (x: (c, features), y: (c,)), no filters
  (no compression, no checksum filter), every chunk allocated and inside the file; or a
  contiguous layout inside the file;
* a native-byte-order dtype (the manifest's, already checked by ShardedDataset).

Anything else (compressed shards written by another tool, big-endian data, chunks that
split a row) is read through h5py slicing: same result, slower. A file that shrinks after
it was opened gives a short read, which is reported as a DataError naming the file.
"""
import os

import h5py
import numpy as np

from .format import DataError


class _Layout:
    """Where the bytes of rows live for one dataset (x or y) of a shard, or None."""

    def __init__(self, dset, file_size):
        self.row_bytes = dset.dtype.itemsize * int(np.prod(dset.shape[1:], dtype=np.int64))
        self.rows = dset.shape[0]
        self.contiguous = None  # byte offset of row 0, contiguous layout
        self.chunk_rows = None  # rows per chunk, chunked layout
        self.offsets = None  # byte offset of each chunk, by chunk index
        self.ok = self._inspect(dset, file_size)

    def _inspect(self, dset, file_size):
        if not dset.dtype.isnative or self.rows == 0 or self.row_bytes == 0:
            return False
        dcpl = dset.id.get_create_plist()
        layout = dcpl.get_layout()
        if layout == h5py.h5d.CONTIGUOUS:
            off = dset.id.get_offset()
            if off is None or off + self.rows * self.row_bytes > file_size:
                return False
            self.contiguous = off
            return True
        if layout != h5py.h5d.CHUNKED or dcpl.get_nfilters() != 0:
            return False
        chunks = dset.chunks
        if tuple(chunks[1:]) != tuple(dset.shape[1:]):
            return False  # a chunk does not hold whole rows
        c = chunks[0]
        n_chunks = -(-self.rows // c)
        offsets = np.full(n_chunks, -1, np.int64)
        full = c * self.row_bytes

        def seen(info):
            i = info.chunk_offset[0] // c
            if info.filter_mask == 0 and info.size == full and 0 <= i < n_chunks:
                offsets[i] = info.byte_offset
        if hasattr(dset.id, "chunk_iter"):
            dset.id.chunk_iter(seen)
        else:  # older HDF5
            for k in range(dset.id.get_num_chunks()):
                seen(dset.id.get_chunk_info(k))
        if (offsets < 0).any() or (offsets + full > file_size).any():
            return False  # an unallocated chunk (fill value) or one past the end
        self.chunk_rows, self.offsets = c, offsets
        return True

    def spans(self, a, b):
        """(file offset, nbytes, first row) pieces covering rows [a, b)."""
        rb = self.row_bytes
        if self.contiguous is not None:
            yield self.contiguous + a * rb, (b - a) * rb, a
            return
        c = self.chunk_rows
        r = a
        while r < b:
            i = r // c
            end = min(b, (i + 1) * c)
            yield int(self.offsets[i]) + (r - i * c) * rb, (end - r) * rb, r
            r = end


class ShardReader:
    """Reads rows [a, b) of a shard's x and y into caller-provided buffers.

    layouts: the (x, y) layouts of an earlier reader of the same, unchanged file
    (`layouts()`); the file is then opened for raw reads only, without h5py."""

    def __init__(self, path, layouts=None):
        self.path = path
        self.h5 = None
        self.fd = None
        try:
            if layouts is not None:
                self.lx, self.ly = layouts
                self.raw = True
                self.fd = os.open(path, os.O_RDONLY)
                return
            self.h5 = h5py.File(path, "r")
            self.x, self.y = self.h5["x"], self.h5["y"]
            size = os.path.getsize(path)
            self.lx, self.ly = _Layout(self.x, size), _Layout(self.y, size)
            self.raw = self.lx.ok and self.ly.ok
            if self.raw:
                self.fd = os.open(path, os.O_RDONLY)
        except BaseException:
            self.close()
            raise

    def layouts(self):
        """(x layout, y layout) of a plainly stored shard, for ShardReader(path, ...)."""
        return (self.lx, self.ly) if self.raw else None

    def read(self, a, b, out_x, out_y):
        """out_x[:b-a] = x[a:b], out_y[:b-a] = y[a:b] (out_* C-contiguous, of the shard's
        dtypes)."""
        n = b - a
        if n <= 0:
            return
        if not self.raw:
            try:
                self.x.read_direct(out_x, np.s_[a:b], np.s_[0:n])
                self.y.read_direct(out_y, np.s_[a:b], np.s_[0:n])
            except (OSError, KeyError, RuntimeError) as e:  # e.g. a corrupt compressed chunk
                raise DataError(f"{self.path}: rows {a}..{b - 1} cannot be read "
                                f"({type(e).__name__}: {e})") from None
            return
        for layout, out in ((self.lx, out_x), (self.ly, out_y)):
            mem = memoryview(out[:n]).cast("B")
            rb = layout.row_bytes
            for off, nbytes, first in layout.spans(a, b):
                lo = (first - a) * rb
                done = 0
                while done < nbytes:  # a read can return less (e.g. over 2 GiB at once)
                    got = os.preadv(self.fd, [mem[lo + done:lo + nbytes]], off + done)
                    if got <= 0:
                        raise DataError(f"{self.path}: short read ({done} of {nbytes} "
                                        f"bytes at offset {off}): the file was truncated "
                                        f"or replaced while in use")
                    done += got

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None
