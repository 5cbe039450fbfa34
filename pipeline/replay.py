"""Replay: a source that plays a recording back, graphs run "through" a recording, and diffs.

`replay` merges a recording's streams by sensor time, so one source stands in for
several. `through_graph` takes a pipeline config and swaps each live source for a
`replay` of its recorded streams (same node id and ports, so the wiring is untouched);
in shadow mode actuator sinks become `shadow_sink`s and the streams that would have
driven them are recorded instead. `diff_recordings` compares a run against a golden
recording and names the first divergence of every stream.

Replay is deterministic in logical time: with `pacing: max` no batch is ever dropped,
and the executors push batches in an order that depends only on sensor time.
"""

from __future__ import annotations

import heapq
import logging
import shutil
import tempfile
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.errors import ConfigError, DataError, Problem
from pipeline.graph import Graph, read_yaml
from pipeline.operator import Operator, Params, Source, SourceParams, lookup, register
from pipeline.recording import Recording, first_t, inspect_recording, mark_failed, problems_of, shift_t

log = logging.getLogger(__name__)


class ReplayParams(SourceParams):
    dir: str = Field(..., description="recording folder (or one .arrow stream file)")
    streams: list[str] | dict[str, str] | None = Field(
        None, description="streams to play (all when omitted); a mapping names the output port of each"
    )
    start_s: float = Field(0.0, ge=0, description="skip this much sensor time from the recording's start")
    loop: bool = Field(False, description="play again from the start when the end is reached, forever")


def port_name(stream: str) -> str:
    """The output port a listed stream gets: `camera.out` -> `camera__out`."""
    return stream.replace(".", "__")


@register
class Replay(Source):
    """Plays a recording's streams back, merged by sensor time, memory-mapped and streamed."""

    name = "replay"
    outputs = {"out": "any"}
    Params = ReplayParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        streams = self.params.streams
        if streams is None:
            streams = Recording(self.params.dir).streams
        if isinstance(streams, dict):
            self.ports = dict(streams)
        else:
            self.ports = {port_name(s): s for s in streams}
        if not self.ports:
            raise ValueError(f"recording '{self.params.dir}' has no streams to replay")
        self.outputs = {p: "any" for p in self.ports}

    def schemas(self, inputs):
        rec = Recording(self.params.dir)
        return {port: rec.schema(stream) for port, stream in self.ports.items()}

    def generate(self):
        # not a generator itself: the recording is opened (and a missing stream reported)
        # at once, and an unlooped replay hands back its iterator, one frame fewer per batch
        rec = Recording(self.params.dir)
        for stream in self.ports.values():
            rec.schema(stream)  # a clear error for a stream the recording lacks
        t0, t1 = rec.time_range(list(self.ports.values()))
        start = None if t0 is None else t0 + int(round(self.params.start_s * 1e6))
        period = 0 if t0 is None else (t1 - start + 1)
        if not self.params.start_s:
            start = None  # from the first batch: nothing to skip or slice
        if not self.params.loop:
            return self._merged(rec, start)  # handed on as they come: no per-batch work here
        return self._looped(rec, start, period)

    def _looped(self, rec: Recording, start: int | None, period: int):
        offset = 0
        while True:
            played = 0
            for port, batch in self._merged(rec, start):
                played += 1
                yield port, shift_t(batch, offset) if offset else batch
            if played == 0 or period <= 0:
                return
            offset += period

    def _merged(self, rec: Recording, start: int | None):
        """(port, batch) of every selected stream, in sensor-time order (ties: stream order)."""
        iters = [(port, _from(rec.batches(stream), start)) for port, stream in self.ports.items()]
        if len(iters) == 1:  # nothing to merge: no per-batch timestamp lookups (zip pairs in C)
            port, it = iters[0]
            return zip(repeat(port), it)
        return self._merging(iters)

    def _merging(self, iters: list):
        heap = []
        last = [-(2**63)] * len(iters)
        for rank, (_port, it) in enumerate(iters):
            batch = next(it, None)
            if batch is not None:
                t = first_t(batch)
                last[rank] = t if t is not None else last[rank]
                heap.append((last[rank], rank, batch))
        heapq.heapify(heap)
        while heap:
            _, rank, batch = heapq.heappop(heap)
            port, it = iters[rank]
            yield port, batch
            nxt = next(it, None)
            if nxt is not None:
                t = first_t(nxt)
                last[rank] = t if t is not None else last[rank]
                heapq.heappush(heap, (last[rank], rank, nxt))


