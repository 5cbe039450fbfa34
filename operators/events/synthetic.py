"""A synthetic event camera: moving scenes through the log-intensity contrast-threshold model.

Each pixel keeps a reference log intensity and emits an ON (OFF) event every time the
current log intensity rises (falls) one contrast threshold away from it, with the event
time interpolated linearly between rendered frames (the DVS model of Lichtsteiner et al.,
IEEE JSSC 2008; the emulator recipe of v2e, Hu et al., CVPR-W 2021). Non-idealities:
per-pixel threshold mismatch (Gaussian, `threshold_sigma` relative), a refractory period
during which a pixel cannot fire (the change is lost, the reference still follows),
background-activity noise (Poisson, `noise_hz` per pixel, random polarity) and hot pixels
(Poisson at `hot_rate_hz`).

Scenes: `bars`, `shapes`, `texture` and `gesture` (a hand-like shape following one of the
`GESTURES` trajectories). `gesture_events` renders one labelled clip; `gesture_recording`
writes several gestures back to back into one AEDAT4 file with ground-truth segments.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numba
import numpy as np
from pydantic import Field

from pipeline import schemas as sch
from pipeline.errors import ConfigError, DataError
from pipeline.operator import Source, SourceParams, register

GESTURES: tuple[str, ...] = (
    "swipe_left",
    "swipe_right",
    "swipe_up",
    "swipe_down",
    "circle_cw",
    "circle_ccw",
    "zigzag",
    "push",
)
SCENES = ("bars", "shapes", "texture", "gesture")

_EPS = 0.05  # log(I + eps): keeps dark pixels from producing runaway contrast


# --- kernels -------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _cross(logf, times, ref, thr_on, thr_off, count_only, last_t, refractory_us, t_out, x_out, y_out, p_out):
    """One pass of the contrast-threshold model over frames `logf` (k+1, H, W).

    Returns the number of events (count_only: an upper bound ignoring refractoriness).
    `ref` and `last_t` are updated in place when not count_only.
    """
    k1, h, w = logf.shape
    n = 0
    # frame-major: each step streams through contiguous memory; per-pixel state in arrays
    for s in range(1, k1):
        t0 = times[s - 1]
        dt = times[s] - t0
        for y in range(h):
            for x in range(w):
                l0 = logf[s - 1, y, x]
                l1 = logf[s, y, x]
                r = ref[y, x]
                con = thr_on[y, x]
                coff = thr_off[y, x]
                if l1 - r < con and r - l1 < coff:
                    continue
                d = l1 - l0
                lt = last_t[y, x]
                while True:
                    if l1 - r >= con:
                        r += con
                        pol = True
                    elif r - l1 >= coff:
                        r -= coff
                        pol = False
                    else:
                        break
                    if count_only:
                        n += 1
                        continue
                    frac = 1.0 if d == 0.0 else (r - l0) / d
                    if frac < 0.0:
                        frac = 0.0
                    elif frac > 1.0:
                        frac = 1.0
                    te = t0 + np.int64(frac * dt)
                    if te - lt >= refractory_us:
                        t_out[n] = te
                        x_out[n] = x
                        y_out[n] = y
                        p_out[n] = pol
                        lt = te
                        n += 1
                ref[y, x] = r
                last_t[y, x] = lt
    return n


@numba.njit(cache=True, nogil=True)
def dvs_chunk(logf, times, ref, last_t, thr_on, thr_off, refractory_us):
    """Events from log frames `logf` (k+1, H, W) at `times` (k+1,) µs, sorted by time.

    `logf[0]` is the frame the previous chunk ended on. Carried state: the per-pixel
    reference log intensity `ref` and last event time `last_t`; returns
    (t, x, y, p, ref, last_t) with the new state.
    """
    ref = ref.copy()
    last_t = last_t.copy()
    dummy_t = np.empty(0, np.int64)
    dummy_u = np.empty(0, np.uint16)
    dummy_b = np.empty(0, np.bool_)
    cap = _cross(logf, times, ref.copy(), thr_on, thr_off, True, last_t, refractory_us, dummy_t, dummy_u, dummy_u, dummy_b)
    t = np.empty(cap, np.int64)
    x = np.empty(cap, np.uint16)
    y = np.empty(cap, np.uint16)
    p = np.empty(cap, np.bool_)
    n = _cross(logf, times, ref, thr_on, thr_off, False, last_t, refractory_us, t, x, y, p)
    order = np.argsort(t[:n], kind="mergesort")
    return t[:n][order], x[:n][order], y[:n][order], p[:n][order], ref, last_t


@numba.njit(cache=True, nogil=True)
def _render_hand(cx, cy, scale, width, height, texture, out):
    """Log intensity of a hand-like shape (palm, four fingers, thumb) at per-frame centres into out (k, H, W)."""
    k = cx.shape[0]
    # blobs relative to the palm centre, in units of `scale`: (dx, dy, rx, ry)
    blobs = np.array(
        [
            [0.0, 0.0, 0.55, 0.6],
            [-0.45, -0.85, 0.12, 0.4],
            [-0.15, -0.98, 0.12, 0.45],
            [0.15, -0.95, 0.12, 0.43],
            [0.43, -0.78, 0.11, 0.35],
            [-0.7, 0.05, 0.32, 0.12],
        ]
    )
    th, tw = texture.shape
    bg = np.empty((height, width))
    for y in range(height):
        for x in range(width):
            bg[y, x] = 0.15 + 0.05 * texture[y % th, x % tw]
    log_bg = np.log(bg + _EPS).astype(np.float32)
    for i in range(k):
        s = scale[i]
        out[i] = log_bg
        # only pixels near the hand can differ from the background
        x0 = max(0, int(cx[i] - 1.3 * s) - 2)
        x1 = min(width, int(cx[i] + 1.3 * s) + 3)
        y0 = max(0, int(cy[i] - 1.6 * s) - 2)
        y1 = min(height, int(cy[i] + 1.0 * s) + 3)
        for y in range(y0, y1):
            for x in range(x0, x1):
                best = 0.0
                for b in range(blobs.shape[0]):
                    dx = (x - cx[i]) / s - blobs[b, 0]
                    dy = (y - cy[i]) / s - blobs[b, 1]
                    d = math.sqrt((dx / blobs[b, 2]) ** 2 + (dy / blobs[b, 3]) ** 2)
                    # soft edge about one pixel wide
                    m = 0.5 + (1.0 - d) * s * min(blobs[b, 2], blobs[b, 3])
                    if m > best:
                        best = m
                if best > 1.0:
                    best = 1.0
                if best > 0.0:
                    # skin texture moves with the hand so its interior also produces events
                    tx = int(x - cx[i]) % tw
                    ty = int(y - cy[i]) % th
                    fg = 0.7 + 0.2 * texture[ty, tx]
                    out[i, y, x] = math.log(bg[y, x] + best * (fg - bg[y, x]) + _EPS)


# --- scenes --------------------------------------------------------------------------


def _smoothstep(u):
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def gesture_path(label: int, t_s: np.ndarray, duration_s: float, width: int, height: int,
                 speed: float = 1.0, offset=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hand centre (x, y) and scale over time for gesture `label`; y grows downwards.

    The motion fills 80% of `duration_s` at speed 1 and is centred in the clip; faster
    gestures finish sooner. `offset` shifts the path by a fraction of the sensor size.
    """
    active = min(duration_s, 0.8 * duration_s / max(speed, 1e-6))
    start = 0.5 * (duration_s - active)
    u = np.clip((t_s - start) / active, 0.0, 1.0)
    e = _smoothstep(u)
    size = float(min(width, height))
    cx0 = width * (0.5 + offset[0])
    cy0 = height * (0.5 + offset[1])
    amp = 0.3 * size
    scale = np.full_like(t_s, 0.16 * size, dtype=np.float64)
    name = GESTURES[label]
    if name == "swipe_left":
        cx, cy = cx0 + amp * (1 - 2 * e), np.full_like(e, cy0)
    elif name == "swipe_right":
        cx, cy = cx0 - amp * (1 - 2 * e), np.full_like(e, cy0)
    elif name == "swipe_up":
        cx, cy = np.full_like(e, cx0), cy0 + amp * (1 - 2 * e)
    elif name == "swipe_down":
        cx, cy = np.full_like(e, cx0), cy0 - amp * (1 - 2 * e)
    elif name in ("circle_cw", "circle_ccw"):
        sign = 1.0 if name == "circle_cw" else -1.0  # +angle is clockwise on screen (y down)
        a = sign * 2 * np.pi * e - np.pi / 2
        r = 0.7 * amp
        cx, cy = cx0 + r * np.cos(a), cy0 + r * np.sin(a)
    elif name == "zigzag":
        cx = cx0 + amp * (1 - 2 * e)
        cy = cy0 + 0.5 * amp * np.sin(2 * np.pi * 2 * e)
    elif name == "push":
        cx, cy = np.full_like(e, cx0), np.full_like(e, cy0)
        scale = scale * (0.7 + 0.8 * e)
    else:  # pragma: no cover - GESTURES and this table are kept in step
        raise ConfigError(f"gesture '{name}' has no trajectory")
    return cx.astype(np.float64), cy.astype(np.float64), scale.astype(np.float64)


