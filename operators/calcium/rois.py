"""ROI traces and dF/F: from given masks, or from masks found on a warm-up period.

Masks found on warm-up follow CaImAn's seeding idea: the local correlation image of the
high-passed warm-up movie marks somata; seeds are taken in decreasing correlation and
grown to the nearby pixels whose trace correlates with the seed's. Each trace is the
mask mean minus `neuropil` times the mean of a surrounding annulus.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from operators.calcium import samples
from operators.calcium.kernels import dff_block, local_correlation, roi_traces, window_percentile
from pipeline import schemas as sch
from pipeline.errors import DataError, SchemaError
from pipeline.operator import Operator, Params, register


def load_masks(path: str, shape: tuple[int, int], where: str) -> list[np.ndarray]:
    """Masks as flat pixel-index arrays, from a .npy of stacked (n, h, w) masks or of a
    label image (h, w) (0 = no ROI, label i = ROI i-1 in sorted label order)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{where}: cannot read masks '{path}': {exc}") from None
    got = arr.shape if arr.ndim == 2 else arr.shape[1:]
    if arr.ndim not in (2, 3) or tuple(got) != tuple(shape):
        raise SchemaError(f"{where}: masks '{path}' have shape {tuple(got)}, the frames are {tuple(shape)}: masks outside the field of view")
    if arr.ndim == 2:
        flat = np.asarray(arr).reshape(-1).astype(np.int64)
        order = np.argsort(flat, kind="stable")
        ids, starts = np.unique(flat[order], return_index=True)
        bounds = list(starts[1:]) + [len(flat)]
        pixels = [np.sort(order[a:b]) for i, a, b in zip(ids, starts, bounds, strict=True) if i > 0]
    else:
        pixels = [np.flatnonzero(m) for m in np.asarray(arr).reshape(len(arr), -1)]
    empty = [i for i, p in enumerate(pixels) if p.size == 0]
    if empty:
        raise SchemaError(f"{where}: masks '{path}' has empty mask(s) {empty[:5]}")
    return pixels


def to_pixels(masks: np.ndarray) -> list[np.ndarray]:
    """Dense (n, h, w) masks as flat pixel-index arrays."""
    return [np.flatnonzero(m) for m in masks.reshape(len(masks), -1)]