def _from(batches, start: int | None):
    """Batches from sensor time `start` on: whole batches skipped, the first one sliced."""
    return batches if start is None else _skip_to(batches, start)


def _skip_to(batches, start: int):
    for batch in batches:
        idx = batch.schema.get_field_index("t")
        if idx < 0 or batch.num_rows == 0:
            continue
        t = batch.column(idx).to_numpy()
        if t[-1] < start:
            continue
        cut = int(np.searchsorted(t, start))
        yield batch.slice(cut) if cut else batch
        break
    yield from batches


class ShadowParams(Params):
    ports: list[str] = Field(default_factory=lambda: ["in"], description="input ports of the muted actuator")
    of: str = Field("", description="operator that was muted")


@register
class ShadowSink(Operator):
    """Stands in for an actuator in a shadow run: takes its inputs and sends nothing anywhere."""

    name = "shadow_sink"
    Params = ShadowParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.inputs = {p: "any" for p in self.params.ports}
        self.batches = self.items = 0

    def process(self, port, batch):
        self.batches += 1
        self.items += batch.num_rows

    def state(self):
        return {"batches": self.batches, "items": self.items}

    def restore(self, state):
        self.batches, self.items = state["batches"], state["items"]

    def result(self):
        return {"muted": self.params.of, "batches": self.batches, "items": self.items}


# --- running a config through a recording --------------------------------------------


def _load_config(config: str | Path | dict) -> tuple[dict, str | None]:
    if isinstance(config, dict):
        return dict(config), None
    path = Path(config)
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        raise ConfigError("a pipeline config must be a mapping with a 'nodes' mapping", str(path))
    return data, str(path)


def _fields(schema: pa.Schema) -> dict[str, str]:
    return {f.name: str(f.type) for f in schema}


def through_graph(
    recording: str | Path,
    config: str | Path | dict,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    pacing: str = "max",
    speed: float = 1.0,
    start_s: float = 0.0,
    loop: bool = False,
    shadow: bool = False,
) -> tuple[Graph, dict]:
    """The config's graph with its live sources replaced by the recording's streams.

    A source node `camera` with output `out` is played from the recorded stream
    `camera.out`. The config's own `record:` is dropped (a replay must not overwrite
    what it reads). With `shadow`, actuator sinks become `shadow_sink`s.
    Returns (graph, notes) where notes say what was replaced and muted.
    """
    rec = Recording(recording)
    data, source = _load_config(config)
    held = ", ".join(rec.streams) or "none"
    problems: list[Problem] = []
    notes: dict = {"replayed": {}, "muted": [], "dropped_record": "record" in data}
    data.pop("record", None)
    nodes = dict(data["nodes"])
    for node_id, spec in nodes.items():
        if not isinstance(spec, dict) or "op" not in spec:
            continue  # Graph.from_dict reports it
        try:
            cls = lookup(str(spec["op"]))
        except ConfigError:
            continue
        if issubclass(cls, Source) and cls.name != "replay":
            instance = _try_make(cls, spec)
            ports = list((instance or cls).outputs)
            wanted = [f"{node_id}.{p}" for p in ports]
            have = [s for s in wanted if s in rec.streams]
            if not have:
                problems.append(Problem(node_id, None, f"source '{node_id}' ({cls.name}) has no stream in the recording '{recording}' (it holds: {held})"))
                continue
            if len(have) < len(wanted):
                lost = ", ".join(s for s in wanted if s not in have)
                problems.append(Problem(node_id, None, f"source '{node_id}' ({cls.name}) makes {', '.join(wanted)} but the recording lacks {lost} (it holds: {held})"))
                continue
            _check_schemas(node_id, cls, instance, rec, problems)
            keep = {k: v for k, v in spec.items() if k not in ("op", "params", "inputs")}
            nodes[node_id] = {**keep, "op": "replay", "params": {
                "dir": str(recording), "streams": {p: f"{node_id}.{p}" for p in ports},
                "pacing": pacing, "speed": speed, "start_s": start_s, "loop": loop}}
            notes["replayed"][node_id] = have
        elif shadow and cls.actuator:
            nodes[node_id] = {**spec, "op": "shadow_sink", "params": {"ports": list(cls.inputs), "of": cls.name}}
            notes["muted"].append(node_id)
    if problems:
        raise ConfigError(problems, source)
    data["nodes"] = nodes
    graph = Graph.from_dict(data, source=source, overrides=overrides)
    return graph, notes


