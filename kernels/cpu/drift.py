"""Numba CPU kernels of hpcml.ml.drift's detectors: each consumes a block of a stream in
one call and returns the positions (in the block) where it signalled a drift; the state
lives in arrays the Python object keeps, so blocks continue one another.

ADWIN (Bifet & Gavalda 2007, ADWIN2's exponential histogram): row r of the histogram holds
up to M + 1 buckets of 2^r items (their total), oldest first; a row that reaches M + 1
merges its two oldest buckets into one of the next row. Every `clock` items (once more
than `grace` are in the window) each cut between buckets, oldest to newest, compares the
means of the two sides: a drift when |mu0 - mu1| > sqrt(2 m v d) + 2/3 d m, with
d = ln(2 ln(width) / delta), m = 1 / (n0 - L + 1) + 1 / (n1 - L + 1) (L the minimum
sub-window length) and v the window's variance; after a drift the detector starts
afresh (river's behaviour). Page-Hinkley: the two-sided cumulative test with a fading
factor; DDM (Gama et al. 2004): error rate p and s = sqrt(p (1 - p) / n) against their
minimum p_min + s_min, warning at p + s > p_min + 2 s_min, drift at 3 s_min.
"""
import math

import numpy as np
from numba import njit

ROWS = 64
CHUNK = 64  # items row 0 takes before they are merged in


@njit(cache=True, inline="always")
def _adwin_flush(tot, cnt, rows, M, k):
    """Row 0 holds k new items after its cnt[0]: merge them in, row by row, into the state
    that inserting them one at a time leaves (a row that reaches M + 1 buckets merges its
    two oldest into one bucket of the next row): the same sums of the same pairs, so the
    totals are bit-identical. Returns the number of rows in use."""
    r = 0
    while True:
        c = cnt[r] + k
        if c <= M:
            cnt[r] = c
            return max(rows, r + 1)
        m = 1 + (c - M - 1) // 2  # merges: the first at M + 1, then one every 2 items
        nxt = cnt[r + 1]
        for q in range(m):
            tot[r + 1, nxt + q] = tot[r, 2 * q] + tot[r, 2 * q + 1]
        for q in range(c - 2 * m):
            tot[r, q] = tot[r, 2 * m + q]
        cnt[r] = c - 2 * m
        r += 1
        k = m


@njit(cache=True)
def _adwin_cut(tot, cnt, rows, width, total, variance, delta, L):
    """True when some cut between buckets separates means that differ significantly:
    |mu0 - mu1| > sqrt(2 m v d) + c m, c = 2 d / 3. With a = n0 - L + 1, b = n1 - L + 1,
    S = a + b = width - 2 L + 2 (m = S / ab) and |mu0 - mu1| = |u0 W - T n0| / (n0 n1)
    (W, T: the window's width and total), it is tested without a division:
    N = |u0 W - T n0| ab - c S n0 n1 > 0 and N^2 > 2 v d S ab (n0 n1)^2. The cuts are
    most of ADWIN's time: branch-free bodies (a two-pass vectorised form measured slower)."""
    n0, u0 = 0.0, 0.0
    dprime = math.log(2.0 * math.log(width) / delta)
    S = width - 2.0 * L + 2.0
    tvS = 2.0 * variance / width * dprime * S
    cS = 2.0 / 3.0 * dprime * S
    L1 = L - 1.0
    for r in range(rows - 1, -1, -1):
        n2 = float(1 << r)
        for q in range(cnt[r] - 1 if r == 0 else cnt[r]):
            n0 += n2
            u0 += tot[r, q]
            n1 = width - n0
            ab, p = (n0 - L1) * (n1 - L1), n0 * n1
            N = max(abs(u0 * width - total * n0) * ab - cS * p, 0.0)
            if N * N > tvS * ab * p * p and n0 >= L and n1 >= L:
                return True
    return False  # (no cut after the newest bucket)


@njit(cache=True)
def adwin_run(xs, tot, cnt, s, delta, clock, M, L, grace, out):
    """s = [width, total, variance, tick, rows]; returns the number of drifts, their
    positions in out. Width, total and variance stay in registers within a block; new
    items wait in row 0 and are merged in (_adwin_flush) before each cut test, every
    CHUNK items and at the end of the block."""
    found = 0
    width, total, variance, tick = s[0], s[1], s[2], int(s[3])
    until = clock - tick % clock
    rows, c0, pend = int(s[4]), cnt[0], 0
    for i in range(len(xs)):
        x = xs[i]
        tot[0, c0 + pend] = x
        pend += 1
        width += 1.0
        if width > 1.0:
            dev = x - total / (width - 1.0)
            variance += (width - 1.0) * dev * dev / width
        total += x
        tick += 1
        until -= 1  # (a countdown: an integer modulo per value cost more than the rest)
        if until != 0 and pend < CHUNK:
            continue
        rows = _adwin_flush(tot, cnt, rows, M, pend)
        c0, pend = cnt[0], 0
        if until != 0:
            continue
        until = clock
        if width > grace and _adwin_cut(tot, cnt, rows, width, total, variance, delta, L):
            out[found] = i
            found += 1
            cnt[:] = 0  # start afresh
            c0, rows = 0, 1
            width, total, variance, tick = 0.0, 0.0, 0.0, 0
    rows = _adwin_flush(tot, cnt, rows, M, pend)
    s[0], s[1], s[2], s[3], s[4] = width, total, variance, tick, rows
    return found


@njit(cache=True)
def page_hinkley_run(xs, s, min_instances, delta, threshold, alpha, mode, out):
    """s = [n, mean, sum_up, sum_down, min_up, max_down]; mode 0 both, 1 up, 2 down."""
    found = 0
    for i in range(len(xs)):
        x = xs[i]
        s[0] += 1.0
        s[1] += (x - s[1]) / s[0]
        dev = x - s[1]
        s[2] = alpha * s[2] + dev - delta
        s[3] = alpha * s[3] + dev + delta
        s[4] = min(s[4], s[2])
        s[5] = max(s[5], s[3])
        if s[0] >= min_instances:
            up, down = s[2] - s[4], s[5] - s[3]
            hit = (up > threshold and mode != 2) or (down > threshold and mode != 1)
            if hit:
                out[found] = i
                found += 1
                s[:] = 0.0
                s[4] = np.inf
                s[5] = -np.inf
    return found


@njit(cache=True)
def ddm_run(xs, s, warm_start, warn, drift, out, warnings):
    """s = [n, p, p_min, s_min, ps_min, warning]; xs are 0/1 errors. Returns (drifts,
    warnings) counts with their positions in out and warnings."""
    found, nw = 0, 0
    for i in range(len(xs)):
        s[0] += 1.0
        s[1] += (xs[i] - s[1]) / s[0]
        p, n = s[1], s[0]
        sd = math.sqrt(p * (1 - p) / n)
        s[5] = 0.0
        if n > warm_start:
            if p + sd <= s[4]:
                s[2], s[3], s[4] = p, sd, p + sd
            if p + sd > s[2] + drift * s[3]:
                out[found] = i
                found += 1
                s[:] = 0.0
                s[4] = np.inf
                continue
            if p + sd > s[2] + warn * s[3]:
                s[5] = 1.0
                warnings[nw] = i
                nw += 1
    return found, nw
