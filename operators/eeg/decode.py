"""SSVEP decoding of one window: CCA, filter-bank CCA or FFT harmonics, plus idle detection.

`Decoder` precomputes the references and filter bank for one window length, so the
per-window path only does the linear algebra. The same object serves the streaming
operator and the offline / pseudo-online evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.eeg import kernels as k

METHODS = ("cca", "fbcca", "fft")

# Window flags: what the decoder saw in a window (bits of the `flags` command column).
ARTEFACT = 1  # amplitude over the artefact threshold on some channel
DEGRADED = 2  # some channels flat/saturated and left out
GAP = 4  # timestamps jump: samples were lost
LOST = 8  # too few usable channels: no signal
UNSAFE = ARTEFACT | GAP | LOST


@dataclass
class Decoder:
    """Scores one (n, C) window against each stimulus frequency."""

    method: str
    freqs_hz: tuple[float, ...]
    rate_hz: float
    window_n: int
    harmonics: int = 3
    bands: int = 3
    idle_threshold: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown decoder '{self.method}' (expected one of {', '.join(METHODS)})")
        refs = k.references(self.freqs_hz, self.rate_hz, self.window_n, self.harmonics)
        self._ref_bases = [k.orthobasis(r) for r in refs]
        if self.method == "fbcca":
            fmin = min(self.freqs_hz)
            high = min(0.45 * self.rate_hz, 88.0) if self.rate_hz < 200 else 45.0
            lows = [max(fmin * m - 2.0, 2.0) for m in range(1, self.bands + 1)]
            lows = [lo for lo in lows if lo < high - 4.0]
            self._bank = k.filterbank(self.rate_hz, lows, high)
            self._weights = k.fb_weights(len(self._bank))

    def scores(self, x: np.ndarray) -> np.ndarray:
        if self.method == "cca":
            return k.cca_scores(x, self._ref_bases)
        if self.method == "fbcca":
            return k.fbcca_scores(x, self._ref_bases, self._bank, self._weights)
        return k.fft_scores(x, self.freqs_hz, self.rate_hz, self.harmonics)

    def decide(self, x: np.ndarray) -> tuple[int, float, np.ndarray]:
        """(target index or -1 for idle, confidence, scores) for one window."""
        s = self.scores(x)
        conf = k.confidence(s)
        target = int(np.argmax(s)) if conf >= self.idle_threshold else -1
        return target, conf, s


def window_flags(x: np.ndarray, artefact_uv: float, min_channels: int,
                 flat_fraction: float = 0.1) -> tuple[int, np.ndarray]:
    """Flags for a filtered window and the mask of channels fit to decode.

    A channel the filter zeroed (flat or saturated) for more than `flat_fraction` of the
    window is left out; an artefact is any usable sample above `artefact_uv`.
    """
    zero = (x == 0.0).mean(axis=0)
    usable = zero <= flat_fraction
    flags = 0
    if not usable.all():
        flags |= DEGRADED
    if usable.sum() < min_channels:
        return flags | LOST, usable
    if np.abs(x[:, usable]).max(initial=0.0) > artefact_uv:
        flags |= ARTEFACT
    return flags, usable
