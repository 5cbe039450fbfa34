"""MCAP export and import: recordings where roboticists look (Foxglove, Lichtblick, ROS 2 tools).

`export_mcap(REC, OUT.mcap)` writes, per recorded stream:

- `/<node>/<port>` (stream `camera.out` -> `/camera/out`): a view Foxglove shows (`pipeline.foxglove.View`): frames and events as
  `foxglove.RawImage`, samples and commands as JSON rows for the Plot panel, spikes as JSON;
- `/<node>/<port>/arrow`: the recording itself, lossless. Each message is one Arrow IPC
  record-batch message, byte for byte as the recorder wrote it (custom metadata with the
  sequence number and ingest time included, compressed buffers left compressed); the
  channel's schema is the stream's IPC schema message (schema encoding `arrow.ipc`).

`import_mcap(OUT.mcap, DIR)` gives the recording back: every stream's file is rebuilt from
those messages, so its batches are identical (the files too, for an unrotated recording).
An MCAP file without our Arrow channels (made by others) is imported from its Foxglove
`RawImage` / `CompressedImage` channels (protobuf or JSON) as frames streams and its other
JSON channels as commands streams (numeric fields, nested ones joined with `.`).
MCAP is read with the `mcap` package's reader and written with its writer.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import schemas as sch
from pipeline.errors import DataError
from pipeline.foxglove import View, topic_of
from pipeline.recording import (
    MANIFEST,
    SUFFIX,
    Recording,
    _version,
    mark_failed,
    scan_stream,
    schema_to_b64,
    write_manifest,
)

log = logging.getLogger(__name__)

ARROW_ENCODING = "arrow.ipc"
ARROW_SCHEMA = "reflexarc.ArrowRecordBatch"
MANIFEST_RECORD = "reflexarc.manifest"
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the IPC stream's end-of-stream marker
_COMPRESSION = ("zstd", "lz4", "none")


# --- export --------------------------------------------------------------------------


def _ipc_messages(path: Path) -> Iterator[pa.ipc.Message]:
    """The IPC messages of one stream file in order (schema first); stops at a cut-off one."""
    if path.stat().st_size == 0:
        return
    reader = pa.ipc.MessageReader.open_stream(pa.memory_map(str(path)))
    while True:
        try:
            yield reader.read_next_message()
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as exc:
            log.warning("'%s' is cut off after its last whole batch (%s)", path, exc)
            return


def export_mcap(recording: str | Path, out: str | Path, streams: list[str] | None = None, *,
                window_ms: float = 33.0, views: bool = True, compression: str = "zstd",
                chunk_mb: float = 4.0) -> dict:
    """Write a recording as one MCAP file; returns per stream the messages written.

    `window_ms` is how much sensor time of events makes one image of its view; `views:
    False` writes only the lossless Arrow channels.
    """
    from mcap.writer import CompressionType, Writer

    if compression not in _COMPRESSION:
        raise DataError(f"MCAP compression '{compression}' is not one of {', '.join(_COMPRESSION)}")
    rec = Recording(recording)
    chosen = streams or rec.streams
    for s in chosen:
        rec.schema(s)  # a clear error for a stream it lacks or cannot read
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((rec.folder / MANIFEST).read_text()) if (rec.folder / MANIFEST).exists() else {}
    written: dict[str, dict] = {}
    try:
        fh = open(out, "wb")
    except OSError as exc:
        raise DataError(f"cannot write '{out}': {exc.strerror}") from None
    with fh:
        w = Writer(fh, chunk_size=int(chunk_mb * (1 << 20)),
                   compression={"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4,
                                "none": CompressionType.NONE}[compression])
        w.start(profile="", library=f"reflexarc {_version()}")
        schema_ids: dict[tuple, int] = {}

        def schema_id(name: str, encoding: str, data: bytes) -> int:
            key = (name, encoding, data)
            if key not in schema_ids:
                schema_ids[key] = w.register_schema(name=name, encoding=encoding, data=data)
            return schema_ids[key]

        for stream in chosen:
            written[stream] = _export_stream(w, rec, stream, schema_id, window_ms, views)
        w.add_metadata(MANIFEST_RECORD, {"manifest": json.dumps(manifest, default=str)})
        w.finish()
    return {"path": str(out), "streams": written}


def _export_stream(w, rec: Recording, stream: str, schema_id, window_ms: float, views: bool) -> dict:
    schema = rec.schema(stream)
    meta = rec.meta.get(stream, {})
    arrow_ch = None
    view = View(stream, schema, int(window_ms * 1000)) if views else None
    view_ch = None
    if view is not None and view.shown:
        name, enc, data = view.channel_schema()
        view_ch = w.register_channel(topic=topic_of(stream), message_encoding=view.message_encoding,
                                     schema_id=schema_id(name, enc, data),
                                     metadata={"stream": stream, "kind": view.kind or ""})
    counts = {"batches": 0, "view_messages": 0}
    t_idx = schema.get_field_index("t")
    last_ns = 0
    seq_view = 0
    for name in rec.files[stream]:
        path = rec.folder / name
        if not path.exists():
            continue
        file_schema = None
        for msg in _ipc_messages(path):
            if msg.type == "schema":
                body = msg.serialize().to_pybytes()
                file_schema = pa.ipc.read_schema(msg)
                if arrow_ch is None:
                    arrow_ch = w.register_channel(
                        topic=f"{topic_of(stream)}/arrow", message_encoding=ARROW_ENCODING,
                        schema_id=schema_id(ARROW_SCHEMA, ARROW_ENCODING, body),
                        metadata={"stream": stream, "kind": sch.kind_of(schema) or "",
                                  "rows": str(meta.get("rows", "")), "format": "Arrow IPC record-batch message"})
                continue
            if msg.type != "record batch":
                raise DataError(f"'{path}' holds an IPC '{msg.type}' message; only record batches are exported")
            batch = pa.ipc.read_record_batch(msg, file_schema)
            if t_idx >= 0 and batch.num_rows:
                last_ns = max(int(batch.column(t_idx)[0].as_py()), 0) * 1000
            w.add_message(channel_id=arrow_ch, log_time=last_ns, publish_time=last_ns,
                          data=msg.serialize().to_pybytes(), sequence=counts["batches"])
            counts["batches"] += 1
            if view_ch is not None:
                for log_ns, payload in view.feed(batch):
                    w.add_message(channel_id=view_ch, log_time=log_ns, publish_time=log_ns, data=payload,
                                  sequence=seq_view)
                    seq_view += 1
    if view_ch is not None:
        for log_ns, payload in view.flush():
            w.add_message(channel_id=view_ch, log_time=log_ns, publish_time=log_ns, data=payload, sequence=seq_view)
            seq_view += 1
    if arrow_ch is None:  # a stream without a file (never opened): its schema from the manifest
        body = schema.serialize().to_pybytes()
        arrow_ch = w.register_channel(topic=f"{topic_of(stream)}/arrow", message_encoding=ARROW_ENCODING,
                                      schema_id=schema_id(ARROW_SCHEMA, ARROW_ENCODING, body),
                                      metadata={"stream": stream, "kind": sch.kind_of(schema) or ""})
    counts["view_messages"] = seq_view
    return counts


# --- import --------------------------------------------------------------------------


def _reader(fh):
    from mcap.reader import make_reader

    return make_reader(fh)


def import_mcap(path: str | Path, out: str | Path, *, strict: bool = False, overwrite: bool = False) -> dict:
    """Turn an MCAP file into a recording folder (see the module docstring for what is read)."""
    from mcap.exceptions import McapError

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise DataError(f"'{path}' is not a file")
    if (out / MANIFEST).exists() and not overwrite:
        raise DataError(f"'{out}' already holds a recording; choose another folder")
    try:
        with open(path, "rb") as fh:
            summary = _reader(fh).get_summary()
    except (McapError, OSError, ValueError, EOFError) as exc:
        raise DataError(f"'{path}' is not a readable MCAP file: {exc}") from None
    channels = dict(summary.channels) if summary is not None else {}
    if summary is None:
        raise DataError(f"'{path}' has no MCAP summary section (cut off?); run `mcap recover` on it first")
    ours = {cid: ch for cid, ch in channels.items() if ch.message_encoding == ARROW_ENCODING}
    try:
        if ours:
            return _import_ours(path, out, summary, ours)
        return _import_theirs(path, out, summary, strict)
    except (McapError, EOFError) as exc:
        if (out / MANIFEST).exists():
            mark_failed(out, f"reading '{path}': {exc}")
        raise DataError(f"'{path}' is damaged: {exc}") from None


def _import_ours(path: Path, out: Path, summary, ours: dict) -> dict:
    """Rebuild each stream's IPC file from its Arrow channel, message bytes as they were."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = None
    with open(path, "rb") as fh:
        reader = _reader(fh)
        for record in reader.iter_metadata():
            if record.name == MANIFEST_RECORD:
                manifest = json.loads(record.metadata["manifest"])
    files: dict[int, object] = {}
    names: dict[int, str] = {}
    counts: dict[str, dict] = {}
    try:
        for cid, ch in ours.items():
            stream = ch.metadata.get("stream") or ch.topic.strip("/").removesuffix("/arrow").replace("/", ".", 1)
            name = f"{stream}{SUFFIX}"
            names[cid] = stream
            f = open(out / name, "wb")
            files[cid] = f
            f.write(summary.schemas[ch.schema_id].data)
            counts[stream] = {"batches": 0, "rows": 0}
        with open(path, "rb") as fh:
            # file order, not log-time order: batches go back in the order they were written
            for _schema, channel, message in _reader(fh).iter_messages(
                    topics=[ch.topic for ch in ours.values()], log_time_order=False):
                files[channel.id].write(message.data)
                counts[names[channel.id]]["batches"] += 1
    finally:
        for f in files.values():
            f.write(_EOS)
            f.close()
    m = manifest or {"format": "reflexarc-recording", "format_version": 1, "streams": {}, "config": None}
    m = dict(m)
    m["reflexarc_version"] = m.get("reflexarc_version") or _version()
    m["imported"] = {"from": str(path), "reflexarc_version": _version()}
    streams = dict(m.get("streams") or {})
    for stream in counts:
        entry = dict(streams.get(stream) or {})
        files = [f"{stream}{SUFFIX}"]
        info = scan_stream(out, files)  # counts from what came back (a cut-off recording has fewer)
        schema = info.pop("schema") or pa.ipc.read_schema(pa.py_buffer(summary.schemas[
            next(ch.schema_id for cid, ch in ours.items() if names[cid] == stream)].data))
        entry.update({k: info[k] for k in ("batches", "rows", "bytes", "t_start_us", "t_end_us", "first_seq",
                                           "last_seq", "seq_gaps")})
        entry.update(files=files, schema_b64=schema_to_b64(schema), kind=sch.kind_of(schema),
                     fields={f.name: str(f.type) for f in schema})
        streams[stream] = entry
        counts[stream]["rows"] = info["rows"]
    m["streams"] = {s: streams[s] for s in counts}
    # a complete or failed run stays so; one whose recorder never closed is recovered now
    m["status"] = m.get("status") if m.get("status") in ("complete", "failed") else "recovered" if manifest \
        else "complete"
    write_manifest(out, m)
    return {"dir": str(out), "streams": counts, "warnings": [], "lossless": True}


