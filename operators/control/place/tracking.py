"""Localised search: a robot on its route queries only the places near its last match.

A query searches the window of `modules` modules either side of the module holding the
previous confident best place (a fixed number of places, so its cost does not grow with the route)
and falls back to the full exact search when the window's best score is below a threshold
calibrated on the held-out calibration traversal, on the first query, and every
`refresh_every` queries if set. An answer (full or windowed) centres the next window only
when its confidence (margin over the runner-up) reaches `sure`, calibrated for a precision
on the same traversal; otherwise the next query searches everything again. Without that
rule a run of hard frames could lock the window onto a wrong stretch of the route (seed 1
of the eval: 15 wrong frames in a row, Recall@1 0.63 vs the full search's 0.73). The carried state is a `Track` (plain data) passed in
and returned, so a restart resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from operators.control.place.ensemble import confidence


@dataclass(frozen=True)
class Window:
    """Localised-search parameters; `modules=0` means every query is a full search."""

    modules: int = 2                   # modules searched either side of the last place's module
    places_per_module: int = 10
    threshold: float = -np.inf         # window's best score (drive, mV) below this -> full search
    sure: float = 0.0                  # an answer centres the next window only at this confidence
    refresh_every: int = 0             # also a full search after this many windowed queries (0 = never)

    def bounds(self, place: int, n_places: int) -> tuple[int, int]:
        """First and one-past-last place of the window around `place`, whole modules, clipped to the route."""
        m = place // self.places_per_module
        lo = max(0, (m - self.modules) * self.places_per_module)
        return lo, min(n_places, (m + self.modules + 1) * self.places_per_module)


class Track(NamedTuple):
    """What a localised search carries from one query to the next, and its counters."""

    place: int = -1           # last best place; -1: none yet (the next query is a full search)
    since_full: int = 0       # windowed queries since the last full search
    queries: int = 0
    full: int = 0             # full searches of any cause (first query, fallback, refresh)
    fallbacks: int = 0        # full searches because the window's best score was below threshold


def search(ens, img: np.ndarray, track: Track, win: Window, n_places: int,
           removal: bool = True) -> tuple[np.ndarray, Track, bool]:
    """One query frame (28x28) -> full-length score row, new track, whether a full search ran.

    Places outside a searched window get the window's lowest score, so they never win and
    the confidence (margin over the runner-up) is taken within the window.
    """
    x = img[None]
    if track.place >= 0 and win.modules > 0 and not (win.refresh_every and track.since_full >= win.refresh_every):
        lo, hi = win.bounds(track.place, n_places)
        if hi - lo < n_places:
            ids, s = ens.window(x, lo, hi, removal)
            s = s[0]
            if s.max() >= win.threshold:
                row = np.full(n_places, s.min(), np.float32)
                row[ids] = s
                best, conf = confidence(s[None])   # within the window: constant cost
                place = int(ids[best[0]]) if conf[0] >= win.sure else -1
                return row, track._replace(place=place, since_full=track.since_full + 1,
                                           queries=track.queries + 1), False
            track = track._replace(fallbacks=track.fallbacks + 1)
    row = ens.scores(x, removal)[0]
    best, conf = confidence(row[None])
    place = int(best[0]) if conf[0] >= win.sure else -1   # not sure: search everything again next time
    return row, track._replace(place=place, since_full=0, queries=track.queries + 1, full=track.full + 1), True


def calibrate(ens, calibration, calibration_places, win: Window, n_places: int, keep: float = 0.9,
              max_frames: int = 200, removal: bool = True) -> float:
    """The window score threshold that keeps `keep` of calibration frames searched in their own window.

    For up to `max_frames` calibration frames, the best score in the window around the true
    place (the tracking case); the threshold is its (1 - keep) quantile, so about 1 - keep of
    tracked queries fall back. A single frame cannot tell "lost" from "hard" much better
    (at 100 places the J-optimal threshold kept only about 2/3 of tracked frames), so the
    threshold leans to keeping the window: a robot taken far away usually scores below it
    within a few frames (`far_pass` in the eval and bench says how often a far window
    passes). Returns -inf when the window is the whole route (nothing to decide).
    """
    places = np.asarray(calibration_places)
    if win.modules <= 0 or win.bounds(n_places // 2, n_places) == (0, n_places) or not len(places):
        return float("-inf")
    pick = np.linspace(0, len(places) - 1, min(len(places), max_frames)).astype(int)
    near = []
    for i in pick:
        lo, hi = win.bounds(int(places[i]), n_places)
        near.append(float(ens.window(calibration[i][None], lo, hi, removal)[1].max()))
    return float(np.quantile(near, 1.0 - keep))


def calibrate_sure(ens, calibration, calibration_places, precision: float = 0.9, max_frames: int = 200,
                   removal: bool = True) -> float:
    """The lowest full-search confidence above which calibration matches are `precision` correct.

    Only such a confident match centres the next window; below it the robot keeps searching
    everything. Returns inf when no confidence reaches that precision (windowing never starts).
    """
    places = np.asarray(calibration_places)
    if not len(places):
        return float("inf")
    pick = np.linspace(0, len(places) - 1, min(len(places), max_frames)).astype(int)
    best, conf = confidence(ens.scores(np.asarray(calibration)[pick], removal))
    order = np.argsort(-conf, kind="stable")
    prec = np.cumsum(best[order] == places[pick][order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(prec >= precision)
    return float(conf[order][ok[-1]]) if len(ok) else float("inf")


def far_pass(ens, imgs, places, win: Window, n_places: int, removal: bool = True) -> float:
    """Fraction of frames whose best score in the window half a route away passes the threshold (kidnap misses)."""
    hits = []
    for img, p in zip(imgs, np.asarray(places), strict=True):
        lo, hi = win.bounds((int(p) + n_places // 2) % n_places, n_places)
        hits.append(ens.window(img[None], lo, hi, removal)[1].max() >= win.threshold)
    return float(np.mean(hits)) if hits else 0.0
