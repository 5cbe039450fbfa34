"""A sink that keeps the last frames of an event stream and writes a PNG preview and a summary."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline import schemas as sch
from pipeline.errors import DataError
from pipeline.operator import Operator, Params, register


class PreviewParams(Params):
    png: str = Field("out/events/preview.png", description="PNG of the last frames")
    summary: str | None = Field("out/events/summary.json", description="JSON summary (null: none)")
    last: int = Field(8, ge=1, le=64, description="how many of the last frames the preview shows")


@register
class EventsPreviewSink(Operator):
    """Writes a PNG of the last frames (ON red, OFF blue) and a JSON summary of the stream."""

    name = "events_preview_sink"
    inputs = {"in": "frames"}
    Params = PreviewParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.frames = 0
        self.events = 0.0
        self.t_first = self.t_last = None
        self.busiest = 0.0

    def setup(self):
        self.kept = deque(maxlen=self.params.last)

    def process(self, port, batch):
        if batch.num_rows == 0:
            return
        t = sch.column(batch, "t")
        f = sch.frames_view(batch)
        per = f.reshape(len(f), -1).sum(axis=1)
        self.frames += len(f)
        self.events += float(per.sum())
        self.busiest = max(self.busiest, float(per.max()))
        self.t_first = int(t[0]) if self.t_first is None else self.t_first
        self.t_last = int(t[-1])
        busy = np.flatnonzero(per > 0)[-self.params.last :]  # the preview skips empty windows
        for i in busy:
            self.kept.append((int(t[i]), np.array(f[i])))

    def finish(self):
        self._write()

    def _write(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        png = Path(self.params.png)
        try:
            png.parent.mkdir(parents=True, exist_ok=True)
            n = max(1, len(self.kept))
            fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
            for ax, (t, f) in zip(axes[0], self.kept, strict=False):
                ax.imshow(_colour(f), interpolation="nearest")
                ax.set_title(f"{t / 1e3:.0f} ms", fontsize=8)
                ax.axis("off")
            for ax in axes[0][len(self.kept) :]:
                ax.axis("off")
            fig.tight_layout()
            fig.savefig(png, dpi=100)
            plt.close(fig)
            if self.params.summary:
                Path(self.params.summary).parent.mkdir(parents=True, exist_ok=True)
                Path(self.params.summary).write_text(json.dumps(self.result(), indent=2))
        except OSError as exc:
            raise DataError(f"events_preview_sink cannot write '{exc.filename}': {exc.strerror}") from None

    def result(self):
        return {"frames": self.frames, "events": int(self.events), "t_first_us": self.t_first,
                "t_last_us": self.t_last, "busiest_frame_events": int(self.busiest),
                "png": self.params.png, "summary": self.params.summary}


def _colour(frame: np.ndarray) -> np.ndarray:
    """An RGB image of a (2, H, W) count frame ([0] OFF blue, [1] ON red) or a (C, H, W) tensor."""
    if frame.ndim == 3 and frame.shape[0] == 2:
        scale = max(float(np.percentile(frame, 99.5)), 1.0)
        rgb = np.zeros(frame.shape[1:] + (3,))
        rgb[..., 0] = np.clip(frame[1] / scale, 0, 1)
        rgb[..., 2] = np.clip(frame[0] / scale, 0, 1)
        return rgb
    img = frame.reshape(-1, *frame.shape[-2:]).sum(axis=0)
    span = max(float(np.abs(img).max()), 1e-9)
    return np.repeat(((img / span + 1) / 2)[..., None], 3, axis=2)