def to_labels(pixels: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel lists as a label image (ROI i -> label i + 1; later ROIs win overlaps)."""
    lab = np.zeros(int(np.prod(shape)), np.int32)
    for i, p in enumerate(pixels):
        lab[p] = i + 1
    return lab.reshape(shape)


def circle_masks(circles, shape: tuple[int, int], where: str) -> np.ndarray:
    """Masks from [y, x, radius] circles; a circle leaving the frame is an error."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i, (cy, cx, r) in enumerate(circles):
        if cy - r < 0 or cx - r < 0 or cy + r > h - 1 or cx + r > w - 1:
            raise SchemaError(f"{where}: rois[{i}] = [{cy}, {cx}, {r}] lies outside the {h}x{w} field of view")
        out.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    return to_pixels(np.array(out, bool).reshape(len(out), h, w))


def find_masks(movie: np.ndarray, n_rois: int, radius_px: float, min_corr: float = 0.2, grow_corr: float = 0.4) -> np.ndarray:
    """Up to `n_rois` soma masks from a (t, h, w) warm-up movie (see module docstring)."""
    from scipy.ndimage import uniform_filter1d

    movie = np.asarray(movie, np.float32)
    hp = movie - uniform_filter1d(movie, size=min(31, len(movie)), axis=0)
    cn = local_correlation(np.ascontiguousarray(hp))
    t, h, w = hp.shape
    z = hp - hp.mean(0)
    z /= np.sqrt((z**2).mean(0)) + 1e-9
    taken = np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    r_grow = int(np.ceil(1.6 * radius_px))
    masks = []
    for flat in np.argsort(cn, axis=None)[::-1]:
        if len(masks) == n_rois or cn.flat[flat] < min_corr:
            break
        cy, cx = divmod(int(flat), w)
        if taken[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2].any():
            continue
        y0, y1 = max(cy - 1, 0), min(cy + 2, h)
        x0, x1 = max(cx - 1, 0), min(cx + 2, w)
        seed = z[:, y0:y1, x0:x1].mean(axis=(1, 2))
        seed = (seed - seed.mean()) / (seed.std() + 1e-9)
        win = (slice(max(cy - r_grow, 0), min(cy + r_grow + 1, h)), slice(max(cx - r_grow, 0), min(cx + r_grow + 1, w)))
        corr = np.tensordot(seed, z[:, win[0], win[1]], axes=(0, 0)) / t
        near = (yy[win] - cy) ** 2 + (xx[win] - cx) ** 2 <= r_grow**2
        grown = (corr > grow_corr) & near & ~taken[win]
        if grown.sum() < max(4, 0.25 * np.pi * radius_px**2):
            taken[cy, cx] = True
            continue
        m = np.zeros((h, w), bool)
        m[win] = grown
        masks.append(m)
        # keep later seeds off this soma and its rim
        from scipy.ndimage import binary_dilation

        taken |= binary_dilation(m, iterations=2)
    return np.array(masks, bool).reshape(len(masks), h, w)


def trace_weights(pixels: list[np.ndarray], rings: list[np.ndarray], neuropil: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trace of ROI k, mean(mask) - neuropil * mean(annulus), as one CSR row of pixel
    indices and weights: (idx int32, ptr int64, weight float32)."""
    idx, ptr, weight = [], np.zeros(len(pixels) + 1, np.int64), []
    for k, (m, r) in enumerate(zip(pixels, rings, strict=True)):
        idx += [m, r]
        weight += [np.full(len(m), 1.0 / max(len(m), 1)), np.full(len(r), -neuropil / max(len(r), 1))]
        ptr[k + 1] = ptr[k] + len(m) + len(r)
    if not pixels:
        return np.zeros(0, np.int32), ptr, np.zeros(0, np.float32)
    return np.concatenate(idx).astype(np.int32), ptr, np.concatenate(weight).astype(np.float32)


def annuli(pixels: list[np.ndarray], shape: tuple[int, int], gap_px: int = 2, width_px: int = 6) -> list[np.ndarray]:
    """Neuropil annuli: a ring around each mask that avoids every mask (dilated by gap_px);
    computed in each mask's padded bounding box, so cost grows with ROI size, not frame size."""
    from scipy.ndimage import binary_dilation

    h, w = shape
    taken = np.zeros(h * w, bool)
    for p in pixels:
        taken[p] = True
    blocked = binary_dilation(taken.reshape(shape), iterations=gap_px)
    pad = gap_px + width_px + 1
    out = []
    for p in pixels:
        ys, xs = np.divmod(p, w)
        y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, h)
        x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, w)
        local = np.zeros((y1 - y0, x1 - x0), bool)
        local[ys - y0, xs - x0] = True
        inner = binary_dilation(local, iterations=gap_px)
        ring = binary_dilation(inner, iterations=width_px) & ~inner & ~blocked[y0:y1, x0:x1]
        ry, rx = np.nonzero(ring)
        out.append(np.sort((ry + y0) * w + rx + x0))
    return out


