"""Numba event kernels: pure functions over event columns with their carried state.

Every kernel takes the columns of one batch (`t` int64 µs, `x`, `y` uint16, `p` bool)
and the state the previous batch left, and returns its output and the new state, so
feeding a stream in any cutting gives the same output. Large per-pixel state arrays are
updated in place and returned (copying a 640x480 map per batch would cost more than the
kernel); scalars are returned. The operators in `operators.events.ops` own the state.

Windows are aligned to multiples of `window_us` in sensor time: window k covers
[k * window_us, (k + 1) * window_us).
"""

from __future__ import annotations

import numba
import numpy as np

NEVER = np.int64(-(1 << 62))  # "no event yet" for last-timestamp maps

_jit = numba.njit(cache=True, nogil=True)


# --- filters: return a keep mask ----------------------------------------------------


@_jit
def background_activity(t, x, y, p, last, time_us):
    """Nearest-neighbour correlation filter (Delbruck 2008; Padala et al. 2018 as "BAF").

    An event passes when one of its 8 neighbours fired within `time_us` before it.
    `last` (H+2, W+2) int64 holds each pixel's latest event time at [y+1, x+1] (a border
    of NEVER spares the bounds checks); it is updated for every event, passed or not.
    Returns the passing events as new columns and the map: (t, x, y, p, last). Deciding
    and compacting in one pass saves a keep mask and a second pass over the batch.
    """
    n = t.shape[0]
    to = np.empty(n, np.int64)
    xo = np.empty(n, np.uint16)
    yo = np.empty(n, np.uint16)
    po = np.empty(n, np.bool_)
    w2 = last.shape[1]
    flat = last.reshape(-1)
    j = 0
    for i in range(n):
        ti = t[i]
        c = (np.intp(y[i]) + 1) * w2 + np.intp(x[i]) + 1
        # the newest of the 8 neighbours, without branches: the outcome is unpredictable
        up = max(flat[c - w2 - 1], flat[c - w2], flat[c - w2 + 1])
        mid = max(flat[c - 1], flat[c + 1])
        down = max(flat[c + w2 - 1], flat[c + w2], flat[c + w2 + 1])
        flat[c] = ti
        # every event is written; only a passing one advances the write position
        to[j] = ti
        xo[j] = x[i]
        yo[j] = y[i]
        po[j] = p[i]
        j += np.intp(max(up, mid, down) >= ti - time_us)
    return to[:j], xo[:j], yo[:j], po[:j], last


@_jit
def refractory(t, x, y, last, refractory_us):
    """Drops an event that follows its pixel's last *kept* event by less than `refractory_us`.

    `last` (H, W) int64. Returns (keep, last).
    """
    n = t.shape[0]
    keep = np.zeros(n, np.bool_)
    for i in range(n):
        yi = y[i]
        xi = x[i]
        if t[i] - last[yi, xi] >= refractory_us:
            keep[i] = True
            last[yi, xi] = t[i]
    return keep, last


@_jit
def hot_pixel(t, x, y, win, count, prev, window_us, max_count):
    """Drops events of pixels firing more than `max_count` times per aligned window.

    A pixel is hot in window k while its count in window k so far, or its count in
    window k-1, exceeds `max_count`; this is causal and needs no look-ahead. State per
    pixel: the window `win` its `count` belongs to and the previous window's count
    `prev` (all (H, W) int64). Returns (keep, win, count, prev).
    """
    n = t.shape[0]
    keep = np.zeros(n, np.bool_)
    for i in range(n):
        yi = y[i]
        xi = x[i]
        k = t[i] // window_us
        if win[yi, xi] == k:
            count[yi, xi] += 1
        else:
            prev[yi, xi] = count[yi, xi] if win[yi, xi] == k - 1 else 0
            count[yi, xi] = 1
            win[yi, xi] = k
        keep[i] = count[yi, xi] <= max_count and prev[yi, xi] <= max_count
    return keep, win, count, prev


@_jit
def rate_limit(t, window_us, max_per_window, cur_win, cur_count):
    """Keeps at most `max_per_window` events per aligned window (the first ones).

    Returns (keep, cur_win, cur_count).
    """
    n = t.shape[0]
    keep = np.zeros(n, np.bool_)
    for i in range(n):
        k = t[i] // window_us
        if k != cur_win:
            cur_win = k
            cur_count = 0
        if cur_count < max_per_window:
            keep[i] = True
            cur_count += 1
    return keep, cur_win, cur_count


