"""Numba CPU kernels for t-SNE (same signatures as the references in kernels/tsne.py).

Rows are independent, so each kernel runs its rows in parallel (prange) without the GIL.
Embeddings are float64 (n, d) with any small d; the FFT helpers are 2-D only.
"""

import numpy as np
from numba import njit, prange

from .. import tsne_rows

_perplexity_row = njit(nogil=True, inline="always")(tsne_rows.perplexity_row)
_kl_row = njit(nogil=True, inline="always")(tsne_rows.kl_row)
_attractive_row = njit(nogil=True, inline="always")(tsne_rows.attractive_row)
_gains_step = njit(nogil=True, inline="always")(tsne_rows.gains_step)


@njit(nogil=True, cache=True, parallel=True)
def sq_dist_rows(xq, xr, idx, out):
    """out[i, t] = |xq[i] - xr[idx[i, t]]|^2, summed directly (no cancellation)."""
    for i in prange(idx.shape[0]):
        for t in range(idx.shape[1]):
            j = idx[i, t]
            s = 0.0
            for c in range(xq.shape[1]):
                v = np.float64(xq[i, c]) - np.float64(xr[j, c])
                s += v * v
            out[i, t] = s


@njit(nogil=True, cache=True, parallel=True)
def perplexity_search(d2, target_entropy, tol, max_steps, out):
    """Per row, the Gaussian precision beta whose conditional distribution over the row's
    neighbours (squared distances d2[i]) has entropy log(perplexity) (binary search, as
    scikit-learn); out[i] = that distribution. Returns the number of rows that did not
    reach tol within max_steps."""
    missed = 0
    for i in prange(d2.shape[0]):
        if not _perplexity_row(d2, i, target_entropy, tol, max_steps, out):
            missed += 1
    return missed


@njit(nogil=True, cache=True, parallel=True)
def attractive(y, r0, indptr, indices, pvals, out):
    """out[i] = sum_j p_ij w_ij (y_i - y_j), w = 1/(1 + |y_i - y_j|^2), for local rows
    i = r0 + li (CSR indptr/indices/pvals over local rows, global column indices).
    Sums run in registers (2-D specialised), written once per row."""
    d = y.shape[1]
    for li in prange(out.shape[0]):
        i = r0 + li
        if d == 2:
            y0, y1 = y[i, 0], y[i, 1]
            a0 = 0.0
            a1 = 0.0
            for t in range(indptr[li], indptr[li + 1]):
                j = indices[t]
                u0 = y0 - y[j, 0]
                u1 = y1 - y[j, 1]
                pw = pvals[t] / (1.0 + (u0 * u0 + u1 * u1))  # the CUDA kernel's order
                a0 += pw * u0
                a1 += pw * u1
            out[li, 0] = a0
            out[li, 1] = a1
        else:
            _attractive_row(y, i, li, indptr[li], indptr[li + 1], indices, pvals, out)


@njit(nogil=True, cache=True, parallel=True)
def kl_terms(y, r0, indptr, indices, pvals):
    """(sum p log p, sum p log(1 + |y_i - y_j|^2)) over the local rows' entries: with
    sum p = 1 over all ranks, KL(P || Q) = first + second + log Z."""
    a = 0.0
    b = 0.0
    for li in prange(indptr.shape[0] - 1):
        ra, rb = _kl_row(y, r0 + li, indptr[li], indptr[li + 1], indices, pvals)
        a += ra
        b += rb
    return a, b


@njit(nogil=True, cache=True, parallel=True)
def repulsive_exact(y, r0, out, z_rows):
    """out[li] = sum_{j != i} w_ij^2 (y_i - y_j), z_rows[li] = sum_{j != i} w_ij for
    i = r0 + li."""
    n, d = y.shape
    for li in prange(out.shape[0]):
        i = r0 + li
        acc = np.zeros(d)
        zi = 0.0
        for j in range(n):
            if j == i:
                continue
            s = 0.0
            for c in range(d):
                v = y[i, c] - y[j, c]
                s += v * v
            w = 1.0 / (1.0 + s)
            zi += w
            for c in range(d):
                acc[c] += w * w * (y[i, c] - y[j, c])
        for c in range(d):
            out[li, c] = acc[c]
        z_rows[li] = zi


