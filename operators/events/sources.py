"""Event-camera sources: AEDAT4 files (aedat), other event files (faery), UDP; a UDP sink.

AEDAT4 is read with `aedat.Decoder` (iniVation's container: an XML description of the
streams, then LZ4/Zstd-compressed FlatBuffer packets). Every packet is checked before it
leaves: coordinates inside the sensor and timestamps that never go backwards. A bad
packet raises a DataError naming the file and the packet index, or, with
`on_error: skip`, is dropped and counted in the source's `skipped_packets`.

UDP wire format (faery's `t64_x16_y16_on8`, so `faery` can stream into a pipeline): each
datagram is a whole number of 13-byte little-endian records, packed without padding:
`t` uint64 µs, `x` uint16, `y` uint16, `on` uint8 (1 = ON). No header; the sensor size is
a parameter at both ends. A datagram whose length is not a multiple of 13 is bad input.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from operators.events import kernels as K
from operators.events.columns import events_batch
from operators.events.synthetic import GESTURES, gesture_recording
from pipeline import schemas as sch
from pipeline.errors import DataError, LinkError
from pipeline.operator import Operator, Params, Source, SourceParams, register

UDP_DTYPE = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "u1")])
IMU_CHANNELS = ("accelerometer_x", "accelerometer_y", "accelerometer_z",
                "gyroscope_x", "gyroscope_y", "gyroscope_z", "temperature",
                "magnetometer_x", "magnetometer_y", "magnetometer_z")
IMU_UNITS = ("g", "g", "g", "deg/s", "deg/s", "deg/s", "degC", "uT", "uT", "uT")
# an AEDAT4 frame's own times beside `t` (the frame's timestamp): frame start/end and exposure
# start/end, µs. dv-processing's Frame reports exposure_begin_t as its timestamp.
FRAME_TIMES = ("begin_t", "end_t", "exposure_begin_t", "exposure_end_t")


def aedat_frames_schema(width: int, height: int):
    """The AEDAT4 source's frames: `t` and a uint8 luminance `frame`, then FRAME_TIMES."""
    base = sch.frames_schema((height, width), "uint8")
    for name in FRAME_TIMES:
        base = base.append(pa.field(name, pa.int64()))
    return base


def check_events(t: np.ndarray, x: np.ndarray, y: np.ndarray, width: int, height: int, t_last: int,
                 first: int = 0) -> str | None:
    """What is wrong with one packet of events, as a phrase, or None when it is fine.

    `first` is the file-wide index of the packet's first event, so the phrase can name the event.
    """
    if len(t) == 0:
        return None
    if int(t[0]) < t_last:
        return f"timestamps go backwards ({int(t[0])} µs after {t_last} µs)"
    if len(t) > 1:
        d = np.diff(t.astype(np.int64))
        if d.min() < 0:
            i = int(np.argmin(d))
            return f"timestamps go backwards ({int(t[i + 1])} µs after {int(t[i])} µs)"
    out = np.flatnonzero((x >= width) | (y >= height))
    if len(out):
        i = int(out[0])
        return (f"coordinates outside the {width}x{height} sensor: event {first + i} at x={int(x[i])}, y={int(y[i])} "
                f"({len(out)} of the packet's {len(t)} events outside)")
    return None


# Prophesee RAW headers (`% key value` lines) name the sensor's geometry in newer files
# (`% geometry 1280x720`, `% format EVT3;height=720;width=1280`); older ones (Metavision 2.x and
# before) only name the HAL plugin or the sensor generation. Sizes from Prophesee's sensor list:
# Gen3 VGA (CD) 640x480, Gen3 ATIS 480x360, Gen3.1 VGA 640x480, Gen4/Gen4.1 and IMX636/IMX646 HD
# 1280x720, GenX320 320x320. Order matters: the first pattern found in the plugin name wins.
PROPHESEE_PLUGINS = (("genx320", (320, 320)), ("imx636", (1280, 720)), ("imx646", (1280, 720)),
                     ("gen41", (1280, 720)), ("gen4", (1280, 720)), ("atis", (480, 360)),
                     ("gen31", (640, 480)), ("gen3", (640, 480)))
PROPHESEE_GENERATIONS = {"3.0": (640, 480), "3.1": (640, 480), "4.0": (1280, 720), "4.1": (1280, 720)}