@_jit
def roi(x, y, x0, y0, width, height):
    """Keep mask of events inside the rectangle [x0, x0+width) x [y0, y0+height)."""
    n = x.shape[0]
    keep = np.zeros(n, np.bool_)
    for i in range(n):
        keep[i] = x0 <= x[i] < x0 + width and y0 <= y[i] < y0 + height
    return keep


# --- windowed accumulators -----------------------------------------------------------


@_jit
def _span(t, window_us, cur_win):
    """Windows the batch touches: (first, last) with `first` never before `cur_win`."""
    first = cur_win
    if first < 0:
        first = t[0] // window_us
    return first, t[t.shape[0] - 1] // window_us


@_jit
def _window_end(t, i, end):
    """The first index from `i` on whose time is at or past `end` (t is sorted)."""
    return i + np.searchsorted(t[i:], end)


@_jit
def _count(x, y, p, a, b, flat, spill, hw, w):
    """Adds events a..b-1 to the small unsigned counts `flat` (polarity-major, 2*hw of them).

    A count that wraps to 0 carries its type's range (256 for uint8) into `spill` (int64,
    same shape), so counts stay exact; the branch is taken once per 256 events at a pixel.
    Returns whether any count wrapped.
    """
    wrapped = False
    span = np.int64(np.iinfo(flat.dtype).max) + 1
    for i in range(a, b):
        k = np.intp(p[i]) * hw + np.intp(y[i]) * w + np.intp(x[i])
        flat[k] += 1  # stored truncated to the count's type
        if flat[k] == 0:
            spill[k] += span
            wrapped = True
    return wrapped


@_jit
def frames(t, x, y, p, window_us, cur_win, acc, spill, wrapped):
    """Event counts per polarity into frames (2, H, W) float32: channel 0 OFF, channel 1 ON.

    The open window `cur_win` (-1: none yet) is counted in `acc` (2, H, W) uint8 (or
    any unsigned type) plus `spill` (2, H, W) int64 for what wrapped past its range
    (`wrapped` says whether it holds any), both updated in place. Returns (done, first_win, cur_win, acc, spill,
    wrapped): `done` (k, 2, H, W) float32 holds the windows that closed, numbered
    first_win .. first_win + k - 1, empty windows between events included.

    Small counts keep the scattered increments in cache: at 640x480 the uint8 map is
    0.6 MB (uint16 1.2, float32 2.4), and uint8 counted 1.2x as fast as uint16 and 2x
    float32 here. t is sorted, so each window's events are found by binary search and
    counted in a loop with no time test (with both, 2.5-3x the per-event-test float32
    loop).
    """
    _, h, w = acc.shape
    if t.shape[0] == 0:
        return np.zeros((0, 2, h, w), np.float32), cur_win, cur_win, acc, spill, wrapped
    first, last_win = _span(t, window_us, cur_win)
    out = np.empty((last_win - first, 2, h, w), np.float32)
    flat = acc.reshape(-1)
    sflat = spill.reshape(-1)
    hw = h * w
    n = t.shape[0]
    cur = first
    i = 0
    while True:
        j = _window_end(t, i, (cur + 1) * window_us)
        wrapped |= _count(x, y, p, i, j, flat, sflat, hw, w)
        if j == n:
            break
        k = t[j] // window_us
        while cur < k:  # close the open window (and any empty ones after it)
            o = out[cur - first].reshape(-1)
            frame_counts(flat, sflat, wrapped, o)
            flat[:] = 0
            if wrapped:
                sflat[:] = 0
                wrapped = False
            cur += 1
        i = j
    return out, first, last_win, acc, spill, wrapped


@_jit
def frame_counts(flat, sflat, wrapped, o):
    """Writes the exact counts (small counts plus spill) of one window into float32 `o`."""
    if wrapped:
        for q in range(flat.shape[0]):
            o[q] = np.float32(np.int64(flat[q]) + sflat[q])
    else:
        for q in range(flat.shape[0]):
            o[q] = np.float32(flat[q])