def _texture(rng: np.random.Generator, n: int = 16) -> np.ndarray:
    """A smooth random texture in [0, 1], tileable, (n, n)."""
    noise = rng.random((n, n))
    smooth = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1) + np.roll(noise, (1, 1), (0, 1))) / 4
    smooth -= smooth.min()
    return smooth / max(smooth.max(), 1e-9)


def _render(scene: str, t_s: np.ndarray, width: int, height: int, duration_s: float, texture: np.ndarray,
            label: int, speed: float, offset, out: np.ndarray) -> None:
    """Log intensity frames of `scene` at times `t_s` (seconds) into `out` (k, H, W) float32."""
    if scene == "gesture":
        cx, cy, scale = gesture_path(label, t_s, duration_s, width, height, speed, offset)
        _render_hand(cx, cy, scale, width, height, texture, out)
        return
    np.log(_intensity(scene, t_s, width, height, duration_s, texture, speed) + _EPS, out=out)


def _intensity(scene: str, t_s: np.ndarray, width: int, height: int, duration_s: float, texture: np.ndarray,
               speed: float) -> np.ndarray:
    """Intensity frames (k, H, W) float32 in (0, 1] for `scene` at times `t_s` (seconds)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tt = t_s.astype(np.float32)[:, None, None]
    if scene == "bars":
        # two bars: a vertical one sweeping right, a horizontal one sweeping down
        period = max(duration_s, 1e-3)
        bx = (tt * speed / period % 1.0) * (width + 8) - 4
        by = ((tt * speed / period + 0.5) % 1.0) * (height + 8) - 4
        vb = np.clip(2.0 - np.abs(xx - bx), 0, 1)
        hb = np.clip(2.0 - np.abs(yy - by), 0, 1)
        return (0.2 + 0.7 * np.maximum(vb, hb)).astype(np.float32)
    if scene == "shapes":
        size = min(width, height)
        w = 2 * np.pi * speed / max(duration_s, 1e-3)
        dcx = width / 2 + 0.3 * width * np.cos(w * tt)
        dcy = height / 2 + 0.3 * height * np.sin(w * tt)
        disk = np.clip(0.5 + 0.12 * size - np.hypot(xx - dcx, yy - dcy), 0, 1)
        scx = width / 2 - 0.3 * width * np.cos(w * tt)
        sq = np.clip(0.5 + 0.1 * size - np.maximum(np.abs(xx - scx), np.abs(yy - height / 2)), 0, 1)
        return (0.15 + 0.45 * disk + 0.75 * sq).clip(0, 1).astype(np.float32)
    if scene == "texture":
        th, tw = texture.shape
        vx = 0.25 * width * speed / max(duration_s, 1e-3)
        sx = (xx + vx * tt) / 3.0
        sy = (yy + 0.5 * vx * tt) / 3.0
        # bilinear sample of the tiled texture
        x0 = np.floor(sx).astype(np.int64)
        y0 = np.floor(sy).astype(np.int64)
        fx, fy = sx - x0, sy - y0
        a = texture[y0 % th, x0 % tw]
        b = texture[y0 % th, (x0 + 1) % tw]
        c = texture[(y0 + 1) % th, x0 % tw]
        d = texture[(y0 + 1) % th, (x0 + 1) % tw]
        val = a * (1 - fx) * (1 - fy) + b * fx * (1 - fy) + c * (1 - fx) * fy + d * fx * fy
        return (0.1 + 0.8 * val).astype(np.float32)
    raise ConfigError(f"unknown scene '{scene}' (expected one of {', '.join(SCENES)})")


# --- the camera ----------------------------------------------------------------------


def _label_index(label: int | str) -> int:
    if isinstance(label, str):
        if label not in GESTURES:
            raise ConfigError(f"unknown gesture '{label}' (expected one of {', '.join(GESTURES)})")
        return GESTURES.index(label)
    label = int(label)
    if not 0 <= label < len(GESTURES):
        raise ConfigError(f"gesture label {label} out of range 0..{len(GESTURES) - 1}")
    return label


def simulate(scene: str = "gesture", *, width: int = 64, height: int = 64, duration_s: float = 1.0,
             seed: int = 0, label: int | str = 0, speed: float = 1.0, offset=(0.0, 0.0),
             contrast: float = 0.2, threshold_sigma: float = 0.03, refractory_us: int = 500,
             noise_hz: float = 0.1, hot_pixels: int = 2, hot_rate_hz: float = 1000.0,
             step_us: int = 1000, chunk_steps: int = 250, t0_us: int = 0) -> Iterator[dict]:
    """Yield event chunks {t, x, y, p} in time order for `scene`, `chunk_steps` frames at a time."""
    if width < 1 or height < 1 or width > 65535 or height > 65535:
        raise ConfigError(f"sensor size {width}x{height} out of range 1..65535")
    label = _label_index(label)
    rng = np.random.default_rng(seed)
    texture = _texture(rng)
    thr = rng.normal(contrast, threshold_sigma * contrast, size=(2, height, width))
    thr = np.maximum(thr, 0.2 * contrast)
    thr_on, thr_off = thr[0], thr[1]
    n_hot = min(int(hot_pixels), width * height)
    hot_idx = rng.choice(width * height, size=n_hot, replace=False) if n_hot else np.empty(0, np.int64)
    total_us = int(round(duration_s * 1e6))
    n_steps = max(1, int(math.ceil(total_us / step_us)))
    times = np.minimum(np.arange(n_steps + 1, dtype=np.int64) * step_us, total_us)

    def logframes(ts, out):
        _render(scene, ts / 1e6, width, height, duration_s, texture, label, speed, offset, out)
        return out

    prev = logframes(times[:1], np.empty((1, height, width), np.float32))
    ref = prev[0].copy()
    last_t = np.full((height, width), -(1 << 40), np.int64)
    for s0 in range(0, n_steps, chunk_steps):
        s1 = min(n_steps, s0 + chunk_steps)
        ts = times[s0 + 1 : s1 + 1]
        stack = np.empty((len(ts) + 1, height, width), np.float32)
        stack[0] = prev[0]
        logframes(ts, stack[1:])
        tt = times[s0 : s1 + 1]
        t, x, y, p, ref, last_t = dvs_chunk(stack, tt, ref, last_t, thr_on, thr_off, np.int64(refractory_us))
        prev = stack[-1:]
        # background activity and hot pixels in [tt[0], tt[-1])
        span = int(tt[-1] - tt[0])
        extra = [(t, x, y, p)]
        n_noise = rng.poisson(noise_hz * width * height * span / 1e6) if noise_hz > 0 else 0
        if n_noise:
            extra.append((tt[0] + rng.integers(0, span, n_noise), rng.integers(0, width, n_noise),
                          rng.integers(0, height, n_noise), rng.random(n_noise) < 0.5))
        if n_hot and hot_rate_hz > 0:
            counts = rng.poisson(hot_rate_hz * span / 1e6, size=n_hot)
            idx = np.repeat(hot_idx, counts)
            m = len(idx)
            extra.append((tt[0] + rng.integers(0, span, m), idx % width, idx // width, rng.random(m) < 0.5))
        t = np.concatenate([e[0] for e in extra]).astype(np.int64)
        order = np.argsort(t, kind="stable")
        yield {
            "t": t[order] + t0_us,
            "x": np.concatenate([e[1] for e in extra]).astype(np.uint16)[order],
            "y": np.concatenate([e[2] for e in extra]).astype(np.uint16)[order],
            "p": np.concatenate([e[3] for e in extra]).astype(np.bool_)[order],
        }


def _join(chunks) -> dict:
    chunks = list(chunks)
    return {k: np.concatenate([c[k] for c in chunks]) for k in ("t", "x", "y", "p")}


def gesture_events(label: int | str, *, width: int = 64, height: int = 64, duration_s: float = 1.0,
                   seed: int = 0, speed: float = 1.0, offset=(0.0, 0.0), noise_hz: float = 0.1,
                   hot_pixels: int = 2, contrast: float = 0.2, refractory_us: int = 500,
                   threshold_sigma: float = 0.03, hot_rate_hz: float = 1000.0, step_us: int = 2000,
                   t0_us: int = 0) -> dict:
    """One labelled gesture clip: {t int64 µs sorted, x, y uint16, p bool, label int}."""
    idx = _label_index(label)
    ev = _join(simulate("gesture", width=width, height=height, duration_s=duration_s, seed=seed, label=idx,
                        speed=speed, offset=offset, contrast=contrast, threshold_sigma=threshold_sigma,
                        refractory_us=refractory_us, noise_hz=noise_hz, hot_pixels=hot_pixels,
                        hot_rate_hz=hot_rate_hz, step_us=step_us, chunk_steps=1 << 30, t0_us=t0_us))
    ev["label"] = idx
    return ev


def _structured(events: dict) -> np.ndarray:
    import faery

    arr = np.empty(len(events["t"]), dtype=faery.EVENTS_DTYPE)
    arr["t"] = events["t"]
    arr["x"] = events["x"]
    arr["y"] = events["y"]
    arr["on"] = events["p"]
    return arr


def write_aedat4(path, events: dict, width: int, height: int, compression: str | None = "lz4") -> Path:
    """Write events {t, x, y, p} as an AEDAT4 file (one event stream) through faery.

    `compression`: "lz4" (what DV cameras write, the default), "zstd" or None.
    """
    import faery

    path = Path(path)
    t = np.asarray(events["t"])
    if len(t) and (t[0] < 0 or np.any(np.diff(t) < 0)):
        raise DataError(f"cannot write '{path}': event timestamps must be non-negative and sorted")
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _structured(events)
    faery.events_stream_from_array(arr, dimensions=(int(width), int(height))).to_file(
        str(path), compression=None if compression is None else (compression, 1))
    return path


def gesture_recording(path, labels: list, *, width: int = 64, height: int = 64, seed: int = 0,
                      gap_s: float = 0.3, duration_s: float = 1.0, speed: float = 1.0,
                      noise_hz: float = 0.1, hot_pixels: int = 2, **kwargs) -> list[tuple[int, int, int]]:
    """Write gestures back to back (with `gap_s` of noise only between) into one AEDAT4 file.

    Returns ground-truth segments (t_start_us, t_end_us, label) of each gesture clip.
    """
    parts, segments = [], []
    t = 0
    gap_us = int(round(gap_s * 1e6))
    clip_us = int(round(duration_s * 1e6))
    for i, label in enumerate(labels):
        idx = _label_index(label)
        # the hot pixels stay put across clips: they are a property of the sensor
        ev = gesture_events(idx, width=width, height=height, duration_s=duration_s, seed=seed * 100003 + i,
                            speed=speed, noise_hz=noise_hz, hot_pixels=0, t0_us=t, **kwargs)
        parts.append(ev)
        segments.append((t, t + clip_us, idx))
        t += clip_us
        if gap_us > 0:
            parts.append(_noise(np.random.default_rng([seed, i]), t, gap_us, width, height, noise_hz))
            t += gap_us
    merged = _join(parts)
    if hot_pixels:
        rng = np.random.default_rng([seed, 7])
        n_hot = min(hot_pixels, width * height)
        hot = rng.choice(width * height, size=n_hot, replace=False)
        counts = rng.poisson(1000.0 * t / 1e6, size=n_hot)
        idx = np.repeat(hot, counts)
        hot_ev = {"t": rng.integers(0, max(t, 1), len(idx)).astype(np.int64), "x": (idx % width).astype(np.uint16),
                  "y": (idx // width).astype(np.uint16), "p": rng.random(len(idx)) < 0.5}
        merged = _join([merged, hot_ev])
        order = np.argsort(merged["t"], kind="stable")
        merged = {k: v[order] for k, v in merged.items()}
    write_aedat4(path, merged, width, height)
    return segments


def _noise(rng, t0, span_us, width, height, noise_hz) -> dict:
    n = rng.poisson(noise_hz * width * height * span_us / 1e6) if noise_hz > 0 else 0
    t = np.sort(t0 + rng.integers(0, max(span_us, 1), n)).astype(np.int64)
    return {"t": t, "x": rng.integers(0, width, n).astype(np.uint16),
            "y": rng.integers(0, height, n).astype(np.uint16), "p": rng.random(n) < 0.5}


# --- the operator --------------------------------------------------------------------


class SyntheticCameraParams(SourceParams):
    scene: Literal["bars", "shapes", "texture", "gesture"] = "gesture"
    gesture: int | str = Field(0, description="gesture label (index or name) when scene is gesture")
    width: int = Field(64, ge=1, le=65535)
    height: int = Field(64, ge=1, le=65535)
    duration_s: float = Field(1.0, gt=0)
    seed: int = 0
    batch_us: int = Field(10_000, ge=1, description="sensor time per emitted batch")
    speed: float = Field(1.0, gt=0, description="scene motion speed factor")
    contrast: float = Field(0.2, gt=0, description="mean contrast threshold (log intensity)")
    threshold_sigma: float = Field(0.03, ge=0, description="threshold mismatch, relative std")
    refractory_us: int = Field(500, ge=0)
    noise_hz: float = Field(0.1, ge=0, description="background activity per pixel")
    hot_pixels: int = Field(2, ge=0)
    hot_rate_hz: float = Field(1000.0, ge=0)
    step_us: int = Field(1000, ge=1, description="render one frame per step")


@register
class SyntheticCamera(Source):
    """A simulated event camera rendering a moving scene; emits `events` batches of batch_us."""

    name = "synthetic_camera"
    outputs = {"out": "events"}
    Params = SyntheticCameraParams

    def schemas(self, inputs):
        return {"out": sch.events_schema(self.params.width, self.params.height)}

    def setup(self):
        _label_index(self.params.gesture)

    def generate(self):
        p = self.params
        schema = self.schemas({})["out"]
        chunks = simulate(p.scene, width=p.width, height=p.height, duration_s=p.duration_s, seed=p.seed,
                          label=p.gesture, speed=p.speed, contrast=p.contrast, threshold_sigma=p.threshold_sigma,
                          refractory_us=p.refractory_us, noise_hz=p.noise_hz, hot_pixels=p.hot_pixels,
                          hot_rate_hz=p.hot_rate_hz, step_us=p.step_us)
        yield from batches_by_time(chunks, p.batch_us, schema)


def batches_by_time(chunks, batch_us: int, schema) -> Iterator:
    """Re-cut time-ordered event chunks into batches covering [k*batch_us, (k+1)*batch_us)."""
    held = None
    for c in chunks:
        held = c if held is None else {k: np.concatenate([held[k], c[k]]) for k in c}
        if not len(held["t"]):
            continue
        # everything before the window holding the newest event is final
        edge = (int(held["t"][-1]) // batch_us) * batch_us
        cut = int(np.searchsorted(held["t"], edge, side="left"))
        start = 0
        while start < cut:
            w_end = (int(held["t"][start]) // batch_us + 1) * batch_us
            stop = min(cut, int(np.searchsorted(held["t"], w_end, side="left")))
            yield sch.events_batch(held["t"][start:stop], held["x"][start:stop], held["y"][start:stop],
                                   held["p"][start:stop], schema)
            start = stop
        held = {k: v[cut:] for k, v in held.items()}
    if held is not None and len(held["t"]):
        start = 0
        n = len(held["t"])
        while start < n:
            w_end = (int(held["t"][start]) // batch_us + 1) * batch_us
            stop = int(np.searchsorted(held["t"], w_end, side="left"))
            yield sch.events_batch(held["t"][start:stop], held["x"][start:stop], held["y"][start:stop],
                                   held["p"][start:stop], schema)
            start = stop
