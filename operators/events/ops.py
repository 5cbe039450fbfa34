"""Streaming event operators: filters, reshaping, slicing and accumulators.

Each operator turns Arrow columns into NumPy views, calls a kernel from
`operators.events.kernels` with the state it carries, and wraps the result. Any cutting
of a stream into batches gives the same output (tests/operators/events).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.events import kernels as K
from operators.events.columns import events_batch, polarity, txy
from pipeline import schemas as sch
from pipeline.errors import DataError, SchemaError
from pipeline.operator import Operator, Params, register


def _size(schema) -> tuple[int, int]:
    return int(sch.fact(schema, "width")), int(sch.fact(schema, "height"))


class EventOperator(Operator):
    """An operator on one `events` input; keeps the input's sensor size."""

    inputs = {"in": "events"}
    outputs = {"out": "events"}

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.width = self.height = None
        self.in_schema = None

    def schemas(self, inputs):
        schema = inputs["in"]
        sch.check("events", schema, f"node '{self.node}' input 'in'")
        self.in_schema = schema
        self.width, self.height = _size(schema)
        return {port: self.out_schema(schema) for port in self.outputs}

    def out_schema(self, schema):
        return schema

    def setup(self):
        K.warm_up()  # compile, or load from Numba's cache, before the first batch

    def _ensure(self, batch):
        if self.width is None:
            self.schemas({"in": batch.schema})

    def _validate(self, t, x, y):
        """Kernels index per-pixel maps: refuse events outside the sensor or out of order."""
        t_last = getattr(self, "t_last", K.NEVER)
        if K.all_valid(t, x, y, self.width, self.height, np.int64(t_last)):
            if len(t):
                self.t_last = int(t[-1])
            return
        bad = K.check_sorted_inside(t, x, y, self.width, self.height, np.int64(t_last))
        if bad >= 0:
            if t[bad] < (t[bad - 1] if bad else t_last):
                why = f"timestamp {int(t[bad])} µs goes backwards (after {int(t[bad - 1] if bad else t_last)} µs)"
            else:
                why = f"event at x={int(x[bad])}, y={int(y[bad])} lies outside the {self.width}x{self.height} sensor"
            raise DataError(f"node '{self.node}' event {bad} of its batch: {why}")
        if len(t):
            self.t_last = int(t[-1])


class FilterOperator(EventOperator):
    """A filter: a kernel decides which events to keep; counts what it drops."""

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.dropped = 0
        self.passed = 0

    def keep(self, batch) -> np.ndarray:
        raise NotImplementedError

    def kept(self, batch, t, x, y):
        """The kept events as columns (t, x, y, p); a filter with a fused kernel overrides this."""
        return K.compact(t, x, y, polarity(batch), self.keep(batch))

    def process(self, port, batch):
        self._ensure(batch)
        if batch.num_rows == 0:
            return batch
        t, x, y = txy(batch)
        self._validate(t, x, y)
        cols = self.kept(batch, t, x, y)
        self.passed += len(cols[0])
        self.dropped += batch.num_rows - len(cols[0])
        return events_batch(*cols, batch.schema)

    def result(self):
        return {"passed": self.passed, "dropped": self.dropped}


class BackgroundParams(Params):
    time_us: int = Field(5000, ge=1, description="a neighbour must have fired this recently")


@register
class BackgroundFilter(FilterOperator):
    """Background-activity filter: keeps events with a recent event at a neighbouring pixel."""

    name = "background_filter"
    Params = BackgroundParams

    def kept(self, batch, t, x, y):
        if getattr(self, "last", None) is None:
            self.last = np.full((self.height + 2, self.width + 2), K.NEVER, np.int64)  # bordered
        *cols, self.last = K.background_activity(t, x, y, polarity(batch), self.last, np.int64(self.params.time_us))
        return cols

    def state(self):
        return {"last": getattr(self, "last", None), "passed": self.passed, "dropped": self.dropped}

    def restore(self, state):
        self.last, self.passed, self.dropped = state["last"], state["passed"], state["dropped"]


class RefractoryParams(Params):
    refractory_us: int = Field(1000, ge=0)


