"""Numba CPU kernels of hpcml.ml.drift's detectors: each consumes a block of a stream in
one call and returns the positions (in the block) where it signalled a drift; the state
lives in arrays the Python object keeps, so blocks continue one another.

ADWIN (Bifet & Gavalda 2007, ADWIN2's exponential histogram): row r of the histogram holds
up to M + 1 buckets of 2^r items (total, variance), oldest first; a row that reaches M + 1
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


@njit(cache=True, inline="always")
def _adwin_compress(tot, var, cnt, head, s, M):
    """Rows that reached M + 1 buckets merge their two oldest into the next row. Each row
    is a ring of M + 1 slots from head (its oldest bucket): no shifting."""
    r = 0
    slots = M + 1
    while cnt[r] == slots:
        h0 = head[r]
        h1 = h0 + 1 if h0 + 1 < slots else 0
        diff = tot[r, h0] - tot[r, h1]  # n (mu1 - mu2), n = 2^r
        t12 = tot[r, h0] + tot[r, h1]
        v12 = var[r, h0] + var[r, h1] + diff * diff * (0.5 / float(1 << r))
        head[r] = h1 + 1 if h1 + 1 < slots else 0
        cnt[r] -= 2
        nxt = r + 1
        if nxt + 1 > s[4]:
            s[4] = nxt + 1
        j = head[nxt] + cnt[nxt]
        if j >= slots:
            j -= slots
        tot[nxt, j] = t12
        var[nxt, j] = v12
        cnt[nxt] += 1
        r = nxt


@njit(cache=True)
def _adwin_cut(tot, cnt, head, rows, width, total, variance, delta, L, slots):
    """True when some cut between buckets separates means that differ significantly:
    |mu0 - mu1| > sqrt(2 m v d) + c m, c = 2 d / 3. With a = n0 - L + 1, b = n1 - L + 1
    (m = (a + b) / ab) and |mu0 - mu1| = |u0 n1 - u1 n0| / (n0 n1), it is tested without
    a division: N = |u0 n1 - u1 n0| ab - c (a + b) n0 n1 > 0 and
    N^2 > 2 v d (a + b) ab (n0 n1)^2 (the cuts are most of ADWIN's time: a branch-free
    two-pass form that vectorises measured slower here)."""
    n0, n1, u0, u1 = 0.0, width, 0.0, total
    dprime = math.log(2.0 * math.log(width) / delta)
    two_vd = 2.0 * variance / width * dprime
    c = 2.0 / 3.0 * dprime
    for r in range(rows - 1, -1, -1):
        n2 = float(1 << r)
        last = cnt[r] - 1 if r == 0 else cnt[r]
        j = head[r]
        for _ in range(last):
            t = tot[r, j]
            j = j + 1 if j + 1 < slots else 0
            n0 += n2
            n1 -= n2
            u0 += t
            u1 -= t
            if n0 >= L and n1 >= L:
                a, b = n0 - L + 1, n1 - L + 1
                ab, p = a * b, n0 * n1
                N = abs(u0 * n1 - u1 * n0) * ab - c * (a + b) * p
                if N > 0 and N * N > two_vd * (a + b) * ab * p * p:
                    return True
    return False  # (no cut after the newest bucket)


@njit(cache=True)
def adwin_run(xs, tot, var, cnt, head, s, delta, clock, M, L, grace, out):
    """s = [width, total, variance, tick, rows]; returns the number of drifts, their
    positions in out. Width, total and variance stay in registers within a block."""
    found = 0
    slots = M + 1
    width, total, variance, tick = s[0], s[1], s[2], int(s[3])
    until = clock - tick % clock
    for i in range(len(xs)):
        x = xs[i]
        j = head[0] + cnt[0]
        if j >= slots:
            j -= slots
        tot[0, j] = x
        var[0, j] = 0.0
        cnt[0] += 1
        width += 1.0
        if width > 1.0:
            dev = x - total / (width - 1.0)
            variance += (width - 1.0) * dev * dev / width
        total += x
        if cnt[0] == slots:
            _adwin_compress(tot, var, cnt, head, s, M)
        tick += 1
        until -= 1  # (a countdown: an integer modulo per value cost more than the rest)
        if until == 0:
            until = clock
        else:
            continue
        if width > grace and _adwin_cut(
                tot, cnt, head, int(s[4]), width, total, variance, delta, L, slots):
            out[found] = i
            found += 1
            cnt[:] = 0  # start afresh
            head[:] = 0
            s[4] = 1.0
            width, total, variance, tick = 0.0, 0.0, 0.0, 0
            until = clock
    s[0], s[1], s[2], s[3] = width, total, variance, tick
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
