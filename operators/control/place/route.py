"""Place-recognition data without downloads: synthetic routes over shipped images, or user folders.

A route is a serpentine path over a mosaic of scikit-image's bundled sample images (no
download functions are used). Each place is one crop of the mosaic; a traversal renders
every place once with its own appearance: illumination (gain and gamma), contrast,
season-like colour shifts (per-channel gains before the grey conversion), blur, sensor
noise and a small viewpoint shift. Images are then reduced to 28x28 grey and patch
normalised in 7x7 patches as in Hussaini et al. (VPRSNN, "Ensembles of compact,
region-specific & regularized spiking neural networks for scalable place recognition").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                 "camera", "coins", "brick", "grass", "gravel", "moon", "horse", "clock", "page")
SIDE = 28
PATCH = 7


@dataclass(frozen=True)
class Appearance:
    """How strongly a traversal's look differs from the reference one (0 = identical)."""

    illumination: float = 0.35   # gain spread and gamma spread
    contrast: float = 0.3
    colour: float = 0.25         # per-channel gain spread (season-like)
    blur_px: float = 1.0
    noise: float = 0.04          # std of additive noise, image in [0, 1]
    shift_px: float = 3.0        # viewpoint shift, pixels of the mosaic crop


@lru_cache(maxsize=2)
def _mosaic(tile: int) -> np.ndarray:
    """Sample images as RGB floats in [0, 1], resized to `tile` x `tile`, tiled 5 wide."""
    import skimage.data as sd
    from skimage.color import gray2rgb
    from skimage.transform import resize

    tiles = []
    for name in SAMPLE_IMAGES:
        im = np.asarray(getattr(sd, name)(), dtype=np.float64)
        im = im / (255.0 if im.max() > 1.0 else 1.0)
        if im.ndim == 2:
            im = gray2rgb(im)
        tiles.append(resize(im[..., :3], (tile, tile), anti_aliasing=True))
    cols = 5
    rows = [np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(len(tiles) // cols)]
    return np.concatenate(rows, axis=0)


def patch_normalise(img: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Zero-mean unit-std per non-overlapping patch, mapped from [-2.5, 2.5] std to [0, 1]."""
    h, w = img.shape[-2:]
    x = img.reshape(img.shape[:-2] + (h // patch, patch, w // patch, patch)).astype(np.float64)
    mean = x.mean(axis=(-3, -1), keepdims=True)
    std = x.std(axis=(-3, -1), keepdims=True)
    z = (x - mean) / np.maximum(std, 1e-3)
    return np.clip((z + 2.5) / 5.0, 0.0, 1.0).reshape(img.shape).astype(np.float32)


def to_grey28(rgb: np.ndarray) -> np.ndarray:
    """RGB (or grey) image in [0, 1] -> 28x28 grey (area-averaged)."""
    from skimage.transform import resize

    g = rgb @ np.array([0.2125, 0.7154, 0.0721]) if rgb.ndim == 3 else rgb
    return resize(g, (SIDE, SIDE), anti_aliasing=True).astype(np.float32)


@dataclass(frozen=True)
class Route:
    """Place positions (top-left corners) on a mosaic; views are `crop` pixels square."""

    mosaic: np.ndarray
    corners: np.ndarray   # (n_places, 2) int: row, col
    crop: int

    @classmethod
    def make(cls, n_places: int, crop: int = 48, step: int = 24) -> Route:
        # Grow the mosaic so that the serpentine path has room for n_places crops.
        tile = 256
        while True:
            h_cells = (3 * tile - crop - 8) // step + 1
            w_cells = (5 * tile - crop - 8) // step + 1
            if h_cells * w_cells >= n_places:
                break
            tile += 64
        mosaic = _mosaic(tile)
        corners = []
        for r in range(h_cells):
            cols = range(w_cells) if r % 2 == 0 else range(w_cells - 1, -1, -1)
            corners.extend((4 + r * step, 4 + c * step) for c in cols)
        return cls(mosaic, np.array(corners[:n_places], dtype=np.int64), crop)

    def traversal(self, appearance: Appearance | None, seed: int) -> np.ndarray:
        """Render all places with one traversal's look: (n_places, 28, 28) float32 in [0, 1]."""
        from scipy.ndimage import gaussian_filter

        a = appearance or Appearance(0, 0, 0, 0, 0, 0)
        rng = np.random.default_rng(seed)
        # A traversal-wide condition (time of day, season) plus small per-frame jitter.
        gain0 = 1 + a.illumination * rng.uniform(-1, 1)
        gamma0 = np.exp(a.illumination * rng.uniform(-1, 1))
        chan0 = 1 + a.colour * rng.uniform(-1, 1, 3)
        out = np.empty((len(self.corners), SIDE, SIDE), np.float32)
        H, W = self.mosaic.shape[:2]
        for i, (r, c) in enumerate(self.corners):
            dr, dc = np.round(rng.uniform(-1, 1, 2) * a.shift_px).astype(int)
            r0 = int(np.clip(r + dr, 0, H - self.crop))
            c0 = int(np.clip(c + dc, 0, W - self.crop))
            v = self.mosaic[r0:r0 + self.crop, c0:c0 + self.crop]
            v = v * (chan0 * (1 + 0.3 * a.colour * rng.uniform(-1, 1, 3)))
            v = np.clip(v * gain0 * (1 + 0.2 * a.illumination * rng.uniform(-1, 1)), 0, 1) ** gamma0
            k = 1 + a.contrast * rng.uniform(-1, 1)
            v = np.clip((v - v.mean()) * k + v.mean(), 0, 1)
            g = to_grey28(v)
            if a.blur_px > 0:
                g = gaussian_filter(g, a.blur_px * rng.uniform(0.3, 1.0) * SIDE / self.crop * 2)
            g = g + rng.normal(0, a.noise, g.shape) if a.noise > 0 else g
            out[i] = np.clip(g, 0, 1)
        return out


def synthetic(n_places: int, seed: int = 0, appearance: Appearance | None = None) -> dict[str, np.ndarray]:
    """Reference, calibration and query traversals of one route, patch normalised."""
    route = Route.make(n_places)
    a = appearance or Appearance()
    ref = route.traversal(Appearance(0.05, 0.05, 0.05, 0.3, 0.01, 1.0), seed)
    cal = route.traversal(a, seed + 1)
    qry = route.traversal(a, seed + 2)
    places = np.arange(n_places)
    return {"reference": patch_normalise(ref), "calibration": patch_normalise(cal), "calibration_places": places,
            "query": patch_normalise(qry), "query_places": places}


def _folder(path: Path) -> np.ndarray:
    from skimage.io import imread

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
    if not files:
        raise DataError(f"image folder '{path}' holds no .png/.jpg/.bmp/.tif images")
    imgs = []
    for f in files:
        im = np.asarray(imread(f), dtype=np.float64)
        im = im / (255.0 if im.max() > 1.0 else 1.0)
        imgs.append(to_grey28(im[..., :3] if im.ndim == 3 else im))
    return np.stack(imgs)


def load_folders(root: str | Path, calibration_every: int = 5) -> dict[str, np.ndarray]:
    """A user's traversals: `root/reference/` and `root/query/`, same order (frame i = place i).

    A `root/calibration/` folder (same order) is used when present; otherwise every
    `calibration_every`-th query frame is held out for calibration and not scored.
    """
    root = Path(root)
    for sub in ("reference", "query"):
        if not (root / sub).is_dir():
            raise DataError(f"place dataset '{root}' has no '{sub}/' folder (expected reference/ and query/)")
    ref, qry = _folder(root / "reference"), _folder(root / "query")
    if len(ref) != len(qry):
        raise DataError(f"'{root}': {len(ref)} reference images but {len(qry)} query images; they must match in order")
    ref, qry = patch_normalise(ref), patch_normalise(qry)
    places = np.arange(len(ref))
    if (root / "calibration").is_dir():
        cal = patch_normalise(_folder(root / "calibration"))
        return {"reference": ref, "calibration": cal, "calibration_places": np.arange(len(cal)),
                "query": qry, "query_places": places}
    held = places % calibration_every == 0
    return {"reference": ref, "calibration": qry[held], "calibration_places": places[held],
            "query": qry[~held], "query_places": places[~held]}
