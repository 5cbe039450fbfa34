"""A synthetic two-photon movie with ground truth, and writers to TIFF and HDF5.

Neurons are soma-shaped footprints (a bright ring around a dimmer nucleus); spikes come
from Poisson background rates plus planted co-active ensembles that switch every epoch;
calcium follows c_t = g1 c_{t-1} + g2 c_{t-2} + s_t (AR(1) when tau_rise_ms is 0); the
movie adds neuropil, slow baseline drift, Poisson-Gaussian noise and rigid sub-pixel
motion jitter. Everything is seeded, so the same parameters give the same movie.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.operator import Params


class MovieParams(Params):
    """What the generator makes; units in the names."""

    height: int = Field(128, ge=16)
    width: int = Field(128, ge=16)
    n_neurons: int = Field(50, ge=1)
    n_frames: int = Field(1800, ge=10)
    rate_hz: float = Field(30.0, gt=0)
    radius_px: float = Field(4.0, gt=1)
    tau_decay_ms: float = Field(500.0, gt=0)
    tau_rise_ms: float = Field(0.0, ge=0, description="0 = AR(1); > 0 = AR(2)")
    background_rate_hz: float = Field(0.3, ge=0)
    n_ensembles: int = Field(3, ge=0)
    ensemble_size: int = Field(10, ge=2)
    epoch_s: float = Field(10.0, gt=0, description="the active ensemble switches this often")
    ensemble_event_hz: float = Field(1.0, ge=0, description="co-activation events per second")
    ensemble_p: float = Field(0.9, gt=0, le=1, description="chance a member joins an event")
    baseline: float = Field(1.0, gt=0, description="resting brightness of a soma")
    spike_amplitude: float = Field(1.0, gt=0, description="dF/F of one spike at the soma")
    neuropil: float = Field(0.3, ge=0)
    drift: float = Field(0.1, ge=0, description="relative slow baseline drift")
    photons: float = Field(200.0, gt=0, description="photons per unit brightness (Poisson)")
    read_noise: float = Field(0.02, ge=0, description="Gaussian read noise")
    motion_px: float = Field(1.5, ge=0, description="std of rigid motion jitter")
    seed: int = 0


def ar_coefficients(tau_decay_ms: float, tau_rise_ms: float, rate_hz: float) -> tuple[float, float]:
    """(g1, g2) of the AR model whose impulse response is exp(-t/td) - exp(-t/tr)."""
    d = float(np.exp(-1000.0 / (tau_decay_ms * rate_hz)))
    if tau_rise_ms <= 0:
        return d, 0.0
    r = float(np.exp(-1000.0 / (tau_rise_ms * rate_hz)))
    return d + r, -d * r


def ar_roots(g1: float, g2: float) -> tuple[float, float]:
    """(decay, rise) roots of z^2 - g1 z - g2; rise is 0 for AR(1)."""
    if g2 == 0:
        return g1, 0.0
    disc = np.sqrt(max(g1 * g1 + 4 * g2, 0.0))
    return float((g1 + disc) / 2), float((g1 - disc) / 2)


def calcium(spikes: np.ndarray, g1: float, g2: float = 0.0) -> np.ndarray:
    """Run the AR model over a (t, n) spike-count array."""
    c = np.zeros_like(spikes, dtype=np.float64)
    for i in range(spikes.shape[0]):
        c[i] = spikes[i]
        if i >= 1:
            c[i] += g1 * c[i - 1]
        if i >= 2:
            c[i] += g2 * c[i - 2]
    return c


@dataclass
class Movie:
    """A generated movie and its ground truth."""

    frames: np.ndarray  # (t, h, w) float32
    t_us: np.ndarray  # (t,) int64
    footprints: np.ndarray  # (n, h, w) float32, peak 1
    masks: np.ndarray  # (n, h, w) bool
    spikes: np.ndarray  # (t, n) spike counts
    calcium: np.ndarray  # (t, n)
    shifts: np.ndarray  # (t, 2) true content displacement (dy, dx) in px
    ensembles: np.ndarray  # (n,) ensemble id per neuron, -1 = none
    epoch_ensemble: np.ndarray  # (n_epochs,) ensemble active in each epoch
    epoch_frames: int
    g: tuple[float, float]
    params: dict = field(default_factory=dict)


def _place(p: MovieParams, rng) -> np.ndarray:
    """Centres at least 2.2 radii apart, away from the borders."""
    margin = p.radius_px * 2 + p.motion_px * 3
    centres: list[tuple[float, float]] = []
    for _ in range(p.n_neurons * 400):
        if len(centres) == p.n_neurons:
            break
        c = (rng.uniform(margin, p.height - margin), rng.uniform(margin, p.width - margin))
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 > (2.2 * p.radius_px) ** 2 for a, b in centres):
            centres.append(c)
    if len(centres) < p.n_neurons:
        raise ValueError(
            f"cannot place {p.n_neurons} neurons of radius {p.radius_px} px in "
            f"{p.height}x{p.width}; use a larger field of view or fewer neurons"
        )
    return np.array(centres)


def generate(params: MovieParams | dict | None = None) -> Movie:
    """Make a movie and its ground truth (see the module docstring)."""
    p = params if isinstance(params, MovieParams) else MovieParams(**(params or {}))
    rng = np.random.default_rng(p.seed)
    h, w, n, t = p.height, p.width, p.n_neurons, p.n_frames
    centres = _place(p, rng)
    yy, xx = np.mgrid[0:h, 0:w]
    foot = np.zeros((n, h, w), np.float32)
    for k, (cy, cx) in enumerate(centres):
        r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / p.radius_px
        ring = np.exp(-((r - 0.6) ** 2) / 0.18) + 0.5 * np.exp(-(r**2) / 0.3)
        ring[r > 1.4] = 0
        foot[k] = ring / ring.max()
    masks = foot > 0.35

    # spikes: background Poisson plus the epoch's ensemble co-activating
    dt = 1.0 / p.rate_hz
    spikes = rng.poisson(p.background_rate_hz * dt, size=(t, n)).astype(np.float64)
    n_ens = min(p.n_ensembles, n // p.ensemble_size)
    ensembles = -np.ones(n, np.int64)
    order = rng.permutation(n)
    for e in range(n_ens):
        ensembles[order[e * p.ensemble_size : (e + 1) * p.ensemble_size]] = e
    epoch_frames = max(1, int(round(p.epoch_s * p.rate_hz)))
    n_epochs = int(np.ceil(t / epoch_frames))
    epoch_ensemble = np.array([e % n_ens for e in range(n_epochs)] if n_ens else [-1] * n_epochs)
    if n_ens:
        events = rng.random(t) < p.ensemble_event_hz * dt
        for i in np.flatnonzero(events):
            e = epoch_ensemble[i // epoch_frames]
            members = np.flatnonzero(ensembles == e)
            join = members[rng.random(members.size) < p.ensemble_p]
            spikes[i, join] += 1
    g1, g2 = ar_coefficients(p.tau_decay_ms, p.tau_rise_ms, p.rate_hz)
    ca = calcium(spikes, g1, g2)
    if g2 != 0:  # scale the AR(2) kernel so one spike peaks at 1, like AR(1)
        ca /= calcium(np.eye(1, 200).T, g1, g2).max()

    # brightness: soma baseline * (1 + amplitude * calcium) + neuropil, with drift
    tt = np.arange(t) * dt
    drift = 1.0 + p.drift * np.sin(2 * np.pi * tt / max(tt[-1], 1.0) * 0.7 + rng.uniform(0, 6))
    npil_img = _smooth_field(rng, h, w)
    npil_trace = 1.0 + 0.3 * _smooth_trace(rng, t)
    base = p.baseline * (0.8 + 0.4 * rng.random(n))
    clean = np.empty((t, h, w), np.float32)
    flat_foot = foot.reshape(n, -1)
    amp = base[None, :] * (1.0 + p.spike_amplitude * ca)
    clean.reshape(t, -1)[:] = amp.astype(np.float32) @ flat_foot
    clean += (p.neuropil * npil_trace)[:, None, None] * npil_img[None]
    clean *= drift[:, None, None].astype(np.float32)
    clean += 0.05 * p.baseline

    # motion: rigid sub-pixel jitter (the content moves by `shifts`)
    shifts = np.zeros((t, 2))
    if p.motion_px > 0:
        shifts = rng.normal(0, p.motion_px, size=(t, 2))
        shifts = np.clip(shifts, -4 * p.motion_px, 4 * p.motion_px)
        from operators.calcium.kernels import shift_bilinear

        out = np.empty((h, w), np.float32)
        for i in range(t):
            # content displaced by +d means out[y] = clean[y - d]
            clean[i] = shift_bilinear(clean[i], -shifts[i, 0], -shifts[i, 1], out)
    # Poisson shot noise in its Gaussian limit (tens of photons and more per pixel), plus
    # Gaussian read noise: variance = signal / photons + read_noise^2
    std = np.sqrt(np.maximum(clean, 0) / p.photons + p.read_noise**2)
    noisy = clean + std * rng.standard_normal(clean.shape, dtype=np.float32)
    t_us = np.round(np.arange(t) * 1e6 / p.rate_hz).astype(np.int64)
    return Movie(
        noisy, t_us, foot, masks, spikes, ca, shifts, ensembles, epoch_ensemble,
        epoch_frames, (g1, g2), p.model_dump(),
    )


def _smooth_field(rng, h, w) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.random((h, w)), sigma=max(h, w) / 8)
    f -= f.min()
    return (f / max(f.max(), 1e-9)).astype(np.float32)


def _smooth_trace(rng, t) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    x = gaussian_filter1d(rng.standard_normal(t), sigma=30)
    return x / max(np.abs(x).max(), 1e-9)


def synthetic_traces(
    n: int, t: int, rate_hz: float = 30.0, spike_hz: float = 0.5, g: float = 0.95,
    sigma: float = 0.3, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The OASIS benchmark setting: (y, spikes) of shape (t, n), AR(1) calcium plus
    Gaussian noise of std `sigma` relative to a unit spike."""
    rng = np.random.default_rng(seed)
    s = rng.poisson(spike_hz / rate_hz, size=(t, n)).astype(np.float64)
    c = calcium(s, g)
    return c + sigma * rng.standard_normal((t, n)), s


def write_tiff(path: str | Path, movie: Movie | np.ndarray, bigtiff: bool = False) -> Path:
    """Write the frames as a multi-page TIFF (one page per frame)."""
    import tifffile

    frames = movie.frames if isinstance(movie, Movie) else movie
    tifffile.imwrite(str(path), frames, bigtiff=bigtiff, photometric="minisblack")
    return Path(path)


def write_hdf5(path: str | Path, movie: Movie, dataset: str = "mov") -> Path:
    """Write frames to `dataset`, timestamps to `t_us` and ground truth under `truth/`."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=movie.frames, chunks=(1,) + movie.frames.shape[1:])
        f.create_dataset("t_us", data=movie.t_us)
        gt = f.create_group("truth")
        for name in ("masks", "spikes", "calcium", "shifts", "ensembles", "epoch_ensemble"):
            gt.create_dataset(name, data=getattr(movie, name))
        gt.attrs["epoch_frames"] = movie.epoch_frames
        gt.attrs["g"] = np.array(movie.g)
    return Path(path)
