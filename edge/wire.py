"""The wire format of every reflexarc ZeroMQ link: a kind, a JSON header, Arrow IPC frames.

A message is multipart `[kind, header_json, *arrow]`; a batch travels as two frames, its
IPC schema message and its IPC record-batch message, both sent and received without
copies (`copy=False`; the received frames are wrapped as Arrow buffers in place). The
batch's stream, sequence number and ingest time ride in its schema metadata
(`pipeline.schemas.stamp`).
"""

from __future__ import annotations

import json

import pyarrow as pa
import zmq

from pipeline.errors import LinkError


def batch_frames(batch: pa.RecordBatch) -> list:
    """The two IPC frames of one (stamped) batch, as Arrow buffers zmq can send in place."""
    return [batch.schema.serialize(), batch.serialize()]


def frames_batch(schema_frame, batch_frame) -> pa.RecordBatch:
    """Rebuild a batch from its two frames (zmq.Frame or bytes) without copying the body."""
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(_buf(schema_frame)))
        return pa.ipc.read_record_batch(pa.py_buffer(_buf(batch_frame)), schema)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise LinkError(f"malformed Arrow frames on a link: {exc}") from None


def _buf(frame):
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def send(sock: zmq.Socket, kind: bytes, header: dict | None = None, batch: pa.RecordBatch | None = None,
         extra: list | None = None, route: list | None = None, flags: int = 0) -> None:
    """Send one message; raises zmq.Again when `flags` has NOBLOCK and it cannot go now."""
    parts = list(route or []) + [kind, json.dumps(header or {}).encode()]
    if batch is not None:
        parts += batch_frames(batch)
    if extra:
        parts += extra
    sock.send_multipart(parts, flags=flags, copy=False)


def parse(parts: list) -> tuple[bytes, dict, list]:
    """(kind, header, remaining frames) of a received message; LinkError when malformed."""
    if len(parts) < 2:
        raise LinkError(f"a link message needs at least 2 frames, got {len(parts)}")
    try:
        header = json.loads(bytes(_buf(parts[1])))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LinkError(f"a link message's header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise LinkError("a link message's header must be a JSON object")
    return bytes(_buf(parts[0])), header, parts[2:]
