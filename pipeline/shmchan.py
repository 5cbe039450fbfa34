"""Shared-memory channels between processes of one machine: the `ray-shm` transport.

A channel carries waves `(wave, finish, items)` from one writer process to one reader
process. It is a file (in /dev/shm when it has room) mapped by both sides: a ring of
`size` bytes after a small header. A record is the pickled envelope of a wave (nodes,
ports, sequence numbers, ingest times, schemas the reader has not seen yet) followed by
each Arrow batch in IPC form, every part aligned to 64 bytes.

Two named pipes carry one byte per record: `.data` from writer to reader ("a record is
ready"), `.space` from reader to writer ("the oldest record is consumed"). Each side
consumes a token before it touches the memory the token stands for, so the pipe's
kernel locks order the memory accesses on any CPU, and a blocked side sleeps in `poll`
instead of spinning. At most `capacity` records are in flight (backpressure); a record
larger than half the ring is spilled to a file of its own beside the ring.

The reader copies each record out of the ring once (one memcpy of its bodies), so the
batches it returns own their memory and operators may keep them.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import struct
from collections import deque
from collections.abc import Callable

import pyarrow as pa

from pipeline.errors import ReflexarcError

_HEADER = 64  # the abort flag lives in the first 8 bytes
_ALIGN = 64
_REC = struct.Struct("<QII")  # record length (0: wrap to the ring's start), envelope length, kind
_INLINE, _SPILL = 0, 1
_POLL_MS = 100
_MESSAGE, _STREAM, _PICKLED = 0, 1, 2  # how a batch travels: IPC message, IPC stream, pickle


class Aborted(ReflexarcError):
    """The run was aborted while this side waited on the channel."""


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def create(path: str, size: int) -> dict:
    """Create the ring file and its two pipes; return the spec both sides open."""
    size = _aligned(max(size, 1 << 16))
    with open(path, "wb") as f:
        f.truncate(_HEADER + size)
    os.mkfifo(path + ".data")
    os.mkfifo(path + ".space")
    return {"kind": "ring", "name": os.path.basename(path), "path": path, "size": size}


class Channel:
    """One side ("w" or "r") of a channel made by `create`."""

    def __init__(self, spec: dict, role: str, capacity: int = 8):
        self.path = spec["path"]
        self.size = spec["size"]
        self.role = role
        self.capacity = min(max(1, capacity), 4096)  # a pipe holds 64 KiB of tokens
        fd = os.open(self.path, os.O_RDWR)
        try:
            # populate: fault the whole ring in now, not page by page while batches stream
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self.mm = mmap.mmap(fd, _HEADER + self.size, flags=flags)
        finally:
            os.close(fd)
        self.mv = memoryview(self.mm).cast("B")
        # O_RDWR: opening a pipe never waits for the other side, and it never reads EOF
        self.data_fd = os.open(self.path + ".data", os.O_RDWR | os.O_NONBLOCK)
        self.space_fd = os.open(self.path + ".space", os.O_RDWR | os.O_NONBLOCK)
        self.pollers = {}
        for fd in (self.data_fd, self.space_fd):
            self.pollers[fd] = select.poll()
            self.pollers[fd].register(fd, select.POLLIN)
        self.pos = 0  # monotonic byte position of this side in the ring
        self.outstanding: deque[int] = deque()  # writer: bytes of each record not yet consumed
        self.used = 0
        self.spills = 0
        self.queue_max = 0
        self.name = spec.get("name") or os.path.basename(self.path)
        self.codec = Codec()

    # -- both sides ----------------------------------------------------------------
    def abort(self) -> None:
        """Wake and stop whoever waits on this channel (either side may call it)."""
        struct.pack_into("<Q", self.mm, 0, 1)
        for fd in (self.data_fd, self.space_fd):
            _token(fd)

    @property
    def aborted(self) -> bool:
        return struct.unpack_from("<Q", self.mm, 0)[0] != 0

    def close(self) -> None:
        for fd in (self.data_fd, self.space_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.mv.release()
        self.mm.close()

    def _take_token(self, fd: int, idle: Callable[[], None] | None) -> None:
        """Consume one token from `fd`, sleeping in poll while there is none."""
        poller = self.pollers[fd]
        while not poller.poll(_POLL_MS):
            if self.aborted:
                raise Aborted(f"channel {os.path.basename(self.path)} was aborted")
            if idle is not None:
                idle()
        os.read(fd, 1)  # only this side reads this pipe: readable means a token is there
        if self.aborted:
            raise Aborted(f"channel {os.path.basename(self.path)} was aborted")

    # -- writer --------------------------------------------------------------------
    def send(self, wave: int, finish: bool, items: list, keys=None, idle=None) -> None:
        """Write one wave; block (calling `idle` now and then) while the ring is full."""
        meta, bodies = self.codec.encode(wave, finish, items, keys)
        head = _aligned(_REC.size + len(meta))
        length = head + sum(_aligned(b.size) for b in bodies)
        if length > self.size // 2:
            self._spill(meta, bodies, head, length, idle)
            return
        self._write(meta, bodies, head, length, _INLINE, idle)

    def _spill(self, meta: bytes, bodies: list, head: int, length: int, idle) -> None:
        name = f"{self.path}.spill{self.spills}"
        self.spills += 1
        with open(name, "wb") as f:
            f.write(_REC.pack(length, len(meta), _INLINE))
            f.write(meta)
            f.seek(head)
            for b in bodies:
                f.seek(_aligned(f.tell()))
                f.write(b)
            f.truncate(length)
        ref = pickle.dumps(name)
        self._write(ref, [], _aligned(_REC.size + len(ref)), _aligned(_REC.size + len(ref)), _SPILL, idle)

    def _write(self, meta: bytes, bodies: list, head: int, length: int, kind: int, idle) -> None:
        off = self.pos % self.size
        pad = self.size - off if off + length > self.size else 0
        self._reclaim(False)
        while len(self.outstanding) >= self.capacity or self.used + pad + length > self.size:
            self._reclaim(True, idle)
        self.queue_max = max(self.queue_max, len(self.outstanding) + 1)
        mv = self.mv
        if pad:
            _REC.pack_into(self.mm, _HEADER + off, 0, 0, 0)
            off = 0
        base = _HEADER + off
        _REC.pack_into(self.mm, base, length, len(meta), kind)
        mv[base + _REC.size : base + _REC.size + len(meta)] = meta
        at = base + head
        for b in bodies:
            mv[at : at + b.size] = memoryview(b).cast("B")
            at += _aligned(b.size)
        self.pos += pad + length
        self.used += pad + length
        self.outstanding.append(pad + length)
        _token(self.data_fd)

    def _reclaim(self, wait: bool, idle=None) -> None:
        """Free the ring space of records the reader has consumed (waiting for one if asked)."""
        if wait:
            self._take_token(self.space_fd, idle)
            self.used -= self.outstanding.popleft()
        while self.outstanding and self.pollers[self.space_fd].poll(0):
            got = os.read(self.space_fd, len(self.outstanding))
            for _ in got:
                self.used -= self.outstanding.popleft()
            if self.aborted:
                raise Aborted(f"channel {os.path.basename(self.path)} was aborted")

    # -- reader --------------------------------------------------------------------
    def recv(self, idle=None) -> tuple[int, bool, list]:
        """The next wave, its batches in memory of their own."""
        self._take_token(self.data_fd, idle)
        off = self.pos % self.size
        length, meta_len, kind = _REC.unpack_from(self.mm, _HEADER + off)
        if length == 0:  # the writer wrapped to the ring's start
            self.pos += self.size - off
            off = 0
            length, meta_len, kind = _REC.unpack_from(self.mm, _HEADER)
        base = _HEADER + off
        meta = self.mv[base + _REC.size : base + _REC.size + meta_len].tobytes()
        head = _aligned(_REC.size + meta_len)
        if kind == _SPILL:
            wave = self._read_spill(pickle.loads(meta))
        else:
            owned = pa.allocate_buffer(length - head)
            memoryview(owned)[:] = self.mv[base + head : base + length].cast("b")
            wave = self.codec.decode(pickle.loads(meta), owned)
        self.pos += length
        _token(self.space_fd)
        return wave

    def _read_spill(self, name: str) -> tuple[int, bool, list]:
        with open(name, "rb") as f:
            data = f.read()
        os.unlink(name)
        length, meta_len, _ = _REC.unpack_from(data, 0)
        head = _aligned(_REC.size + meta_len)
        meta = pickle.loads(data[_REC.size : _REC.size + meta_len])
        owned = pa.allocate_buffer(length - head)
        memoryview(owned)[:] = memoryview(data)[head:length].cast("b")
        return self.codec.decode(meta, owned)


class Codec:
    """How a wave travels as bytes: a pickled envelope plus each Arrow batch in IPC form.

    One per channel side: it remembers the schema of each (node, port) stream, which is
    sent once per stream (again only when it changes). Used by the rings here and by the
    socket channels of `pipeline.netchan`.
    """

    def __init__(self):
        self.schemas: dict = {}  # per (node, port): the schema last sent / received
        self.forms: dict = {}  # writer, per (node, port): how its batches travel

    def encode(self, wave: int, finish: bool, items: list, keys=None) -> tuple[bytes, list]:
        """The wave's envelope (pickled) and its batch bodies (Arrow buffers)."""
        envelope, bodies = [], []
        for node, port, batch, seq, ingest in items:
            if keys is not None and (node, port) not in keys:
                continue
            if not isinstance(batch, pa.RecordBatch):  # not Arrow: travels pickled in the envelope
                envelope.append((node, port, seq, ingest, batch, 0, _PICKLED))
                continue
            schema, key = batch.schema, (node, port)
            fresh = None  # the schema's bytes, when the reader has not seen it yet
            known = self.schemas.get(key)
            if known is not schema:
                if known is None or not known.equals(schema, check_metadata=True):
                    self.forms[key] = _MESSAGE if _one_message(schema) else _STREAM
                    fresh = schema.serialize().to_pybytes()
                self.schemas[key] = schema  # an equal schema object: `equals` is skipped next time
            form = self.forms[key]
            if form == _MESSAGE:
                body = batch.serialize()
            else:  # dictionaries need the whole IPC stream: schema, dictionaries, batch
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, schema) as writer:
                    writer.write_batch(batch)
                body = sink.getvalue()
            envelope.append((node, port, seq, ingest, fresh, body.size, form))
            bodies.append(body)
        return pickle.dumps((wave, finish, envelope), protocol=5), bodies

    def decode(self, meta, owned: pa.Buffer) -> tuple[int, bool, list]:
        """The wave back from its envelope and the bodies laid out (64-byte aligned) in `owned`."""
        wave, finish, envelope = meta
        items, at = [], 0
        for node, port, seq, ingest, extra, size, form in envelope:
            if form == _PICKLED:
                items.append((node, port, extra, seq, ingest))
                continue
            body = owned.slice(at, size)
            at += _aligned(size)
            if form == _STREAM:
                batch = pa.ipc.open_stream(body).read_next_batch()
            else:
                if extra is not None:  # a new schema for this stream
                    self.schemas[(node, port)] = pa.ipc.read_schema(pa.py_buffer(extra))
                batch = pa.ipc.read_record_batch(body, self.schemas[(node, port)])
            items.append((node, port, batch, seq, ingest))
        return wave, finish, items


def _one_message(schema: pa.Schema) -> bool:
    """Whether a batch of this schema is one IPC message (no dictionaries anywhere)."""

    def plain(t: pa.DataType) -> bool:
        return not pa.types.is_dictionary(t) and all(plain(t.field(i).type) for i in range(t.num_fields))

    return all(plain(f.type) for f in schema)


def _token(fd: int) -> None:
    try:
        os.write(fd, b"\0")
    except BlockingIOError:  # the pipe is full: the other side has wake-ups enough
        pass
