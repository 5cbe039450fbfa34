"""Live event streams in iniVation's DV network format: a source that connects to one, a sink that serves one.

The format is what DV and dv-processing's `NetworkWriter` serve over TCP (and AEDAT4 files
hold, less the file's version line and data table): first an IOHeader (a size-prefixed
FlatBuffer, identifier `IOHE`: the compression and an XML description of the stream, whose
`typeIdentifier` says what it carries, `EVTS` for events, `FRME` frames, `IMUS`, `TRIG`),
then packets, each an 8-byte header (int32 stream id, int32 byte size) and a size-prefixed
FlatBuffer (`EVTS`: a vector of 16-byte events, int64 t µs, int16 x, int16 y, bool on),
compressed whole as an LZ4 or Zstd frame when the header says so.

Only these few FlatBuffer tables are read and written, by offset, as the schemas in
dv-processing define them; `tests/operators/events/test_events_dv.py` checks both ends
against dv-processing itself.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from typing import Literal

import numpy as np
from pydantic import Field

from operators.events.sources import _Batcher
from pipeline import schemas as sch
from pipeline.errors import DataError, LinkError
from pipeline.operator import Operator, Params, Source, SourceParams, register

COMPRESSION = {"none": 0, "lz4": 1, "lz4_high": 2, "zstd": 3, "zstd_high": 4}
TYPES = {"EVTS": "events", "FRME": "frames", "IMUS": "imu", "TRIG": "triggers", "BBOX": "bounding boxes",
         "POSE": "poses", "TKPS": "key points"}
EVENT = np.dtype({"names": ["t", "x", "y", "on"], "formats": ["<i8", "<i2", "<i2", "u1"], "offsets": [0, 8, 10, 12],
                  "itemsize": 16})


# --- FlatBuffers, the few tables we need ---------------------------------------------


def _table(buf: bytes, identifier: bytes) -> tuple[int, list[int]]:
    """(table position, field offsets) of a FlatBuffer's root table (no size prefix)."""
    if len(buf) < 8 or buf[4:8] != identifier:
        raise ValueError(f"not a {identifier.decode()} FlatBuffer (identifier {bytes(buf[4:8])!r})")
    pos = struct.unpack_from("<I", buf, 0)[0]
    vt = pos - struct.unpack_from("<i", buf, pos)[0]
    size = struct.unpack_from("<H", buf, vt)[0]
    return pos, [struct.unpack_from("<H", buf, vt + 4 + 2 * i)[0] for i in range((size - 4) // 2)]


def parse_header(data: bytes) -> dict:
    """The IOHeader FlatBuffer (without its size prefix): compression and the stream descriptions."""
    pos, fields = _table(data, b"IOHE")
    fields += [0] * (3 - len(fields))
    compression = struct.unpack_from("<i", data, pos + fields[0])[0] if fields[0] else 0
    xml = ""
    if fields[2]:
        at = pos + fields[2]
        at += struct.unpack_from("<I", data, at)[0]
        n = struct.unpack_from("<I", data, at)[0]
        xml = bytes(data[at + 4 : at + 4 + n]).decode("utf-8", "replace")
    streams = []
    for m in re.finditer(r'<node name="(\d+)" path="/outInfo/\d+/">(.*?)</node>\s*</node>', xml, re.S):
        body = m[2]

        def attr(key, body=body):
            a = re.search(rf'<attr key="{key}" type="\w+">([^<]*)</attr>', body)
            return a[1] if a else None

        ident = attr("typeIdentifier") or "?"
        streams.append({"id": int(m[1]), "type": ident, "kind": TYPES.get(ident, ident),
                        "name": attr("originalOutputName"), "width": int(attr("sizeX") or 0),
                        "height": int(attr("sizeY") or 0)})
    return {"compression": compression, "xml": xml, "streams": streams}


def encode_header(width: int, height: int, compression: int, source: str = "reflexarc", name: str = "events") -> bytes:
    """A size-prefixed IOHeader for one event stream (id 0)."""
    xml = (f'<dv version="2.0">\n    <node name="outInfo" path="/outInfo/">\n        <node name="0" path="/outInfo/0/">\n'
           f'            <attr key="compression" type="string">{[k for k, v in COMPRESSION.items() if v == compression][0].upper()}</attr>\n'
           f'            <attr key="originalModuleName" type="string">reflexarc</attr>\n'
           f'            <attr key="originalOutputName" type="string">{name}</attr>\n'
           f'            <attr key="typeIdentifier" type="string">EVTS</attr>\n'
           f'            <node name="info" path="/outInfo/0/info/">\n'
           f'                <attr key="sizeX" type="int">{width}</attr>\n'
           f'                <attr key="sizeY" type="int">{height}</attr>\n'
           f'                <attr key="source" type="string">{source}</attr>\n'
           f'            </node>\n        </node>\n    </node>\n</dv>\n').encode()
    # the layout dv-processing writes: root offset, "IOHE", 6 bytes padding, vtable (10 bytes, 3
    # fields) at 14, table at 24 (its int64 8-aligned once the size prefix is counted), the string at 44
    vtable = struct.pack("<5H", 10, 20, 4, 12, 8)
    table = struct.pack("<iiIq", 10, compression, 12, -1)
    body = struct.pack("<I", 24) + b"IOHE" + b"\0" * 6 + vtable + table + struct.pack("<I", len(xml)) + xml + b"\0"
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<I", len(body)) + body


def encode_events(t, x, y, on) -> bytes:
    """A size-prefixed EVTS FlatBuffer holding the events."""
    n = len(t)
    ev = np.zeros(n, EVENT)
    ev["t"], ev["x"], ev["y"], ev["on"] = t, x, y, on
    # root offset 16, "EVTS", padding, vtable at 10 (1 field), table at 16, vector at 24 (events 8-aligned
    # once the 4-byte size prefix is counted)
    head = struct.pack("<I", 16) + b"EVTS" + b"\0\0" + struct.pack("<3H", 6, 8, 4) + struct.pack("<iII", 6, 4, n)
    body = head + ev.tobytes()
    return struct.pack("<I", len(body)) + body


def decode_events(data: bytes) -> np.ndarray:
    """The events of an EVTS FlatBuffer (without its size prefix), as a structured array (a view)."""
    pos, fields = _table(data, b"EVTS")
    if not fields or not fields[0]:
        return np.zeros(0, EVENT)
    at = pos + fields[0]
    at += struct.unpack_from("<I", data, at)[0]
    n = struct.unpack_from("<I", data, at)[0]
    return np.frombuffer(data, EVENT, count=n, offset=at + 4)


def _decompress(data: bytes, compression: int) -> bytes:
    if compression in (1, 2):
        import lz4.frame

        return lz4.frame.decompress(data)
    if compression in (3, 4):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _compress(data: bytes, compression: int) -> bytes:
    if compression in (1, 2):
        import lz4.frame

        return lz4.frame.compress(data, compression_level=9 if compression == 2 else 0)
    if compression in (3, 4):
        import zstandard

        return zstandard.ZstdCompressor(level=19 if compression == 4 else 3).compress(data)
    return data


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None when the peer closed the connection first."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _close_gracefully(conn: socket.socket, linger_s: float = 0.2, timeout_s: float = 1.0):
    """Wait until the kernel has sent everything and `linger_s` more, half-close, let the peer
    hang up, then close. dv-processing's NetworkReader drops the packets it has not yet handed
    out when the connection ends (measured: the last packet of ten, sent 0 s before the close,
    lost each time; none lost from 50 ms on), and closing at once could reset the connection."""
    import fcntl
    import termios

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            unsent = struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            if not unsent:
                break
            time.sleep(0.005)
        time.sleep(linger_s)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(timeout_s)
        while conn.recv(65536):
            pass
    except OSError:
        pass
    conn.close()


# --- the source ------------------------------------------------------------------------


class DvTcpSourceParams(SourceParams):
    host: str = "127.0.0.1"
    port: int = Field(..., ge=1, le=65535)
    batch_events: int = Field(4096, ge=1, description="emit once this many events have arrived")
    idle_timeout_s: float = Field(2.0, gt=0, description="end the stream after this long without data")
    max_events: int | None = Field(None, ge=1, description="end the stream after this many events")
    reconnects: int = Field(5, ge=0, description="connection attempts after the first, when the server is gone")
    backoff_s: float = Field(0.05, gt=0, description="wait before the first reconnect; doubles up to backoff_max_s")
    backoff_max_s: float = Field(1.0, gt=0)
    width: int | None = Field(None, ge=1, le=65535, description="sensor size (default: the stream's)")
    height: int | None = Field(None, ge=1, le=65535)


@register
class DvTcpSource(Source):
    """Receives events from a DV network stream (DV, dv-processing's NetworkWriter, `dv_tcp_sink`).

    The sensor size comes from the stream's description, read once at build time. When the
    server goes away the source reconnects with exponential backoff (each attempt counted in
    `reconnects`); events already received are kept. A stream that does not carry events
    (frames, IMU, ...) is refused with a DataError naming the stream.
    """

    name = "dv_tcp_source"
    outputs = {"out": "events"}
    Params = DvTcpSourceParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.sock = None
        self.received = 0
        self.packets = 0
        self.reconnects = 0
        self.connections = 0
        self.stream: dict | None = None
        self.compression = 0

    @property
    def where(self) -> str:
        return f"dv_tcp_source {self.params.host}:{self.params.port}"

    def _connect(self, attempts: int) -> bool:
        """Connect and read the header; False when the server stays away for `attempts` tries."""
        p = self.params
        wait = p.backoff_s
        for attempt in range(attempts + 1):
            if attempt:
                time.sleep(wait)
                wait = min(2 * wait, p.backoff_max_s)
                self.reconnects += 1
            try:
                sock = socket.create_connection((p.host, p.port), timeout=p.idle_timeout_s)
            except OSError:
                continue
            try:
                size = _recv_exact(sock, 4)
                header = None if size is None else _recv_exact(sock, struct.unpack("<I", size)[0])
            except OSError:
                header = None
            if header is None:
                sock.close()
                continue
            self._accept_header(header, sock)
            self.sock = sock
            self.connections += 1
            return True
        return False

    def _accept_header(self, header: bytes, sock):
        try:
            info = parse_header(header)
        except (ValueError, struct.error) as exc:
            sock.close()
            raise DataError(f"{self.where}: not a DV network stream ({exc})") from None
        streams = info["streams"]
        if not streams or streams[0]["type"] != "EVTS":
            sock.close()
            what = ", ".join(f"'{s['name']}' ({s['kind']}, {s['type']})" for s in streams) or "none described"
            raise DataError(f"{self.where}: the stream {what} is not an event stream (typeIdentifier EVTS expected)")
        self.stream, self.compression = streams[0], info["compression"]

    def schemas(self, inputs):
        p = self.params
        if p.width and p.height:
            return {"out": sch.events_schema(p.width, p.height)}
        if self.stream is None:
            # a probe: the runtime builds fresh operator instances for the run, so this
            # connection only reads the description and is closed (a live server would
            # otherwise send its events to a client nobody reads)
            if not self._connect(p.reconnects):
                raise LinkError(f"{self.where}: no DV stream to connect to (tried {p.reconnects + 1} times)")
            self.close()
            self.connections = self.reconnects = 0
        return {"out": sch.events_schema(p.width or self.stream["width"], p.height or self.stream["height"])}

    def generate(self):
        try:
            yield from self._receive()
        finally:  # a server keeps serving a client that stays connected
            self.close()

    def _receive(self):
        p = self.params
        schema = self.schemas({})["out"]
        batcher = _Batcher(schema, None, p.batch_events)
        while p.max_events is None or self.received < p.max_events:
            if self.sock is None and not self._connect(p.reconnects):
                break
            try:
                head = _recv_exact(self.sock, 8)
                if head is not None:
                    _, size = struct.unpack("<ii", head)
                    data = _recv_exact(self.sock, size)
                    head = None if data is None else head
            except TimeoutError:
                break  # idle: the stream has ended
            except OSError:
                head = None
            if head is None:  # the server went away: keep what came, reconnect
                self.sock.close()
                self.sock = None
                continue
            data = _decompress(data, self.compression)
            size_prefix = struct.unpack_from("<I", data, 0)[0]
            try:
                ev = decode_events(data[4 : 4 + size_prefix])
            except (ValueError, struct.error) as exc:
                raise DataError(f"{self.where} packet {self.packets}: {exc}") from None
            self.packets += 1
            if p.max_events is not None:
                ev = ev[: p.max_events - self.received]
            rec = np.empty(len(ev), [("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "u1")])
            rec["t"], rec["x"], rec["y"], rec["on"] = ev["t"], ev["x"], ev["y"], ev["on"]
            if not batcher.append(rec):
                raise DataError(f"{self.where} packet {self.packets - 1}: {batcher.refusal(rec)}")
            self.received += len(rec)
            if batcher.due:
                yield from batcher.ready()
        yield from batcher.flush()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def result(self):
        return {"received": self.received, "packets": self.packets, "reconnects": self.reconnects,
                "connections": self.connections}


# --- the sink --------------------------------------------------------------------------


class DvTcpSinkParams(Params):
    host: str = "127.0.0.1"
    port: int = Field(..., ge=0, le=65535, description="0: any free port (see `port_bound`)")
    compression: Literal["none", "lz4", "lz4_high", "zstd", "zstd_high"] = "lz4"
    wait_for_client_s: float = Field(0.0, ge=0, description="at setup, wait this long for a first client")
    source_name: str = Field("reflexarc", description="the `source` the stream description names")
    linger_s: float = Field(0.2, ge=0, description="at close, wait this long after the last packet before hanging up")


@register
class DvTcpSink(Operator):
    """Serves events as a DV network stream: DV, dv-processing's NetworkReader and `dv_tcp_source` read it.

    Every client gets the header (which names the sensor size, known from the first batch's
    schema) and then each batch as one packet; a client that goes away is dropped and counted. Batches that arrive while no client is connected
    are counted in `unsent` (a live stream, like DV's own).
    """

    name = "dv_tcp_sink"
    inputs = {"in": "events"}
    Params = DvTcpSinkParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.server = None
        self.clients: list[socket.socket] = []
        self.pending: list[socket.socket] = []  # connected, waiting for the header
        self._size: tuple[int, int] | None = None
        self.lock = threading.Lock()
        self.sent = self.unsent = self.dropped_clients = self.accepted = 0
        self.header = b""
        self.port_bound = None
        self._stop = threading.Event()

    def schemas(self, inputs):
        return {}

    def setup(self):
        p = self.params
        self.compression = COMPRESSION[p.compression]
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.server.bind((p.host, p.port))
        except OSError as exc:
            raise LinkError(f"dv_tcp_sink cannot bind {p.host}:{p.port}: {exc.strerror}") from None
        self.server.listen(8)
        self.server.settimeout(0.05)
        self.port_bound = self.server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True, name="dv_tcp_sink-accept")
        self._thread.start()
        deadline = time.monotonic() + p.wait_for_client_s
        while p.wait_for_client_s and not (self.clients or self.pending) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.pending.append(conn)
                self.accepted += 1
                if self._size is not None:
                    self._greet()

    def _greet(self):
        """Send the header to the clients that are waiting for it (holding the lock)."""
        header = encode_header(*self._size, self.compression, self.params.source_name)
        for conn in self.pending:
            try:
                conn.sendall(header)
                self.clients.append(conn)
            except OSError:
                conn.close()
                self.dropped_clients += 1
        self.pending = []

    def process(self, port, batch):
        n = batch.num_rows
        if n == 0:
            return
        payload = _compress(encode_events(sch.column(batch, "t"), sch.column(batch, "x"), sch.column(batch, "y"),
                                          sch.column(batch, "p")), self.compression)
        packet = struct.pack("<ii", 0, len(payload)) + payload
        with self.lock:
            if self._size is None:
                self._size = (int(sch.fact(batch.schema, "width")), int(sch.fact(batch.schema, "height")))
            if self.pending:
                self._greet()
            clients = list(self.clients)
        if not clients:
            self.unsent += n
            return
        for c in clients:
            try:
                c.sendall(packet)
            except OSError:
                with self.lock:
                    self.clients.remove(c)
                    self.dropped_clients += 1
                c.close()
        self.sent += n

    def close(self):
        self._stop.set()
        if self.server is not None:
            self.server.close()
            self.server = None
        with self.lock:
            for c in self.clients + self.pending:
                _close_gracefully(c, self.params.linger_s)
            self.clients, self.pending = [], []

    def result(self):
        return {"sent": self.sent, "unsent": self.unsent, "clients": self.accepted, "dropped_clients": self.dropped_clients,
                "port": self.port_bound}
