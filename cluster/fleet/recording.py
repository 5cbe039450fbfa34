"""Fleet telemetry as a reflexarc recording: one Arrow IPC stream per robot, one manifest.

The layout and manifest are `pipeline.recording`'s, so `reflexarc inspect` and replay
read it. A restarted manager reads what is already there (the last sequence number of
each robot's stream, up to the last whole batch) and continues each stream in a new
segment file, so a manager crash loses and duplicates nothing that was acknowledged.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pyarrow as pa

from pipeline import recording as rec


class _Stream:
    __slots__ = ("name", "schema", "files", "sink", "writer", "batches", "rows", "last_seq",
                 "first_seq", "t_start", "t_end", "segment", "closed_bytes", "described")

    def __init__(self, name: str):
        self.name = name
        self.schema = self.sink = self.writer = None
        self.files: list[str] = []
        self.batches = self.rows = 0
        self.last_seq = self.first_seq = self.t_start = self.t_end = None
        self.segment = -1
        self.closed_bytes = 0  # bytes in the files before the open one
        self.described: tuple | None = None  # (schema_b64, fields) of `schema`, made once


class FleetRecording:
    """Appends telemetry batches per stream, in order, with seq/ingest per batch."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.streams: dict[str, _Stream] = {}
        self.manifest = {"format": rec.FORMAT, "format_version": rec.FORMAT_VERSION,
                         "reflexarc_version": rec._version(), "status": "recording", "started": rec._now(),
                         "ended": None, "host": socket.gethostname(), "pid": os.getpid(),
                         "options": {}, "config": {"fleet": True}, "streams": {}}
        self._resume()

    def _resume(self) -> None:
        """Pick up the streams a previous manager run left, up to their last whole batch."""
        for name, files in rec._group_files(self.folder).items():
            info = rec.scan_stream(self.folder, files)
            s = _Stream(name)
            s.schema = info["schema"]
            s.files = list(files)
            s.segment = max(int(rec._SEGMENT.match(f)["k"] or 0) for f in files)
            s.batches, s.rows = info["batches"], info["rows"]
            s.first_seq, s.last_seq = info["first_seq"], info["last_seq"]
            s.t_start, s.t_end = info["t_start_us"], info["t_end_us"]
            s.closed_bytes = sum((self.folder / f).stat().st_size for f in files if (self.folder / f).exists())
            self.streams[name] = s
        old = self.folder / rec.MANIFEST
        if old.exists():
            try:
                self.manifest["started"] = json.loads(old.read_text()).get("started") or self.manifest["started"]
            except (OSError, ValueError):
                pass
        self.write_manifest()

    def last_seq(self, stream: str) -> int:
        s = self.streams.get(stream)
        return -1 if s is None or s.last_seq is None else s.last_seq

    def write(self, stream: str, batch: pa.RecordBatch, seq: int, ingest_ns: int) -> None:
        s = self.streams.get(stream)
        if s is None:
            s = self.streams[stream] = _Stream(stream)
        if s.writer is None:
            s.schema = s.schema or batch.schema
            s.described = None
            s.segment += 1
            name = rec.segment_name(stream, s.segment)
            s.sink = pa.OSFile(str(self.folder / name), "wb")
            s.writer = pa.ipc.new_stream(s.sink, s.schema)
            s.files.append(name)
        s.writer.write_batch(batch, custom_metadata={"seq": str(seq), "ingest_ns": str(ingest_ns)})
        s.batches += 1
        s.rows += batch.num_rows
        s.first_seq = seq if s.first_seq is None else s.first_seq
        s.last_seq = seq
        t = batch.column(0)
        if len(t):
            t0, t1 = t[0].as_py(), t[len(t) - 1].as_py()
            s.t_start = t0 if s.t_start is None else min(s.t_start, t0)
            s.t_end = t1 if s.t_end is None else max(s.t_end, t1)

    def write_manifest(self) -> None:
        """The manifest, rewritten in full; cheap enough for a thousand streams every 2 s (the
        manager's loop stops meanwhile): the schema's description is made once per stream, sizes
        come from the open file's position, and the JSON is written by the C encoder (compact:
        json's indented output is pure Python, 0.3 s for 1,000 streams, and stalled telemetry)."""
        streams = {}
        for n, s in self.streams.items():
            if s.described is None and s.schema is not None:
                s.described = (rec.schema_to_b64(s.schema), {f.name: str(f.type) for f in s.schema})
            b64, fields = s.described or (None, {})
            streams[n] = {"kind": "commands", "schema_b64": b64, "fields": fields, "files": list(s.files),
                          "batches": s.batches, "rows": s.rows, "bytes": self._bytes(s), "t_start_us": s.t_start,
                          "t_end_us": s.t_end, "first_seq": s.first_seq, "last_seq": s.last_seq, "seq_gaps": 0}
        self.manifest["streams"] = streams
        self.manifest["counts"] = {n: s.batches for n, s in self.streams.items()}
        self.manifest["start"], self.manifest["end"] = self.manifest["started"], self.manifest["ended"]
        tmp = self.folder / (rec.MANIFEST + ".tmp")  # atomic, as pipeline.recording.write_manifest
        tmp.write_text(json.dumps(self.manifest, default=str))
        os.replace(tmp, self.folder / rec.MANIFEST)

    @staticmethod
    def _bytes(s: _Stream) -> int:
        try:
            return s.closed_bytes + (s.sink.tell() if s.sink is not None else 0)
        except (OSError, ValueError):
            return s.closed_bytes

    def close(self) -> None:
        for s in self.streams.values():
            if s.writer is not None:
                s.writer.close()
                s.closed_bytes += s.sink.tell()
                s.sink.close()
                s.writer = s.sink = None
        self.manifest["status"] = "complete"
        self.manifest["ended"] = rec._now()
        self.write_manifest()