# others' files: Foxglove images and JSON


def protobuf_decoder(schema_name: str, schema_data: bytes):
    """A function bytes -> protobuf message for a schema given as a FileDescriptorSet."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fds = descriptor_pb2.FileDescriptorSet.FromString(schema_data)
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(schema_name))
    return cls.FromString


_IMAGE_DTYPES = {"mono8": (np.uint8, 1), "8uc1": (np.uint8, 1), "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3),
                 "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4), "mono16": (np.uint16, 1),
                 "16uc1": (np.uint16, 1), "32fc1": (np.float32, 1)}


def _raw_pixels(msg: dict) -> np.ndarray:
    enc = str(msg.get("encoding", "")).lower()
    if enc not in _IMAGE_DTYPES:
        raise ValueError(f"RawImage encoding '{msg.get('encoding')}' is not one of {', '.join(_IMAGE_DTYPES)}")
    dtype, ch = _IMAGE_DTYPES[enc]
    w, h = int(msg["width"]), int(msg["height"])
    step = int(msg.get("step") or w * ch * np.dtype(dtype).itemsize)
    data = msg["data"]
    if isinstance(data, str):
        data = base64.b64decode(data)
    rows = np.frombuffer(data, np.uint8)
    if rows.size < step * h:
        raise ValueError(f"RawImage data holds {rows.size} bytes, {step} x {h} expected")
    rows = rows[: step * h].reshape(h, step)[:, : w * ch * np.dtype(dtype).itemsize]
    img = rows.copy().view(dtype).reshape(h, w, ch) if ch > 1 else rows.copy().view(dtype).reshape(h, w)
    if enc.startswith("bgr"):
        img = img[..., [2, 1, 0] + ([3] if ch == 4 else [])]
    return img[..., :3] if ch == 4 else img


def _compressed_pixels(msg: dict) -> np.ndarray:
    from PIL import Image

    data = msg["data"]
    if isinstance(data, str):
        data = base64.b64decode(data)
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB") if im.mode not in ("L", "I;16", "RGB") else im
        return np.asarray(im)


def _flatten(obj, prefix: str = "") -> dict:
    flat = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            flat.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, bool | int | float) and prefix:
        flat[prefix[:-1]] = obj
    return flat


def _stream_name(topic: str) -> str:
    node = "".join(c if c.isalnum() or c == "_" else "_" for c in topic.strip("/")) or "topic"
    return f"{node}.out"


class _Channel:
    """One foreign channel being turned into a stream: what it is, its rows so far."""

    def __init__(self, topic: str, kind: str, decode):
        self.topic, self.kind, self.decode = topic, kind, decode
        self.stream = _stream_name(topic)
        self.schema: pa.Schema | None = None
        self.t: list[int] = []
        self.rows: list = []
        self.skipped = 0
        self.first_skip: str | None = None

    def skip(self, index: int, why: str) -> None:
        self.skipped += 1
        self.first_skip = self.first_skip or f"message {index}: {why}"


def _classify(schema, channel) -> _Channel | None:
    name = schema.name if schema is not None else ""
    enc = channel.message_encoding
    if enc == "protobuf" and schema is not None and name in ("foxglove.RawImage", "foxglove.CompressedImage"):
        from google.protobuf.json_format import MessageToDict

        parse = protobuf_decoder(name, schema.data)

        def decode(data):
            m = parse(data)
            d = MessageToDict(m, preserving_proto_field_name=True)
            d["data"] = bytes(m.data)
            return d

        return _Channel(channel.topic, "raw" if name.endswith("RawImage") else "compressed", decode)
    if enc == "json":
        kind = "raw" if name == "foxglove.RawImage" else "compressed" if name == "foxglove.CompressedImage" else "json"
        return _Channel(channel.topic, kind, json.loads)
    return None


def _import_theirs(path: Path, out: Path, summary, strict: bool) -> dict:
    from pipeline.operator import make

    chans: dict[int, _Channel] = {}
    ignored = []
    for cid, channel in summary.channels.items():
        c = _classify(summary.schemas.get(channel.schema_id), channel)
        if c is None:
            schema = summary.schemas.get(channel.schema_id)
            ignored.append(f"{channel.topic} ({channel.message_encoding}"
                           f"{', ' + schema.name if schema is not None else ''})")
        else:
            chans[cid] = c
    if not chans:
        raise DataError(f"'{path}' has no channel reflexarc can import (Foxglove RawImage/CompressedImage, "
                        f"JSON, or reflexarc's Arrow channels); it holds: {', '.join(ignored) or 'none'}")
    index = 0
    with open(path, "rb") as fh:
        for _schema, channel, message in _reader(fh).iter_messages(topics=[c.topic for c in chans.values()]):
            c = chans[channel.id]
            index += 1
            try:
                msg = c.decode(message.data)
                if c.kind == "json":
                    row = _flatten(msg)
                    if not row:
                        raise ValueError("no numeric field")
                else:
                    row = _raw_pixels(msg) if c.kind == "raw" else _compressed_pixels(msg)
                    if c.rows and (row.shape != c.rows[0].shape or row.dtype != c.rows[0].dtype):
                        raise ValueError(f"an image of {row.shape} {row.dtype} in a stream of "
                                         f"{c.rows[0].shape} {c.rows[0].dtype}")
            except Exception as exc:  # a message that does not decode is a bad packet
                why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
                if strict:
                    raise DataError(f"'{path}' channel {c.topic} message {index}: {why} (strict)") from None
                c.skip(index, why)
                continue
            c.t.append(message.log_time // 1000)
            c.rows.append(row)
    streams = {c.stream: c for c in chans.values() if c.rows}
    if not streams:
        raise DataError(f"'{path}' holds no message reflexarc could read on {', '.join(c.topic for c in chans.values())}")
    batches = {}
    for s, c in streams.items():
        order = np.argsort(np.asarray(c.t, np.int64), kind="stable")
        t = np.asarray(c.t, np.int64)[order]
        if c.kind == "json":
            keys = list(dict.fromkeys(k for r in c.rows for k in r))
            schema = sch.commands_schema({k: "float64" for k in keys})
            cols = {k: np.array([float(c.rows[i].get(k, np.nan)) for i in order]) for k in keys}
            batches[s] = sch.commands_batch(t, schema, **cols)
        else:
            frames = np.stack([c.rows[i] for i in order])
            schema = sch.frames_schema(frames.shape[1:], frames.dtype)
            batches[s] = sch.frames_batch(t, frames, schema)
    rec = make("record", {"dir": str(out), "streams": list(batches), "background": False,
                          "config": {"imported_from": str(path)},
                          "schemas_b64": {s: _b64(b.schema) for s, b in batches.items()}})
    rec.setup()
    try:
        for s, batch in batches.items():
            for k in range(0, batch.num_rows, 256):
                rec.process(s.replace(".", "__"), batch.slice(k, 256), sch.Header(s, k // 256, 0))
        rec.finish()
    finally:
        rec.close()
    warnings = [f"channel {c.topic} of '{path}': skipped {c.skipped} message{'s' if c.skipped != 1 else ''} "
                f"(first: {c.first_skip})" for c in chans.values() if c.skipped]
    if ignored:
        warnings.append(f"channels not imported (not an image or JSON): {', '.join(ignored)}")
    result = rec.result()
    return {"dir": result["dir"], "streams": result["streams"], "warnings": warnings, "lossless": False,
            "topics": {c.topic: c.stream for c in streams.values()}}


def _b64(schema: pa.Schema) -> str:
    return schema_to_b64(schema)


__all__ = ["ARROW_ENCODING", "export_mcap", "import_mcap", "protobuf_decoder"]