@njit(nogil=True, cache=True, parallel=True)
def update(y, grad, upd, gains, momentum, lr, min_gain):
    """scikit-learn's step with gains, in place over flat views: a gain grows by 0.2 where
    the gradient's sign differs from the last update's and shrinks by 0.8 elsewhere (>=
    min_gain); upd = momentum*upd - lr*gains*grad; y += upd. Returns |grad|^2."""
    g2 = 0.0
    for t in prange(y.shape[0]):
        g = grad[t]
        g2 += g * g
        upd[t], gains[t] = _gains_step(upd[t], g, gains[t], momentum, lr, min_gain)
        y[t] += upd[t]
    return g2


# --- FFT-accelerated interpolation (2-D) ------------------------------------------------

@njit(nogil=True, cache=True, inline="always")
def _lagrange(u, p, out):
    """Lagrange weights at u in [0, 1] of p nodes at (k + 0.5) / p."""
    for k in range(p):
        tk = (k + 0.5) / p
        w = 1.0
        for m in range(p):
            if m != k:
                tm = (m + 0.5) / p
                w *= (u - tm) / (tk - tm)
        out[k] = w


@njit(nogil=True, cache=True, inline="always")
def _cell(v, lo, h, nb):
    b = int((v - lo) / h)
    if b >= nb:
        b = nb - 1
    if b < 0:
        b = 0
    return b, (v - lo) / h - b


@njit(nogil=True, cache=True)
def spread(y, lox, loy, h, nb, p, grid):
    """grid (nb*p, nb*p) = sum over points of their interpolation weights at the nodes of
    their box (unit charges)."""
    grid[:, :] = 0.0
    wx = np.empty(p)
    wy = np.empty(p)
    for i in range(y.shape[0]):
        bx, ux = _cell(y[i, 0], lox, h, nb)
        by, uy = _cell(y[i, 1], loy, h, nb)
        _lagrange(ux, p, wx)
        _lagrange(uy, p, wy)
        for a in range(p):
            for b in range(p):
                grid[bx * p + a, by * p + b] += wx[a] * wy[b]


@njit(nogil=True, cache=True, parallel=True)
def interpolate(y, r0, r1, lox, loy, h, nb, p, fields, out):
    """out[i - r0, f] = fields[f] interpolated at y[i] for i in [r0, r1)."""
    nf = fields.shape[0]
    for i in prange(r0, r1):
        wx = np.empty(p)
        wy = np.empty(p)
        bx, ux = _cell(y[i, 0], lox, h, nb)
        by, uy = _cell(y[i, 1], loy, h, nb)
        _lagrange(ux, p, wx)
        _lagrange(uy, p, wy)
        for f in range(nf):
            s = 0.0
            for a in range(p):
                for b in range(p):
                    s += wx[a] * wy[b] * fields[f, bx * p + a, by * p + b]
            out[i - r0, f] = s


# --- nearest neighbours ----------------------------------------------------------------

@njit(nogil=True, cache=True, parallel=True)
def topk_merge(dist, col0, self0, k, best_d, best_i):
    """Merge a block of distances dist (nq, nc), columns numbered from col0, into each
    row's k best so far (best_d ascending-unsorted max-heap of size k, best_i the
    columns; empty slots hold +inf / -1). Row q's own point (column self0 + q) is skipped
    when self0 >= 0. Ties go to the smaller column (deterministic)."""
    nq, nc = dist.shape
    for q in prange(nq):
        skip = self0 + q if self0 >= 0 else -1
        for c in range(nc):
            col = col0 + c
            if col == skip:
                continue
            d = dist[q, c]
            if d > best_d[q, 0] or (d == best_d[q, 0] and col > best_i[q, 0]):
                continue
            # replace the heap's root (the worst) and sift down
            pos = 0
            while True:
                a = 2 * pos + 1
                if a >= k:
                    break
                b = a + 1
                m = a
                if b < k and (best_d[q, b] > best_d[q, a] or
                              (best_d[q, b] == best_d[q, a] and best_i[q, b] > best_i[q, a])):
                    m = b
                if best_d[q, m] > d or (best_d[q, m] == d and best_i[q, m] > col):
                    best_d[q, pos] = best_d[q, m]
                    best_i[q, pos] = best_i[q, m]
                    pos = m
                else:
                    break
            best_d[q, pos] = d
            best_i[q, pos] = col


# --- Barnes-Hut (2-D quadtree) ----------------------------------------------------------

LEAF, INTERNAL = 1, 2
BH_MAX_DEPTH = 48  # deeper points (near-duplicates) share a leaf


@njit(nogil=True, cache=True)
def _quadrant(x, y, x0, y0, w):
    h = w * 0.5
    return (1 if x >= x0 + h else 0) + (2 if y >= y0 + h else 0)


