"""Recordings: the `record` tap that writes streams to disk, and the reader that checks them.

A recording is a folder with one Arrow IPC *stream* file per recorded stream (or several,
when rotated: `camera.out.arrow`, `camera.out.0001.arrow`, ...) and `manifest.json`::

    {"format": "reflexarc-recording", "format_version": 1, "reflexarc_version": "0.1.0",
     "status": "recording" | "complete" | "failed" | "recovered", "config": {...},
     "streams": {"camera.out": {"kind": "events", "schema_b64": ..., "files": [...],
                                "batches": 12, "rows": 12288, "t_start_us": 0, ...}}}

Crash safety comes from the IPC stream format itself: each batch is one self-delimiting
message written straight to the file (no user-space buffer), so a recorder killed with
SIGKILL leaves every file readable up to its last whole batch. The manifest is written
(atomically) when recording starts and when it ends: `complete` after a clean end of every
stream, `failed` (with the error) when the run raised; `inspect_recording` rebuilds the
counts from the files when the end never came (`recovered`), and rebuilds the whole
manifest when it is missing. Every stream's file is opened, with its schema, when the
recording starts (from the ports' declared schemas), so a stream that never carried a
batch still replays, as an empty stream. Per-batch headers (sequence number, ingest time) are stored as the IPC
messages' custom metadata, so loss shows up as sequence gaps.
"""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import os
import re
import socket
import sys
import threading
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import schemas as sch
from pipeline.errors import DataError
from pipeline.operator import Operator, Params, register

log = logging.getLogger(__name__)

FORMAT = "reflexarc-recording"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".arrow"
_SEGMENT = re.compile(r"^(?P<stream>.+?)(?:\.(?P<k>\d{4}))?\.arrow$")
_READ_ERRORS = (OSError, pa.ArrowException, ValueError)