def _try_make(cls, spec) -> Operator | None:
    try:
        return cls(cls.Params(**(spec.get("params") or {})))
    except Exception:  # a live source may not be constructible at the desk; ports from the class
        return None


def _check_schemas(node_id, cls, instance, rec: Recording, problems: list[Problem]) -> None:
    """Compare what a live source would make with what was recorded, where the source can say."""
    if instance is None:
        return
    try:
        live = instance.schemas({})
    except Exception as exc:  # needs its device or file: nothing to compare against
        log.debug("cannot ask source %s for its schemas: %s", node_id, exc)
        return
    for port, schema in live.items():
        recorded = rec.schema(f"{node_id}.{port}")
        if _fields(schema) != _fields(recorded):
            problems.append(Problem(node_id, None, (
                f"schema mismatch: the recording's '{node_id}.{port}' has fields {_fields(recorded)}, "
                f"source '{node_id}' ({cls.name}) makes {_fields(schema)}")))


def streams_to_record(graph: Graph) -> list[str]:
    """What a replay run records: every stream a non-source node makes, and actuator inputs."""
    graph.check()
    out = [f"{n.id}.{p}" for n in graph.nodes.values() if not n.is_source and n.id != "__record__" for p in n.op.outputs]
    for n in graph.nodes.values():
        if n.op.name == "shadow_sink" or n.op.actuator:
            out += [e.stream for e in n.inputs.values() if e.stream not in out]
    return out