@njit(nogil=True, cache=True, inline="always")
def _new_leaf(c, i, px, py, x0, y0, w, kind, child, cnt, sx, sy, nx, ny, nw, rep, box):
    kind[c] = LEAF
    cnt[c] = 1
    sx[c] = px
    sy[c] = py
    nx[c], ny[c], nw[c] = x0, y0, w
    rep[c] = i
    child[c, 0] = -1
    child[c, 1] = -1
    child[c, 2] = -1
    child[c, 3] = -1
    box[c, 0] = px
    box[c, 1] = px
    box[c, 2] = py
    box[c, 3] = py


@njit(nogil=True, cache=True, inline="always")
def _add(node, px, py, cnt, sx, sy, box):
    cnt[node] += 1
    sx[node] += px
    sy[node] += py
    box[node, 0] = min(box[node, 0], px)
    box[node, 1] = max(box[node, 1], px)
    box[node, 2] = min(box[node, 2], py)
    box[node, 3] = max(box[node, 3], py)


@njit(nogil=True, cache=True)
def bh_build(pos, order, x0, y0, w, kind, child, cnt, sx, sy, nx, ny, nw, rep, leaf_of, box,
             nxt):
    """Quadtree of the points pos (n, 2) in the square [x0, x0 + w) x [y0, y0 + w), points
    inserted in `order` (spatially sorted, e.g. the last tree's depth-first order, is
    fastest): kind (LEAF/INTERNAL), child (m, 4), cnt, centre of mass (sx, sy: sums,
    divided at the end), cell origin and width (nx, ny, nw), rep (a leaf's first point,
    nxt[i] the next point of the same leaf or -1), box (m, 4): the bounding box (x min,
    x max, y min, y max) of the node's points; leaf_of[i] is the leaf holding point i.
    Returns the node count, or -1 if m nodes were too few. The tree does not depend on
    the order of insertion."""
    m = kind.shape[0]
    kind[0] = LEAF
    cnt[0] = 0
    sx[0] = 0.0
    sy[0] = 0.0
    nx[0], ny[0], nw[0] = x0, y0, w
    child[0, :] = -1
    box[0, 0] = np.inf
    box[0, 1] = -np.inf
    box[0, 2] = np.inf
    box[0, 3] = -np.inf
    used = 1
    for t in range(order.shape[0]):
        i = order[t]
        px, py = pos[i, 0], pos[i, 1]
        nxt[i] = -1
        node = 0
        depth = 0
        while True:
            if kind[node] == INTERNAL:
                _add(node, px, py, cnt, sx, sy, box)
                q = _quadrant(px, py, nx[node], ny[node], nw[node])
                c = child[node, q]
                if c < 0:
                    if used >= m:
                        return -1
                    c = used
                    used += 1
                    h = nw[node] * 0.5
                    _new_leaf(c, i, px, py, nx[node] + (h if q & 1 else 0.0),
                              ny[node] + (h if q & 2 else 0.0), h, kind, child, cnt, sx, sy,
                              nx, ny, nw, rep, box)
                    child[node, q] = c
                    leaf_of[i] = c
                    break
                node = c
                depth += 1
                continue
            # a leaf
            if cnt[node] == 0:  # only the root starts empty
                _new_leaf(node, i, px, py, nx[node], ny[node], nw[node], kind, child, cnt,
                          sx, sy, nx, ny, nw, rep, box)
                leaf_of[i] = node
                break
            r = rep[node]
            if depth >= BH_MAX_DEPTH or (pos[r, 0] == px and pos[r, 1] == py):
                _add(node, px, py, cnt, sx, sy, box)  # duplicates (or nearly) share it
                nxt[i] = nxt[r]
                nxt[r] = i
                leaf_of[i] = node
                break
            # split: the leaf's occupants move one level down, then insert again here
            if used >= m:
                return -1
            c = used
            used += 1
            q = _quadrant(pos[r, 0], pos[r, 1], nx[node], ny[node], nw[node])
            h = nw[node] * 0.5
            kind[c] = LEAF
            cnt[c] = cnt[node]
            sx[c] = sx[node]
            sy[c] = sy[node]
            nx[c] = nx[node] + (h if q & 1 else 0.0)
            ny[c] = ny[node] + (h if q & 2 else 0.0)
            nw[c] = h
            rep[c] = r
            child[c, :] = -1
            for k in range(4):
                box[c, k] = box[node, k]
            j = r
            while j >= 0:
                leaf_of[j] = c
                j = nxt[j]
            kind[node] = INTERNAL
            child[node, :] = -1
            child[node, q] = c
    for k in range(used):
        sx[k] /= cnt[k]
        sy[k] /= cnt[k]
    return used