def raw_header(path) -> dict[str, str]:
    """The `% key value` lines at the top of a Prophesee RAW file (empty for a file without them)."""
    out = {}
    with open(path, "rb") as f:
        while True:
            line = f.readline(4096)
            if not line.startswith(b"%"):
                break
            text = line[1:].decode("latin-1").strip()
            if text == "end":
                break
            key, _, value = text.partition(" ")
            out[key] = value.strip()
    return out


def prophesee_geometry(header: dict[str, str]) -> tuple[tuple[int, int], str] | None:
    """((width, height), where it came from) for a RAW header, or None when it does not say."""
    import re

    if "geometry" in header:
        m = re.fullmatch(r"(\d+)\s*x\s*(\d+)", header["geometry"])
        if m:
            return (int(m[1]), int(m[2])), "header geometry"
    fmt = dict(kv.split("=", 1) for kv in header.get("format", "").split(";")[1:] if "=" in kv)
    if "width" in fmt and "height" in fmt:
        return (int(fmt["width"]), int(fmt["height"])), "header format"
    plugin = header.get("plugin_name", "").lower()
    for key, size in PROPHESEE_PLUGINS:
        if key in plugin:
            return size, f"plugin {header['plugin_name']}"
    gen = header.get("sensor_generation", "")
    if gen in PROPHESEE_GENERATIONS:
        return PROPHESEE_GENERATIONS[gen], f"sensor generation {gen}"
    return None


# Each batch costs a fixed ~0.2 ms in Arrow wrapping here and a call in every downstream
# operator, and interleaved with decoding that Python runs several times slower than in
# isolation. On a 5 M-event LZ4 file, 65,536 -> 262,144 took the source's overhead over
# the bare decoder from 35% to 27% and decode -> background filter -> frames from 11.2 to
# 13.1 M ev/CPU-s; larger batches gained little more (14.7 at 1 M). A batch is then 3.4 MB.
DEFAULT_BATCH_EVENTS = 262_144
_RECORD = np.dtype({"names": ["t", "x", "y", "on"], "formats": ["<u8", "<u2", "<u2", "u1"], "offsets": [0, 8, 10, 12],
                    "itemsize": 13})


def _packed(d: np.dtype) -> bool:
    """Whether records of dtype `d` are laid out as `kernels.append_records` reads them."""
    f = d.fields or {}
    return (d.itemsize == K.RECORD_BYTES and all(k in f for k in ("t", "x", "y", "on"))
            and [f[k][:2] for k in ("t", "x", "y")] == [(np.dtype("<u8"), 0), (np.dtype("<u2"), 8), (np.dtype("<u2"), 10)]
            and f["on"][1] == 12 and f["on"][0].itemsize == 1)


def _repack(records: np.ndarray) -> np.ndarray:
    out = np.empty(len(records), _RECORD)
    for k in ("t", "x", "y", "on"):
        out[k] = records[k]
    return out


