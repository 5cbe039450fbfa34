"""Calcium-imaging sources: TIFF stacks, HDF5 movies and the synthetic generator.

All three stream a `frames` stream, `batch_frames` frames per batch, paced by their
timestamps (`pacing: realtime`) or as fast as possible. Files are read lazily (a TIFF is
memory-mapped when its pages are contiguous and uncompressed; HDF5 reads by slices), so a
movie larger than memory streams.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from operators.calcium.synth import MovieParams, generate
from pipeline import schemas as sch
from pipeline.errors import DataError, SchemaError
from pipeline.operator import Source, SourceParams, register


class FileParams(SourceParams):
    path: str = Field(..., description="the movie file")
    rate_hz: float = Field(30.0, gt=0, description="frame rate when the file has no timestamps")
    shape: tuple[int, int] | None = Field(None, description="expected (height, width); checked")
    dtype: str | None = Field(None, description="expected pixel dtype; checked")
    batch_frames: int = Field(1, ge=1)
    max_frames: int | None = Field(None, ge=1)


def _check_layout(node: str, path: str, shape, dtype, want_shape, want_dtype) -> None:
    if len(shape) != 3:
        raise SchemaError(f"{node}: '{path}' holds an array of shape {tuple(shape)}, expected (frames, height, width)")
    if want_shape is not None and tuple(shape[1:]) != tuple(want_shape):
        raise SchemaError(f"{node}: '{path}' has frames of {tuple(shape[1:])}, the config expects shape {tuple(want_shape)}")
    if want_dtype is not None and np.dtype(dtype) != np.dtype(want_dtype):
        raise SchemaError(f"{node}: '{path}' has pixels of dtype {np.dtype(dtype)}, the config expects {np.dtype(want_dtype)}")


class _FileSource(Source):
    outputs = {"out": "frames"}

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self._data = None
        self._t = None

    def _layout(self) -> tuple[tuple[int, ...], np.dtype]:
        raise NotImplementedError

    def schemas(self, inputs):
        p = self.params
        if not Path(p.path).exists():
            raise SchemaError(f"{self.node}: movie file '{p.path}' does not exist")
        shape, dtype = self._layout()
        _check_layout(self.node, p.path, shape, dtype, p.shape, p.dtype)
        return {"out": sch.frames_schema(tuple(shape[1:]), dtype)}

    def generate(self):
        p = self.params
        schema = self.schemas({})["out"]
        n = len(self._data)
        if p.max_frames:
            n = min(n, p.max_frames)
        t = self._t if self._t is not None else np.round(np.arange(n) * 1e6 / p.rate_hz).astype(np.int64)
        for a in range(0, n, p.batch_frames):
            b = min(n, a + p.batch_frames)
            yield sch.frames_batch(t[a:b], np.asarray(self._data[a:b]), schema)


@register
class TiffSource(_FileSource):
    """Streams a (multi-page, possibly BigTIFF) TIFF stack, memory-mapped when possible."""

    name = "calcium_tiff"

    class Params(FileParams):
        timestamps: str | None = Field(None, description=".npy of per-frame t in µs (optional)")

    def _layout(self):
        import tifffile

        try:
            with tifffile.TiffFile(self.params.path) as tf:
                series = tf.series[0]
                shape, dtype = series.shape, series.dtype
        except Exception as exc:  # tifffile raises several types for non-TIFFs
            raise SchemaError(f"{self.node}: '{self.params.path}' is not a readable TIFF ({exc})") from None
        if len(shape) == 2:
            shape = (1,) + tuple(shape)
        return tuple(shape), dtype

    def setup(self):
        import tifffile

        shape, _ = self._layout()
        try:
            data = tifffile.memmap(self.params.path, mode="r")
        except (ValueError, OSError):
            data = tifffile.imread(self.params.path, aszarr=False)  # compressed: read once
        self._data = np.asarray(data).reshape(shape) if data.ndim == 2 else data
        if self.params.timestamps:
            self._t = np.load(self.params.timestamps).astype(np.int64)
            if len(self._t) != len(self._data):
                raise DataError(
                    f"'{self.params.timestamps}' has {len(self._t)} timestamps for "
                    f"{len(self._data)} frames in '{self.params.path}'"
                )


@register
class Hdf5Source(_FileSource):
    """Streams a movie dataset from an HDF5 file, with its `t_us` timestamps if present."""

    name = "calcium_hdf5"

    class Params(FileParams):
        dataset: str = "mov"
        t_dataset: str | None = Field("t_us", description="timestamps dataset (µs), if any")

    def _open(self):
        import h5py

        try:
            f = h5py.File(self.params.path, "r")
        except OSError as exc:
            raise SchemaError(f"{self.node}: '{self.params.path}' is not a readable HDF5 file ({exc})") from None
        if self.params.dataset not in f:
            f.close()
            raise SchemaError(f"{self.node}: '{self.params.path}' has no dataset '{self.params.dataset}' (has {list(f)})")
        return f

    def _layout(self):
        with self._open() as f:
            d = f[self.params.dataset]
            return tuple(d.shape), d.dtype

    def setup(self):
        self._file = self._open()
        self._data = self._file[self.params.dataset]
        td = self.params.t_dataset
        if td and td in self._file:
            self._t = self._file[td][:].astype(np.int64)
            if len(self._t) != len(self._data):
                raise DataError(f"'{self.params.path}': {len(self._t)} timestamps in '{td}' for {len(self._data)} frames")

    def close(self):
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()


@register
class SyntheticMovieSource(Source):
    """A synthetic two-photon movie with ground truth (see operators.calcium.synth)."""

    name = "calcium_synthetic"
    outputs = {"out": "frames"}

    class Params(MovieParams, SourceParams):
        batch_frames: int = Field(1, ge=1)

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.movie = None

    def schemas(self, inputs):
        return {"out": sch.frames_schema((self.params.height, self.params.width), "float32")}

    def setup(self):
        fields = MovieParams.model_fields
        self.movie = generate(MovieParams(**{k: getattr(self.params, k) for k in fields}))

    def generate(self):
        schema = self.schemas({})["out"]
        m, step = self.movie, self.params.batch_frames
        for a in range(0, len(m.frames), step):
            yield sch.frames_batch(m.t_us[a : a + step], m.frames[a : a + step], schema)