@njit(nogil=True, cache=True, parallel=True)
def bh_repulsive(pos, r0, theta, kind, child, cnt, cx, cy, nx, ny, nw, leaf_of, out, z_rows):
    """Barnes-Hut (scikit-learn's criterion: a cell of width w at distance d from the row's
    point is summarised by its centre of mass when w / d < theta): out[li] ~ sum_{j != i}
    w_ij^2 (y_i - y_j) and z_rows[li] ~ sum_{j != i} w_ij for i = r0 + li. A cell that
    holds the point itself is always opened."""
    theta2 = theta * theta
    for li in prange(out.shape[0]):
        i = r0 + li
        px, py = pos[i, 0], pos[i, 1]
        stack = np.empty(4 * BH_MAX_DEPTH + 8, np.int64)
        top = 0
        stack[0] = 0
        top = 1
        fx = 0.0
        fy = 0.0
        z = 0.0
        mine = leaf_of[i]
        while top > 0:
            top -= 1
            node = stack[top]
            c = cnt[node]
            dx = px - cx[node]
            dy = py - cy[node]
            d2 = dx * dx + dy * dy
            if kind[node] == INTERNAL:
                w = nw[node]
                inside = (px >= nx[node] and px < nx[node] + w and py >= ny[node]
                          and py < ny[node] + w)
                if inside or w * w >= theta2 * d2:
                    for q in range(4):
                        k = child[node, q]
                        if k >= 0:
                            stack[top] = k
                            top += 1
                    continue
            elif node == mine:
                c -= 1  # the point itself (and any duplicates of it at distance ~0)
                if c == 0:
                    continue
            q = 1.0 / (1.0 + d2)
            z += c * q
            q2 = c * q * q
            fx += q2 * dx
            fy += q2 * dy
        out[li, 0] = fx
        out[li, 1] = fy
        z_rows[li] = z


@njit(nogil=True, cache=True)
def bh_groups(pos, r0, r1, gmax, kind, child, cnt, nx, ny, nw, group_of):
    """group_of[i - r0] = the highest node on point i's path holding <= gmax points (or
    its leaf): the targets that share one interaction list."""
    for i in range(r0, r1):
        node = 0
        while kind[node] == INTERNAL and cnt[node] > gmax:
            node = child[node, _quadrant(pos[i, 0], pos[i, 1], nx[node], ny[node], nw[node])]
        group_of[i - r0] = node


GROUP_LIST = 2048  # interaction-list capacity; a full list is evaluated and emptied
# SIMD over an interaction list needs reassociated sums; no nnan/ninf (boxes use inf)
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(nogil=True, cache=True)
def bh_pack(pos, used, kind, child, cnt, nw, box, leaf_of, nd, nbox, new, rep, nxt,
            dfs_points):
    """The tree in depth-first order, one 64-byte row per node: nd[k] = (centre x,
    centre y, width (-1 for a leaf), count, child 0..3 (-1: none)); nbox[k] the node's
    bounding box; leaf_of renumbered in place; new[old node] = its packed number;
    dfs_points: the points in depth-first order (the next build's insertion order).
    Traversals then read one cache line per node, and a subtree's nodes lie together."""
    stack = np.empty(4 * BH_MAX_DEPTH + 8, np.int64)
    stack[0] = 0
    top = 1
    k = 0
    p = 0
    while top > 0:
        top -= 1
        node = stack[top]
        new[node] = k
        k += 1
        if kind[node] == INTERNAL:
            for q in range(3, -1, -1):
                c = child[node, q]
                if c >= 0:
                    stack[top] = c
                    top += 1
        elif cnt[node] > 0:
            j = rep[node]
            while j >= 0:
                dfs_points[p] = j
                p += 1
                j = nxt[j]
    for node in range(used):
        r = new[node]
        nd[r, 2] = nw[node] if kind[node] == INTERNAL else -1.0
        nd[r, 3] = cnt[node]
        for q in range(4):
            c = child[node, q]
            nd[r, 4 + q] = new[c] if (c >= 0 and kind[node] == INTERNAL) else -1.0
        for q in range(4):
            nbox[r, q] = box[node, q]
        if kind[node] != INTERNAL:  # a leaf's centre of mass: its points, in leaf order
            ax = 0.0
            ay = 0.0
            j = rep[node] if cnt[node] > 0 else -1
            while j >= 0:
                ax += pos[j, 0]
                ay += pos[j, 1]
                j = nxt[j]
            nd[r, 0] = ax / max(cnt[node], 1)
            nd[r, 1] = ay / max(cnt[node], 1)
    # internal centres of mass from their children, deepest first (children are numbered
    # after their parent): sums in an order fixed by the tree, not by the insertion order
    for r in range(k - 1, -1, -1):
        if nd[r, 2] >= 0.0:
            ax = 0.0
            ay = 0.0
            for q in range(4):
                c = int(nd[r, 4 + q])
                if c >= 0:
                    ax += nd[c, 3] * nd[c, 0]
                    ay += nd[c, 3] * nd[c, 1]
            nd[r, 0] = ax / nd[r, 3]
            nd[r, 1] = ay / nd[r, 3]
    for i in range(leaf_of.shape[0]):
        leaf_of[i] = new[leaf_of[i]]