class _Batcher:
    """Packs decoded packets into preallocated columns and cuts them into Arrow batches.

    Batches hold `batch_events` events, or one aligned window of `batch_us`, or (neither
    given) DEFAULT_BATCH_EVENTS events: coalescing the decoder's small packets keeps the
    per-batch cost (Arrow wrapping, every downstream operator's call) off the per-event
    budget. Each packet is checked and copied in one Numba pass (`kernels.append_records`);
    a bad packet is refused whole and leaves nothing behind. Emitted batches are views of
    columns that are never written again: the next events go to fresh columns.
    """

    def __init__(self, schema, batch_us: int | None, batch_events: int | None):
        self.schema = schema
        self.width, self.height = sch.fact(schema, "width"), sch.fact(schema, "height")
        self.batch_us = batch_us
        self.batch_events = None if batch_us else (batch_events or DEFAULT_BATCH_EVENTS)
        self.t_last = 0
        self.n = 0
        self.taken = 0  # events accepted so far, over all batches (names a bad event's index)
        self.due = False  # a batch is complete: call ready()
        self.layout = None  # the records' dtype, once checked (a decoder keeps one; checking costs µs)
        # windows start at 65,536 events and grow when one needs more
        self._fresh((self.batch_events or 65_536) + 8192)

    def _fresh(self, cap: int, keep_from: int | None = None):
        """New columns for `cap` events (one block); the events from `keep_from` on move over."""
        block = np.empty(K.RECORD_BYTES * cap, np.uint8)
        new = K.column_views(block, cap)
        if keep_from is not None:
            m = self.n - keep_from
            for a, b in zip(new, self.cols, strict=True):
                a[:m] = b[keep_from : self.n]
            self.n = m
        else:
            self.n = 0
        self.cap, self.block, self.cols = cap, block, new
        self._set_due()

    def _set_due(self):
        if self.n == 0:
            self.due = False
        elif self.batch_events is not None:
            self.due = self.n >= self.batch_events
        else:  # a window is complete once an event of a later window has arrived
            self.due = self.t_last // self.batch_us > int(self.cols[0][0]) // self.batch_us

    def append(self, records: np.ndarray) -> bool:
        """Checks and takes one packet of records; False (and nothing taken) when it is bad.

        Called once per decoder packet (about 4,096 events), so every Python step counts:
        interleaved with decoding, this method's Python runs at a third of its isolated speed.
        """
        k = len(records)
        if k == 0:
            return True
        n = self.n
        if n + k > self.cap:
            self._fresh(max(2 * self.cap, n + k), keep_from=0)
            n = self.n
        if records.dtype != self.layout:  # `!=` is cheap when the dtype is the same object
            if not _packed(records.dtype):
                records = _repack(records)
            else:
                self.layout = records.dtype
        try:  # a uint8 view without `view`'s structured-dtype checks (0.8 vs 2 us)
            raw = np.frombuffer(records, np.uint8)
        except (ValueError, BufferError):  # not contiguous
            raw = np.frombuffer(_repack(records), np.uint8)
        if not K.append_records(raw, self.block, self.cap, n, self.width, self.height, self.t_last):
            return False
        self.n = n = n + k
        self.taken += k
        self.t_last = int(self.cols[0][n - 1])
        if self.batch_events is not None:
            self.due = n >= self.batch_events
        else:
            self._set_due()
        return True

    def refusal(self, records: np.ndarray) -> str:
        """Why `append` refused `records` (it leaves `t_last` as it was): the slow check, once per bad packet."""
        t = records["t"].astype(np.int64)
        why = check_events(t, records["x"], records["y"], self.width, self.height, self.t_last, self.taken)
        self.taken += len(records)  # the refused packet's events still count in the file's event index
        return why or "bad event"

    def _batch(self, a: int, b: int):
        t, x, y, p = self.cols
        return events_batch(t[a:b], x[a:b], y[a:b], p[a:b], self.schema)

    def ready(self) -> Iterator:
        """The batches that are complete now (check `due` first: this is the slow path)."""
        if self.batch_events is not None:
            whole = self.n // self.batch_events * self.batch_events
            if whole == 0:
                return
            for a in range(0, whole, self.batch_events):
                yield self._batch(a, a + self.batch_events)
        else:
            # a window is complete once an event of a later window has arrived
            t = self.cols[0]
            edge = int(t[self.n - 1]) // self.batch_us * self.batch_us
            whole = int(np.searchsorted(t[: self.n], edge, side="left"))
            if whole == 0:
                return
            yield from self._windows(whole)
        self._fresh(self.cap, keep_from=whole)

    def flush(self) -> Iterator:
        if self.n == 0:
            return
        if self.batch_events is not None:
            for a in range(0, self.n, self.batch_events):
                yield self._batch(a, min(a + self.batch_events, self.n))
        else:
            yield from self._windows(self.n)
        self._fresh(self.cap)

    def _windows(self, stop_at: int) -> Iterator:
        t = self.cols[0][:stop_at]
        start = 0
        while start < stop_at:
            w_end = (int(t[start]) // self.batch_us + 1) * self.batch_us
            stop = int(np.searchsorted(t, w_end, side="left"))
            yield self._batch(start, stop)
            start = stop


# --- AEDAT4 --------------------------------------------------------------------------


class Aedat4Params(SourceParams):
    path: str = Field(..., description="AEDAT4 file to read")
    batch_us: int | None = Field(None, ge=1, description="cut batches at multiples of this sensor time")
    batch_events: int | None = Field(None, ge=1, description="or: batches of this many events")
    on_error: Literal["raise", "skip"] = "raise"
    synthesize_if_missing: bool = Field(False, description="write a synthetic gesture recording when path is absent")
    synth_width: int = Field(64, ge=1, le=65535, description="sensor size of a synthesised recording")
    synth_height: int = Field(64, ge=1, le=65535)
    synth_gestures: int = Field(4, ge=1, description="gestures in a synthesised recording")
    synth_seed: int = 0

    @model_validator(mode="after")
    def _one_batching(self):
        if self.batch_us is not None and self.batch_events is not None:
            raise ValueError("give batch_us or batch_events, not both")
        return self


@register
class Aedat4Source(Source):
    """Reads an AEDAT4 file: events on `out`, frames, IMU and triggers on their own ports."""

    name = "aedat4_source"
    outputs = {"out": "events", "frames": "frames", "imu": "samples", "triggers": "commands"}
    Params = Aedat4Params

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.skipped_packets = 0
        self.first_skip: str | None = None  # "packet N: why" of the first one skipped
        self.packets = 0
        self.events = 0

    def _ensure_file(self) -> Path:
        p = self.params
        path = Path(p.path)
        if not path.exists():
            if not p.synthesize_if_missing:
                raise DataError(f"AEDAT4 file '{path}' does not exist (set synthesize_if_missing: true for a synthetic one)")
            labels = [i % len(GESTURES) for i in range(p.synth_gestures)]
            gesture_recording(path, labels, width=p.synth_width, height=p.synth_height, seed=p.synth_seed)
        return path

    def _streams(self) -> dict:
        import aedat

        path = self._ensure_file()
        try:
            streams = aedat.Decoder(str(path)).id_to_stream()
        except (RuntimeError, OSError) as exc:
            raise DataError(f"cannot read AEDAT4 file '{path}': {exc}") from None
        return streams

    def schemas(self, inputs):
        streams = self._streams()
        ev = [s for s in streams.values() if s["type"] == "events"]
        if not ev:
            raise DataError(f"AEDAT4 file '{self.params.path}' has no event stream "
                            f"(streams: {', '.join(s['type'] for s in streams.values()) or 'none'})")
        w, h = int(ev[0]["width"]), int(ev[0]["height"])
        fr = [s for s in streams.values() if s["type"] == "frame"]
        fw, fh = (int(fr[0]["width"]), int(fr[0]["height"])) if fr else (w, h)
        return {
            "out": sch.events_schema(w, h),
            "frames": aedat_frames_schema(fw, fh),
            "imu": sch.samples_schema(list(IMU_CHANNELS), 1000.0, list(IMU_UNITS)),
            "triggers": sch.commands_schema({"source": "uint8"}),
        }

    def _fail(self, index: int, why: str):
        if self.params.on_error == "raise":
            raise DataError(f"AEDAT4 file '{self.params.path}' packet {index}: {why}")
        self.skipped_packets += 1
        self.first_skip = self.first_skip or f"packet {index}: {why}"  # for the end-of-run warning

    def generate(self):
        import aedat

        K.warm_up()
        p = self.params
        schemas = self.schemas({})
        ev_schema = schemas["out"]
        decoder = aedat.Decoder(str(p.path))
        event_ids = {i for i, s in decoder.id_to_stream().items() if s["type"] == "events"}
        main_id = min(event_ids)
        batcher = _Batcher(ev_schema, p.batch_us, p.batch_events)
        index = -1
        failures_in_a_row = 0
        while True:
            index += 1
            try:
                packet = next(decoder)
                failures_in_a_row = 0
            except StopIteration:
                break
            except RuntimeError as exc:
                self._fail(index, f"unreadable ({exc})")
                failures_in_a_row += 1
                # a truncated file fails the same way forever: stop at its last whole packet
                if "fill whole buffer" in str(exc) or failures_in_a_row > 16:
                    break
                continue
            self.packets += 1
            if "events" in packet:
                if packet["stream_id"] != main_id:
                    continue
                arr = packet["events"]
                if not batcher.append(arr):
                    self._fail(index, batcher.refusal(arr))
                    continue
                self.events += len(arr)
                if batcher.due:
                    for b in batcher.ready():
                        yield "out", b
            elif "frame" in packet:
                f = packet["frame"]
                pix = np.asarray(f["pixels"])
                if pix.ndim == 3:  # colour: luminance is what the frame port carries
                    pix = pix[..., :3].mean(axis=2)
                if pix.dtype == np.uint16:
                    pix = pix >> 8
                shape = tuple(sch.fact(schemas["frames"], "shape"))
                if pix.shape != shape:
                    self._fail(index, f"frame of shape {pix.shape}, expected {shape}")
                    continue
                yield "frames", self._frame_batch(f, pix, schemas["frames"])
            elif "imus" in packet:
                imu = packet["imus"]
                data = np.stack([imu[c].astype(np.float32) for c in IMU_CHANNELS], axis=1)
                yield "imu", sch.samples_batch(imu["t"].astype(np.int64), data, schemas["imu"])
            elif "triggers" in packet:
                tr = packet["triggers"]
                yield "triggers", sch.commands_batch(tr["t"].astype(np.int64), schemas["triggers"],
                                                     source=tr["source"].astype(np.uint8))
        for b in batcher.flush():
            yield "out", b

    @staticmethod
    def _frame_batch(f: dict, pix: np.ndarray, schema):
        head = pa.schema(list(schema)[:2], metadata=schema.metadata)
        b = sch.frames_batch([int(f["t"])], pix[None].astype(np.uint8), head)
        times = [pa.array([int(f[k])], pa.int64()) for k in FRAME_TIMES]
        return pa.RecordBatch.from_arrays(b.columns + times, schema=schema)

    def state(self):
        return {"skipped_packets": self.skipped_packets, "packets": self.packets, "events": self.events}

    def restore(self, state):
        self.skipped_packets, self.packets, self.events = state["skipped_packets"], state["packets"], state["events"]

    def result(self):
        return {**self.state(), "first_skip": self.first_skip}


# --- other event files through faery -------------------------------------------------


class EventFileParams(SourceParams):
    path: str = Field(..., description="event file: .raw (EVT2/2.1/3), .dat, .es, .csv or .aedat4")
    batch_us: int | None = Field(None, ge=1)
    batch_events: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1, le=65535, description="sensor size when the file does not say")
    height: int | None = Field(None, ge=1, le=65535)
    on_error: Literal["raise", "skip"] = "raise"


