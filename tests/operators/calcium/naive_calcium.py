"""Slow, obviously correct twins of the calcium kernels (used only by the tests)."""

from __future__ import annotations

import numpy as np


def shift_bilinear(frame, dy, dx):
    h, w = frame.shape
    out = np.zeros_like(frame, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            sy, sx = y + dy, x + dx
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            ay, ax = sy - y0, sx - x0

            def px(a, b):
                return frame[min(max(a, 0), h - 1), min(max(b, 0), w - 1)]

            out[y, x] = (1 - ay) * ((1 - ax) * px(y0, x0) + ax * px(y0, x0 + 1)) + ay * ((1 - ax) * px(y0 + 1, x0) + ax * px(y0 + 1, x0 + 1))
    return out


def roi_traces(frame, pixels, rings, neuropil):
    flat = frame.reshape(-1).astype(np.float64)
    return np.array([flat[m].mean() - neuropil * (flat[r].mean() if len(r) else 0.0) for m, r in zip(pixels, rings, strict=True)])


def local_correlation(movie):
    t, h, w = movie.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            cs = []
            for oy in (-1, 0, 1):
                for ox in (-1, 0, 1):
                    yy, xx = y + oy, x + ox
                    if (oy or ox) and 0 <= yy < h and 0 <= xx < w:
                        cs.append(np.corrcoef(movie[:, y, x], movie[:, yy, xx])[0, 1])
            out[y, x] = np.mean(cs)
    return out


def window_percentile(ring, filled, q):
    return np.array([np.sort(ring[:filled, k])[int(round(q / 100 * (filled - 1)))] for k in range(ring.shape[1])])


def dff(data, window, q, update_every, min_f0):
    """dF/F row by row: push the row, recompute F0 every update_every-th row, scale."""
    f0 = np.zeros(data.shape[1])
    out = np.zeros_like(data)
    for i, row in enumerate(data):
        if (i + 1) % update_every == 0:
            f0 = window_percentile(data[max(0, i + 1 - window) : i + 1], min(i + 1, window), q)
        out[i] = (row - f0) / np.maximum(f0, min_f0)
    return out


def affinity(x, power):
    c = np.corrcoef(x.T)
    c = np.where(c > 0, c, 0.0) ** power
    np.fill_diagonal(c, 0)
    return c


def _add_sample(pools, t, v, g, smin):
    """Append sample v (frame t) as a new pool [value, weight, start, length] and merge
    backwards while a spike would be < smin; a lone first pool is clamped at 0."""
    pools.append([float(v), 1.0, t, 1])
    while len(pools) > 1:
        a, b = pools[-2], pools[-1]
        ga = g ** a[3]
        if b[0] >= ga * a[0] + smin:
            break
        w = a[1] + b[1] * ga * ga
        pools[-2] = [(a[0] * a[1] + b[0] * b[1] * ga) / w, w, a[2], a[3] + b[3]]
        pools.pop()
    if len(pools) == 1 and pools[0][0] < 0:
        pools[0][0] = 0.0


def oasis_ar1_offline(y, g, smin):
    """Offline OASIS AR(1) with a minimum spike size, written as plainly as possible:
    pools [value, weight, start, length]; merge backwards while a spike would be < smin."""
    pools = []
    for t, v in enumerate(y):
        _add_sample(pools, t, v, g, smin)
    s = np.zeros(len(y))
    for i in range(1, len(pools)):
        s[pools[i][2]] = pools[i][0] - g ** pools[i - 1][3] * pools[i - 1][0]
    return s


def oasis_ar1_online(y, g, smin, lag, cap):
    """Online OASIS as the kernel runs it, plainly: at most `cap` pools (the oldest
    dropped), and row t of the result holds the spike of frame t - lag as known then."""
    pools = []
    out = np.zeros(len(y))
    for t, v in enumerate(y):
        if len(pools) == cap:
            pools.pop(0)
        _add_sample(pools, t, v, g, smin)
        for i in range(len(pools) - 1, 0, -1):
            if pools[i][2] == t - lag:
                out[t] = pools[i][0] - g ** pools[i - 1][3] * pools[i - 1][0]
                break
            if pools[i][2] < t - lag:
                break
    return out
