"""Numba kernels of the calcium chain: pure functions on NumPy arrays, state in and out.

Each kernel has a slow twin in tests/operators/calcium/test_calcium_kernels.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# --- motion --------------------------------------------------------------------------


@njit(cache=True, fastmath=True)
def shift_bilinear(frame, dy, dx, out):
    """out[y, x] = frame[y + dy, x + dx] by bilinear interpolation, edges clamped.

    To undo a measured displacement d of the content, call with (dy, dx) = d.
    """
    h, w = frame.shape
    fy = np.floor(dy)
    fx = np.floor(dx)
    ay = dy - fy
    ax = dx - fx
    iy0 = int(fy)
    ix0 = int(fx)
    for y in range(h):
        y0 = min(max(y + iy0, 0), h - 1)
        y1 = min(max(y + iy0 + 1, 0), h - 1)
        for x in range(w):
            x0 = min(max(x + ix0, 0), w - 1)
            x1 = min(max(x + ix0 + 1, 0), w - 1)
            top = (1.0 - ax) * frame[y0, x0] + ax * frame[y0, x1]
            bot = (1.0 - ax) * frame[y1, x0] + ax * frame[y1, x1]
            out[y, x] = (1.0 - ay) * top + ay * bot
    return out


@njit(cache=True)
def subpixel_peak(corr, max_shift):
    """Peak of a circular cross-correlation map within +-max_shift, refined by a
    three-point Gaussian fit per axis; returns (dy, dx) in pixels (signed)."""
    h, w = corr.shape
    best = -np.inf
    by = 0
    bx = 0
    for sy in range(-max_shift, max_shift + 1):
        for sx in range(-max_shift, max_shift + 1):
            v = corr[sy % h, sx % w]
            if v > best:
                best = v
                by = sy
                bx = sx
    c0 = corr[by % h, bx % w]
    dy = float(by)
    dx = float(bx)
    ym = corr[(by - 1) % h, bx % w]
    yp = corr[(by + 1) % h, bx % w]
    xm = corr[by % h, (bx - 1) % w]
    xp = corr[by % h, (bx + 1) % w]
    if c0 > 0 and ym > 0 and yp > 0:
        lm, l0, lp = np.log(ym), np.log(c0), np.log(yp)
        den = lm - 2.0 * l0 + lp
        if den < 0:
            dy += 0.5 * (lm - lp) / den
    if c0 > 0 and xm > 0 and xp > 0:
        lm, l0, lp = np.log(xm), np.log(c0), np.log(xp)
        den = lm - 2.0 * l0 + lp
        if den < 0:
            dx += 0.5 * (lm - lp) / den
    return dy, dx


# --- ROI traces ----------------------------------------------------------------------


@njit(cache=True)
def roi_means(frame_flat, idx, ptr, out):
    """Mean of frame pixels per ROI; ROI k owns idx[ptr[k]:ptr[k+1]] (CSR layout)."""
    n = ptr.shape[0] - 1
    for k in range(n):
        s = 0.0
        a = ptr[k]
        b = ptr[k + 1]
        for j in range(a, b):
            s += frame_flat[idx[j]]
        out[k] = s / max(b - a, 1)
    return out


@njit(cache=True)
def local_correlation(movie):
    """Mean correlation of each pixel's trace with its 8 neighbours (the CaImAn
    'local correlation image'); movie is (t, h, w) float32."""
    t, h, w = movie.shape
    z = np.empty((t, h, w), np.float32)
    for y in range(h):
        for x in range(w):
            m = 0.0
            for i in range(t):
                m += movie[i, y, x]
            m /= t
            v = 0.0
            for i in range(t):
                d = movie[i, y, x] - m
                v += d * d
            sd = np.sqrt(v / t) + 1e-9
            for i in range(t):
                z[i, y, x] = (movie[i, y, x] - m) / sd
    out = np.zeros((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            acc = 0.0
            cnt = 0
            for oy in range(-1, 2):
                for ox in range(-1, 2):
                    if oy == 0 and ox == 0:
                        continue
                    yy = y + oy
                    xx = x + ox
                    if yy < 0 or yy >= h or xx < 0 or xx >= w:
                        continue
                    c = 0.0
                    for i in range(t):
                        c += z[i, y, x] * z[i, yy, xx]
                    acc += c / t
                    cnt += 1
            out[y, x] = acc / max(cnt, 1)
    return out


# --- dF/F baseline -------------------------------------------------------------------


@njit(cache=True)
def window_percentile(ring, filled, q, out):
    """Per-ROI q-th percentile (0..100, nearest rank) of the first `filled` rows of a
    (window, n) ring buffer."""
    n = ring.shape[1]
    rank = int(round(q / 100.0 * (filled - 1)))
    for k in range(n):
        col = np.sort(ring[:filled, k])
        out[k] = col[rank]
    return out


# --- online OASIS AR(1) ----------------------------------------------------------------


@njit(cache=True)
def oasis_ar1_step(y, g, smin, lag, pv, pw, pt, pl, npool, t, s_out):
    """Feed one sample per trace to online OASIS AR(1) and finalise the frame `lag` back.

    OASIS (Friedrich, Zhou & Paninski 2017, PLoS CB) keeps the solution of
    min |c - y|^2 s.t. s_t = c_t - g c_{t-1} >= smin[k] or 0 as pools of constant
    s = 0; a new sample starts a pool that merges backwards while it would imply a
    spike below smin. State per trace k: pool values pv, weights pw, start frames pt,
    lengths pl (each (n, P)), pool count npool; `t` is the index of this sample.
    The spike at frame t - lag is written to s_out[k] (0 while t < lag). When P pools
    are held the oldest is dropped (it can no longer be revised).
    """
    n, cap = pv.shape
    for k in range(n):
        m = npool[k]
        if m == cap:  # drop the oldest pool
            for j in range(1, cap):
                pv[k, j - 1] = pv[k, j]
                pw[k, j - 1] = pw[k, j]
                pt[k, j - 1] = pt[k, j]
                pl[k, j - 1] = pl[k, j]
            m -= 1
        pv[k, m] = y[k]
        pw[k, m] = 1.0
        pt[k, m] = t
        pl[k, m] = 1
        m += 1
        while m > 1:
            i = m - 1
            gl = g ** pl[k, i - 1]
            if pv[k, i] >= gl * pv[k, i - 1] + smin[k]:
                break
            # merge pool i into pool i-1 (weighted least squares of the joint pool)
            wa = pw[k, i - 1]
            wb = pw[k, i] * gl * gl
            pv[k, i - 1] = (pv[k, i - 1] * wa + pv[k, i] * pw[k, i] * gl) / (wa + wb)
            pw[k, i - 1] = wa + wb
            pl[k, i - 1] += pl[k, i]
            m -= 1
        if m == 1 and pv[k, 0] < 0.0:
            pv[k, 0] = 0.0
        npool[k] = m
        s_out[k] = 0.0
        target = t - lag
        if target >= 0:
            for j in range(m - 1, 0, -1):
                if pt[k, j] == target:
                    s_out[k] = pv[k, j] - g ** pl[k, j - 1] * pv[k, j - 1]
                    break
                if pt[k, j] < target:
                    break
    return s_out


@njit(cache=True)
def oasis_ar1_block(y, g, smin, lag, pv, pw, pt, pl, npool, t0, s_out):
    """`oasis_ar1_step` over the rows of a (t, n) block whose first row is frame t0;
    row i of s_out receives the spikes finalised at that step (frame t0 + i - lag)."""
    for i in range(y.shape[0]):
        oasis_ar1_step(y[i], g, smin, lag, pv, pw, pt, pl, npool, t0 + i, s_out[i])
    return s_out


@njit(cache=True)
def oasis_ar1_pending(g, lag, pv, pt, pl, npool, t_last, s_out):
    """Spikes of the `lag` frames after t_last - lag (not yet finalised), from the pools:
    s_out[j, k] is the spike at frame t_last - lag + 1 + j. Used at the end of a stream."""
    n = pv.shape[0]
    for k in range(n):
        for j in range(npool[k] - 1, 0, -1):
            off = pt[k, j] - (t_last - lag + 1)
            if off < 0:
                break
            if off < lag:
                s_out[off, k] = pv[k, j] - g ** pl[k, j - 1] * pv[k, j - 1]
    return s_out


# --- connectome ------------------------------------------------------------------------


@njit(cache=True)
def window_affinity(x, power):
    """Non-negative pairwise affinity of the columns of x (window, n): the Pearson
    correlation clipped at 0 and raised to `power`, zero diagonal."""
    t, n = x.shape
    z = np.empty((t, n))
    for k in range(n):
        m = 0.0
        for i in range(t):
            m += x[i, k]
        m /= t
        v = 0.0
        for i in range(t):
            v += (x[i, k] - m) ** 2
        sd = np.sqrt(v / t)
        for i in range(t):
            z[i, k] = (x[i, k] - m) / sd if sd > 1e-12 else 0.0
    a = np.zeros((n, n))
    for p in range(n):
        for q in range(p + 1, n):
            c = 0.0
            for i in range(t):
                c += z[i, p] * z[i, q]
            c /= t
            c = c ** power if c > 0 else 0.0
            a[p, q] = c
            a[q, p] = c
    return a
