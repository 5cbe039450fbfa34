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

With a calibrated lost-detector (`calibrate_lost`, `Window.llr`) the window no longer drops
on one unsure answer, which at 5,000 places with weak training sent 60-90% of frames to a
full search. Each windowed answer is one of six observations: confident (margin >= `sure`),
agreeing with forward motion (1..`step` places past the previous answer; a window
that has lost the robot tends to repeat one place, so standing still does not count), or neither; and
its best score above or below the threshold. Their log-likelihood ratios "lost vs tracked",
estimated on the calibration traversal (windows around the true place vs a window held half
a route away while the robot moves on), feed a CUSUM; the robot is declared lost, and the
frame searched in full, when the sum reaches `lost_at`, set for a false-alarm rate on the
tracked calibration frames. A confident or motion-agreeing answer recentres the window;
otherwise the window stays where it was. With the detector, an unsure full-search answer
also centres a window, on probation (its CUSUM starts at `probation * lost_at`): a wrong
one is found out in a few frames, a right one saves a full search per frame until the
ensemble is sure again (at 5,000 places with weak training, most frames).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    step: int = 2                      # an answer 1..step places past the previous one agrees with motion
    llr: tuple[float, ...] = ()        # log P(obs | lost) / P(obs | tracked) per observation (`observe`);
                                       # () = no lost-detector: below threshold or unsure -> full search
    lost_at: float = np.inf            # CUSUM of llr at which the robot is lost (full search)
    probation: float = 0.5             # an unsure full-search answer starts its window this far to lost_at

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
    fallbacks: int = 0        # full searches because the window's answer said "lost" (threshold or CUSUM)
    prev: int = -1            # the previous answer (for the motion check)
    evidence: float = 0.0     # CUSUM of "lost" log-likelihood ratios since the last full search


def observe(conf: float, best: int, prev: int, top: float, win: Window) -> int:
    """One windowed answer as an observation 0..5: (confident, agrees with motion, neither) x (above, below threshold)."""
    kind = 0 if conf >= win.sure else 1 if prev >= 0 and 1 <= best - prev <= win.step else 2
    return 2 * kind + int(top < win.threshold)


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
            best, conf = confidence(s[None])   # within the window: constant cost
            b, top = int(ids[best[0]]), float(s.max())
            if win.llr:
                obs = observe(float(conf[0]), b, track.prev, top, win)
                evidence = max(0.0, track.evidence + win.llr[obs])
                stay = evidence < win.lost_at
                place = b if obs < 4 else track.place   # confident or agreeing: recentre; else hold
            else:
                evidence, stay = 0.0, top >= win.threshold
                place = b if conf[0] >= win.sure else -1
            if stay:
                row = np.full(n_places, s.min(), np.float32)
                row[ids] = s
                return row, track._replace(place=place, since_full=track.since_full + 1, queries=track.queries + 1,
                                           prev=b, evidence=evidence), False
            track = track._replace(fallbacks=track.fallbacks + 1)
    row = ens.scores(x, removal)[0]
    best, conf = confidence(row[None])
    b = int(best[0])
    sure = conf[0] >= win.sure or (track.prev >= 0 and 1 <= b - track.prev <= win.step)
    if win.llr:   # an unsure answer still centres a window, on probation: half-way to "lost"
        place, evidence = b, 0.0 if sure else win.lost_at * win.probation
    else:         # not sure: search everything again next time
        place, evidence = (b if conf[0] >= win.sure else -1), 0.0
    return row, track._replace(place=place, since_full=0, queries=track.queries + 1, full=track.full + 1,
                               prev=b, evidence=evidence), True


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


def calibrate_lost(ens, calibration, calibration_places, win: Window, n_places: int, false_alarm: float = 0.01,
                   run: int = 10, max_frames: int = 300, removal: bool = True) -> Window:
    """`win` with its lost-detector (`llr`, `lost_at`) estimated on the calibration traversal.

    Runs of `run` consecutive calibration frames are searched twice: in the window around
    each frame's true place (tracked) and in one window held half a route away while the
    frames move on (lost, as after a kidnap). The observation counts (`observe`, +1 each)
    give the log-likelihood ratios; `lost_at` is the lowest CUSUM level that the tracked
    runs, chained, reach on at most `false_alarm` of their frames. Needs `threshold` and
    `sure` calibrated first. Returns `win` unchanged when the window is the whole route.
    """
    places = np.asarray(calibration_places)
    if win.modules <= 0 or win.bounds(n_places // 2, n_places) == (0, n_places) or len(places) < 2:
        return win
    run = min(run, len(places))
    starts = np.unique(np.linspace(0, len(places) - run, max(1, min(len(places), max_frames) // run)).astype(int))
    counts = np.ones((2, 6))
    tracked = []
    for a in starts:
        for lost in (0, 1):
            prev, held = -1, (int(places[a]) + n_places // 2) % n_places
            for i in range(a, a + run):
                lo, hi = win.bounds(held if lost else int(places[i]), n_places)
                ids, s = ens.window(calibration[i][None], lo, hi, removal)
                best, conf = confidence(s)
                b = int(ids[best[0]])
                obs = observe(float(conf[0]), b, prev, float(s.max()), win)
                counts[lost, obs] += 1
                prev = b
                if not lost:
                    tracked.append(obs)
    p = counts / counts.sum(axis=1, keepdims=True)
    llr = np.log(p[1] / p[0])
    return replace(win, llr=tuple(float(v) for v in llr), lost_at=lost_level(llr[tracked], false_alarm))


def lost_level(steps: np.ndarray, false_alarm: float) -> float:
    """The lowest CUSUM level (to 1e-3) reached, then reset, on at most `false_alarm` of the steps' frames."""
    steps = np.asarray(steps, float)

    def alarms(h: float) -> int:
        n, c = 0, 0.0
        for v in steps:
            c = max(0.0, c + v)
            if c >= h:
                n, c = n + 1, 0.0
        return n

    lo, hi = 0.0, float(np.maximum(steps, 0).sum()) + 1.0   # no level is reached at hi
    while hi - lo > 1e-3:   # alarms fall as the level rises
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if alarms(mid) <= false_alarm * len(steps) else (mid, hi)
    return hi


def calibrated(ens, calibration, calibration_places, win: Window, n_places: int, keep: float = 0.9,
               precision: float = 0.9, false_alarm: float | None = 0.01, removal: bool = True) -> Window:
    """`win` with threshold, `sure` and (unless `false_alarm` is None) the lost-detector calibrated."""
    win = replace(win, threshold=calibrate(ens, calibration, calibration_places, win, n_places, keep, removal=removal),
                  sure=calibrate_sure(ens, calibration, calibration_places, precision, removal=removal))
    if false_alarm is None:
        return win
    return calibrate_lost(ens, calibration, calibration_places, win, n_places, false_alarm, removal=removal)
