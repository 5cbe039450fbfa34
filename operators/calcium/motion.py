"""Streaming rigid motion correction by phase correlation against a running template.

The displacement of each frame is the peak of the (low-passed) phase correlation with
the template, refined to sub-pixel by a Gaussian three-point fit (Foroosh et al. 2002,
IEEE TIP); the frame is then shifted back by bilinear interpolation. The template starts
as the mean of the first frames and follows the corrected stream as a running mean.

This is also where the chain guards its timing: a gap in timestamps (a dropped frame) or
a frame with NaNs is either an error or filled and flagged on the `shifts` stream
(flag 1 = frame inserted for a gap, 2 = NaN frame replaced), never passed on silently.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from scipy import fft as sfft

from operators.calcium.kernels import blend, shift_bilinear, subpixel_peak, whitened_cross
from pipeline import schemas as sch
from pipeline.errors import DataError, SchemaError
from pipeline.operator import Operator, Params, register

FLAG_OK, FLAG_GAP, FLAG_NAN = 0.0, 1.0, 2.0


@register
class MotionCorrect(Operator):
    """Rigid, sub-pixel motion correction; emits corrected frames and (dy, dx, flag)."""

    name = "calcium_motion"
    inputs = {"in": "frames"}
    outputs = {"out": "frames", "shifts": "samples"}

    class Params(Params):
        max_shift_px: int = Field(8, ge=1)
        template_frames: int = Field(20, ge=1, description="frames averaged for the first template")
        template_alpha: float = Field(0.05, gt=0, le=1, description="running-mean weight of a new frame")
        template_every: int = Field(10, ge=1, description="re-transform the template this often")
        crop_px: int | None = Field(None, ge=16, description="estimate on a central crop (speed)")
        lowpass_px: float = Field(1.0, ge=0, description="Gaussian smoothing of the correlation peak")
        rate_hz: float | None = Field(None, gt=0, description="frame rate; default: from the first two timestamps")
        on_gap: Literal["error", "fill"] = "fill"
        on_nan: Literal["error", "fill"] = "fill"
        workers: int = Field(1, ge=1, description="FFT threads")

    def schemas(self, inputs):
        s = inputs["in"]
        shape = tuple(sch.fact(s, "shape") or ())
        if len(shape) != 2:
            raise SchemaError(f"{self.node}: expects 2-D frames, got shape {shape}")
        if self.params.crop_px and self.params.crop_px > min(shape):
            raise SchemaError(f"{self.node}: crop_px {self.params.crop_px} exceeds the frame {shape}")
        return {"out": sch.frames_schema(shape, "float32"), "shifts": sch.samples_schema(["dy", "dx", "flag"], self.params.rate_hz or 30.0, "px")}

    def setup(self):
        self.template = None
        self.template_f = None
        self.pending: list[tuple[int, np.ndarray]] = []
        self.n = 0
        self.last_t = None
        self.period_us = 1e6 / self.params.rate_hz if self.params.rate_hz else None
        self.counts = {"frames": 0, "gaps_filled": 0, "nan_frames": 0}
        self._lp = None
        self._out_schema = None

    # -- estimation ----------------------------------------------------------------
    def _region(self, frame):
        c = self.params.crop_px
        if not c:
            return frame
        h, w = frame.shape
        y0, x0 = (h - c) // 2, (w - c) // 2
        return frame[y0 : y0 + c, x0 : x0 + c]

    def _set_template(self, template):
        self.template = np.array(template, np.float32)
        # the region's mean only enters the zero-frequency bin: zero it instead of
        # subtracting the mean from every pixel
        self.template_f = np.conj(sfft.rfft2(self._region(self.template), workers=self.params.workers))
        self.template_f[0, 0] = 0
        if self._lp is None:
            h, w = self._region(self.template).shape
            fy = sfft.fftfreq(h)[:, None]
            fx = sfft.rfftfreq(w)[None, :]
            s = self.params.lowpass_px
            self._lp = np.exp(-2 * (np.pi * s) ** 2 * (fy**2 + fx**2)).astype(np.float32)
            self._cross = np.empty(self.template_f.shape, np.complex64)

    def estimate(self, frame) -> tuple[float, float]:
        """Displacement (dy, dx) of `frame`'s content relative to the template."""
        region = self._region(frame)
        f = sfft.rfft2(region, workers=self.params.workers)
        f[0, 0] = 0
        whitened_cross(f, self.template_f, self._lp, self._cross)
        corr = sfft.irfft2(self._cross, s=region.shape, workers=self.params.workers)
        return subpixel_peak(corr, self.params.max_shift_px)

    # -- streaming -----------------------------------------------------------------
    def process(self, port, batch):
        t = sch.column(batch, "t")
        frames = sch.frames_view(batch)
        out = []
        for i in range(len(t)):
            out.extend(self._admit(int(t[i]), frames[i]))
        return self._emit(out)

    def _admit(self, t: int, frame: np.ndarray):
        """Check timing and content of one frame; return the frames ready to correct."""
        self.counts["frames"] += 1
        ready = []
        if self.last_t is not None:
            if self.period_us is None:
                self.period_us = float(t - self.last_t)
            gap = (t - self.last_t) / self.period_us
            if gap < 0.5:
                raise DataError(f"{self.node}: timestamps go back or repeat at t={t} µs (previous {self.last_t} µs)")
            if gap > 1.5:
                missing = int(round(gap)) - 1
                if self.params.on_gap == "error":
                    raise DataError(f"{self.node}: {missing} frame(s) missing before t={t} µs (gap {t - self.last_t} µs, period {self.period_us:.0f} µs)")
                self.counts["gaps_filled"] += missing
                for j in range(1, missing + 1):
                    ready.append((int(round(self.last_t + j * self.period_us)), None, FLAG_GAP))
        flag = FLAG_OK
        frame = np.asarray(frame, dtype=np.float32)
        if not np.isfinite(frame).all():
            if self.params.on_nan == "error":
                raise DataError(f"{self.node}: frame at t={t} µs has {int((~np.isfinite(frame)).sum())} non-finite pixels")
            self.counts["nan_frames"] += 1
            frame, flag = None, FLAG_NAN
        ready.append((t, frame, flag))
        self.last_t = t
        return ready

    def _emit(self, ready):
        if self.template is None:
            self.pending.extend(ready)
            good = [f for _, f, _ in self.pending if f is not None]
            if len(good) < self.params.template_frames:
                return None
            self._set_template(np.mean(good, axis=0))
            ready, self.pending = self.pending, []
        n = len(ready)
        if n == 0:
            return None
        shape = self.template.shape
        t_out = np.empty(n, np.int64)
        frames_out = np.empty((n,) + shape, np.float32)
        shifts = np.zeros((n, 3), np.float32)
        prev = None
        for i, (t, frame, flag) in enumerate(ready):
            t_out[i] = t
            if frame is None:  # gap or NaN frame: carry the last corrected frame (or template)
                frames_out[i] = prev if prev is not None else self.template
                shifts[i, 2] = flag
                continue
            dy, dx = self.estimate(frame)
            shift_bilinear(frame, dy, dx, frames_out[i])
            shifts[i] = (dy, dx, flag)
            prev = frames_out[i]
            blend(self.template, frames_out[i], self.params.template_alpha)
            self.n += 1
            if self.n % self.params.template_every == 0:
                self._set_template(self.template)
        if self._out_schema is None:
            self._out_schema = self.schemas({"in": sch.frames_schema(shape)})
        return [
            ("out", sch.frames_batch(t_out, frames_out, self._out_schema["out"])),
            ("shifts", sch.samples_batch(t_out, shifts, self._out_schema["shifts"])),
        ]

    def finish(self):
        if self.template is None and self.pending:
            good = [f for _, f, _ in self.pending if f is not None]
            if not good:
                raise DataError(f"{self.node}: no finite frame in the whole stream")
            self._set_template(np.mean(good, axis=0))
            ready, self.pending = self.pending, []
            return self._emit(ready)
        return None

    def state(self):
        return {"counts": dict(self.counts), "template": None if self.template is None else self.template.copy(), "n": self.n, "last_t": self.last_t}

    def restore(self, state):
        self.counts = dict(state["counts"])
        self.n, self.last_t = state["n"], state["last_t"]
        if state["template"] is not None:
            self._set_template(state["template"])
