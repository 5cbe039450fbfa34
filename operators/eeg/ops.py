"""Streaming EEG operators: filter + CAR, SSVEP decoder on sliding windows, wheelchair sink."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.eeg import kernels as k
from operators.eeg.decode import ARTEFACT, DEGRADED, GAP, LOST, METHODS, UNSAFE, Decoder, window_flags
from pipeline import schemas as sch
from pipeline.errors import SchemaError
from pipeline.operator import Operator, Params, register


def _channels(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if f.name != "t"]


def _matrix(batch: pa.RecordBatch, names: list[str]) -> np.ndarray:
    return np.column_stack([sch.column(batch, c) for c in names]).astype(np.float64)


class FilterParams(Params):
    band_hz: tuple[float, float] | None = Field((5.0, 45.0), description="Butterworth band-pass")
    order: int = Field(4, ge=1, le=8)
    notch_hz: float | None = Field(50.0, description="mains notch (None: off)")
    car: bool = Field(True, description="common-average reference over good channels")
    flat_s: float = Field(0.2, gt=0, description="identical values this long: a flat channel")
    saturation_uv: float = Field(3000.0, gt=0, description="|x| at or above this: saturated")


@register
class EegFilter(Operator):
    """Band-pass + notch (SOS, carried state) and CAR; flat/saturated samples are zeroed."""

    name = "eeg_filter"
    inputs = {"in": "samples"}
    outputs = {"out": "samples"}
    Params = FilterParams

    def schemas(self, inputs):
        schema = inputs["in"]
        rate = sch.fact(schema, "rate_hz")
        band = self.params.band_hz
        if rate is None:
            raise SchemaError("eeg_filter needs a samples stream with a 'rate_hz' fact")
        if band is not None and not (0 < band[0] < band[1] < rate / 2):
            raise SchemaError(f"eeg_filter band_hz={list(band)} must lie in (0, {rate / 2}) Hz "
                              f"for a {rate} Hz stream")
        return {"out": schema}

    def setup(self):
        self._sos = None
        self.bad_samples = 0
        self._restored = getattr(self, "_restored", None)

    def _init(self, schema):
        p = self.params
        self._rate = sch.fact(schema, "rate_hz")
        self._names = _channels(schema)
        self._schema = schema
        self._sos = k.design_sos(self._rate, p.band_hz, p.notch_hz, p.order)
        c = len(self._names)
        self._zi = k.sos_zeros(self._sos, c)
        self._last = np.full(c, np.nan)
        self._run = np.zeros(c, dtype=np.int64)
        self._flat_n = max(2, int(p.flat_s * self._rate))
        if self._restored is not None:
            st = self._restored
            self._zi, self._last = np.array(st["zi"]), np.array(st["last"])
            self._run = np.array(st["run"], dtype=np.int64)

    def process(self, port, batch):
        if getattr(self, "_sos", None) is None:
            self.bad_samples = getattr(self, "bad_samples", 0)
            self._restored = getattr(self, "_restored", None)
            self._init(batch.schema)
        if batch.num_rows == 0:
            return batch
        x = _matrix(batch, self._names)
        bad, self._last, self._run = k.bad_samples(x, self._last, self._run, self._flat_n,
                                                   self.params.saturation_uv)
        y, self._zi = k.sos_step(self._sos, np.where(bad, 0.0, x), self._zi)
        y = k.car_masked(y, bad) if self.params.car else np.where(bad, 0.0, y)
        self.bad_samples += int(bad.sum())
        return sch.samples_batch(sch.column(batch, "t"), y, self._schema)

    def state(self):
        if getattr(self, "_sos", None) is None:
            return None
        return {"zi": self._zi.tolist(), "last": self._last.tolist(), "run": self._run.tolist()}

    def restore(self, state):
        self._restored = state

    def result(self):
        return {"bad_channel_samples": getattr(self, "bad_samples", 0)}


COMMANDS = ("forward", "left", "right", "stop")


def decision_schema() -> pa.Schema:
    """What the decoder emits: one row per window."""
    return sch.commands_schema({"target": "int16", "confidence": "float32", "flags": "int32"},
                               {"target": "index into freqs_hz, -1 idle"})


class DecoderParams(Params):
    method: str = Field("fbcca", description=f"one of {', '.join(METHODS)}")
    freqs_hz: list[float] = Field([6.67, 7.5, 8.57, 12.0], min_length=2)
    window_s: float = Field(2.0, gt=0)
    hop_s: float = Field(0.25, gt=0)
    harmonics: int = Field(3, ge=1)
    channels: list[str] | None = Field(None, description="channels to decode (all when unset)")
    idle_threshold: float = Field(1.5, ge=0, description="confidence below this: idle")
    artefact_uv: float = Field(60.0, gt=0, description="filtered |x| above this flags an artefact")
    min_channels: int = Field(2, ge=1)
    gap_factor: float = Field(3.0, gt=1, description="a t step over this many sample periods is a gap")


@register
class SsvepDecoder(Operator):
    """Sliding windows (window_s, hop_s) of filtered EEG -> target or idle, with flags."""

    name = "ssvep_decoder"
    inputs = {"in": "samples"}
    outputs = {"out": "commands"}
    Params = DecoderParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.counts = {"windows": 0, "idle": 0, "artefact": 0, "degraded": 0, "gap": 0, "lost": 0}

    def schemas(self, inputs):
        p = self.params
        if p.method not in METHODS:
            raise SchemaError(f"ssvep_decoder method='{p.method}' (expected one of {', '.join(METHODS)})")
        have = _channels(inputs["in"])
        missing = [c for c in (p.channels or []) if c not in have]
        if missing:
            raise SchemaError(f"ssvep_decoder channels {missing} are not in the stream {have}")
        if p.hop_s > p.window_s:
            raise SchemaError(f"ssvep_decoder hop_s={p.hop_s} exceeds window_s={p.window_s}")
        return {"out": decision_schema()}

    def setup(self):
        self._ready = False

    def _init(self, schema):
        p = self.params
        self._rate = sch.fact(schema, "rate_hz")
        self._names = _channels(schema)
        self._use = [self._names.index(c) for c in (p.channels or self._names)]
        self._n = int(round(p.window_s * self._rate))
        self._hop = max(1, int(round(p.hop_s * self._rate)))
        self._dec = Decoder(p.method, tuple(p.freqs_hz), self._rate, self._n, p.harmonics,
                            idle_threshold=p.idle_threshold)
        self._tail = np.zeros((0, len(self._names)))  # the last n-1 samples
        self._ttail = np.zeros(0, dtype=np.int64)
        self._seen = 0
        self._schema = decision_schema()
        self._ready = True
        held = getattr(self, "_restored", None)
        if held is not None:
            self._tail = np.array(held["tail"], dtype=np.float64).reshape(-1, len(self._names))
            self._ttail = np.array(held["ttail"], dtype=np.int64)
            self._seen = held["seen"]

    def process(self, port, batch):
        if not getattr(self, "_ready", False):
            self._init(batch.schema)
        if batch.num_rows == 0:
            return None
        buf = np.concatenate([self._tail, _matrix(batch, self._names)])
        tt = np.concatenate([self._ttail, sch.column(batch, "t")])
        n, hop, base = self._n, self._hop, len(self._tail)
        gap_us = self.params.gap_factor * 1e6 / self._rate
        out_t, out_k, out_c, out_f = [], [], [], []
        for i in range(batch.num_rows):
            g = self._seen + i + 1  # samples seen including this one
            if g < n or (g - n) % hop:
                continue
            end = base + i + 1
            kk, conf, flags = self._decide(buf[end - n:end])
            if np.diff(tt[end - n:end]).max(initial=0) > gap_us:
                flags |= GAP
                self.counts["gap"] += 1
            out_t.append(tt[end - 1])
            out_k.append(kk)
            out_c.append(conf)
            out_f.append(flags)
        self._seen += batch.num_rows
        self._tail, self._ttail = buf[-(n - 1):].copy(), tt[-(n - 1):].copy()
        if not out_t:
            return None
        return sch.commands_batch(np.array(out_t), self._schema, target=np.array(out_k, np.int16),
                                  confidence=np.array(out_c, np.float32), flags=np.array(out_f, np.int32))

    def state(self):
        if not getattr(self, "_ready", False):
            return {"counts": dict(self.counts)}
        return {"counts": dict(self.counts), "tail": self._tail.tolist(), "ttail": self._ttail.tolist(),
                "seen": self._seen}

    def restore(self, state):
        self.counts = dict(state["counts"])
        self._restored = state if "tail" in state else None
        self._ready = False

    def _decide(self, window):
        p = self.params
        flags, usable = window_flags(window, p.artefact_uv, p.min_channels)
        cols = [j for j in self._use if usable[j]]
        self.counts["windows"] += 1
        if len(cols) < p.min_channels:
            flags |= LOST
        for bit, name in ((ARTEFACT, "artefact"), (DEGRADED, "degraded"), (LOST, "lost")):
            if flags & bit:
                self.counts[name] += 1
        if flags & LOST:
            return -1, 0.0, flags
        target, conf, _ = self._dec.decide(window[:, cols])
        if target < 0:
            self.counts["idle"] += 1
        return target, conf, flags

    def result(self):
        return dict(self.counts)


class WheelchairParams(Params):
    commands: list[str] = Field(list(COMMANDS), description="command for each target, in order")
    dwell: int = Field(3, ge=1, description="consecutive identical decisions to confirm a command")
    idle_stop_s: float | None = Field(None, gt=0, description="stop after this long idle (None: hold)")
    loss_s: float = Field(1.0, gt=0, description="no decision for this long (sensor time): stop")
    log_path: str | None = Field(None, description="append every command issued as a JSON line")


@register
class WheelchairSink(Operator):
    """Drives a wheelchair from SSVEP decisions: dwell-time confirmation, safety stops."""

    name = "wheelchair_sink"
    inputs = {"in": "commands"}
    actuator = True
    wants_header = True
    Params = WheelchairParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.current = "stop"
        self.issued: list[dict] = []
        self.safety_stops: dict[str, int] = {}
        self._cand, self._count, self._idle_since, self._last_t = -1, 0, None, None

    def schemas(self, inputs):
        schema = inputs["in"]
        for col in ("target", "flags"):
            if schema.get_field_index(col) < 0:
                raise SchemaError(f"wheelchair_sink needs a '{col}' column (from ssvep_decoder)")
        return {}

    def _issue(self, command: str, t_us: int, reason: str, ingest_ns: int | None) -> None:
        latency = None if ingest_ns is None else (time.time_ns() - ingest_ns) / 1e6
        self.current = command
        entry = {"t_us": int(t_us), "command": command, "reason": reason, "latency_ms": latency}
        self.issued.append(entry)
        if self.params.log_path:
            with open(self.params.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def safe_state(self, reason: str) -> None:
        """The runtime's call (a failed run, a missed budget, a manager's stop): stop is
        commanded even when the chair was already stopped, because after a failure what the
        chair last did is not known, and the log then always ends with the safety stop."""
        last = self.issued[-1] if self.issued else None
        repeat = self.current == "stop" and last is not None and last["reason"] == f"safety: {reason}"
        self._safety_stop(reason, always=not repeat)

    def _safety_stop(self, reason: str, always: bool = False) -> None:
        self.safety_stops[reason] = self.safety_stops.get(reason, 0) + 1
        if always or self.current != "stop":
            self._issue("stop", self._last_t or 0, f"safety: {reason}", None)
        self._cand, self._count = -1, 0

    def process(self, port, batch, header=None):
        ingest = header.ingest_ns if header is not None else None
        p = self.params
        for t, target, flags in zip(sch.column(batch, "t"), sch.column(batch, "target"),
                                    sch.column(batch, "flags")):
            t, target, flags = int(t), int(target), int(flags)
            if self._last_t is not None and t - self._last_t > p.loss_s * 1e6:
                self._safety_stop("signal loss")
            self._last_t = t
            if flags & UNSAFE:
                why = "artefact" if flags & ARTEFACT else ("timestamp gap" if flags & GAP else "signal loss")
                self._safety_stop(why)
                continue
            if target < 0:
                self._cand, self._count = -1, 0
                self._idle_since = t if self._idle_since is None else self._idle_since
                if p.idle_stop_s and t - self._idle_since >= p.idle_stop_s * 1e6 and self.current != "stop":
                    self._issue("stop", t, "idle", ingest)
                continue
            self._idle_since = None
            self._count = self._count + 1 if target == self._cand else 1
            self._cand = target
            if self._count >= p.dwell and target < len(p.commands):
                command = p.commands[target]
                if command != self.current:
                    self._issue(command, t, "confirmed", ingest)

    def finish(self):
        if self.current != "stop":
            self._issue("stop", self._last_t or 0, "end of stream", None)

    def state(self):
        return {"current": self.current, "issued": list(self.issued), "stops": dict(self.safety_stops)}

    def restore(self, state):
        self.current, self.issued = state["current"], list(state["issued"])
        self.safety_stops = dict(state["stops"])

    def result(self):
        lat = [c["latency_ms"] for c in self.issued if c["latency_ms"] is not None]
        return {"current": self.current, "commands": len(self.issued), "issued": self.issued,
                "safety_stops": dict(self.safety_stops),
                "latency_ms_p50": float(np.percentile(lat, 50)) if lat else None,
                "latency_ms_p99": float(np.percentile(lat, 99)) if lat else None}