@njit(nogil=True, cache=True, fastmath=FAST)
def _flush_packed(pos, r0, order, a, b, fx, fy, fc, nf, near, nn, nd, leaf_of, out,
                  z_rows):
    for t in range(a, b):
        li = order[t]
        i = r0 + li
        px, py = pos[i, 0], pos[i, 1]
        ax = 0.0
        ay = 0.0
        z = 0.0
        for k in range(nf):
            dx = px - fx[k]
            dy = py - fy[k]
            q = 1.0 / (1.0 + dx * dx + dy * dy)
            cq = fc[k] * q
            z += cq
            ax += cq * q * dx
            ay += cq * q * dy
        mine = leaf_of[i]
        for k in range(nn):
            node = near[k]
            c = nd[node, 3]
            if node == mine:
                c -= 1.0  # the point itself (and duplicates of it)
                if c == 0.0:
                    continue
            dx = px - nd[node, 0]
            dy = py - nd[node, 1]
            q = 1.0 / (1.0 + dx * dx + dy * dy)
            cq = c * q
            z += cq
            ax += cq * q * dx
            ay += cq * q * dy
        out[li, 0] += ax
        out[li, 1] += ay
        z_rows[li] += z


@njit(nogil=True, cache=True, parallel=True, fastmath=FAST)
def bh_grouped_packed(pos, r0, order, gstart, gnode, theta, nd, nbox, leaf_of, out, z_rows):
    """Barnes-Hut with shared interaction lists, over the packed tree (bh_pack): for each
    group of targets (the local rows order[gstart[g]:gstart[g+1]], all inside node
    gnode[g]), a cell of width w is summarised by its centre of mass when w < theta * d,
    d the distance from that centre to the bounding box of ALL the points of gnode (so
    w/d < theta for every target, and the list depends only on the tree: the same for
    every rank); leaves that are not summarised interact exactly. The lists are then
    evaluated for every target of the group."""
    theta2 = theta * theta
    for g in prange(gnode.shape[0]):
        a, b = gstart[g], gstart[g + 1]
        for t in range(a, b):
            out[order[t], 0] = 0.0
            out[order[t], 1] = 0.0
            z_rows[order[t]] = 0.0
        G = gnode[g]
        bx0, bx1, by0, by1 = nbox[G, 0], nbox[G, 1], nbox[G, 2], nbox[G, 3]
        fx = np.empty(GROUP_LIST)
        fy = np.empty(GROUP_LIST)
        fc = np.empty(GROUP_LIST)
        near = np.empty(GROUP_LIST, np.int64)
        nf = 0
        nn = 0
        stack = np.empty(4 * BH_MAX_DEPTH + 8, np.int64)
        stack[0] = 0
        top = 1
        while top > 0:
            top -= 1
            node = stack[top]
            w = nd[node, 2]
            if w >= 0.0:  # internal
                ccx, ccy = nd[node, 0], nd[node, 1]
                ddx = max(bx0 - ccx, 0.0, ccx - bx1)
                ddy = max(by0 - ccy, 0.0, ccy - by1)
                if w * w < theta2 * (ddx * ddx + ddy * ddy):
                    fx[nf] = ccx
                    fy[nf] = ccy
                    fc[nf] = nd[node, 3]
                    nf += 1
                else:
                    for q in range(4):
                        k = int(nd[node, 4 + q])
                        if k >= 0:
                            stack[top] = k
                            top += 1
            elif nd[node, 3] > 0.0:
                near[nn] = node
                nn += 1
            if nf == GROUP_LIST or nn == GROUP_LIST:
                _flush_packed(pos, r0, order, a, b, fx, fy, fc, nf, near, nn, nd, leaf_of,
                              out, z_rows)
                nf = 0
                nn = 0
        _flush_packed(pos, r0, order, a, b, fx, fy, fc, nf, near, nn, nd, leaf_of, out,
                      z_rows)