@_jit
def voxel_grid(t, x, y, p, window_us, cur_win, acc):
    """Voxel grids (B, H, W) per window, bilinear in time (Zhu et al., CVPR 2019).

    An event at time t in window k sits at position s = (t - k*window_us) * (B-1) /
    window_us and adds its polarity (+1 ON, -1 OFF) to bins floor(s) and floor(s)+1
    with weights 1 - frac(s) and frac(s). `acc` (B, H, W) float64 is the open window,
    updated in place. Returns (done, first_win, cur_win, acc) like `frames`.

    t is sorted, so each window's events are found by binary search, and within a window
    the events of each lower bin too (`_bin_end`); the adding loop then has the bin as a
    constant. Computing floor(s) per event put a float-to-int conversion on the path to
    every write's address, and the writes waited for it: 2.5x slower with the map in L1.
    """
    b, h, w = acc.shape
    if t.shape[0] == 0:
        return np.zeros((0, b, h, w), np.float64), cur_win, cur_win, acc
    first, last_win = _span(t, window_us, cur_win)
    out = np.empty((last_win - first, b, h, w), np.float64)
    flat = acc.reshape(-1)
    hw = h * w
    n = t.shape[0]
    scale = (b - 1) / window_us
    cur = first
    i = 0
    while True:
        j = _window_end(t, i, (cur + 1) * window_us)
        start = cur * window_us
        while i < j:  # the window's events, one lower bin at a time
            lo = np.intp((t[i] - start) * scale)
            e = _bin_end(t, i + 1, j, start, scale, lo)
            _voxel_add(t, x, y, p, i, e, start, scale, lo, b, flat, hw, w)
            i = e
        if j == n:
            break
        k = t[j] // window_us
        while cur < k:  # close the open window (and any empty ones after it)
            out[cur - first] = acc
            acc[:] = 0.0
            cur += 1
    return out, first, last_win, acc


@_jit
def _bin_end(t, a, b, start, scale, lo):
    """The first index in [a, b) whose position (t - start) * scale lies past bin `lo` (t sorted).

    The same expression as in `_voxel_add`, so the split agrees with it event by event.
    """
    while a < b:
        m = (a + b) >> 1
        if np.intp((t[m] - start) * scale) > lo:
            b = m
        else:
            a = m + 1
    return a


@_jit
def _voxel_add(t, x, y, p, a, b, start, scale, lo, nbins, flat, hw, w):
    """Adds events a..b-1, all with floor(s) == lo, to bins lo and lo + 1 of the flat grid."""
    base = lo * hw
    if lo + 1 < nbins:
        for i in range(a, b):
            frac = (t[i] - start) * scale - lo
            v = 1.0 if p[i] else -1.0
            c = base + np.intp(y[i]) * w + np.intp(x[i])
            flat[c] += v * (1.0 - frac)
            flat[c + hw] += v * frac
    else:  # B = 1, or s rounded up to B - 1: no bin above
        for i in range(a, b):
            frac = (t[i] - start) * scale - lo
            v = 1.0 if p[i] else -1.0
            flat[base + np.intp(y[i]) * w + np.intp(x[i])] += v * (1.0 - frac)


@_jit
def last_times(t, x, y, p, window_us, cur_win, last):
    """Per-pixel, per-polarity latest event time (2, H, W) at the end of each closed window.

    The time surface (Lagorce et al., HOTS, TPAMI 2017) of a window is
    exp(-(window_end - last) / tau); it is computed from these snapshots by the operator.
    `last` (2, H, W) int64 is the running map. Returns (done, first_win, cur_win, last).
    """
    _, h, w = last.shape
    if t.shape[0] == 0:
        return np.zeros((0, 2, h, w), np.int64), cur_win, cur_win, last
    first, last_win = _span(t, window_us, cur_win)
    out = np.empty((last_win - first, 2, h, w), np.int64)
    flat = last.reshape(-1)
    hw = h * w
    k_open = first
    end = (k_open + 1) * window_us
    for i in range(t.shape[0]):
        if t[i] >= end:
            k = t[i] // window_us
            while k_open < k:
                out[k_open - first] = last
                k_open += 1
            end = (k_open + 1) * window_us
        flat[(hw if p[i] else 0) + np.intp(y[i]) * w + np.intp(x[i])] = t[i]
    return out, first, last_win, last


@_jit
def window_cuts(t, window_us):
    """Indices where a new aligned window starts within a sorted batch (for slicing by time)."""
    n = t.shape[0]
    cuts = np.empty(n, np.int64)
    m = 0
    for i in range(1, n):
        if t[i] // window_us != t[i - 1] // window_us:
            cuts[m] = i
            m += 1
    return cuts[:m]


@_jit
def compact(t, x, y, p, keep):
    """The events whose `keep` is True, as new contiguous columns (t, x, y, p).

    Every event is written and the write position advances only for kept ones: no
    branch to mispredict when about half the events pass.
    """
    m = 0
    for i in range(keep.shape[0]):
        m += keep[i]
    to = np.empty(m + 1, np.int64)
    xo = np.empty(m + 1, np.uint16)
    yo = np.empty(m + 1, np.uint16)
    po = np.empty(m + 1, np.bool_)
    j = 0
    for i in range(keep.shape[0]):
        to[j] = t[i]
        xo[j] = x[i]
        yo[j] = y[i]
        po[j] = p[i]
        j += np.intp(keep[i])
    return to[:m], xo[:m], yo[:m], po[:m]