def _version() -> str:
    import pipeline

    return pipeline.__version__


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def schema_to_b64(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_b64(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def segment_name(stream: str, k: int) -> str:
    """File name of a stream's k-th segment (the first has no number)."""
    return f"{stream}{SUFFIX}" if k == 0 else f"{stream}.{k:04d}{SUFFIX}"


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write the manifest atomically: a reader sees the old one or the new one, never half."""
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, folder / MANIFEST)


# --- the recorder --------------------------------------------------------------------


class RecordParams(Params):
    dir: str = Field(..., description="recording folder (created; must not hold another recording)")
    streams: list[str] = Field(..., min_length=1, description="recorded edges as node.port")
    config: dict | None = Field(None, description="the pipeline config, kept in the manifest")
    compression: Literal["none", "lz4", "zstd"] = Field("none", description="IPC buffer compression")
    rotate_mb: float | None = Field(None, gt=0, description="start a new file past this size")
    rotate_s: float | None = Field(None, gt=0, description="start a new file past this much sensor time")
    overwrite: bool = Field(False, description="replace an existing recording in `dir`")
    background: bool = Field(True, description="write from a thread, off the pipeline's path")
    queue_batches: int = Field(64, ge=1, description="batches queued for the writer thread before the pipeline waits")
    flush_ms: float = Field(5.0, gt=0, le=1000, description="how often the writer thread takes up queued batches")
    malloc_keep_mb: float | None = Field(
        64.0, ge=1, le=2047,
        description="with a writer thread, have glibc keep this much freed memory (process-wide; None: leave it)",
    )
    schemas_b64: dict[str, str] | None = Field(
        None, description="stream -> declared schema (IPC, base64); filled when the graph is built",
    )


# glibc's mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit (HEAP_MAX_SIZE / 2)
_malloc_kept: int | None = None  # bytes this process keeps, once set (never lowered)


def keep_freed_memory(mb: float) -> bool:
    """Have glibc keep up to `mb` MB of freed heap memory for reuse; True where it took.

    A background recorder makes batches outlive their wave (until the writer has written
    them). glibc then returns the freed top of its heap to the OS and maps it back in for
    the next batch: 500-3,600 minor page faults per 8.5 M events, 4-7% of the pipeline
    thread's time at 65536-event batches. A trim threshold of `mb` and an mmap threshold of
    up to 32 MB (so batch-sized arrays come from the heap, not a fresh mapping each time)
    remove those faults; the price is that up to `mb` MB freed stays with the process.
    Process-wide and permanent (mallopt cannot go back to glibc's sliding thresholds), so it
    is only ever raised; elsewhere than glibc it does nothing and says False.
    """
    global _malloc_kept
    keep = int(mb * (1 << 20))
    if _malloc_kept is not None and _malloc_kept >= keep:
        return True
    try:
        glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
        mallopt = ctypes.CDLL(None).mallopt if glibc else None
    except (OSError, ValueError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    ok = mallopt(_M_TRIM_THRESHOLD, keep) == 1 and mallopt(_M_MMAP_THRESHOLD, min(keep, _MMAP_THRESHOLD_MAX)) == 1
    if ok:
        _malloc_kept = keep
    return ok


class _Track:
    """One stream being written: its current segment and running counts."""

    __slots__ = ("stream", "schema", "sink", "writer", "segment", "seg_t0", "files", "t_idx",
                 "batches", "rows", "bytes", "t_start", "t_end", "first_seq", "last_seq", "gaps")

    def __init__(self, stream: str, schema: pa.Schema | None):
        self.stream, self.schema = stream, schema
        self.sink = self.writer = None
        self.segment = -1
        self.seg_t0: int | None = None
        self.t_idx: int | None = -1  # the `t` column's index; -1 until looked up, None if absent
        self.files: list[str] = []
        self.batches = self.rows = self.bytes = self.gaps = 0
        self.t_start = self.t_end = self.first_seq = self.last_seq = None

    def summary(self) -> dict:
        return {
            "kind": sch.kind_of(self.schema) if self.schema is not None else None,
            "schema_b64": schema_to_b64(self.schema) if self.schema is not None else None,
            "fields": {f.name: str(f.type) for f in self.schema} if self.schema is not None else {},
            "files": list(self.files),
            "batches": self.batches,
            "rows": self.rows,
            "bytes": self.bytes,
            "t_start_us": self.t_start,
            "t_end_us": self.t_end,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "seq_gaps": self.gaps,
        }


@register
class Record(Operator):
    """Writes each input stream to its own Arrow IPC stream file, plus a manifest.

    Added by `Graph.tap` or a config's `record:` key; one input port per recorded
    stream (`camera.out` arrives on port `camera__out`).
    """

    name = "record"
    Params = RecordParams
    wants_header = True

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.inputs = {s.replace(".", "__"): "any" for s in self.params.streams}
        self._stream_of = {s.replace(".", "__"): s for s in self.params.streams}
        self._schemas: dict[str, pa.Schema] = {}
        self._tracks: dict[str, _Track] = {}
        self._track_by_port: dict[str, _Track] = {}
        self._folder: Path | None = None
        self._manifest: dict = {}
        # made in setup(), not here: an operator is pickled to reach a Ray actor, locks are not
        self._pending: deque | None = None  # batches handed to the writer thread, oldest first
        self._thread = self._error = None
        self._room = None  # set by the writer when it has taken batches off a full queue
        self._kick = None  # wakes the writer before its next `flush_ms` tick
        self._waiting = self._closing = False
        self._limit = self.params.queue_batches  # read once per batch: a plain attribute
        self._finished = False
        known = self.params.schemas_b64 or {}
        self._schemas = {s: schema_from_b64(known[s]) for s in self.params.streams if s in known}

    def schemas(self, inputs):
        # The declared schemas travel in the params: every run builds fresh operators from
        # the params (`Graph.fresh`, a Ray actor), and the recorder opens every stream's file
        # with its schema at setup, so a port that never emits still replays (empty).
        self._schemas = {self._stream_of[p]: sch.unstamp(s) for p, s in inputs.items()}
        declared = {s: schema_to_b64(schema) for s, schema in self._schemas.items()}
        if declared != self.params.schemas_b64:
            self.params = self.params.model_copy(update={"schemas_b64": declared})
        return {}

    def setup(self):
        folder = Path(self.params.dir)
        if (folder / MANIFEST).exists() and not self.params.overwrite:
            raise DataError(f"'{folder}' already holds a recording; choose another folder or set overwrite: true")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if self.params.overwrite:
                for old in list(folder.glob(f"*{SUFFIX}")) + [folder / MANIFEST]:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create recording folder '{folder}': {exc.strerror}") from None
        self._folder = folder
        self._tracks = {s: _Track(s, self._schemas.get(s)) for s in self.params.streams}
        self._track_by_port = {p: self._tracks[s] for p, s in self._stream_of.items()}
        self._manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "reflexarc_version": _version(),
            "status": "recording",
            "started": _now(),
            "ended": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "options": {"compression": self.params.compression, "rotate_mb": self.params.rotate_mb,
                        "rotate_s": self.params.rotate_s},
            "config": self.params.config,
            "streams": {},
        }
        for track in self._tracks.values():
            if track.schema is not None:
                self._open(track)
        self._write_manifest()
        self._error = None
        self._finished = False
        if self.params.background:
            if self.params.malloc_keep_mb is not None:
                keep_freed_memory(self.params.malloc_keep_mb)
            self._pending = deque()
            self._room, self._kick = threading.Event(), threading.Event()
            self._closing = self._waiting = False
            self._thread = threading.Thread(target=self._drain, name=f"record:{self.params.dir}", daemon=True)
            self._thread.start()

    def _write_manifest(self) -> None:
        self._manifest["streams"] = {s: t.summary() for s, t in self._tracks.items()}
        write_manifest(self._folder, self._manifest)

    def _open(self, track: _Track) -> None:
        self._close_segment(track)
        track.segment += 1
        name = segment_name(track.stream, track.segment)
        options = pa.ipc.IpcWriteOptions(
            compression=None if self.params.compression == "none" else self.params.compression
        )
        try:
            # OSFile writes straight to the descriptor: a batch is in the OS once written.
            track.sink = pa.OSFile(str(self._folder / name), "wb")
            track.writer = pa.ipc.new_stream(track.sink, track.schema, options=options)
        except OSError as exc:
            raise DataError(f"cannot write '{self._folder / name}': {exc}") from None
        track.files.append(name)
        track.seg_t0 = None

    def _close_segment(self, track: _Track) -> None:
        if track.writer is not None:
            track.writer.close()
            track.bytes += track.sink.tell()
            track.sink.close()
            track.writer = track.sink = None

    def process(self, port, batch, header=None):
        # The pipeline's thread only appends the batch to a deque (one C call, no lock, no
        # thread wake-up); the writer thread takes up what has queued every `flush_ms` and
        # does the counting and writing. Waking the writer for every batch made the two
        # threads trade the GIL once per batch: ~20% of a light loop at 4096-event batches.
        if self._error is not None:
            raise self._error
        pending = self._pending
        if pending is None:
            self._write(self._track_by_port[port], batch, header)
            return
        pending.append((self._track_by_port[port], batch, header))
        if len(pending) >= self._limit:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        """Block while the writer is `queue_batches` behind (lossless backpressure)."""
        limit = self.params.queue_batches
        self._waiting = True
        try:
            while len(self._pending) >= limit and self._thread.is_alive():
                self._room.clear()
                if len(self._pending) < limit:
                    break
                self._kick.set()
                self._room.wait(0.05)  # the writer sets it; the timeout only bounds a missed wake-up
        finally:
            self._waiting = False
        if self._error is not None:
            raise self._error

    def _write(self, track: _Track, batch: pa.RecordBatch, header) -> None:
        """Write one batch (on the pipeline's thread, with `background: false`)."""
        self._append(track, batch, header)
        if batch.num_rows:
            self._note_times(track, batch, batch)

    def _append(self, track: _Track, batch: pa.RecordBatch, header) -> None:
        """Write a batch and count it; its time range is noted apart (`_note_times`)."""
        if track.schema is None:
            track.schema = sch.unstamp(batch.schema)
        elif track.batches == 0 and track.segment == 0:
            self._first_batch(track, batch)
        # a batch's first time is only needed to rotate by sensor time (`Array` wrappers and
        # `as_py` cost ~7 us a batch, held under the GIL the pipeline wants)
        t0 = self._t_at(track, batch, 0) if self.params.rotate_s is not None else None
        meta = None
        if header is not None:
            seq = header.seq
            meta = pa.KeyValueMetadata(seq=str(seq).encode(), ingest_ns=str(header.ingest_ns).encode())
            if track.last_seq is not None and seq != track.last_seq + 1:
                track.gaps += 1
            if track.first_seq is None:
                track.first_seq = seq
            track.last_seq = seq
        if track.writer is None or self._rotate_due(track, t0):
            self._open(track)
            self._write_manifest()
        if track.seg_t0 is None:
            track.seg_t0 = t0
        try:
            track.writer.write_batch(batch, custom_metadata=meta)
        except pa.ArrowInvalid as exc:
            raise DataError(f"stream '{track.stream}' changed schema mid-recording: {exc}") from None
        track.batches += 1
        track.rows += batch.num_rows

    def _first_batch(self, track: _Track, batch: pa.RecordBatch) -> None:
        """A stream's first batch decides its schema where it differs from the declared one.

        The file was opened with the port's declared schema; an operator whose batches carry
        other metadata (or nullability) than it declared is recorded as it really emits.
        """
        actual = sch.unstamp(batch.schema)
        if actual.equals(track.schema, check_metadata=True):
            return
        track.writer.close()
        track.sink.close()
        track.files.pop()
        track.segment -= 1
        track.writer = track.sink = None
        track.schema = actual
        self._open(track)
        self._write_manifest()

    @staticmethod
    def _t_at(track: _Track, batch: pa.RecordBatch, i: int) -> int | None:
        """`t` of row `i` of a non-empty batch (None when the stream has no time column)."""
        if track.t_idx is None:
            return None
        if track.t_idx < 0:
            track.t_idx = batch.schema.get_field_index("t")
            if track.t_idx < 0:
                track.t_idx = None  # no time column in this stream
                return None
        if track.t_idx >= batch.num_columns:
            return None  # a changed schema fails at the write
        return batch.column(track.t_idx)[i].as_py()

    def _note_times(self, track: _Track, first: pa.RecordBatch, last: pa.RecordBatch) -> None:
        """Widen the stream's time range by a run of written batches, from its ends."""
        t0 = self._t_at(track, first, 0)
        if t0 is None:
            return
        t1 = self._t_at(track, last, -1)
        track.t_start = t0 if track.t_start is None or t0 < track.t_start else track.t_start
        track.t_end = t1 if track.t_end is None or t1 > track.t_end else track.t_end

    def _drain(self) -> None:
        """The writer thread: writes queued batches in order; keeps the first error for `process`.

        The time range is noted once per stream per wake-up, from the first and last batch
        taken (sensor time runs forward within a stream), not for every batch.
        """
        pending, kick, tick = self._pending, self._kick, self.params.flush_ms / 1000
        while True:
            kick.wait(tick)
            kick.clear()
            closing = self._closing  # read before draining: what was queued before close is written
            ends: dict = {}  # track -> [first, last] non-empty batch written in this wake-up
            while pending:
                track, batch, header = pending.popleft()
                if self._error is None:  # after an error, keep draining so the pipeline never blocks
                    try:
                        self._append(track, batch, header)
                        if batch.num_rows:
                            end = ends.get(track)
                            if end is None:
                                ends[track] = [batch, batch]
                            else:
                                end[1] = batch
                    except DataError as exc:
                        self._error = exc
                    except Exception as exc:  # disk full, permissions changed under us
                        self._error = DataError(f"recording into '{self.params.dir}' failed: {exc}")
                if self._waiting:
                    self._room.set()
            for track, (first, last) in ends.items():
                self._note_times(track, first, last)
            if closing:
                return

    def _rotate_due(self, track: _Track, t0: int | None) -> bool:
        p = self.params
        if p.rotate_mb is not None and track.sink.tell() >= p.rotate_mb * 1e6:
            return True
        if p.rotate_s is not None and t0 is not None and track.seg_t0 is not None:
            return t0 - track.seg_t0 >= p.rotate_s * 1e6
        return False

    def finish(self):
        self._finished = True  # every input stream ended: the recording is complete at close
        return None

    def close(self):
        if self._folder is None:
            return
        if self._pending is not None:
            self._closing = True
            self._kick.set()
            self._thread.join()
            self._pending = self._thread = None
        for track in self._tracks.values():
            if track.writer is None and track.schema is not None:
                self._open(track)  # an empty stream still gets a file with its schema
            self._close_segment(track)
        if self._finished and self._error is None:
            self._manifest["status"] = "complete"
        else:
            self._manifest["status"] = "failed"
            self._manifest["error"] = str(self._error) if self._error is not None else (
                "the run stopped on an error before its streams ended")
        self._manifest["ended"] = _now()
        self._write_manifest()
        self._folder = None
        if self._error is not None:
            raise self._error

    def result(self):
        return {
            "dir": self.params.dir,
            "streams": {s: {"batches": t.batches, "rows": t.rows} for s, t in self._tracks.items()},
        }


# --- reading ----------------------------------------------------------------------------


class StreamFile:
    """A stream segment on disk, read through a memory map (zero-copy, larger than memory)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.error: str | None = None  # why reading stopped early, if it did

    def open(self) -> pa.ipc.RecordBatchStreamReader:
        try:
            return pa.ipc.open_stream(pa.memory_map(str(self.path)))
        except FileNotFoundError:
            raise DataError(f"stream file '{self.path}' is missing") from None
        except _READ_ERRORS as exc:
            raise DataError(f"'{self.path}' is not an Arrow IPC stream file ({exc})") from None

    def schema(self) -> pa.Schema:
        return self.open().schema

    def batches(self, with_meta: bool = False) -> Iterator:
        """Whole batches in file order; stops (and sets `error`) at a cut-off batch."""
        reader = self.open()
        read = reader.read_next_batch_with_custom_metadata if with_meta else reader.read_next_batch
        while True:
            try:
                yield read()
            except StopIteration:
                return
            except _READ_ERRORS as exc:
                self.error = f"cut off after its last whole batch ({exc})"
                return


def scan_stream(folder: Path, files: list[str]) -> dict:
    """Counts, time range, sequence gaps and damage of a stream, read from its files."""
    info = {"batches": 0, "rows": 0, "bytes": 0, "t_start_us": None, "t_end_us": None,
            "first_seq": None, "last_seq": None, "seq_gaps": 0, "damage": [], "schema": None}
    largest_gap = 0
    prev_t = None
    for name in files:
        f = StreamFile(folder / name)
        try:
            size = f.path.stat().st_size
            info["bytes"] += size
            if size == 0:
                continue  # opened, nothing written yet (Arrow writes the schema with the first batch)
            schema = f.schema()
        except (DataError, OSError) as exc:
            info["damage"].append(str(exc))
            continue
        info["schema"] = info["schema"] or schema
        for batch, meta in f.batches(with_meta=True):
            info["batches"] += 1
            info["rows"] += batch.num_rows
            if meta is not None and b"seq" in meta:
                seq = int(meta[b"seq"])
                if info["last_seq"] is not None and seq != info["last_seq"] + 1:
                    info["seq_gaps"] += 1
                if info["first_seq"] is None:
                    info["first_seq"] = seq
                info["last_seq"] = seq
            idx = batch.schema.get_field_index("t")
            if idx >= 0 and batch.num_rows:
                t = batch.column(idx).to_numpy()
                lo, hi = int(t.min()), int(t.max())
                if prev_t is not None:
                    largest_gap = max(largest_gap, int(t[0]) - prev_t)
                prev_t = int(t[-1])
                info["t_start_us"] = lo if info["t_start_us"] is None else min(info["t_start_us"], lo)
                info["t_end_us"] = hi if info["t_end_us"] is None else max(info["t_end_us"], hi)
        if f.error:
            info["damage"].append(f"'{name}' is {f.error}; {info['batches']} whole batches readable")
    info["largest_gap_us"] = largest_gap
    return info


def _group_files(folder: Path) -> dict[str, list[str]]:
    """Stream name -> its segment files in order, from the names on disk."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for p in sorted(folder.glob(f"*{SUFFIX}")):
        m = _SEGMENT.match(p.name)
        if m:
            groups.setdefault(m["stream"], []).append((int(m["k"] or 0), p.name))
    return {s: [n for _, n in sorted(v)] for s, v in groups.items()}


def _check_version(manifest: dict, where: Path) -> None:
    if manifest.get("format") != FORMAT:
        raise DataError(f"'{where}' is not a reflexarc recording manifest (format is {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        readable = ", ".join(manifest.get("streams", {})) or "none listed"
        raise DataError(
            f"'{where}' was written by reflexarc {manifest.get('reflexarc_version', '?')} "
            f"(recording format {version}); this reflexarc {_version()} reads format {FORMAT_VERSION} "
            f"or older: upgrade reflexarc (streams listed: {readable})"
        )


def _pid_alive(manifest: dict) -> bool:
    if manifest.get("host") != socket.gethostname() or not manifest.get("pid"):
        return False
    pid = int(manifest["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # a zombie (killed, not yet reaped) is not recording any more
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def load_manifest(folder: Path) -> dict:
    """The manifest of a recording folder (repairing it first when it needs it)."""
    return _inspect_folder(Path(folder), repair=True)["manifest"]


def inspect_recording(path: str | Path, repair: bool = True) -> dict:
    """Streams, schemas, counts, durations, rates, gaps and damage of a recording.

    `path` is a recording folder or one `.arrow` stream file. A folder whose recorder
    died (manifest still says "recording") or whose manifest is missing is rebuilt from
    its stream files, and the rebuilt manifest is written back when `repair` is true.
    Raises DataError when `path` is not a recording at all.
    """
    report = _inspect(path, repair)
    manifest = report.pop("manifest") or {}
    config = manifest.get("config") or {}
    report["config_name"] = config.get("name") if isinstance(config, dict) else None
    report["problems"] = problems_of(report)
    report["ok"] = not report["problems"]
    return report


def _inspect(path: str | Path, repair: bool = True) -> dict:
    """`inspect_recording`'s report with the full manifest under "manifest" (None for a file)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"'{path}' does not exist")
    if path.is_file():
        if path.name == MANIFEST:
            return _inspect(path.parent, repair)
        return _inspect_file(path)
    return _inspect_folder(path, repair)


def _inspect_file(path: Path) -> dict:
    info = scan_stream(path.parent, [path.name])
    if info["schema"] is None:
        raise DataError(f"'{path}' is not a recording stream: {'; '.join(info['damage'])}")
    stream = _SEGMENT.match(path.name)["stream"] if _SEGMENT.match(path.name) else path.stem
    report = {"path": str(path), "status": "file", "manifest": None, "repaired": False,
              "streams": {stream: _describe(info)}, "damage": list(info["damage"])}
    return report


def _describe(info: dict) -> dict:
    schema = info.pop("schema", None)
    out = dict(info)
    if schema is not None:
        out["kind"] = sch.kind_of(schema)
        out["fields"] = {f.name: str(f.type) for f in schema}
    t0, t1 = out.get("t_start_us"), out.get("t_end_us")
    dur = (t1 - t0) / 1e6 if t0 is not None and t1 is not None else 0.0
    out["duration_s"] = round(dur, 6)
    out["rate_hz"] = round(out["rows"] / dur, 3) if dur > 0 else None
    return out


def _inspect_folder(folder: Path, repair: bool) -> dict:
    mpath = folder / MANIFEST
    on_disk = _group_files(folder)
    manifest = None
    if mpath.exists():
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            if not on_disk:
                raise DataError(f"'{mpath}' is unreadable ({exc}) and the folder holds no stream files") from None
            log.warning("manifest %s unreadable (%s); rebuilding it from the stream files", mpath, exc)
        if manifest is not None:
            if not isinstance(manifest, dict):
                raise DataError(f"'{mpath}' is not a reflexarc recording manifest")
            _check_version(manifest, mpath)
    elif not on_disk:
        raise DataError(
            f"'{folder}' is not a reflexarc recording: it has no {MANIFEST} and no {SUFFIX} stream files"
        )
    damage: list[str] = []
    repaired = False
    status = manifest.get("status") if manifest else "missing manifest"
    live = manifest is not None and status == "recording" and _pid_alive(manifest)
    streams: dict[str, dict] = {}
    if manifest is not None and status in ("complete", "recovered", "failed"):
        for name, meta in manifest.get("streams", {}).items():
            files = meta.get("files") or on_disk.get(name, [])
            missing = [f for f in files if not (folder / f).exists()]
            size = sum((folder / f).stat().st_size for f in files if (folder / f).exists())
            if missing or size != meta.get("bytes"):
                info = scan_stream(folder, files)
                info.pop("schema")
                if missing:
                    info["damage"].insert(0, f"stream '{name}' is missing {', '.join(missing)}")
                elif not info["damage"]:
                    info["damage"].append(f"stream '{name}' holds {size} bytes, the manifest says {meta.get('bytes')}")
                streams[name] = _describe({**info, "schema": _schema_of(meta)})
                damage.extend(info["damage"])
            else:
                streams[name] = _describe({**{k: meta.get(k) for k in (
                    "batches", "rows", "bytes", "t_start_us", "t_end_us", "first_seq", "last_seq", "seq_gaps")},
                    "damage": [], "schema": _schema_of(meta)})
    else:
        # the recorder never finished (killed) or the manifest is gone: rebuild from the files
        known = dict(on_disk)
        old_streams = (manifest or {}).get("streams", {})
        for name, meta in old_streams.items():
            known.setdefault(name, meta.get("files") or [])
        manifest = dict(manifest or {
            "format": FORMAT, "format_version": FORMAT_VERSION, "reflexarc_version": _version(),
            "started": None, "options": {}, "config": None,
        })
        manifest["streams"] = {}
        for name, files in sorted(known.items()):
            info = scan_stream(folder, files)
            schema = info["schema"] or _schema_of(old_streams.get(name, {}))
            missing = [f for f in files if not (folder / f).exists()]
            if missing:
                info["damage"].insert(0, f"stream '{name}' is missing {', '.join(missing)}")
            damage.extend(info["damage"])
            streams[name] = _describe(dict(info))
            manifest["streams"][name] = {
                "kind": sch.kind_of(schema) if schema is not None else None,
                "schema_b64": schema_to_b64(schema) if schema is not None else None,
                "fields": {f.name: str(f.type) for f in schema} if schema is not None else {},
                "files": [f for f in files if (folder / f).exists()],
                **{k: info[k] for k in ("batches", "rows", "bytes", "t_start_us", "t_end_us",
                                        "first_seq", "last_seq", "seq_gaps")},
            }
        if not live:
            manifest["status"] = "recovered"
            manifest["recovered"] = {"at": _now(), "from": status, "damage": damage}
        if repair and not live:
            try:
                write_manifest(folder, manifest)
                repaired = True
            except OSError as exc:
                damage.append(f"could not write the repaired manifest: {exc.strerror}")
        if not any(s["batches"] for s in streams.values()) and not any(
            manifest["streams"][s]["schema_b64"] for s in manifest["streams"]
        ):
            raise DataError(f"'{folder}' is not a readable recording: {'; '.join(damage) or 'no stream files'}")
    return {
        "path": str(folder),
        "status": "recording (in progress)" if live else manifest.get("status"),
        "reflexarc_version": manifest.get("reflexarc_version"),
        "format_version": manifest.get("format_version"),
        "started": manifest.get("started"),
        "ended": manifest.get("ended"),
        "repaired": repaired,
        "error": manifest.get("error"),
        "streams": streams,
        "damage": damage,
        "manifest": manifest,
    }


def problems_of(report: dict) -> list[str]:
    """Why a recording is not a complete, undamaged one (empty when it is)."""
    status = report.get("status")
    why = []
    if status == "failed":
        why.append(f"the run that made it failed: {report.get('error') or 'no error was recorded'}")
    elif status == "recovered":
        why.append("the recorder never closed it (the process was killed or is gone); it was recovered "
                   "from its files up to each stream's last whole batch")
    elif status == "recording (in progress)":
        why.append("it is still being recorded (its recorder is running)")
    elif status not in ("complete", "file"):
        why.append(f"its status is {status!r}")
    why += [d for d in report.get("damage", []) if d not in why]
    return why


def mark_failed(folder: str | Path, error: BaseException | str) -> None:
    """Say in a recording's manifest that the run which made it failed, and why.

    Called by whoever ran the graph (the CLI, `replay`, `import_file`) when the run raised:
    the recorder itself only knows that its streams never ended. A recorder that never
    closed (its Ray actor was killed) has its counts rebuilt from the files first.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).exists() and not _group_files(folder):
        return  # the recorder never got as far as its setup
    try:
        report = _inspect_folder(folder, repair=False)
    except DataError:
        return
    manifest = report["manifest"]
    manifest["status"] = "failed"
    manifest["error"] = str(error)
    manifest["ended"] = manifest.get("ended") or _now()
    write_manifest(folder, manifest)


def recording_dirs(graph) -> list[str]:
    """The folders a graph's recorder taps write into."""
    return [n.op.params.dir for n in graph.nodes.values() if n.op.name == "record"]


def _schema_of(meta: dict) -> pa.Schema | None:
    text = meta.get("schema_b64")
    return schema_from_b64(text) if text else None


class Recording:
    """A recording opened for reading: its manifest, stream schemas and batch iterators."""

    def __init__(self, path: str | Path, repair: bool = True):
        self.path = Path(path)
        report = _inspect(self.path, repair=repair)
        if report["manifest"] is None:  # a single file
            self.folder = self.path.parent
            (name,) = report["streams"]
            self.files = {name: [self.path.name]}
            self._schemas = {name: StreamFile(self.path).schema()}
            self.meta = {name: report["streams"][name]}
        else:
            self.folder = self.path
            streams = report["manifest"]["streams"]
            self.files = {s: m.get("files") or [] for s, m in streams.items()}
            self._schemas = {s: _schema_of(m) for s, m in streams.items()}
            self.meta = streams
        self.report = report

    @property
    def streams(self) -> list[str]:
        return list(self.files)

    def schema(self, stream: str) -> pa.Schema:
        self._need(stream)
        schema = self._schemas.get(stream)
        if schema is None:
            raise DataError(f"stream '{stream}' of '{self.path}' has no readable schema")
        return schema

    def _need(self, stream: str) -> None:
        if stream not in self.files:
            raise DataError(
                f"recording '{self.path}' has no stream '{stream}' (streams: {', '.join(self.files) or 'none'})"
            )

    def batches(self, stream: str) -> Iterator[pa.RecordBatch]:
        """The stream's batches in order across its segments (memory-mapped, streamed)."""
        self._need(stream)
        return self._batches(stream)

    def _batches(self, stream: str) -> Iterator[pa.RecordBatch]:
        # `StreamFile.batches` written out: one generator frame per batch, not two
        for name in self.files[stream]:
            f = StreamFile(self.folder / name)
            if f.path.exists() and f.path.stat().st_size == 0:
                continue  # a stream opened by a recorder killed before its first batch
            read = f.open().read_next_batch
            while True:
                try:
                    yield read()
                except StopIteration:
                    break
                except _READ_ERRORS as exc:
                    log.warning("stream '%s': '%s' is cut off after its last whole batch (%s)", stream, f.path, exc)
                    return

    def table(self, stream: str) -> pa.Table:
        return pa.Table.from_batches(list(self.batches(stream)), schema=self.schema(stream))

    def time_range(self, streams: list[str] | None = None) -> tuple[int | None, int | None]:
        starts = [self.meta[s].get("t_start_us") for s in streams or self.streams]
        ends = [self.meta[s].get("t_end_us") for s in streams or self.streams]
        starts = [t for t in starts if t is not None]
        ends = [t for t in ends if t is not None]
        return (min(starts) if starts else None, max(ends) if ends else None)


def first_t(batch: pa.RecordBatch) -> int | None:
    idx = batch.schema.get_field_index("t")
    if idx < 0 or batch.num_rows == 0:
        return None
    return int(batch.column(idx)[0].as_py())


def shift_t(batch: pa.RecordBatch, offset_us: int) -> pa.RecordBatch:
    """The batch with `offset_us` added to its `t` column (looped replay)."""
    idx = batch.schema.get_field_index("t")
    if idx < 0 or offset_us == 0:
        return batch
    t = batch.column(idx).to_numpy() + np.int64(offset_us)
    cols = list(batch.columns)
    cols[idx] = pa.array(t)
    return pa.RecordBatch.from_arrays(cols, schema=batch.schema)


# --- export and import ----------------------------------------------------------------


def export_parquet(recording: str | Path, out: str | Path, streams: list[str] | None = None) -> dict:
    """Write each stream as a Parquet dataset `OUT/<stream>/` (for DuckDB, Polars, pyarrow).

    Streamed batch by batch, so recordings larger than memory export too.
    """
    import pyarrow.dataset as ds

    rec = Recording(recording)
    out = Path(out)
    written = {}
    for stream in streams or rec.streams:
        schema = rec.schema(stream)
        reader = pa.RecordBatchReader.from_batches(schema, rec.batches(stream))
        target = out / stream
        try:
            # preserve_order: with threads, pyarrow may otherwise write a stream's rows out of order
            ds.write_dataset(reader, target, format="parquet", existing_data_behavior="delete_matching",
                             basename_template="part-{i}.parquet", preserve_order=True)
        except OSError as exc:
            raise DataError(f"cannot write Parquet dataset '{target}': {exc}") from None
        written[stream] = str(target)
    return written


def export_aedat4(recording: str | Path, out: str | Path, stream: str | None = None) -> dict:
    """Write an events stream to an AEDAT4 file with faery (timestamps kept, not zeroed)."""
    import faery

    rec = Recording(recording)
    events = [s for s in rec.streams if sch.kind_of(rec.schema(s)) == "events"]
    if stream is None:
        if len(events) != 1:
            raise DataError(
                f"recording '{recording}' has {len(events)} events streams ({', '.join(events) or 'none'}); "
                "name one with --stream"
            )
        stream = events[0]
    elif stream not in events:
        raise DataError(f"stream '{stream}' of '{recording}' is not an events stream (events streams: {', '.join(events) or 'none'})")
    schema = rec.schema(stream)
    size = (int(sch.fact(schema, "width")), int(sch.fact(schema, "height")))
    t0, t1 = rec.time_range([stream])

    class _Stream(faery.FiniteEventsStream):
        def __iter__(self):
            for batch in rec.batches(stream):
                arr = np.empty(batch.num_rows, dtype=faery.EVENTS_DTYPE)
                t = sch.column(batch, "t")
                if batch.num_rows and t.min() < 0:
                    raise DataError(f"stream '{stream}' has negative timestamps; AEDAT4 cannot hold them")
                arr["t"], arr["x"], arr["y"] = t, sch.column(batch, "x"), sch.column(batch, "y")
                arr["p"] = sch.column(batch, "p")
                yield arr

        def dimensions(self):
            return size

        def time_range(self):
            return (faery.Time(microseconds=t0 or 0), faery.Time(microseconds=(t1 or 0) + 1))

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _Stream().to_file(str(out), zero_t0=False)
    return {"stream": stream, "path": str(out), "rows": rec.meta[stream].get("rows")}


IMPORTERS = {".aedat4": "aedat4_source"}
DEFAULT_IMPORTER = "event_file_source"


def import_file(path: str | Path, out: str | Path, op: str | None = None, params: dict | None = None,
                node: str = "camera", strict: bool = False) -> dict:
    """Turn an event file (AEDAT4, EVT, DAT, ...) or an MCAP file into a recording.

    An event file is read by running its source op from the operator registry
    (`aedat4_source` for .aedat4, otherwise `event_file_source`), so any format an events
    family reads can be imported; the streams are named `<node>.<port>` (`camera.out`),
    ready for `replay --through`. A bad packet is skipped and reported under "warnings"
    (the source's `on_error: skip`); with `strict` it is an error. An `.mcap` file goes to
    `pipeline.mcap_io.import_mcap`. A run that fails leaves a recording marked `failed`.
    """
    if Path(path).suffix.lower() == ".mcap":
        from pipeline.mcap_io import import_mcap

        return import_mcap(path, out, strict=strict)
    from pipeline.graph import Graph
    from pipeline.operator import lookup
    from pipeline.run import run

    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' is not a file")
    name = op or IMPORTERS.get(path.suffix.lower(), DEFAULT_IMPORTER)
    try:
        cls = lookup(name)
    except Exception:
        raise DataError(
            f"importing '{path.name}' needs the '{name}' operator (the events family, operators.events), "
            "which is not installed"
        ) from None
    fields = cls.Params.model_fields
    key = next((k for k in ("path", "file", "filename", "source") if k in fields), None)
    if key is None:
        raise DataError(f"operator '{name}' has no path parameter (parameters: {', '.join(fields)})")
    p = {key: str(path), **(params or {})}
    if "pacing" in fields:
        p["pacing"] = "max"
    if "on_error" in fields:
        p["on_error"] = "raise" if strict else p.get("on_error", "skip")
    graph = Graph(f"import {path.name}")
    graph.add(node, name, **p)
    ports = list(graph.nodes[node].op.outputs)
    graph.tap([f"{node}.{port}" for port in ports], out, config={"imported_from": str(path), "op": name, "params": p})
    try:
        result = run(graph)
    except BaseException as exc:
        mark_failed(out, exc)
        raise
    done = dict(result.results["__record__"])
    res = result.results.get(node) or {}
    skipped = res.get("skipped_packets") or 0
    done["warnings"] = [] if not skipped else [
        f"node '{node}' ({name}) skipped {skipped} bad packet{'s' if skipped != 1 else ''} of '{path}'"
        + (f" (first: {res['first_skip']})" if res.get("first_skip") else "")]
    if done["warnings"] and strict:  # a source without `on_error` that still counted skips
        mark_failed(out, "; ".join(done["warnings"]))
        raise DataError("; ".join(done["warnings"]) + " (strict)")
    return done


# registered with `record`: the replay source (it imports this module) and the live viewer's tap
from pipeline import foxglove, replay  # noqa: E402,F401