def replay(
    recording: str | Path,
    config: str | Path | dict | None = None,
    *,
    executor: str = "local",
    pacing: str = "max",
    speed: float = 1.0,
    start_s: float = 0.0,
    loop: bool = False,
    streams: list[str] | None = None,
    record: str | Path | None = None,
    shadow: bool = False,
    golden: str | Path | None = None,
    tolerance: float = 0.0,
    overrides: list[str] | tuple[str, ...] = (),
    strict: bool = False,
    foxglove: str | None = None,
) -> dict:
    """Replay a recording (through a config, or into counting sinks) and diff it if asked.

    A missing or unreadable `golden` is bad input (ConfigError, exit 2), checked before
    anything runs. With `strict`, a recording that is not complete and undamaged (a failed
    run, a killed recorder, a cut-off file) is refused (DataError) instead of replayed up
    to its last whole batch. `foxglove` ("HOST:PORT") serves the replayed run to Foxglove or
    Lichtblick as `reflexarc run --foxglove` does (`notes["foxglove"]` says what was served).
    Returns {"run": RunResult, "notes": ..., "recorded": path | None, "diff": report | None}.
    """
    from pipeline.run import run

    if golden is not None:
        try:
            Recording(golden, repair=False)
        except DataError as exc:
            raise ConfigError([Problem(None, "--golden", f"cannot be compared against: {exc}")]) from None
    try:
        report_in = inspect_recording(recording, repair=False)
    except DataError as exc:  # bad input, as a bad golden is: exit 2, never the 1 of a divergence
        raise ConfigError([Problem(None, "recording", str(exc))]) from None
    problems = problems_of(report_in)
    if problems and strict:
        raise DataError(f"recording '{recording}' is not complete (--strict): {'; '.join(problems)}")
    if problems:
        log.warning("replaying '%s' although %s", recording, "; ".join(problems))

    if config is None:
        graph = Graph("replay")
        graph.add("replay", "replay", dir=str(recording), streams=streams, pacing=pacing,
                  speed=speed, start_s=start_s, loop=loop)
        for port in graph.nodes["replay"].op.outputs:
            graph.add(f"count__{port}", "count_sink", inputs={"in": f"replay.{port}"})
        notes = {"replayed": {"replay": list(graph.nodes["replay"].op.ports.values())}, "muted": []}
    else:
        graph, notes = through_graph(recording, config, overrides=overrides, pacing=pacing, speed=speed,
                                     start_s=start_s, loop=loop, shadow=shadow)
    out = Path(record) if record else None
    scratch = None
    if out is None and golden is not None:
        scratch = Path(tempfile.mkdtemp(prefix="reflexarc-shadow-"))
        out = scratch / "run"
    tapped = streams_to_record(graph) if out is not None else []
    if out is not None and tapped:
        graph.tap(tapped, out)
    viewer = None
    if foxglove:
        from pipeline.foxglove import LiveViewer

        # without a config the replay source's ports are `camera__out`: show them as recorded
        names = {} if config is not None else {
            f"replay.{port}": stream for port, stream in graph.nodes["replay"].op.ports.items()}
        viewer = LiveViewer(foxglove, names=names)
        viewer.tap(graph)
        viewer.start()
        log.warning("Foxglove: open ws://%s in Foxglove or Lichtblick (Open connection -> Foxglove WebSocket)",
                    viewer.address)
    try:
        try:
            result = run(graph, executor=executor)
        except BaseException as exc:
            if out is not None and tapped:
                mark_failed(out, exc)
            raise
        finally:
            if viewer is not None:
                viewer.stop()
        if viewer is not None:
            notes["foxglove"] = viewer.summary_line(result.results)
        report = None
        if golden is not None:
            ignore = [s for streams_ in notes["replayed"].values() for s in streams_]
            report = diff_recordings(golden, out, tolerance=tolerance, ignore=ignore) if tapped else \
                diff_recordings(golden, None, tolerance=tolerance, ignore=ignore)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    notes["input_problems"] = problems
    return {"run": result, "notes": notes, "recorded": str(out) if record else None, "diff": report}


# --- diffing two recordings ----------------------------------------------------------


def diff_recordings(golden: str | Path, new: str | Path | None, tolerance: float = 0.0,
                    ignore: list[str] | tuple[str, ...] = ()) -> dict:
    """Compare every stream of `golden` with `new`, row by row; name the first divergence.

    Numeric fields may differ by up to `tolerance` (absolute); everything else must be
    equal. Streams in `ignore` (the replayed inputs) are skipped. `ok` is False when a
    stream diverges or is missing from `new`.
    """
    g = Recording(golden)
    n = Recording(new) if new is not None else None
    report = {"golden": str(golden), "new": str(new) if new is not None else None, "tolerance": tolerance,
              "streams": {}, "identical": [], "diverged": [], "missing": [], "extra": [], "ok": True}
    for stream in g.streams:
        if stream in ignore:
            continue
        if n is None or stream not in n.streams:
            report["missing"].append(stream)
            report["streams"][stream] = {"status": "missing", "first": None}
            continue
        res = compare_tables(g.table(stream), n.table(stream), tolerance)
        report["streams"][stream] = res
        (report["identical"] if res["status"] == "identical" else report["diverged"]).append(stream)
    if n is not None:
        report["extra"] = [s for s in n.streams if s not in g.streams and s not in ignore]
    report["ok"] = not report["diverged"] and not report["missing"]
    return report


