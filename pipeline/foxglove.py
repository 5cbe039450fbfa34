"""Streams as Foxglove messages: views for MCAP export, and the live `--foxglove` server.

Foxglove (and its open fork Lichtblick) shows images from `foxglove.RawImage` messages
and plots numbers from JSON messages. `View` turns one stream's Arrow batches into such
messages by stream kind, with plain NumPy (no operator needed):

| kind | message |
|---|---|
| frames | `foxglove.RawImage` (protobuf), one per frame: mono8/rgb8, mono16 or 32FC1 |
| events | `foxglove.RawImage` mono8, the events of a window rendered (grey 128, ON brighter, OFF darker) |
| samples, commands | JSON, one message per row (`{"t_us": ..., "ch0": ...}`): a Plot panel plots `/eeg/out.ch0` |
| spikes | JSON per batch: `{"t_us", "count", "neurons": [...]}` |

Live: `reflexarc run CONFIG --foxglove 127.0.0.1:8765` adds a `foxglove_tap` node fed by
every stream (as `--record` adds a record tap). The tap runs wherever the executor puts
it (the driver, a Ray actor); at most `max_hz` times per stream per second it hands the
part of a batch the viewer shows (the last frame or row; all of an events or spikes batch)
as Arrow IPC to the driver, over a ZeroMQ PUSH socket on 127.0.0.1 that never blocks: when
the driver's queue is full the message is dropped for the viewer, never for the pipeline,
and counted. The driver (`LiveViewer`) renders it (`View.latest`, off the pipeline's thread)
and serves it with foxglove-sdk's WebSocket server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import schemas as sch
from pipeline.errors import ConfigError, LinkError, Problem
from pipeline.operator import Operator, Params, register

log = logging.getLogger(__name__)

RAW_IMAGE = "foxglove.RawImage"
EVENTS_SHOWN = 65_536  # live: the most events of one batch drawn into its image
IMAGE, JSON = b"image", b"json"


def _raw_image_schema() -> tuple[str, str, bytes]:
    from foxglove.messages import RawImage

    s = RawImage.get_schema()
    return s.name, s.encoding, bytes(s.data)


def json_schema(title: str, fields: dict[str, str]) -> bytes:
    """A JSON Schema for a row of scalars (what Foxglove's Plot panel reads)."""
    types = {"int": "integer", "uint": "integer", "float": "number", "double": "number", "bool": "boolean"}
    props = {"t_us": {"type": "integer"}}
    for name, t in fields.items():
        props[name] = {"type": next((v for k, v in types.items() if t.startswith(k)), "number")}
    return json.dumps({"title": title, "type": "object", "properties": props}).encode()


def raw_image(t_us: int, frame_id: str, img: np.ndarray) -> bytes:
    """One `foxglove.RawImage` protobuf message for a (H, W) or (H, W, 3|4) array ((C, H, W): summed)."""
    from foxglove.messages import RawImage, Timestamp

    if img.ndim > 3 or (img.ndim == 3 and (img.shape[2] not in (1, 3, 4) or img.shape[0] < img.shape[2])):
        # channel-first (polarities, time bins: `to_frames`, `to_voxel_grid`): their sum
        img = img.reshape((-1,) + img.shape[-2:]).sum(axis=0, dtype=np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.dtype == np.uint8:
        encoding = "mono8" if img.ndim == 2 else {3: "rgb8", 4: "rgba8"}.get(img.shape[2])
    elif img.dtype == np.uint16 and img.ndim == 2:
        encoding = "mono16"
    else:
        encoding = None
    if encoding is None:  # anything else is shown as 32-bit float, channel 0
        img = np.asarray(img[..., 0] if img.ndim == 3 else img, dtype=np.float32)
        encoding = "32FC1"
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    t_us = max(int(t_us), 0)
    return RawImage(timestamp=Timestamp(sec=t_us // 1_000_000, nsec=(t_us % 1_000_000) * 1000),
                    frame_id=frame_id, width=w, height=h, encoding=encoding,
                    step=img.strides[0], data=img.tobytes()).encode()


def topic_of(stream: str) -> str:
    """The Foxglove topic of a stream: `camera.out` -> `/camera/out` (a Plot path is then `/camera/out.x`)."""
    return "/" + stream.replace(".", "/")


def render_events(x: np.ndarray, y: np.ndarray, p: np.ndarray, width: int, height: int) -> np.ndarray:
    """Events of one window as a mono8 image: 128 where nothing happened, +/-64 per ON/OFF event."""
    ok = (x < width) & (y < height)
    if not ok.all():
        x, y, p = x[ok], y[ok], p[ok]
    idx = y.astype(np.intp) * width + x
    acc = np.bincount(idx, weights=np.where(p, 64.0, -64.0), minlength=width * height)
    acc += 128.0
    np.clip(acc, 0.0, 255.0, out=acc)  # in place: np.clip into a new array costs ten times more
    return acc.astype(np.uint8).reshape(height, width)


class View:
    """Foxglove messages for one stream: `schema` for its channel, `feed`/`flush` for messages.

    Messages are `(log_time_ns, payload bytes)`. `window_us` sets how much sensor time of
    events makes one image.
    """

    def __init__(self, stream: str, schema: pa.Schema, window_us: int = 33_000):
        self.stream, self.arrow_schema = stream, schema
        self.kind = sch.kind_of(schema)
        self.window_us = int(window_us)
        names = [f.name for f in schema]
        if self.kind is None:
            scalar = all(pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
                         for f in schema)
            self.kind = "commands" if scalar and "t" in names else None
        if self.kind == "frames" and "frame" not in names:
            self.kind = None
        self.encoding = IMAGE if self.kind in ("frames", "events") else JSON if self.kind else None
        # events: the open window's columns
        self._win_end: int | None = None
        self._held: list[pa.RecordBatch] = []
        if self.kind == "events":
            self.width = int(sch.fact(schema, "width", 0)) or None
            self.height = int(sch.fact(schema, "height", 0)) or None

    @property
    def shown(self) -> bool:
        return self.encoding is not None

    def channel_schema(self) -> tuple[str, str, bytes]:
        """(schema name, schema encoding, schema data) of the channel."""
        if self.encoding == IMAGE:
            return _raw_image_schema()
        fields = {f.name: str(f.type) for f in self.arrow_schema if f.name != "t"}
        if self.kind == "spikes":
            fields = {"count": "int64"}
        return f"reflexarc.{self.kind}", "jsonschema", json_schema(self.stream, fields)

    @property
    def message_encoding(self) -> str:
        return "protobuf" if self.encoding == IMAGE else "json"

    def feed(self, batch: pa.RecordBatch) -> list[tuple[int, bytes]]:
        if batch.num_rows == 0 or not self.shown:
            return []
        return getattr(self, f"_{self.kind}")(batch)

    def flush(self) -> list[tuple[int, bytes]]:
        if self.kind == "events" and self._held:
            return [self._render_window()]
        return []

    def _frames(self, batch):
        t = sch.column(batch, "t")
        frames = sch.frames_view(batch)
        return [(max(int(t[i]), 0) * 1000, raw_image(t[i], self.stream, frames[i])) for i in range(len(t))]

    def _events(self, batch):
        out = []
        t = sch.column(batch, "t")
        if self.width is None:  # no size in the schema: grow to what has been seen
            self.width = int(sch.column(batch, "x").max()) + 1
            self.height = int(sch.column(batch, "y").max()) + 1
        start = 0
        while start < len(t):
            if self._win_end is None:
                self._win_end = (int(t[start]) // self.window_us + 1) * self.window_us
            cut = int(np.searchsorted(t, self._win_end, side="left"))
            if cut > start:
                self._held.append(batch.slice(start, cut - start))
            if cut >= len(t):
                break
            out.append(self._render_window())
            start = cut
        return out

    def _render_window(self) -> tuple[int, bytes]:
        held = pa.Table.from_batches(self._held)
        x = held.column("x").to_numpy()
        y = held.column("y").to_numpy()
        p = held.column("p").to_numpy(zero_copy_only=False)
        img = render_events(x, y, p, self.width, self.height)
        end = self._win_end
        self._held, self._win_end = [], None
        return max(end, 0) * 1000, raw_image(end, self.stream, img)

    def _samples(self, batch):
        return self._rows(batch)

    def _commands(self, batch):
        return self._rows(batch)

    def _rows(self, batch):
        rows = batch.to_pylist()
        out = []
        for row in rows:
            t = row.pop("t", 0) or 0
            out.append((max(int(t), 0) * 1000, json.dumps({"t_us": t, **row}).encode()))
        return out

    def _spikes(self, batch):
        t = sch.column(batch, "t")
        neurons = sch.column(batch, "neuron")
        msg = {"t_us": int(t[0]), "count": int(len(t)), "neurons": neurons[:4096].tolist()}
        return [(max(int(t[0]), 0) * 1000, json.dumps(msg).encode())]

    def latest(self, batch: pa.RecordBatch) -> tuple[int, bytes] | None:
        """One message standing for the whole batch (live: the last frame, the last row, all events)."""
        if batch.num_rows == 0 or not self.shown:
            return None
        if self.kind == "events":
            t = sch.column(batch, "t")
            if self.width is None:
                self.width = int(sch.column(batch, "x").max()) + 1
                self.height = int(sch.column(batch, "y").max()) + 1
            img = render_events(sch.column(batch, "x"), sch.column(batch, "y"), sch.column(batch, "p"),
                                self.width, self.height)
            return max(int(t[-1]), 0) * 1000, raw_image(t[-1], self.stream, img)
        if self.kind == "spikes":
            return self._spikes(batch)[0]
        return self.feed(batch.slice(batch.num_rows - 1, 1))[-1]


# --- the live tap --------------------------------------------------------------------


class FoxgloveTapParams(Params):
    endpoint: str = Field(..., description="the driver's ZeroMQ PULL endpoint (tcp://127.0.0.1:PORT)")
    streams: list[str] = Field(..., min_length=1, description="streams shown, as node.port")
    max_hz: float = Field(30.0, gt=0, le=1000, description="at most this many messages per stream per second")
    names: dict[str, str] = Field(default_factory=dict, description="stream -> the name it is shown under")
    queue: int = Field(64, ge=1, description="messages the socket holds for the driver before it drops")


@register
class FoxgloveTap(Operator):
    """Hands rate-limited slices of each input stream to the driver's live Foxglove server.

    Added by `reflexarc run --foxglove`; never blocks: a message the driver cannot take at
    once is dropped for the viewer and counted.
    """

    beside_driver = True  # its PUSH socket reaches the driver on 127.0.0.1: same machine under any executor
    name = "foxglove_tap"
    Params = FoxgloveTapParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.inputs = {s.replace(".", "__"): "any" for s in self.params.streams}
        self._stream_of = {s.replace(".", "__"): s for s in self.params.streams}
        shown = {p: self.params.names.get(st, st) for p, st in self._stream_of.items()}
        self._heads = {p: json.dumps({"stream": shown[p], "topic": topic_of(shown[p])}).encode() for p in shown}
        self._kinds: dict[str, str] = {}
        self._announced: set[str] = set()
        self._next: dict[str, float] = {}
        self._sock = None
        self.sent = self.dropped = self.skipped = 0
        self.busy_ns = 0  # time spent slicing and sending (on the pipeline's thread)

    def schemas(self, inputs):
        return {}

    def setup(self):
        import zmq

        self._announced, self._kinds = set(), {}
        self._sock = zmq.Context.instance().socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, self.params.queue)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for a driver not (yet) connected
        self._sock.connect(self.params.endpoint)
        self._period = 1.0 / self.params.max_hz
        self._noblock = zmq.NOBLOCK
        self._again = zmq.Again

    def process(self, port, batch):
        now = time.monotonic()
        if now < self._next.get(port, 0.0):
            self.skipped += 1  # rate limit: the viewer gets at most max_hz of this stream
            return None
        self._next[port] = now + self._period
        t0 = time.thread_time_ns()  # CPU of this thread: a wait for the GIL is not the tap's work
        try:
            self._send(port, batch)
        finally:
            self.busy_ns += time.thread_time_ns() - t0
        return None

    def _send(self, port, batch) -> None:
        """Hand the part of `batch` the viewer shows to the driver as Arrow IPC, or drop it.

        The driver renders it (`View.latest`): under Ray that is another process, and under
        the local executor another thread, so the pipeline's thread only slices and
        serialises (a frame or a row: the last one; events and spikes: the whole batch).
        """
        if batch.num_rows == 0:
            return
        kind = self._kinds.get(port)
        if kind is None:
            kind = self._kinds[port] = sch.kind_of(batch.schema) or "commands"
        n = batch.num_rows
        # an image of one batch's events needs no more than its last 65,536 (a file source's
        # 262,144-event batch would be a 3.4 MB copy 30 times a second)
        part = batch.slice(max(0, n - EVENTS_SHOWN)) if kind in ("events", "spikes") else batch.slice(n - 1, 1)
        if port in self._announced:
            parts = [self._heads[port], part.serialize()]
        else:  # the first message of a stream carries its schema
            parts = [self._heads[port], part.serialize(), sch.unstamp(batch.schema).serialize()]
        try:
            self._sock.send_multipart(parts, flags=self._noblock, copy=False)
        except self._again:
            self.dropped += 1  # the driver is behind: the viewer misses this one, the pipeline goes on
            return
        self._announced.add(port)
        self.sent += 1

    def close(self):
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def result(self):
        return {"sent": self.sent, "skipped_rate_limit": self.skipped, "dropped_driver_busy": self.dropped,
                "send_ms": round(self.busy_ns / 1e6, 3)}


# --- the driver's server -------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ConfigError([Problem(None, "--foxglove", f"'{text}' is not HOST:PORT (e.g. 127.0.0.1:8765)")])
    return host or "127.0.0.1", int(port)


@dataclass
class ViewerStats:
    received: int = 0
    logged: int = 0
    channels: int = 0
    failed: int = 0


class LiveViewer:
    """The driver side of `--foxglove`: a ZeroMQ PULL socket and foxglove-sdk's WebSocket server.

    `tap(graph)` adds the `foxglove_tap` node; `start()` serves; `stop()` ends both. A
    message arrives as (header JSON, batch IPC message[, schema IPC message]); it is rendered
    and logged on its topic's channel, made on first sight from the schema. Slow WebSocket clients are the server's concern: it
    keeps `backlog` messages per client and drops the oldest (counted by foxglove-sdk).
    """

    def __init__(self, address: str, max_hz: float = 30.0, streams: list[str] | None = None, backlog: int = 256,
                 names: dict[str, str] | None = None):
        import zmq

        self.host, self.port = parse_address(address)
        self.max_hz, self.streams, self.backlog, self.names = max_hz, streams, backlog, names or {}
        self._ctx = zmq.Context.instance()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 256)
        self._pull.setsockopt(zmq.LINGER, 0)
        port = self._pull.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.server = None
        self.channels: dict[str, object] = {}
        self.stats = ViewerStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tap_result: dict | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def tap(self, graph) -> None:
        streams = self.streams or [f"{n.id}.{p}" for n in graph.nodes.values()
                                   if not n.id.startswith("__") for p in n.op.outputs]
        if not streams:
            raise ConfigError([Problem(None, "--foxglove", "the graph has no streams to show")])
        graph.add("__foxglove__", "foxglove_tap", inputs={s.replace(".", "__"): s for s in streams},
                  endpoint=self.endpoint, streams=streams, max_hz=self.max_hz, names=self.names)

    def start(self) -> None:
        import foxglove

        try:
            self.server = foxglove.start_server(name="reflexarc", host=self.host, port=self.port,
                                                message_backlog_size=self.backlog)
        except Exception as exc:  # the port is taken, the host is not ours
            self._pull.close(0)
            raise LinkError(f"--foxglove cannot serve on {self.host}:{self.port}: {exc}") from None
        port = self.server.port
        self.port = port() if callable(port) else port  # the real one when 0 asked for any
        self._thread = threading.Thread(target=self._pump, name="foxglove-viewer", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        import foxglove
        import zmq

        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            while True:
                try:
                    parts = self._pull.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.stats.received += 1
                try:
                    self._show(parts, foxglove)
                except Exception as exc:  # one bad message must not end the viewer
                    self.stats.failed += 1
                    log.debug("foxglove viewer: message dropped (%s)", exc)

    def _show(self, parts: list, foxglove) -> None:
        """Render one tap message (a batch slice as Arrow IPC) and log it on its topic's channel."""
        head = json.loads(parts[0])
        topic = head["topic"]
        entry = self.channels.get(topic)
        if entry is None:
            if len(parts) < 3:
                return  # its schema went with a message that was lost (a restarted viewer)
            schema = pa.ipc.read_schema(pa.py_buffer(parts[2]))
            view = View(head["stream"], schema)
            if not view.shown:
                self.channels[topic] = entry = (None, view, schema)
            else:
                name, enc, data = view.channel_schema()
                channel = foxglove.Channel(topic, schema=foxglove.Schema(name=name, encoding=enc, data=data),
                                           message_encoding=view.message_encoding)
                self.channels[topic] = entry = (channel, view, schema)
                self.stats.channels += 1
        channel, view, schema = entry
        if channel is None:
            return
        batch = pa.ipc.read_record_batch(pa.py_buffer(parts[1]), schema)
        msg = view.latest(batch)
        if msg is not None:
            channel.log(msg[1], log_time=msg[0])
            self.stats.logged += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for channel, _view, _schema in self.channels.values():
            if channel is not None:
                channel.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        self._pull.close(0)

    def summary_line(self, results: dict | None = None) -> str:
        tap = (results or {}).get("__foxglove__") or {}
        return (f"Foxglove: {self.stats.logged} messages on {self.stats.channels} channels served at "
                f"{self.address}; the tap sent {tap.get('sent', 0)}, left out "
                f"{tap.get('skipped_rate_limit', 0)} batches over {self.max_hz:g}/s per stream and dropped "
                f"{tap.get('dropped_driver_busy', 0)} while the server was behind")


__all__ = ["FoxgloveTap", "LiveViewer", "View", "raw_image", "render_events", "topic_of"]
