"""Pure EEG kernels: streaming filters with carried state, channel checks, SSVEP scores.

Every function takes and returns NumPy arrays; state is an argument and a return value
(never hidden), which is what makes chunking invariance testable. Data are
(n_samples, n_channels) in microvolts.

Decoders:
- CCA: Lin et al., "Frequency recognition based on canonical correlation analysis for
  SSVEP-based BCIs", IEEE TBME 2006.
- Filter-bank CCA: Chen et al., "Filter bank canonical correlation analysis for
  implementing a high-speed SSVEP-based BCI", J. Neural Eng. 2015 (weights m^-1.25 + 0.25).
- FFT harmonics: the power at each stimulus frequency and its harmonics against the
  neighbouring bins, as in the SSVEP wheelchair reference (Butterworth band-pass + FFT).
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import signal

# --- filter design -------------------------------------------------------------------


def design_sos(rate_hz: float, band_hz: tuple[float, float] | None, notch_hz: float | None,
               order: int = 4, notch_q: float = 30.0) -> np.ndarray:
    """Band-pass (Butterworth) and notch cascaded as one SOS array, (n_sections, 6)."""
    parts = []
    if band_hz is not None:
        low, high = band_hz
        parts.append(signal.butter(order, [low, high], btype="bandpass", fs=rate_hz, output="sos"))
    if notch_hz:
        b, a = signal.iirnotch(notch_hz, notch_q, fs=rate_hz)
        parts.append(signal.tf2sos(b, a))
    if not parts:
        return np.array([[1.0, 0, 0, 1.0, 0, 0]])
    return np.vstack(parts)


def sos_zeros(sos: np.ndarray, n_channels: int) -> np.ndarray:
    """Initial (rest) filter state for `n_channels`: shape (n_sections, 2, n_channels)."""
    return np.zeros((sos.shape[0], 2, n_channels))


def sos_step(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Filter one chunk (n, C) with carried state; returns (y, new state).

    Same arithmetic and state layout as `scipy.signal.sosfilt(sos, x, axis=0, zi=zi)`
    (transposed direct form II), which tests use as the reference; a Numba loop because
    per-call overhead dominates on the small chunks a live stream delivers.
    """
    return _sos_df2t(np.ascontiguousarray(sos, dtype=np.float64), np.ascontiguousarray(x, dtype=np.float64),
                     np.ascontiguousarray(zi, dtype=np.float64))


@numba.njit(cache=True)
def _sos_df2t(sos, x, zi):
    n, c = x.shape
    y = x.copy()
    z = zi.copy()
    for s in range(sos.shape[0]):
        b0, b1, b2 = sos[s, 0], sos[s, 1], sos[s, 2]
        a1, a2 = sos[s, 4], sos[s, 5]
        for j in range(c):
            z0, z1 = z[s, 0, j], z[s, 1, j]
            for i in range(n):
                xi = y[i, j]
                yi = b0 * xi + z0
                z0 = b1 * xi - a1 * yi + z1
                z1 = b2 * xi - a2 * yi
                y[i, j] = yi
            z[s, 0, j], z[s, 1, j] = z0, z1
    return y, z


# --- channel checks (flat, saturated) ------------------------------------------------


@numba.njit(cache=True)
def bad_samples(x, last, run, flat_samples, saturation_uv):
    """Mark samples of channels that are flat (a run of identical values) or saturated.

    `last` (C,) is the previous sample and `run` (C,) the length of the current run of
    identical values; both are carried from chunk to chunk. Returns (bad mask, last, run).
    """
    n, c = x.shape
    bad = np.zeros((n, c), dtype=np.bool_)
    last = last.copy()
    run = run.copy()
    for j in range(c):
        for i in range(n):
            v = x[i, j]
            if v == last[j]:
                run[j] += 1
            else:
                run[j] = 1
            last[j] = v
            if run[j] >= flat_samples or abs(v) >= saturation_uv or v != v:
                bad[i, j] = True
    return bad, last, run


def bad_samples_naive(x, last, run, flat_samples, saturation_uv):
    """The obviously correct twin of `bad_samples` (tests compare the two)."""
    bad = np.zeros(x.shape, dtype=bool)
    last, run = last.astype(float).copy(), run.copy()
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            run[j] = run[j] + 1 if x[i, j] == last[j] else 1
            last[j] = x[i, j]
            bad[i, j] = run[j] >= flat_samples or abs(x[i, j]) >= saturation_uv or np.isnan(x[i, j])
    return bad, last, run


