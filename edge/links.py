"""ZeroMQ links as operators: `zmq_out` (a sink) and `zmq_in` (a source), CURVE on both.

Either end may bind. The binding end is the CURVE server: it admits only the public keys
in `KEYS/authorized/`; the connecting end pins the server's public key `KEYS/PEER.key`.
Batches travel as Arrow IPC frames without copies (see `edge.wire`), their stream,
sequence number and ingest time stamped into the schema metadata; `zmq_in` counts
sequence gaps and rejects (and counts) batches whose schema is not the declared one.

    nodes:
      out:  {op: zmq_out, inputs: {in: camera.out},
             params: {endpoint: "tcp://127.0.0.1:5601", keys: keys, identity: robot-1, peer: manager}}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import zmq
from pydantic import Field

from edge import keys as K
from edge import wire
from pipeline import schemas as sch
from pipeline.errors import ConfigError, LinkError
from pipeline.operator import Operator, Params, Source, SourceParams, register


class LinkParams(Params):
    endpoint: str = Field(..., description="tcp://HOST:PORT")
    bind: bool = Field(False, description="bind (CURVE server) instead of connect")
    keys: str = Field(..., description="keys folder (see `reflexarc keys`)")
    identity: str = Field(..., description="this end's key name: KEYS/IDENTITY.key_secret")
    peer: str | None = Field(None, description="the server's key name when connecting: KEYS/PEER.key")
    hwm: int = Field(64, ge=1, description="messages queued per peer before the link pushes back")


def _open(ctx: zmq.Context, kind: int, p: LinkParams, node: str):
    folder = Path(p.keys)
    secret = folder / f"{p.identity}.key_secret"
    gate = None
    if p.bind:
        gate = K.KeyGate(ctx, K.authorized(folder))
        sock = K.server_socket(ctx, kind, secret)
    else:
        if not p.peer:
            raise ConfigError(f"node '{node}': a connecting link needs `peer` (the server's key name)")
        sock = K.client_socket(ctx, kind, secret, folder / f"{p.peer}.key")
    sock.sndhwm = sock.rcvhwm = p.hwm
    try:
        (sock.bind if p.bind else sock.connect)(p.endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        if gate:
            gate.stop()
        raise LinkError(f"node '{node}' cannot {'bind' if p.bind else 'connect'} {p.endpoint}: {exc}") from None
    return sock, gate


class OutParams(LinkParams):
    send_timeout_ms: int = Field(1000, ge=0, description="wait this long for room, then drop and count")
    handshake_timeout_ms: int = Field(5000, ge=0, description="wait this long for the first CURVE handshake")


@register
class ZmqOut(Operator):
    """Sends every batch down a CURVE ZeroMQ PUSH link as Arrow IPC frames."""

    name = "zmq_out"
    inputs = {"in": "any"}
    Params = OutParams
    wants_header = True

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.sent = self.dropped = self.refused = 0
        self._ctx = self._sock = self._gate = self._monitor = None
        self._handshake = "pending"  # a connecting end: pending, ok, refused

    def setup(self):
        self._ctx = zmq.Context()
        self._sock, self._gate = _open(self._ctx, zmq.PUSH, self.params, self.node)
        self._sock.sndtimeo = self.params.send_timeout_ms
        self._sock.immediate = True
        if not self.params.bind:
            # libzmq attaches the pipe before CURVE authentication ends: a refused key would count
            # its batches as sent. Watch the handshake and send only through a passed one.
            self._monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

    def _passed(self) -> bool:
        """Whether the CURVE handshake passed (waiting for it up to the send timeout)."""
        if self._monitor is None:
            return True
        from zmq.utils.monitor import recv_monitor_message

        wait = 0
        if self._handshake == "pending":
            wait = self.params.send_timeout_ms if self.sent or self.dropped else self.params.handshake_timeout_ms
        while self._monitor.poll(wait):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake = "ok"
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._handshake = "refused"
                self.refused += 1
            wait = 0
        return self._handshake == "ok"

    def process(self, port, batch, header=None):
        if header is not None:
            batch = sch.stamp(batch, sch.Header(f"{self.node}", header.seq, header.ingest_ns))
        if not self._passed():
            self.dropped += 1
            return
        try:
            wire.send(self._sock, b"batch", None, batch)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1

    def finish(self):
        if not self._passed():
            return
        try:
            wire.send(self._sock, b"end", {"sent": self.sent})
        except zmq.Again:
            pass

    def close(self):
        if self._monitor is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
            self._monitor = None
        if self._sock is not None:
            self._sock.linger = 1000  # let the end marker leave
            self._sock.close()
            self._sock = None
        if self._gate is not None:
            self._gate.stop()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def result(self):
        return {"sent": self.sent, "dropped": self.dropped, "refused": self.refused}


class InParams(SourceParams, LinkParams):
    bind: bool = True
    kind: Literal["events", "samples", "frames", "spikes", "commands"] = "events"
    width: int = 640
    height: int = 480
    channels: list[str] | int = 8
    rate_hz: float = 1000.0
    shape: list[int] = Field(default_factory=lambda: [1])
    dtype: str = "float32"
    population: str = "p"
    size: int = 1
    fields: dict[str, str] = Field(default_factory=lambda: {"u": "float32"})
    senders: int = Field(1, ge=1, description="end of stream once this many senders said `end`")
    idle_timeout_s: float = Field(5.0, gt=0, description="end of stream after this long with nothing")
    start_timeout_s: float = Field(30.0, gt=0, description="end of stream if nothing came this long after start")


def declared_schema(p: InParams):
    """The schema a `zmq_in` promises downstream, from its `kind` and facts."""
    if p.kind == "events":
        return sch.events_schema(p.width, p.height)
    if p.kind == "samples":
        chans = p.channels if isinstance(p.channels, list) else [f"ch{i}" for i in range(p.channels)]
        return sch.samples_schema(chans, p.rate_hz)
    if p.kind == "frames":
        return sch.frames_schema(tuple(p.shape), p.dtype)
    if p.kind == "spikes":
        return sch.spikes_schema(p.population, p.size)
    return sch.commands_schema(p.fields)


@register
class ZmqIn(Source):
    """Yields batches arriving on a CURVE ZeroMQ PULL link; rejects batches of another schema."""

    name = "zmq_in"
    outputs = {"out": "any"}
    Params = InParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.received = self.rejected = self.gaps = self._refused = 0
        self._ctx = self._sock = self._gate = None

    def schemas(self, inputs):
        return {"out": declared_schema(self.params)}

    def setup(self):
        self._schema = declared_schema(self.params)
        self._ctx = zmq.Context()
        self._sock, self._gate = _open(self._ctx, zmq.PULL, self.params, self.node)

    def generate(self):
        ends, last_seq = 0, {}
        deadline = time.monotonic() + self.params.start_timeout_s
        while ends < self.params.senders and time.monotonic() < deadline:
            if not self._sock.poll(50):
                continue
            deadline = time.monotonic() + self.params.idle_timeout_s
            parts = self._sock.recv_multipart(copy=False)
            try:
                kind, _, frames = wire.parse(parts)
                if kind == b"end":
                    ends += 1
                    continue
                if kind != b"batch" or len(frames) != 2:
                    raise LinkError(f"unexpected message '{kind!r}' with {len(frames)} frames")
                batch = wire.frames_batch(*frames)
            except LinkError:
                self.rejected += 1
                continue
            if not sch.unstamp(batch.schema).equals(self._schema, check_metadata=False):
                self.rejected += 1
                continue
            head = sch.header_of(batch)
            if head is not None:
                prev = last_seq.get(head.stream)
                if prev is not None and head.seq != prev + 1:
                    self.gaps += 1
                last_seq[head.stream] = head.seq
            self.received += 1
            yield batch.replace_schema_metadata(self._schema.metadata)

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._gate is not None:
            self._refused = self._gate.refused
            self._gate.stop()
            self._gate = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def result(self):
        return {"received": self.received, "rejected": self.rejected, "gaps": self.gaps,
                "refused_keys": self._gate.refused if self._gate is not None else self._refused}