@_jit
def check_sorted_inside(t, x, y, width, height, t_last):
    """Index of the first event that goes back in time or lies outside the sensor, or -1."""
    for i in range(t.shape[0]):
        if t[i] < t_last or x[i] >= width or y[i] >= height:
            return i
        t_last = t[i]
    return -1


@_jit
def column_views(block, cap):
    """The t, x, y, p columns (int64, uint16, uint16, bool) of a uint8 block of 13 * cap bytes."""
    return (block[: 8 * cap].view(np.int64), block[8 * cap : 10 * cap].view(np.uint16),
            block[10 * cap : 12 * cap].view(np.uint16), block[12 * cap : 13 * cap].view(np.bool_))


RECORD_BYTES = 13  # the packed record of aedat, faery and our UDP format: t u64, x u16, y u16, on u8


@_jit
def append_records(raw, block, cap, j, width, height, t_last):
    """Checks one packet of packed event records and appends it to a column block at `j`.

    `raw` is the packet as bytes (13 per event, little-endian `t` u64, `x` u16, `y` u16,
    `on` u8); `block` holds columns for `cap` events back to back: `t` int64, `x`, `y`
    uint16, `p` bool (see `column_views`). One pass checks and copies, reading the packet
    once while it is still in cache. Returns False when an event goes back in time or lies
    outside the sensor; the columns past `j` then hold garbage the caller does not count.
    The caller guarantees room for the whole packet.
    """
    n = raw.shape[0] // RECORD_BYTES
    t, x, y, p = column_views(block, cap)
    prev = t_last
    bad = False
    for i in range(n):
        o = RECORD_BYTES * i
        ti = np.int64(0)
        for b in range(8):
            ti |= np.int64(raw[o + b]) << (8 * b)
        xi = np.uint16(raw[o + 8]) | (np.uint16(raw[o + 9]) << 8)
        yi = np.uint16(raw[o + 10]) | (np.uint16(raw[o + 11]) << 8)
        bad |= (ti < prev) | (xi >= width) | (yi >= height)
        prev = ti
        t[j + i] = ti
        x[j + i] = xi
        y[j + i] = yi
        p[j + i] = raw[o + 12] != 0
    return not bad


@_jit
def all_valid(t, x, y, width, height, t_last):
    """True when no event goes back in time or lies outside the sensor.

    No early exit, so the loops vectorise; the coordinates are checked through their
    maxima in their own uint16 type (a third faster than comparing every one widened to
    int64). `check_sorted_inside` finds the culprit.
    """
    n = t.shape[0]
    if n == 0:
        return True
    bad = t[0] < t_last
    for i in range(1, n):
        bad |= t[i] < t[i - 1]
    mx = x[0]
    my = y[0]
    for i in range(n):
        mx = max(mx, x[i])
        my = max(my, y[i])
    return not (bad or mx >= width or my >= height)


def warm_up() -> None:
    """Compile (or load from cache) every kernel once, so the first batch is not slow."""
    t = np.array([0, 5], np.int64)
    x = np.array([0, 1], np.uint16)
    y = np.array([0, 1], np.uint16)
    p = np.array([True, False])
    m = np.full((2, 2), NEVER, np.int64)
    background_activity(t, x, y, p, np.full((4, 4), NEVER, np.int64), np.int64(1))
    refractory(t, x, y, m.copy(), np.int64(1))
    z = np.zeros((2, 2), np.int64)
    hot_pixel(t, x, y, np.full((2, 2), -1, np.int64), z.copy(), z.copy(), np.int64(10), np.int64(5))
    rate_limit(t, np.int64(10), np.int64(5), np.int64(-1), np.int64(0))
    roi(x, y, 0, 0, 1, 1)
    frames(t, x, y, p, np.int64(2), np.int64(-1), np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.int64), False)
    frame_counts(np.zeros(8, np.uint8), np.zeros(8, np.int64), True, np.zeros(8, np.float32))
    voxel_grid(t, x, y, p, np.int64(2), np.int64(-1), np.zeros((3, 2, 2), np.float64))
    last_times(t, x, y, p, np.int64(2), np.int64(-1), np.full((2, 2, 2), NEVER, np.int64))
    window_cuts(t, np.int64(2))
    compact(t, x, y, p, p)
    check_sorted_inside(t, x, y, 2, 2, np.int64(0))
    all_valid(t, x, y, 2, 2, np.int64(0))
    block = np.zeros(13 * 4, np.uint8)
    column_views(block, 4)
    append_records(np.zeros(2 * RECORD_BYTES, np.uint8), block, 4, 0, 2, 2, np.int64(0))