def _as_matrix(col: pa.ChunkedArray) -> np.ndarray | None:
    """A column as a NumPy array with one row per record (tensors flattened), or None."""
    arr = col.combine_chunks()
    if isinstance(arr.type, pa.FixedShapeTensorType):
        width = int(np.prod(arr.type.shape))
        return arr.storage.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), width)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type):
        if arr.null_count:
            return None
        return arr.to_numpy(zero_copy_only=False)
    return None


def _value(col: pa.ChunkedArray, row: int):
    v = col[row].as_py()
    return v if not isinstance(v, list) or len(v) <= 8 else f"[{len(v)} values]"


def compare_tables(old: pa.Table, new: pa.Table, tolerance: float = 0.0) -> dict:
    """Row-aligned comparison of two recorded streams: status, first divergence, counts."""
    res = {"status": "identical", "rows_golden": old.num_rows, "rows_new": new.num_rows,
           "rows_diverged": 0, "max_abs_diff": {}, "first": None}
    if [f.name for f in old.schema] != [f.name for f in new.schema] or any(
        a.type != b.type for a, b in zip(old.schema, new.schema, strict=False)
    ):
        res["status"] = "diverged"
        res["first"] = {"row": 0, "t_us": None, "field": "(schema)",
                        "old": _fields(old.schema), "new": _fields(new.schema)}
        return res
    rows = min(old.num_rows, new.num_rows)
    bad_any = np.zeros(rows, dtype=bool)
    first_row, first_field = None, None
    for f in old.schema:
        a, b = old.column(f.name).slice(0, rows), new.column(f.name).slice(0, rows)
        ma, mb = _as_matrix(a), _as_matrix(b)
        if ma is not None and mb is not None and ma.dtype.kind in "fiub":
            if ma.dtype.kind == "b" or tolerance == 0:
                bad = ma != mb
                if ma.dtype.kind == "f":
                    bad &= ~(np.isnan(ma) & np.isnan(mb))
            else:
                diff = np.abs(ma.astype(np.float64) - mb.astype(np.float64))
                bad = diff > tolerance
                bad &= ~(np.isnan(ma) & np.isnan(mb)) if ma.dtype.kind == "f" else True
            if ma.dtype.kind != "b" and rows:
                d = np.abs(ma.astype(np.float64) - mb.astype(np.float64))
                finite = d[np.isfinite(d)]
                res["max_abs_diff"][f.name] = float(finite.max()) if finite.size else 0.0
            if bad.ndim > 1:
                bad = bad.any(axis=1)
        else:
            eq = pc.fill_null(pc.equal(a, b), False)
            both_null = pc.and_(pc.is_null(a), pc.is_null(b))
            bad = ~pc.or_(eq, both_null).to_numpy(zero_copy_only=False)
        hits = np.flatnonzero(bad)
        if hits.size:
            bad_any |= bad
            if first_row is None or hits[0] < first_row:
                first_row, first_field = int(hits[0]), f.name
    res["rows_diverged"] = int(bad_any.sum()) + abs(old.num_rows - new.num_rows)
    has_t = old.schema.get_field_index("t") >= 0
    if first_row is not None:
        res["status"] = "diverged"
        res["first"] = {"row": first_row, "t_us": old.column("t")[first_row].as_py() if has_t else None,
                        "field": first_field, "old": _value(old.column(first_field), first_row),
                        "new": _value(new.column(first_field), first_row)}
    elif old.num_rows != new.num_rows:
        longer = old if old.num_rows > new.num_rows else new
        res["status"] = "diverged"
        res["first"] = {"row": rows, "t_us": longer.column("t")[rows].as_py() if has_t else None,
                        "field": "(rows)", "old": old.num_rows, "new": new.num_rows}
    return res


__all__ = ["Replay", "ShadowSink", "compare_tables", "diff_recordings", "replay", "streams_to_record",
           "through_graph"]
