"""The wire format of every reflexarc ZeroMQ link: a kind, a JSON header, Arrow IPC frames.

A message is multipart `[kind, header_json, *arrow]`; a batch travels as two frames, its
IPC schema message and its IPC record-batch message, both sent and received without
copies (`copy=False`; the received frames are wrapped as Arrow buffers in place). The
batch's stream, sequence number and ingest time ride in its schema metadata
(`pipeline.schemas.stamp`).
"""

from __future__ import annotations

import json
import math
import re

import pyarrow as pa
import zmq

from pipeline.errors import LinkError

MAX_HEADER = 64 << 10  # bytes of JSON header (an admin deploy may carry 1 MB, see the manager)


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


def parse(parts: list, max_header: int = MAX_HEADER) -> tuple[bytes, dict, list]:
    """(kind, header, remaining frames) of a received message; LinkError when malformed."""
    if len(parts) < 2:
        raise LinkError(f"a link message needs at least 2 frames, got {len(parts)}")
    if len(_buf(parts[1])) > max_header:
        raise LinkError(f"a link message's header is {len(_buf(parts[1]))} bytes (at most {max_header})")
    try:
        header = json.loads(bytes(_buf(parts[1])))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LinkError(f"a link message's header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise LinkError("a link message's header must be a JSON object")
    return bytes(_buf(parts[0])), header, parts[2:]


# --- validation: every field of every message is checked before anyone uses it ----------------

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")


def valid_name(value) -> bool:
    """A robot, version or model file name: `[A-Za-z0-9._-]`, 1-64 long, not dots alone."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None and value.strip(".") != ""


def _int(lo: int, hi: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _num(lo: float, hi: float):
    return lambda v: (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                      and lo <= v <= hi)


def _str(n: int):
    return lambda v: isinstance(v, str) and len(v) <= n


def _list(item, n: int):
    return lambda v: isinstance(v, list) and len(v) <= n and all(item(x) for x in v)


def _opt(check):
    return lambda v: v is None or check(v)


def _dict(n: int):
    return lambda v: isinstance(v, dict) and len(json.dumps(v)) <= n


NAME, HEX, BIG = valid_name, lambda v: isinstance(v, str) and _HEX.fullmatch(v) is not None, 2**62
SEQ, COUNT, NUM = _int(-1, BIG), _int(0, BIG), _num(-1e12, 1e12)
TEXT, LONG_TEXT = _str(200), _str(2000)

#: what a robot may say: field -> check; `REQUIRED` names the fields a message must have
ROBOT = {
    "name": NAME, "tags": _list(NAME, 32), "version": TEXT, "model_version": TEXT, "model_hash": _opt(_str(64)),
    "model_error": _opt(LONG_TEXT), "config_error": _opt(LONG_TEXT), "pid": _opt(_int(0, 2**31)),
    "status": _str(32), "first": COUNT, "seq": COUNT, "step": COUNT, "loop_hz": NUM, "latency_ms": NUM,
    "drops": COUNT, "budget_misses": COUNT, "safe_states": COUNT, "fallbacks": COUNT, "buffered": COUNT,
    "spilled": COUNT, "canary": _opt(_dict(4096)), "t": NUM,
}
#: what the manager may say to a robot
MANAGER = {
    "acked": SEQ, "seq": SEQ, "expect": COUNT, "t": NUM, "reason": TEXT, "config": _dict(1 << 20),
    "version": TEXT, "file": NAME, "sha256": HEX, "mode": lambda v: v in ("live", "shadow", "end-shadow"),
    "canary": _opt(_dict(4096)),
}
ROBOT_REQUIRED = {b"hello": ("name",), b"hb": ("name",), b"tel": ("seq",)}
MANAGER_REQUIRED = {b"welcome": ("acked",), b"ack": ("seq",), b"nack": ("expect",), b"deploy": ("config",),
                    b"model": ("version",)}
#: Arrow or file frames a message may carry after its header
FRAMES = {b"tel": (1, 1), b"model": (0, 1)}


def check(kind: bytes, head: dict, frames: list, fields: dict, required: dict, kinds=None) -> None:
    """Raise LinkError naming the field when a message does not fit `fields` and `required`
    (ROBOT and ROBOT_REQUIRED for what robots send, MANAGER and MANAGER_REQUIRED for the manager)."""
    if kinds is not None and kind not in kinds:
        raise LinkError(f"unexpected message kind {kind[:32]!r}")
    for key in required.get(kind, ()):
        if key not in head:
            raise LinkError(f"'{kind.decode(errors='replace')}' lacks field '{key}'")
    for key, value in head.items():
        test = fields.get(key)
        if test is not None and not test(value):
            raise LinkError(f"'{kind.decode(errors='replace')}' field '{key}' has a bad value {str(value)[:60]!r}")
    lo, hi = FRAMES.get(kind, (0, 0))
    if not lo <= len(frames) <= hi:
        raise LinkError(f"'{kind.decode(errors='replace')}' carries {len(frames)} data frames, expected {lo}-{hi}")


def size(frame) -> int:
    return len(_buf(frame)) if not isinstance(frame, bytes) else len(frame)