def car_masked(y: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Common-average reference over the good channels of each sample; bad ones set to 0."""
    good = ~bad
    n_good = np.maximum(good.sum(axis=1, keepdims=True), 1)
    mean = np.where(good, y, 0.0).sum(axis=1, keepdims=True) / n_good
    return np.where(good, y - mean, 0.0)


# --- SSVEP decoders ------------------------------------------------------------------


def references(freqs_hz, rate_hz: float, n: int, harmonics: int) -> np.ndarray:
    """Sine/cosine references, (n_targets, n, 2 * harmonics)."""
    t = np.arange(n) / rate_hz
    out = np.empty((len(freqs_hz), n, 2 * harmonics))
    for k, f in enumerate(freqs_hz):
        for h in range(harmonics):
            out[k, :, 2 * h] = np.sin(2 * np.pi * (h + 1) * f * t)
            out[k, :, 2 * h + 1] = np.cos(2 * np.pi * (h + 1) * f * t)
    return out


def orthobasis(a: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the centred columns of `a` (n, m), dropping null directions."""
    a = a - a.mean(axis=0)
    q, r = np.linalg.qr(a)
    keep = np.abs(np.diag(r)) > 1e-9 * max(np.abs(r).max(), 1e-30)
    return q[:, keep]


def cca_corr(qx: np.ndarray, qy: np.ndarray) -> float:
    """Largest canonical correlation between two orthonormal bases."""
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return 0.0
    return float(np.linalg.svd(qx.T @ qy, compute_uv=False)[0])


def cca_scores(x: np.ndarray, ref_bases: list[np.ndarray]) -> np.ndarray:
    """Canonical correlation of a window (n, C) with each target's references."""
    qx = orthobasis(x)
    return np.array([cca_corr(qx, qy) for qy in ref_bases])


def filterbank(rate_hz: float, lows_hz, high_hz: float, order: int = 4) -> list[np.ndarray]:
    """Chebyshev type I sub-band filters for FBCCA, one SOS per sub-band."""
    return [signal.cheby1(order, 0.5, [lo, high_hz], btype="bandpass", fs=rate_hz, output="sos")
            for lo in lows_hz]


def fb_weights(n_bands: int, a: float = 1.25, b: float = 0.25) -> np.ndarray:
    """FBCCA sub-band weights w(m) = m^-a + b (Chen et al. 2015)."""
    m = np.arange(1, n_bands + 1)
    return m ** (-a) + b


def fbcca_scores(x: np.ndarray, ref_bases: list[np.ndarray], bank: list[np.ndarray],
                 weights: np.ndarray) -> np.ndarray:
    """Weighted sum over sub-bands of squared canonical correlations per target."""
    total = np.zeros(len(ref_bases))
    for w, sos in zip(weights, bank):
        xb = signal.sosfiltfilt(sos, x, axis=0)
        total += w * cca_scores(xb, ref_bases) ** 2
    return total


def fft_scores(x: np.ndarray, freqs_hz, rate_hz: float, harmonics: int,
               noise_hz: float = 1.5) -> np.ndarray:
    """Mean over harmonics of the power at h*f over the mean power of neighbouring bins."""
    n = x.shape[0]
    nfft = int(2 ** np.ceil(np.log2(max(n, rate_hz * 4))))
    spec = np.abs(np.fft.rfft(x * np.hanning(n)[:, None], nfft, axis=0)) ** 2
    power = spec.mean(axis=1)
    df = rate_hz / nfft
    scores = np.empty(len(freqs_hz))
    resolution = rate_hz / n  # the main lobe of the window: not noise
    for k, f in enumerate(freqs_hz):
        snr = []
        for h in range(1, harmonics + 1):
            fh = h * f
            if fh >= rate_hz / 2 - noise_hz:
                break
            i = int(round(fh / df))
            lo, hi = int((fh - noise_hz) / df), int((fh + noise_hz) / df)
            bins = np.arange(lo, hi + 1)
            far = np.abs(bins * df - fh) > resolution
            noise = power[bins[far]].mean() if far.any() else power[bins].mean()
            snr.append(power[i] / max(noise, 1e-30))
        scores[k] = np.mean(snr) if snr else 0.0
    return scores


def confidence(scores: np.ndarray) -> float:
    """How much the best target stands out: best score over the mean of the others."""
    if len(scores) < 2:
        return float("inf")
    order = np.sort(scores)
    rest = order[:-1].mean()
    return float(order[-1] / max(rest, 1e-12))


# --- metrics -------------------------------------------------------------------------


def wolpaw_bits(p: float, n: int) -> float:
    """Bits per selection (Wolpaw 2002); 0 at or below chance."""
    if n < 2 or p <= 1.0 / n:
        return 0.0
    if p >= 1.0:
        return float(np.log2(n))
    return float(np.log2(n) + p * np.log2(p) + (1 - p) * np.log2((1 - p) / (n - 1)))


def itr_bits_per_min(p: float, n: int, seconds_per_decision: float) -> float:
    """Wolpaw information transfer rate in bits/min."""
    return wolpaw_bits(p, n) * 60.0 / seconds_per_decision


def mcc(true: np.ndarray, pred: np.ndarray) -> float:
    """Multi-class Matthews correlation coefficient (Gorodkin's R_K)."""
    labels = np.unique(np.concatenate([true, pred]))
    idx = {v: i for i, v in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)))
    for a, b in zip(true, pred):
        cm[idx[a], idx[b]] += 1
    t_k, p_k = cm.sum(axis=1), cm.sum(axis=0)
    c, s = np.trace(cm), cm.sum()
    den = np.sqrt((s * s - (p_k * p_k).sum()) * (s * s - (t_k * t_k).sum()))
    return float((c * s - (t_k * p_k).sum()) / den) if den > 0 else 0.0


def nmcc(true: np.ndarray, pred: np.ndarray) -> float:
    """Normalised MCC, (MCC + 1) / 2, in [0, 1] (pseudo-online MOABB framework)."""
    return (mcc(true, pred) + 1.0) / 2.0
