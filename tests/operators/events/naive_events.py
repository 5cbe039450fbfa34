"""Slow, obviously correct twins of the Numba event kernels (one event at a time, whole stream).

Conventions match operators/events/kernels.py: windows are aligned to multiples of
window_us; frames are (2, H, W) with [0] OFF and [1] ON; every closed window between the
first and the last event is emitted, the last (open) one included at the end.
"""

import math

import numpy as np


def background(t, x, y, w, h, time_us):
    last = {}
    keep = []
    for ti, xi, yi in zip(t.tolist(), x.tolist(), y.tolist(), strict=True):
        ok = any(
            (xx, yy) in last and ti - last[(xx, yy)] <= time_us
            for xx in range(xi - 1, xi + 2)
            for yy in range(yi - 1, yi + 2)
            if (xx, yy) != (xi, yi) and 0 <= xx < w and 0 <= yy < h
        )
        keep.append(ok)
        last[(xi, yi)] = ti
    return np.array(keep, bool)


def refractory(t, x, y, refractory_us):
    last = {}
    keep = []
    for ti, xi, yi in zip(t.tolist(), x.tolist(), y.tolist(), strict=True):
        ok = (xi, yi) not in last or ti - last[(xi, yi)] >= refractory_us
        if ok:
            last[(xi, yi)] = ti
        keep.append(ok)
    return np.array(keep, bool)


def hot_pixel(t, x, y, window_us, max_count):
    counts = {}  # (pixel, window) -> events so far
    keep = []
    for ti, xi, yi in zip(t.tolist(), x.tolist(), y.tolist(), strict=True):
        k = ti // window_us
        counts[(xi, yi, k)] = counts.get((xi, yi, k), 0) + 1
        keep.append(counts[(xi, yi, k)] <= max_count and counts.get((xi, yi, k - 1), 0) <= max_count)
    return np.array(keep, bool)


def rate_limit(t, window_us, cap):
    per = {}
    keep = []
    for ti in t.tolist():
        k = ti // window_us
        per[k] = per.get(k, 0) + 1
        keep.append(per[k] <= cap)
    return np.array(keep, bool)


def _windows(t, window_us):
    first, last = t[0] // window_us, t[-1] // window_us
    return list(range(first, last + 1))


def frames(t, x, y, p, w, h, window_us):
    wins = _windows(t, window_us)
    out = np.zeros((len(wins), 2, h, w), np.float32)
    for ti, xi, yi, pi in zip(t.tolist(), x.tolist(), y.tolist(), p.tolist(), strict=True):
        out[ti // window_us - wins[0], int(pi), yi, xi] += 1
    return np.array(wins) * window_us, out


def voxel(t, x, y, p, w, h, window_us, bins):
    wins = _windows(t, window_us)
    out = np.zeros((len(wins), bins, h, w), np.float64)
    for ti, xi, yi, pi in zip(t.tolist(), x.tolist(), y.tolist(), p.tolist(), strict=True):
        k = ti // window_us
        s = (ti - k * window_us) * ((bins - 1) / window_us)
        lo = math.floor(s)
        frac = s - lo
        v = 1.0 if pi else -1.0
        out[k - wins[0], lo, yi, xi] += v * (1.0 - frac)
        if lo + 1 < bins:
            out[k - wins[0], lo + 1, yi, xi] += v * frac
    return np.array(wins) * window_us, out.astype(np.float32)


def time_surface(t, x, y, p, w, h, window_us, tau_us):
    wins = _windows(t, window_us)
    out = np.zeros((len(wins), 2, h, w), np.float32)
    for j, k in enumerate(wins):
        end = (k + 1) * window_us
        last = np.full((2, h, w), -(1 << 62), np.int64)
        sel = t < end
        for ti, xi, yi, pi in zip(t[sel].tolist(), x[sel].tolist(), y[sel].tolist(), p[sel].tolist(), strict=True):
            last[int(pi), yi, xi] = ti
        out[j] = np.exp(-(end - last).astype(np.float64) / tau_us).astype(np.float32)
    return np.array(wins) * window_us, out
