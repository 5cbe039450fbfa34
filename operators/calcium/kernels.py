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

    To undo a measured displacement d of the content, call with (dy, dx) = d. The four
    weights are the same for every pixel (rigid shift), so the interior columns are a
    clamp-free loop the compiler vectorises; only the edge columns clamp.
    """
    h, w = frame.shape
    fy = np.floor(dy)
    fx = np.floor(dx)
    ay = np.float32(dy - fy)
    ax = np.float32(dx - fx)
    iy0 = int(fy)
    ix0 = int(fx)
    one = np.float32(1.0)
    w00 = (one - ay) * (one - ax)
    w01 = (one - ay) * ax
    w10 = ay * (one - ax)
    w11 = ay * ax
    xa = min(max(-ix0, 0), w)  # columns [xa, xb) read x + ix0 and x + ix0 + 1 in range
    xb = max(min(w - 1 - ix0, w), xa)
    for y in range(h):
        r0 = frame[min(max(y + iy0, 0), h - 1)]
        r1 = frame[min(max(y + iy0 + 1, 0), h - 1)]
        o = out[y]
        # interior on slices that start at 0: an offset index keeps LLVM from vectorising
        a0 = r0[xa + ix0 : xb + ix0 + 1]
        a1 = r1[xa + ix0 : xb + ix0 + 1]
        oi = o[xa:xb]
        for x in range(xb - xa):
            oi[x] = w00 * a0[x] + w01 * a0[x + 1] + w10 * a1[x] + w11 * a1[x + 1]
        for x in range(0, xa):
            x0 = min(max(x + ix0, 0), w - 1)
            x1 = min(max(x + ix0 + 1, 0), w - 1)
            o[x] = w00 * r0[x0] + w01 * r0[x1] + w10 * r1[x0] + w11 * r1[x1]
        for x in range(xb, w):
            x0 = min(max(x + ix0, 0), w - 1)
            x1 = min(max(x + ix0 + 1, 0), w - 1)
            o[x] = w00 * r0[x0] + w01 * r0[x1] + w10 * r1[x0] + w11 * r1[x1]
    return out


@njit(cache=True, fastmath=True)
def blend(template, frame, alpha):
    """template <- (1 - alpha) template + alpha frame, in place (the running template)."""
    a = np.float32(alpha)
    b = np.float32(1.0) - a
    t = template.reshape(-1)
    f = frame.reshape(-1)
    for i in range(t.shape[0]):
        t[i] = b * t[i] + a * f[i]
    return template


@njit(cache=True, fastmath=True)
def whitened_cross(f, template_conj, lowpass, out):
    """Phase-correlation spectrum: out = f conj(T) / |f conj(T)| * lowpass, one pass
    (complex arithmetic spelt out in reals: Numba's complex ops guard NaNs and call hypot)."""
    h, w = f.shape
    for i in range(h):
        for j in range(w):
            a = f[i, j]
            b = template_conj[i, j]
            re = a.real * b.real - a.imag * b.imag
            im = a.real * b.imag + a.imag * b.real
            s = lowpass[i, j] / (np.sqrt(re * re + im * im) + np.float32(1e-9))
            out[i, j] = complex(re * s, im * s)
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


@njit(cache=True, fastmath=True)
def roi_traces(frames, idx, ptr, weight, out):
    """Weighted pixel sums per ROI for a batch of flattened frames (b, pixels):
    out[i, k] = sum of weight[j] * frames[i, idx[j]] over ROI k's CSR range
    idx[ptr[k]:ptr[k+1]]. With weights 1/|mask| on the mask and -neuropil/|annulus| on
    its annulus this is the neuropil-corrected trace, as one sparse product."""
    n = ptr.shape[0] - 1
    for i in range(frames.shape[0]):
        fr = frames[i]
        for k in range(n):
            s = 0.0
            for j in range(ptr[k], ptr[k + 1]):
                s += weight[j] * fr[idx[j]]
            out[i, k] = s
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
    (window, n) ring buffer (selection, not a full sort: O(window) per ROI)."""
    n = ring.shape[1]
    rank = int(round(q / 100.0 * (filled - 1)))
    col = np.empty(filled)
    for k in range(n):
        for i in range(filled):
            col[i] = ring[i, k]
        out[k] = np.partition(col, rank)[rank]
    return out


@njit(cache=True)
def dff_block(data, ring, pos, filled, count, f0, q, update_every, min_f0, out):
    """dF/F of the rows of `data` (t, n) against a running-percentile F0.

    Each row enters the (window, n) ring at `pos`; every `update_every`-th row F0 is
    recomputed from the ring before that row is scaled. Returns the new
    (pos, filled, count); ring and f0 are updated in place.
    """
    w, n = ring.shape
    for i in range(data.shape[0]):
        for k in range(n):
            ring[pos, k] = data[i, k]
        pos = (pos + 1) % w
        filled = min(filled + 1, w)
        count += 1
        if count % update_every == 0:
            window_percentile(ring, filled, q, f0)
        for k in range(n):
            out[i, k] = (data[i, k] - f0[k]) / max(f0[k], min_f0)
    return pos, filled, count


# --- online OASIS AR(1) ----------------------------------------------------------------


@njit(cache=True)
def _oasis_trace(y, g, smin, lag, pv, pw, pt, pl, m, h, cap, t0, s_out):
    """Samples y (frames t0, t0 + 1, ...) of one trace into its pools; s_out[i] gets the
    spike finalised at frame t0 + i - lag. Returns the new (pool count, head).

    The pools are columns h .. h + m - 1 of rows twice `cap` wide: dropping the oldest
    pool moves the head, and the pools move back to column 0 only when they reach the
    end (once per ~cap samples, not every sample). Scalars and 1-D rows keep the hot
    loop in registers.
    """
    width = pv.shape[0]
    for i in range(y.shape[0]):
        t = t0 + i
        if m == cap:  # drop the oldest pool
            h += 1
            m -= 1
        if h + m == width:
            for j in range(m):
                pv[j] = pv[h + j]
                pw[j] = pw[h + j]
                pt[j] = pt[h + j]
                pl[j] = pl[h + j]
            h = 0
        e = h + m
        pv[e] = y[i]
        pw[e] = 1.0
        pt[e] = t
        pl[e] = 1
        m += 1
        while m > 1:
            j = h + m - 1
            gl = g ** pl[j - 1]
            if pv[j] >= gl * pv[j - 1] + smin:
                break
            # merge pool j into pool j-1 (weighted least squares of the joint pool)
            wa = pw[j - 1]
            wb = pw[j] * gl * gl
            pv[j - 1] = (pv[j - 1] * wa + pv[j] * pw[j] * gl) / (wa + wb)
            pw[j - 1] = wa + wb
            pl[j - 1] += pl[j]
            m -= 1
        if m == 1 and pv[h] < 0.0:
            pv[h] = 0.0
        s = 0.0
        target = t - lag
        if target >= 0:
            for j in range(h + m - 1, h, -1):
                if pt[j] == target:
                    s = pv[j] - g ** pl[j - 1] * pv[j - 1]
                    break
                if pt[j] < target:
                    break
        s_out[i] = s
    return m, h


@njit(cache=True)
def oasis_ar1_step(y, g, smin, lag, pv, pw, pt, pl, npool, head, t, s_out):
    """Feed one sample per trace to online OASIS AR(1) and finalise the frame `lag` back.

    OASIS (Friedrich, Zhou & Paninski 2017, PLoS CB) keeps the solution of
    min |c - y|^2 s.t. s_t = c_t - g c_{t-1} >= smin[k] or 0 as pools of constant
    s = 0; a new sample starts a pool that merges backwards while it would imply a
    spike below smin. State per trace k: pool values pv, weights pw, start frames pt,
    lengths pl (each (n, 2P), see `_oasis_trace`), pool count npool, first pool head;
    `t` is the index of this sample. The spike at frame t - lag is written to s_out[k]
    (0 while t < lag). When P pools are held the oldest is dropped (it can no longer be
    revised).
    """
    cap = pv.shape[1] // 2
    for k in range(pv.shape[0]):
        npool[k], head[k] = _oasis_trace(y[k : k + 1], g, smin[k], lag, pv[k], pw[k], pt[k], pl[k], npool[k], head[k], cap, t, s_out[k : k + 1])
    return s_out


@njit(cache=True)
def oasis_ar1_block(y, g, smin, lag, pv, pw, pt, pl, npool, head, t0, s_out):
    """`oasis_ar1_step` over the rows of a (t, n) block whose first row is frame t0;
    row i of s_out receives the spikes finalised at that step (frame t0 + i - lag).
    Traces are independent, so the loop runs trace by trace: one trace's pools stay in
    cache for the whole block."""
    cap = pv.shape[1] // 2
    for k in range(pv.shape[0]):
        npool[k], head[k] = _oasis_trace(y[:, k], g, smin[k], lag, pv[k], pw[k], pt[k], pl[k], npool[k], head[k], cap, t0, s_out[:, k])
    return s_out


@njit(cache=True)
def oasis_ar1_pending(g, lag, pv, pt, pl, npool, head, t_last, s_out):
    """Spikes of the `lag` frames after t_last - lag (not yet finalised), from the pools:
    s_out[j, k] is the spike at frame t_last - lag + 1 + j. Used at the end of a stream."""
    n = pv.shape[0]
    for k in range(n):
        h = head[k]
        for j in range(h + npool[k] - 1, h, -1):
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
    z = np.empty((n, t))  # standardised traces, one row per ROI (contiguous dot products)
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
            z[k, i] = (x[i, k] - m) / sd if sd > 1e-12 else 0.0
    a = np.zeros((n, n))
    for p in range(n):
        zp = z[p]
        for q in range(p + 1, n):
            zq = z[q]
            c = 0.0
            for i in range(t):
                c += zp[i] * zq[i]
            c /= t
            if c <= 0:
                c = 0.0
            elif power != 1.0:
                c = c**power
            a[p, q] = c
            a[q, p] = c
    return a