@register
class RoiTraces(Operator):
    """Per-ROI fluorescence traces (neuropil-corrected) from corrected frames."""

    name = "calcium_traces"
    inputs = {"in": "frames"}
    outputs = {"out": "samples"}

    class Params(Params):
        masks: str | None = Field(None, description=".npy masks (n,h,w) or label image (h,w)")
        rois: list[tuple[float, float, float]] | None = Field(None, description="[y, x, radius] circles")
        n_rois: int | None = Field(None, ge=1, description="ROIs to find on warm-up (when no masks)")
        warmup_frames: int = Field(450, ge=10)
        radius_px: float = Field(4.0, gt=1)
        min_corr: float = 0.2
        neuropil: float = Field(0.7, ge=0, le=1.5)
        rate_hz: float = Field(30.0, gt=0)
        save_masks: str | None = Field(None, description="write the masks in use here (.npy)")

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        p = self.params
        given = sum(x is not None for x in (p.masks, p.rois))
        if given > 1:
            raise ValueError("give either 'masks' or 'rois', not both")
        if given == 0 and p.n_rois is None:
            raise ValueError("give 'masks', 'rois', or 'n_rois' to find that many ROIs on warm-up")
        self.masks = None

    def _given(self, shape):
        p = self.params
        if p.masks is not None:
            return load_masks(p.masks, shape, self.node)
        if p.rois is not None:
            return circle_masks(p.rois, shape, self.node)
        return None

    def schemas(self, inputs):
        shape = tuple(sch.fact(inputs["in"], "shape") or ())
        if len(shape) != 2:
            raise SchemaError(f"{self.node}: expects 2-D frames, got shape {shape}")
        masks = self._given(shape)
        n = len(masks) if masks is not None else self.params.n_rois
        return {"out": sch.samples_schema([f"roi{i}" for i in range(n)], self.params.rate_hz, "a.u.")}

    def setup(self):
        self._schema = None
        self.buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self.found = None

    def _init(self, shape):
        """On the first batch: the output schema and, when given, the masks."""
        self._schema = self.schemas({"in": sch.frames_schema(shape)})["out"]
        self.n_out = len(self._schema) - 1
        masks = self._given(shape)
        if masks is not None:
            self._use(masks, shape)

    def _use(self, pixels, shape):
        self.masks = pixels
        if self.params.save_masks:
            np.save(self.params.save_masks, to_labels(pixels, shape))
        self.idx, self.ptr, self.weight = trace_weights(pixels, annuli(pixels, shape), self.params.neuropil)

    def traces(self, frames: np.ndarray) -> np.ndarray:
        out = np.zeros((len(frames), self.n_out), np.float32)
        flat = np.ascontiguousarray(frames).reshape(len(frames), -1)
        roi_traces(flat, self.idx, self.ptr, self.weight, out[:, : len(self.masks)])
        return out

    def process(self, port, batch):
        t = sch.column(batch, "t")
        frames = sch.frames_view(batch)
        if self._schema is None:
            self._init(frames.shape[1:])
        if self.masks is None:
            self.buffer.append((t.copy(), frames.copy()))
            if sum(len(b[0]) for b in self.buffer) < self.params.warmup_frames:
                return None
            return self._detect()
        return samples.batch(t, self.traces(frames), self._schema)

    def _detect(self):
        t = np.concatenate([b[0] for b in self.buffer])
        movie = np.concatenate([b[1] for b in self.buffer])
        self.buffer = []
        masks = find_masks(movie, self.params.n_rois, self.params.radius_px, self.params.min_corr)
        if len(masks) == 0:
            raise DataError(f"{self.node}: found no ROI in {len(movie)} warm-up frames (min_corr {self.params.min_corr})")
        self.found = len(masks)  # channels past `found` stay 0
        self._use(to_pixels(masks), movie.shape[1:])
        return samples.batch(t, self.traces(movie), self._schema)

    def finish(self):
        if self.masks is None and self.buffer:
            return self._detect()
        return None


@register
class DeltaFOverF(Operator):
    """dF/F with a running-percentile baseline F0 over a sliding window."""

    name = "calcium_dff"
    inputs = {"in": "samples"}
    outputs = {"out": "samples"}

    class Params(Params):
        window_frames: int = Field(300, ge=10)
        percentile: float = Field(8.0, ge=0, le=100)
        update_every: int = Field(10, ge=1, description="recompute F0 every this many frames")
        min_frames: int = Field(60, ge=2, description="frames held back to form the first F0")
        min_f0: float = Field(1e-3, gt=0, description="floor of F0 (guards dim or empty ROIs)")

    def schemas(self, inputs):
        return {"out": inputs["in"]}

    def setup(self):
        self.ring = None
        self.filled = 0
        self.pos = 0
        self.count = 0
        self.f0 = None
        self.held: list[tuple[np.ndarray, np.ndarray]] = []

    def _fill(self, data):
        """Push rows into the ring without scaling them (the first F0 is still forming)."""
        for row in data:
            self.ring[self.pos] = row
            self.pos = (self.pos + 1) % len(self.ring)
            self.filled = min(self.filled + 1, len(self.ring))
            self.count += 1

    def _release(self):
        """The held rows scaled by the first F0."""
        window_percentile(self.ring, self.filled, self.params.percentile, self.f0)
        t = np.concatenate([h[0] for h in self.held])
        data = np.concatenate([h[1] for h in self.held])
        self.held = []
        return samples.batch(t, (data - self.f0) / np.maximum(self.f0, self.params.min_f0), self._schema)

    def process(self, port, batch):
        p = self.params
        t = sch.column(batch, "t")
        data = samples.matrix(batch).astype(np.float64)
        self._schema = batch.schema
        if self.ring is None:
            self.ring = np.zeros((p.window_frames, data.shape[1]))
            self.f0 = np.zeros(data.shape[1])
        if np.isnan(data).any():
            raise DataError(f"{self.node}: NaN in the traces at t={int(t[np.isnan(data).any(1)][0])} µs; correct NaN frames upstream (calcium_motion on_nan: fill)")
        if self.count < p.min_frames:
            self._fill(data)
            self.held.append((t, data))
            return self._release() if self.count >= p.min_frames else None
        out = np.empty_like(data)
        self.pos, self.filled, self.count = dff_block(data, self.ring, self.pos, self.filled, self.count, self.f0, p.percentile, p.update_every, p.min_f0, out)
        return samples.batch(t, out, batch.schema)

    def finish(self):
        return self._release() if self.held else None
