"""The Arrow schemas of reflexarc's streams (see DESIGN.md, "Data: Arrow everywhere").

Every stream kind has a constructor for its schema, a constructor for batches, and a
check that names the field that is wrong. Schema metadata carries the kind and the
stream's fixed facts (sensor size, sample rate, frame shape, population size).

A batch's per-message facts (stream name, sequence number, ingest wall time) travel in
a side header (`Header`) inside a process, and are stamped into the schema metadata
(`stamp` / `header_of`) when a batch crosses a wire or is written to a file.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from pipeline.errors import SchemaError

KIND_KEY = b"reflexarc.kind"
KINDS = ("events", "samples", "frames", "spikes", "commands")
ANY = "any"

_STREAM_KEY = b"reflexarc.stream"
_SEQ_KEY = b"reflexarc.seq"
_INGEST_KEY = b"reflexarc.ingest_ns"


class Header(NamedTuple):
    """Per-batch facts that travel beside the batch: its stream, order and ingest time."""

    stream: str
    seq: int
    ingest_ns: int


def _meta(kind: str, **facts) -> dict[bytes, bytes]:
    meta = {KIND_KEY: kind.encode()}
    for key, value in facts.items():
        if value is None:
            continue
        meta[key.encode()] = (value if isinstance(value, str) else json.dumps(value)).encode()
    return meta


def kind_of(schema: pa.Schema) -> str | None:
    """The stream kind a schema declares in its metadata, or None."""
    meta = schema.metadata or {}
    kind = meta.get(KIND_KEY)
    return kind.decode() if kind else None


def fact(schema: pa.Schema, key: str, default=None):
    """A fixed fact from schema metadata (`width`, `rate_hz`, ...), decoded from JSON."""
    raw = (schema.metadata or {}).get(key.encode())
    if raw is None:
        return default
    text = raw.decode()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# --- schema constructors -------------------------------------------------------------


def events_schema(width: int, height: int) -> pa.Schema:
    """Event-camera stream: `t` µs, `x`, `y` pixel, `p` polarity (True = ON)."""
    return pa.schema(
        [("t", pa.int64()), ("x", pa.uint16()), ("y", pa.uint16()), ("p", pa.bool_())],
        metadata=_meta("events", width=int(width), height=int(height)),
    )


def samples_schema(
    channels: list[str], rate_hz: float, units: str | list[str] = "uV"
) -> pa.Schema:
    """Sampled signal (EEG, any sensor): `t` µs then one float32 column per channel."""
    if isinstance(units, str):
        units = [units] * len(channels)
    fields = [("t", pa.int64())] + [(str(c), pa.float32()) for c in channels]
    return pa.schema(
        fields,
        metadata=_meta(
            "samples", rate_hz=float(rate_hz), channels=list(map(str, channels)), units=units
        ),
    )


def frames_schema(shape: tuple[int, ...], dtype="float32") -> pa.Schema:
    """Image stream: `t` µs and `frame`, a fixed-shape tensor (calcium, accumulated events)."""
    value_type = pa.from_numpy_dtype(np.dtype(dtype))
    tensor = pa.fixed_shape_tensor(value_type, list(shape))
    return pa.schema(
        [("t", pa.int64()), ("frame", tensor)],
        metadata=_meta("frames", shape=list(shape), dtype=str(np.dtype(dtype))),
    )


def spikes_schema(population: str, size: int) -> pa.Schema:
    """Spike stream: `t` µs and `neuron` index within a population of `size`."""
    return pa.schema(
        [("t", pa.int64()), ("neuron", pa.uint32())],
        metadata=_meta("spikes", population=population, size=int(size)),
    )


def commands_schema(fields: dict[str, str], units: dict[str, str] | None = None) -> pa.Schema:
    """Command stream: `t` µs and named float/int columns (`{"thrust": "float32"}`)."""
    cols = [("t", pa.int64())]
    for name, dtype in fields.items():
        cols.append((name, pa.from_numpy_dtype(np.dtype(dtype))))
    return pa.schema(cols, metadata=_meta("commands", units=units or {}))


# --- checks --------------------------------------------------------------------------

_REQUIRED = {
    "events": {"t": pa.int64(), "x": pa.uint16(), "y": pa.uint16(), "p": pa.bool_()},
    "samples": {"t": pa.int64()},
    "frames": {"t": pa.int64()},
    "spikes": {"t": pa.int64(), "neuron": pa.uint32()},
    "commands": {"t": pa.int64()},
}


def problems(kind: str, schema: pa.Schema) -> list[str]:
    """Everything that keeps `schema` from being a valid `kind` stream, as sentences."""
    if kind == ANY:
        return []
    if kind not in _REQUIRED:
        return [f"unknown stream kind '{kind}' (expected one of {', '.join(KINDS)})"]
    found = []
    declared = kind_of(schema)
    if declared is not None and declared != kind:
        found.append(f"is a '{declared}' stream, expected '{kind}'")
        return found
    for name, dtype in _REQUIRED[kind].items():
        idx = schema.get_field_index(name)
        if idx < 0:
            found.append(f"has no field '{name}' ({dtype}) required by '{kind}'")
        elif schema.field(idx).type != dtype:
            found.append(f"field '{name}' is {schema.field(idx).type}, expected {dtype}")
    if kind == "samples":
        for f in schema:
            if f.name != "t" and not pa.types.is_floating(f.type):
                found.append(f"channel '{f.name}' is {f.type}, expected float32")
    if kind == "frames":
        idx = schema.get_field_index("frame")
        if idx < 0:
            found.append("has no field 'frame' (fixed_shape_tensor) required by 'frames'")
        elif not isinstance(schema.field(idx).type, pa.FixedShapeTensorType):
            found.append(f"field 'frame' is {schema.field(idx).type}, expected a fixed_shape_tensor")
    if kind == "events":
        for key in ("width", "height"):
            if fact(schema, key) is None:
                found.append(f"metadata lacks '{key}' required by 'events'")
    return found


def check(kind: str, schema: pa.Schema, where: str = "batch") -> None:
    """Raise SchemaError naming `where` if `schema` is not a valid `kind` stream."""
    found = problems(kind, schema)
    if found:
        raise SchemaError(f"{where} {'; '.join(found)}")


# --- batch constructors --------------------------------------------------------------


def events_batch(t, x, y, p, schema: pa.Schema) -> pa.RecordBatch:
    """Wrap NumPy event columns (any int/bool dtypes castable without loss) as a batch."""
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.asarray(t, dtype=np.int64)),
            pa.array(np.asarray(x, dtype=np.uint16)),
            pa.array(np.asarray(y, dtype=np.uint16)),
            pa.array(np.asarray(p, dtype=np.bool_)),
        ],
        schema=schema,
    )


def samples_batch(t, data: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
    """Wrap `t` and a (n_samples, n_channels) float array as a samples batch."""
    data = np.asarray(data, dtype=np.float32)
    cols = [pa.array(np.asarray(t, dtype=np.int64))]
    cols += [pa.array(np.ascontiguousarray(data[:, i])) for i in range(data.shape[1])]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def frames_batch(t, frames: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
    """Wrap `t` and an (n, *shape) array as a frames batch (one copy only if not contiguous)."""
    tensor_type = schema.field("frame").type
    dtype = tensor_type.value_type.to_pandas_dtype()
    frames = np.ascontiguousarray(frames, dtype=dtype)
    shape = tuple(tensor_type.shape)
    if frames.shape[1:] != shape:
        raise SchemaError(f"frames of shape {frames.shape[1:]} do not match schema shape {shape}")
    storage = pa.FixedSizeListArray.from_arrays(
        pa.array(frames.reshape(-1)), int(np.prod(shape))
    )
    col = pa.ExtensionArray.from_storage(tensor_type, storage)
    return pa.RecordBatch.from_arrays([pa.array(np.asarray(t, dtype=np.int64)), col], schema=schema)


def frames_view(batch: pa.RecordBatch) -> np.ndarray:
    """The `frame` column of a frames batch as an (n, *shape) NumPy view (no copy)."""
    col = batch.column(batch.schema.get_field_index("frame"))
    shape = tuple(col.type.shape)
    values = col.storage.values.to_numpy(zero_copy_only=True)
    offset = col.storage.offset * int(np.prod(shape))
    return values[offset : offset + len(col) * int(np.prod(shape))].reshape((len(col),) + shape)


def spikes_batch(t, neuron, schema: pa.Schema) -> pa.RecordBatch:
    """Wrap spike times and neuron indices as a spikes batch."""
    return pa.RecordBatch.from_arrays(
        [pa.array(np.asarray(t, dtype=np.int64)), pa.array(np.asarray(neuron, dtype=np.uint32))],
        schema=schema,
    )


def commands_batch(t, schema: pa.Schema, **columns) -> pa.RecordBatch:
    """Wrap `t` and named command columns as a commands batch."""
    arrays = [pa.array(np.asarray(t, dtype=np.int64))]
    for f in schema:
        if f.name == "t":
            continue
        if f.name not in columns:
            raise SchemaError(f"command column '{f.name}' missing")
        arrays.append(pa.array(np.asarray(columns[f.name]), type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A primitive column as a NumPy view (bool columns are the one unavoidable copy)."""
    arr = batch.column(batch.schema.get_field_index(name))
    if pa.types.is_boolean(arr.type):
        return arr.to_numpy(zero_copy_only=False)
    return arr.to_numpy(zero_copy_only=arr.null_count == 0)


