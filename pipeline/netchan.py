"""Socket channels between processes on different machines: `ray-shm`'s cross-node edges.

A channel carries waves `(wave, finish, items)` from one writer to one reader over one
TCP connection, in the same form as the shared-memory rings of `pipeline.shmchan` (a
pickled envelope, then each Arrow batch as an IPC body aligned to 64 bytes; schemas
once per stream), and under the same rules: at most `capacity` records in flight (the
reader acknowledges each record it has taken, one byte), a blocked side sleeps in
`poll` and calls `idle` now and then, and a peer that goes away mid-stream is a
`LinkError` on the other side (the writer waits for the reader to take the finish record
before it closes). The reader listens (`listen`), the writer connects.

`open_channel(spec, role)` opens either kind from the spec a reader made, so callers
need not care which one an edge got.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
from collections.abc import Callable

import pyarrow as pa

from pipeline.errors import LinkError
from pipeline.shmchan import Channel, Codec, _aligned

_HEAD = struct.Struct("<QI")  # bytes of bodies (aligned), envelope length
_POLL_MS = 100
_PAD = bytes(64)


def node_address() -> str:
    """The address other machines reach this one at (Ray's node address when in Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:
        pass
    return "127.0.0.1"


def listen(name: str, host: str | None = None) -> tuple[socket.socket, dict]:
    """A listening socket for the reading end of channel `name`, and the spec writers open."""
    host = host or node_address()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1)
    return sock, {"kind": "socket", "name": name, "host": host, "port": sock.getsockname()[1]}


def open_channel(spec: dict, role: str, capacity: int = 8, *, listener: socket.socket | None = None,
                 timeout_s: float = 60.0) -> Channel | NetChannel:
    """One side ("w" or "r") of the channel `spec` describes: a ring or a socket."""
    if spec.get("kind", "ring") == "ring":
        return Channel(spec, role, capacity)
    return NetChannel(spec, role, capacity, listener=listener, timeout_s=timeout_s)


class NetChannel:
    """One side of a socket channel; the same `send`/`recv`/`abort`/`close` as a ring."""

    def __init__(self, spec: dict, role: str, capacity: int = 8, *, listener: socket.socket | None = None,
                 timeout_s: float = 60.0):
        self.name = spec["name"]
        self.path = f"tcp://{spec['host']}:{spec['port']}/{self.name}"
        self.role = role
        self.capacity = max(1, capacity)
        self.codec = Codec()
        self.outstanding = 0
        self.queue_max = 0
        self.spills = 0
        self.records = 0
        if role == "w":
            self.sock = socket.create_connection((spec["host"], spec["port"]), timeout=timeout_s)
        else:
            if listener is None:
                listener, _ = listen(self.name, spec["host"])  # pragma: no cover - readers prepare first
            listener.settimeout(timeout_s)
            try:
                self.sock, _ = listener.accept()
            except TimeoutError:
                raise LinkError(f"channel {self.name}: no writer connected within {timeout_s:g} s") from None
            finally:
                listener.close()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)
        self._closed = False

    # -- both sides ----------------------------------------------------------------
    def abort(self) -> None:
        """Wake and stop the other side: it reads the end of the stream."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()

    def _wait(self, events: int, idle: Callable[[], None] | None) -> None:
        self.poller.modify(self.sock, events)
        while not self.poller.poll(_POLL_MS):
            if idle is not None:
                idle()

    def _gone(self, why: str) -> LinkError:
        # not `Aborted`: a peer that vanishes mid-stream is a failure, never a quiet end
        return LinkError(f"channel {self.name}: the {'reader' if self.role == 'w' else 'writer'} went away mid-stream ({why})")

    # -- writer --------------------------------------------------------------------
    def send(self, wave: int, finish: bool, items: list, keys=None, idle=None) -> None:
        """Write one wave; block (calling `idle` now and then) while `capacity` are unacknowledged."""
        meta, bodies = self.codec.encode(wave, finish, items, keys)
        self._acks(wait=False, idle=idle)
        while self.outstanding >= self.capacity:
            self._acks(wait=True, idle=idle)
        size = sum(_aligned(b.size) for b in bodies)
        parts: list = [_HEAD.pack(size, len(meta)), meta]
        for b in bodies:
            parts.append(memoryview(b).cast("B"))
            pad = _aligned(b.size) - b.size
            if pad:
                parts.append(_PAD[:pad])
        self._send(parts, idle)
        self.outstanding += 1
        self.records += 1
        self.queue_max = max(self.queue_max, self.outstanding)
        if finish:
            # the last record: wait until the reader has taken everything, so that closing
            # this socket with acknowledgements still unread (which makes TCP reset the
            # connection and drop what the reader had not read yet) cannot happen
            while self.outstanding:
                self._acks(wait=True, idle=idle)

    def _send(self, parts: list, idle) -> None:
        views = [memoryview(p).cast("B") if not isinstance(p, memoryview) else p for p in parts]
        while views:
            try:
                sent = self.sock.sendmsg(views[:64])
            except BlockingIOError:
                self._wait(select.POLLOUT, idle)
                continue
            except OSError as exc:
                raise self._gone(str(exc)) from None
            while sent and views:
                if sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def _acks(self, wait: bool, idle) -> None:
        while True:
            try:
                got = self.sock.recv(4096)
            except BlockingIOError:
                if not wait:
                    return
                self._wait(select.POLLIN, idle)
                continue
            except OSError as exc:
                raise self._gone(str(exc)) from None
            if not got:
                if not self.outstanding:  # the reader took everything and closed: a clean end
                    return
                raise self._gone("connection closed")
            self.outstanding -= len(got)
            wait = False

    # -- reader --------------------------------------------------------------------
    def recv(self, idle=None) -> tuple[int, bool, list]:
        """The next wave, its batches in memory of their own."""
        head = bytearray(_HEAD.size)
        self._read_into(memoryview(head), idle)
        size, meta_len = _HEAD.unpack(head)
        meta = bytearray(meta_len)
        self._read_into(memoryview(meta), idle)
        owned = pa.allocate_buffer(size)
        if size:
            self._read_into(memoryview(owned).cast("B"), idle)
        wave = self.codec.decode(pickle.loads(meta), owned)
        try:
            self.sock.send(b"\0")
        except BlockingIOError:  # pragma: no cover - one byte never fills a socket buffer
            pass
        except OSError as exc:
            raise self._gone(str(exc)) from None
        return wave

    def _read_into(self, view: memoryview, idle) -> None:
        while len(view):
            try:
                n = self.sock.recv_into(view)
            except BlockingIOError:
                self._wait(select.POLLIN, idle)
                continue
            except OSError as exc:
                raise self._gone(str(exc)) from None
            if n == 0:
                raise self._gone("connection closed")
            view = view[n:]


__all__ = ["NetChannel", "listen", "node_address", "open_channel"]