@register
class EventFileSource(Source):
    """Reads Prophesee EVT2/EVT3 (.raw), DAT, Event Stream (.es) and CSV event files via faery."""

    name = "event_file_source"
    outputs = {"out": "events"}
    Params = EventFileParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.skipped_packets = 0
        self.first_skip: str | None = None  # "packet N: why" of the first one skipped

    def _open(self):
        import faery

        p = self.params
        if not Path(p.path).exists():
            raise DataError(f"event file '{p.path}' does not exist")
        kwargs = {}
        if Path(p.path).suffix.lower() == ".raw":
            # faery refuses events beyond its fallback (1280x720) without saying which event; our
            # batcher checks every event against `sensor()` and names the event and its coordinates
            kwargs["dimensions_fallback"] = (65535, 65535)
        elif p.width and p.height:
            kwargs["dimensions_fallback"] = (p.width, p.height)
            if Path(p.path).suffix == ".csv":
                kwargs["csv_properties"] = faery.CsvProperties.default()
        try:
            return faery.events_stream_from_file(p.path, **kwargs)
        except Exception as exc:  # faery raises bare exceptions from Rust
            raise DataError(f"cannot read event file '{p.path}': {exc}") from None

    def sensor(self) -> tuple[int, int]:
        """(width, height): the parameters, else a RAW header's geometry or plugin, else faery's."""
        p = self.params
        size = None
        if not (p.width and p.height) and Path(p.path).suffix.lower() == ".raw" and Path(p.path).exists():
            found = prophesee_geometry(raw_header(p.path))
            size = found[0] if found else None
        if size is None and Path(p.path).suffix.lower() == ".raw":
            import faery  # a header that says nothing: faery's own default for the format

            size = faery.events_stream_from_file(p.path).dimensions()
        if size is None:
            size = self._open().dimensions()
        return p.width or size[0], p.height or size[1]

    def schemas(self, inputs):
        return {"out": sch.events_schema(*self.sensor())}

    def generate(self):
        p = self.params
        schema = self.schemas({})["out"]
        batcher = _Batcher(schema, p.batch_us, p.batch_events)
        it = iter(self._open())
        index = -1
        while True:
            index += 1
            try:
                arr = next(it)
            except StopIteration:
                break
            except Exception as exc:
                if p.on_error == "raise":
                    raise DataError(f"event file '{p.path}' packet {index}: unreadable ({exc})") from None
                self.skipped_packets += 1
                self.first_skip = self.first_skip or f"packet {index}: unreadable ({exc})"
                break
            if not batcher.append(arr):
                if p.on_error == "raise":
                    raise DataError(f"event file '{p.path}' packet {index}: {batcher.refusal(arr)}")
                self.skipped_packets += 1
                self.first_skip = self.first_skip or f"packet {index}: {batcher.refusal(arr)}"
                continue
            if batcher.due:
                yield from batcher.ready()
        yield from batcher.flush()

    def result(self):
        return {"skipped_packets": self.skipped_packets, "first_skip": self.first_skip}


