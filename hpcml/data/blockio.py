"""One GIL-free Numba pass that assembles a whole batch from plainly stored shards.

The loader's batch is a run of stream positions [p0, p1) that crosses a few row blocks,
each in some shard. Done block by block in Python, the bookkeeping (which block, which
chunk, which offsets, one os.preadv per chunk, one kernel call per block) costs about as
much as copying the 256 KB of a 1024 x 64 float32 block from the page cache, which is the
whole useful work. `assemble` does that walk in compiled code: libc's pread (a ctypes
function handed in as an argument, so the compiled code is cacheable), adjacent chunks
coalesced into one read, the in-block permutation (keyed_permutation_into), the copy into
the batch and the finite/label checks, all without the GIL.

What it cannot do, it hands back to the caller through `st` (see the ST_* codes): a shard
not opened yet, a shard that is not stored plainly (compressed, big-endian: read through
h5py by the caller), a failed pread (the caller redoes the piece with os.preadv, which
retries EINTR and raises the real OSError), a short read or a bad row (the caller names
the file and row). The caller then continues from the state left in `st`.
"""
import ctypes
import sys

import numpy as np
from numba import njit

from hpcml.kernels.cpu.elementwise import keyed_permutation_into

# st[] slots: in/out state of one batch's assembly
S_STATUS, S_POS, S_FILL, S_CACHED, S_BLOCK, S_SHARD, S_ROW, S_KIND = range(8)
# statuses
ST_DONE, ST_OPEN, ST_PYTHON, ST_BAD, ST_SHORT, ST_ERRNO = range(6)
# shard modes
M_CLOSED, M_RAW, M_PYTHON = 0, 1, 2
# bad-row kinds
K_NONFINITE, K_LABEL = 1, 2


def libc_pread():
    """libc's pread(fd, buf, count, offset) as a ctypes function, or None where this
    platform's ABI is not the one declared here (64-bit Linux or macOS)."""
    if sys.maxsize <= 2 ** 32 or not sys.platform.startswith(("linux", "darwin")):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).pread
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]
    fn.restype = ctypes.c_ssize_t
    return fn


@njit(nogil=True, cache=True, inline="always")
def _read_rows(pread, fd, c, tab, base, rb, a, b, dst):
    """Rows [a, b) of one dataset (chunks of c rows at byte offsets tab[base + i]; a
    contiguous dataset is one chunk) to address dst. 0, or -1 (pread failed), -2 (short)."""
    r = a
    while r < b:
        i = r // c
        end = min(b, (i + 1) * c)
        off = tab[base + i] + (r - i * c) * rb
        while end < b and tab[base + i + 1] == tab[base + i] + c * rb:  # adjacent chunk
            i += 1
            end = min(b, (i + 1) * c)
        nbytes = (end - r) * rb
        done = 0
        while done < nbytes:
            got = pread(fd, dst + (r - a) * rb + done, nbytes - done, off + done)
            if got < 0:
                return -1
            if got == 0:
                return -2
            done += got
        r = end
    return 0


@njit(nogil=True, cache=True)
def assemble(pread, blocks, starts, p1, mode, fds, xc, xbase, xtab, yc, ybase, ytab,
             tx, ty, order, bx, by, classes, drop, shuffle, k_seed, k_epoch, st):
    """Fill bx/by with stream positions [st[S_POS], p1) (see the module docstring).

    blocks[i] = (block id, shard, first row, end row) in stream order, starting at stream
    position starts[i]; per shard s: mode[s], fds[s], x chunk rows xc[s] with chunk
    offsets xtab[xbase[s]:], same for y. tx/ty/order: one block and its permutation,
    kept across calls (st[S_CACHED] names the block they hold, -1 none). Returns with
    st[S_STATUS] = ST_DONE, or another status and st[S_POS]/st[S_BLOCK] at the piece to
    handle."""
    xrb = bx.shape[1] * bx.itemsize
    yrb = by.itemsize
    check_labels = classes > 0
    p0, fill, bi = st[S_POS], st[S_FILL], st[S_BLOCK]
    while p0 < p1:
        while starts[bi + 1] <= p0:
            bi += 1
        bid, s, start = blocks[bi, 0], blocks[bi, 1], blocks[bi, 2]
        q0, q1 = p0 - starts[bi], min(p1, starts[bi + 1]) - starts[bi]
        st[S_POS], st[S_FILL], st[S_BLOCK], st[S_SHARD] = p0, fill, bi, s
        if mode[s] != M_RAW:
            st[S_STATUS] = ST_OPEN if mode[s] == M_CLOSED else ST_PYTHON
            return
        fd = fds[s]
        if not shuffle:  # straight into the batch, then checked (and compacted) there
            e = _read_rows(pread, fd, xc[s], xtab, xbase[s], xrb, start + q0, start + q1,
                           bx.ctypes.data + fill * xrb)
            if e == 0:
                e = _read_rows(pread, fd, yc[s], ytab, ybase[s], yrb, start + q0,
                               start + q1, by.ctypes.data + fill * yrb)
            if e < 0:
                st[S_STATUS] = ST_ERRNO if e == -1 else ST_SHORT
                return
            w = fill
            for i in range(fill, fill + q1 - q0):
                finite = True
                for j in range(bx.shape[1]):
                    v = bx[i, j]
                    finite &= (v - v) == 0  # false for nan and +-inf
                label = by[i]
                if not finite and drop:
                    continue
                if not finite or (check_labels and not (label >= 0 and label < classes)):
                    st[S_STATUS], st[S_ROW] = ST_BAD, start + q0 + i - fill
                    st[S_KIND] = K_LABEL if finite else K_NONFINITE
                    return
                if w != i:
                    for j in range(bx.shape[1]):
                        bx[w, j] = bx[i, j]
                    by[w] = label
                w += 1
            fill = w
        else:  # the block once into tx/ty, then its permuted rows into the batch
            if st[S_CACHED] != bi:
                n = starts[bi + 1] - starts[bi]
                st[S_CACHED] = -1
                e = _read_rows(pread, fd, xc[s], xtab, xbase[s], xrb, start, start + n,
                               tx.ctypes.data)
                if e == 0:
                    e = _read_rows(pread, fd, yc[s], ytab, ybase[s], yrb, start,
                                   start + n, ty.ctypes.data)
                if e < 0:
                    st[S_STATUS] = ST_ERRNO if e == -1 else ST_SHORT
                    return
                keyed_permutation_into(order, n, k_seed, k_epoch, np.uint64(bid))
                st[S_CACHED] = bi
            for i in range(q0, q1):
                r = order[i]
                finite = True
                for j in range(tx.shape[1]):
                    v = tx[r, j]
                    bx[fill, j] = v
                    finite &= (v - v) == 0
                label = ty[r]
                if not finite and drop:
                    continue
                by[fill] = label
                if not finite or (check_labels and not (label >= 0 and label < classes)):
                    st[S_STATUS], st[S_ROW] = ST_BAD, start + r
                    st[S_KIND] = K_LABEL if finite else K_NONFINITE
                    return
                fill += 1
        p0 = q1 + starts[bi]
    st[S_POS], st[S_FILL], st[S_BLOCK], st[S_STATUS] = p0, fill, bi, ST_DONE