@register
class RefractoryFilter(FilterOperator):
    """Refractory filter: a pixel stays silent for refractory_us after each kept event."""

    name = "refractory_filter"
    Params = RefractoryParams

    def keep(self, batch):
        if getattr(self, "last", None) is None:
            self.last = np.full((self.height, self.width), K.NEVER, np.int64)
        t, x, y = txy(batch)
        keep, self.last = K.refractory(t, x, y, self.last, np.int64(self.params.refractory_us))
        return keep

    def state(self):
        return {"last": getattr(self, "last", None), "passed": self.passed, "dropped": self.dropped}

    def restore(self, state):
        self.last, self.passed, self.dropped = state["last"], state["passed"], state["dropped"]


class HotPixelParams(Params):
    window_us: int = Field(100_000, ge=1, description="rate is counted in aligned windows of this length")
    max_rate_hz: float = Field(100.0, gt=0, description="pixels firing faster than this are hot")


@register
class HotPixelFilter(FilterOperator):
    """Hot-pixel filter: drops pixels whose rate (this or the last window) exceeds max_rate_hz."""

    name = "hot_pixel_filter"
    Params = HotPixelParams

    def keep(self, batch):
        if getattr(self, "win", None) is None:
            shape = (self.height, self.width)
            self.win = np.full(shape, -2, np.int64)
            self.count = np.zeros(shape, np.int64)
            self.prev = np.zeros(shape, np.int64)
        p = self.params
        max_count = np.int64(max(1, int(p.max_rate_hz * p.window_us / 1e6)))
        t, x, y = txy(batch)
        keep, self.win, self.count, self.prev = K.hot_pixel(t, x, y, self.win, self.count, self.prev,
                                                            np.int64(p.window_us), max_count)
        return keep

    def state(self):
        return {k: getattr(self, k, None) for k in ("win", "count", "prev", "passed", "dropped")}

    def restore(self, state):
        for k, v in state.items():
            setattr(self, k, v)


class RateLimitParams(Params):
    max_rate_hz: float = Field(10_000_000.0, gt=0, description="events per second of sensor time")
    window_us: int = Field(1000, ge=1, description="the cap is applied per aligned window")


@register
class RateLimit(FilterOperator):
    """Event-rate limiter: at most max_rate_hz events/s, the first of each window; counts drops."""

    name = "rate_limit"
    Params = RateLimitParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.cur_win, self.cur_count = -1, 0

    def keep(self, batch):
        p = self.params
        cap = np.int64(max(1, int(p.max_rate_hz * p.window_us / 1e6)))
        keep, self.cur_win, self.cur_count = K.rate_limit(sch.column(batch, "t"), np.int64(p.window_us), cap,
                                                          np.int64(self.cur_win), np.int64(self.cur_count))
        return keep

    def state(self):
        return {"cur_win": int(self.cur_win), "cur_count": int(self.cur_count), "passed": self.passed,
                "dropped": self.dropped}

    def restore(self, state):
        for k, v in state.items():
            setattr(self, k, v)


class RoiParams(Params):
    x: int = Field(0, ge=0)
    y: int = Field(0, ge=0)
    width: int = Field(..., ge=1)
    height: int = Field(..., ge=1)


@register
class RoiCrop(EventOperator):
    """Keeps events inside a rectangle and moves them to its origin (sensor size = the ROI)."""

    name = "roi_crop"
    Params = RoiParams

    def out_schema(self, schema):
        w, h = _size(schema)
        p = self.params
        if p.x + p.width > w or p.y + p.height > h:
            raise SchemaError(f"node '{self.node}': ROI x={p.x} y={p.y} {p.width}x{p.height} "
                              f"does not fit the {w}x{h} sensor")
        return sch.events_schema(p.width, p.height)

    def process(self, port, batch):
        self._ensure(batch)
        p = self.params
        t, x, y = txy(batch)
        keep = K.roi(x, y, p.x, p.y, p.width, p.height)
        t, x, y, pol = K.compact(t, x, y, polarity(batch), keep)
        x -= np.uint16(p.x)
        y -= np.uint16(p.y)
        return events_batch(t, x, y, pol, self.out_schema(batch.schema))


class DownsampleParams(Params):
    factor: int = Field(2, ge=1, description="integer divisor of x and y")