# --- UDP -----------------------------------------------------------------------------


class UdpSourceParams(SourceParams):
    host: str = "127.0.0.1"
    port: int = Field(..., ge=1, le=65535)
    width: int = Field(..., ge=1, le=65535)
    height: int = Field(..., ge=1, le=65535)
    batch_events: int = Field(4096, ge=1, description="emit once this many events have arrived")
    idle_timeout_s: float = Field(1.0, gt=0, description="end the stream after this long without datagrams")
    max_events: int | None = Field(None, ge=1, description="end the stream after this many events")
    on_error: Literal["raise", "skip"] = "skip"


@register
class UdpEventSource(Source):
    """Receives events over UDP in faery's t64_x16_y16_on8 format (see module docstring)."""

    name = "udp_event_source"
    outputs = {"out": "events"}
    Params = UdpSourceParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.sock = None
        self.bad_datagrams = 0
        self.received = 0

    def schemas(self, inputs):
        return {"out": sch.events_schema(self.params.width, self.params.height)}

    def setup(self):
        p = self.params
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        try:
            self.sock.bind((p.host, p.port))
        except OSError as exc:
            raise LinkError(f"udp_event_source cannot bind {p.host}:{p.port}: {exc.strerror}") from None
        self.sock.settimeout(p.idle_timeout_s)

    def generate(self):
        p = self.params
        if self.sock is None:
            self.setup()
        schema = self.schemas({})["out"]
        batcher = _Batcher(schema, None, p.batch_events)
        while p.max_events is None or self.received < p.max_events:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            why = None
            if len(data) % UDP_DTYPE.itemsize:
                why = f"datagram of {len(data)} bytes is not a whole number of {UDP_DTYPE.itemsize}-byte events"
            else:
                arr = np.frombuffer(data, UDP_DTYPE)
                if not batcher.append(arr):
                    why = batcher.refusal(arr)
            if why:
                if p.on_error == "raise":
                    raise DataError(f"udp_event_source {p.host}:{p.port} datagram {self.received}: {why}")
                self.bad_datagrams += 1
                continue
            self.received += len(arr)
            if batcher.due:
                yield from batcher.ready()
        yield from batcher.flush()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def result(self):
        return {"received": self.received, "bad_datagrams": self.bad_datagrams}


class UdpSinkParams(Params):
    host: str = "127.0.0.1"
    port: int = Field(..., ge=1, le=65535)
    events_per_datagram: int = Field(100, ge=1, le=5000, description="13 bytes each; keep datagrams under 64 KiB")
    pause_us: int = Field(0, ge=0, description="sleep between datagrams (a gentle sender on a lossy link)")


@register
class UdpEventSink(Operator):
    """Sends events over UDP in faery's t64_x16_y16_on8 format (see module docstring)."""

    name = "udp_event_sink"
    inputs = {"in": "events"}
    Params = UdpSinkParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.sock = None
        self.sent = 0

    def setup(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def process(self, port, batch):
        p = self.params
        n = batch.num_rows
        arr = np.empty(n, UDP_DTYPE)
        for name, col in (("t", "t"), ("x", "x"), ("y", "y"), ("on", "p")):
            arr[name] = sch.column(batch, col)
        for i in range(0, n, p.events_per_datagram):
            self.sock.sendto(arr[i : i + p.events_per_datagram].tobytes(), (p.host, p.port))
            if p.pause_us:
                time.sleep(p.pause_us / 1e6)
        self.sent += n

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def result(self):
        return {"sent": self.sent}