def empty(schema: pa.Schema) -> pa.RecordBatch:
    """A zero-row batch of `schema`."""
    return pa.RecordBatch.from_pylist([], schema=schema)


# --- headers on the wire -------------------------------------------------------------


def stamp(batch: pa.RecordBatch, header: Header) -> pa.RecordBatch:
    """The batch with its header written into the schema metadata (for wires and files)."""
    meta = dict(batch.schema.metadata or {})
    meta[_STREAM_KEY] = header.stream.encode()
    meta[_SEQ_KEY] = str(header.seq).encode()
    meta[_INGEST_KEY] = str(header.ingest_ns).encode()
    return batch.replace_schema_metadata(meta)


def header_of(batch: pa.RecordBatch) -> Header | None:
    """The header stamped into a batch's metadata, or None if it carries none."""
    meta = batch.schema.metadata or {}
    if _SEQ_KEY not in meta:
        return None
    return Header(
        meta.get(_STREAM_KEY, b"").decode(), int(meta[_SEQ_KEY]), int(meta.get(_INGEST_KEY, b"0"))
    )


def unstamp(schema: pa.Schema) -> pa.Schema:
    """The schema without per-batch header keys (what a stream declares)."""
    meta = {k: v for k, v in (schema.metadata or {}).items() if k not in (_STREAM_KEY, _SEQ_KEY, _INGEST_KEY)}
    return schema.with_metadata(meta)