@register
class Downsample(EventOperator):
    """Spatial downsample: x // factor, y // factor (sensor size rounded up)."""

    name = "downsample"
    Params = DownsampleParams

    def out_schema(self, schema):
        w, h = _size(schema)
        f = self.params.factor
        return sch.events_schema(-(-w // f), -(-h // f))

    def process(self, port, batch):
        self._ensure(batch)
        f = np.uint16(self.params.factor)
        t, x, y = txy(batch)
        return events_batch(t, x // f, y // f, polarity(batch), self.out_schema(batch.schema))


class PolarityParams(Params):
    mode: Literal["merge", "split", "on", "off"] = "merge"


@register
class Polarity(EventOperator):
    """Polarity: merge (every event ON), split (ports `on` and `off`), or keep only on/off."""

    name = "polarity"
    Params = PolarityParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        if self.params.mode == "split":
            self.outputs = {"on": "events", "off": "events"}

    def process(self, port, batch):
        mode = self.params.mode
        if mode == "merge":
            return events_batch(*txy(batch), np.ones(batch.num_rows, bool), batch.schema)
        p = batch.column(batch.schema.get_field_index("p"))
        if mode == "on":
            return batch.filter(p)
        if mode == "off":
            return batch.filter(pc.invert(p))
        return [("on", batch.filter(p)), ("off", batch.filter(pc.invert(p)))]


# --- slicing -------------------------------------------------------------------------


class SliceTimeParams(Params):
    window_us: int = Field(10_000, ge=1)


@register
class SliceTime(EventOperator):
    """Re-cuts a stream into one batch per aligned window of window_us (held until it closes)."""

    name = "slice_time"
    Params = SliceTimeParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.held: list[pa.RecordBatch] = []

    def process(self, port, batch):
        if batch.num_rows == 0:
            return None
        w = self.params.window_us
        t = sch.column(batch, "t")
        out = []
        cuts = [0, *K.window_cuts(t, np.int64(w)).tolist(), batch.num_rows]
        if self.held and sch.column(self.held[-1], "t")[-1] // w != t[0] // w:
            out.append(self._take())
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            self.held.append(batch.slice(a, b - a))
            if b < batch.num_rows:
                out.append(self._take())
        return [("out", b) for b in out]

    def _take(self):
        held, self.held = self.held, []
        return pa.Table.from_batches(held).combine_chunks().to_batches()[0] if len(held) > 1 else held[0]

    def finish(self):
        return [("out", self._take())] if self.held else None

    def state(self):
        return list(self.held)

    def restore(self, state):
        self.held = list(state)


class SliceCountParams(Params):
    events: int = Field(10_000, ge=1, description="events per batch (the last one may be short)")


@register
class SliceCount(EventOperator):
    """Re-cuts a stream into batches of exactly `events` events."""

    name = "slice_count"
    Params = SliceCountParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.held: pa.Table | None = None

    def process(self, port, batch):
        table = pa.Table.from_batches([batch]) if self.held is None else pa.concat_tables(
            [self.held, pa.Table.from_batches([batch])])
        n = self.params.events
        full = table.num_rows // n * n
        out = [("out", table.slice(i, n).combine_chunks().to_batches()[0]) for i in range(0, full, n)]
        self.held = table.slice(full) if full < table.num_rows else None
        return out

    def finish(self):
        if self.held is None or self.held.num_rows == 0:
            return None
        return [("out", self.held.combine_chunks().to_batches()[0])]

    def state(self):
        return None if self.held is None else self.held.to_batches()

    def restore(self, state):
        self.held = None if state is None else pa.Table.from_batches(state)


# --- accumulators --------------------------------------------------------------------


class WindowParams(Params):
    window_us: int = Field(10_000, ge=1, description="one output per aligned window of this length")


class Accumulator(EventOperator):
    """Turns events into one tensor per aligned window; `t` of a frame is its window's start.

    `acc` is the tuple of arrays (and scalars) the kernel carries for the open window:
    kernel(t, x, y, p, window_us, cur_win, *acc) -> (done, first_win, cur_win, *acc).
    """

    outputs = {"out": "frames"}
    kernel = None

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.cur_win = -1
        self.acc = None
        self._frames_schema = None

    def schemas(self, inputs):
        self._frames_schema = None
        return super().schemas(inputs)

    def shape(self):
        raise NotImplementedError

    def fresh(self) -> tuple:
        return (np.zeros(self.shape(), self.acc_dtype),)

    acc_dtype = np.float32

    def open_window(self) -> np.ndarray:
        """The open window's tensor, (1, *shape), for `finish`: a view, since emitting converts it
        to float32 (a copy unless it already is) and `finish` starts a fresh map after it."""
        return self.acc[0][None]

    def out_schema(self, schema):
        return sch.frames_schema(self.shape(), "float32")

    def render(self, done, first):
        """Output tensors from the kernel's closed windows (default: as they are)."""
        return done

    def emit(self, done, first):
        if len(done) == 0:
            return None
        w = self.params.window_us
        t = (first + np.arange(len(done), dtype=np.int64)) * w
        if self._frames_schema is None:  # built once: a tensor schema costs ~0.1 ms
            self._frames_schema = schema = self.out_schema(self.in_schema)
            self._tensor_type = schema.field("frame").type
        frames = np.ascontiguousarray(self.render(done, first), dtype=np.float32)
        # the Arrow arrays wrap the kernel's buffer as it is (23 us a batch; sch.frames_batch,
        # which checks and converts its input, 75 us)
        values = pa.Array.from_buffers(pa.float32(), frames.size, [None, pa.py_buffer(frames)])
        storage = pa.Array.from_buffers(self._tensor_type.storage_type, len(frames), [None], children=[values])
        return pa.RecordBatch.from_arrays([pa.array(t), pa.ExtensionArray.from_storage(self._tensor_type, storage)],
                                          schema=self._frames_schema)

    def process(self, port, batch):
        self._ensure(batch)
        if self.acc is None:
            self.acc = self.fresh()
        if batch.num_rows == 0:
            return None
        t, x, y = txy(batch)
        self._validate(t, x, y)
        done, first, self.cur_win, *acc = type(self).kernel(
            t, x, y, polarity(batch), np.int64(self.params.window_us), np.int64(self.cur_win), *self.acc)
        self.acc = tuple(acc)
        return self.emit(done, first)

    def finish(self):
        if self.cur_win < 0:
            return None
        out = self.emit(self.open_window(), self.cur_win)
        self.cur_win, self.acc = -1, self.fresh()
        return out

    def state(self):
        return {"cur_win": int(self.cur_win), "acc": self.acc}

    def restore(self, state):
        self.cur_win, self.acc = state["cur_win"], state["acc"]


@register
class ToFrames(Accumulator):
    """Event counts per polarity into frames (2, H, W) float32: [0] OFF, [1] ON, per window."""

    name = "to_frames"
    Params = WindowParams
    kernel = K.frames

    def shape(self):
        return (2, self.height, self.width)

    def fresh(self):
        # uint8 counts (a small map stays in cache), what wrapped past 255 in int64, whether any did
        return (np.zeros(self.shape(), np.uint8), np.zeros(self.shape(), np.int64), False)

    def open_window(self):
        counts, spill, wrapped = self.acc
        out = np.empty((1, *self.shape()), np.float32)
        K.frame_counts(counts.reshape(-1), spill.reshape(-1), wrapped, out.reshape(-1))
        return out


class VoxelParams(WindowParams):
    bins: int = Field(5, ge=1, description="time bins per window")


@register
class ToVoxelGrid(Accumulator):
    """Voxel grids (bins, H, W) float32 per window, polarity-signed, bilinear in time."""

    name = "to_voxel_grid"
    Params = VoxelParams
    kernel = K.voxel_grid
    acc_dtype = np.float64

    def shape(self):
        return (self.params.bins, self.height, self.width)


class SurfaceParams(WindowParams):
    tau_us: float = Field(50_000.0, gt=0, description="exponential decay time constant")


@register
class ToTimeSurface(Accumulator):
    """Time surfaces (2, H, W) float32 sampled at each window's end: exp(-(t_end - t_last) / tau)."""

    name = "to_time_surface"
    Params = SurfaceParams
    kernel = K.last_times
    acc_dtype = np.int64

    def shape(self):
        return (2, self.height, self.width)

    def fresh(self):
        return (np.full(self.shape(), K.NEVER, np.int64),)

    def render(self, done, first):
        w = self.params.window_us
        ends = ((first + 1 + np.arange(len(done), dtype=np.int64)) * w)[:, None, None, None]
        age = (ends - done).astype(np.float64)
        return np.exp(-age / self.params.tau_us).astype(np.float32)

    def finish(self):
        if self.cur_win < 0:
            return None
        out = self.emit(self.open_window(), self.cur_win)
        self.cur_win = -1  # the running map stays: a surface remembers across a stream end
        return out
