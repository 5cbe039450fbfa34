"""The runtime's own operators: a synthetic source, identity, delay and a counting sink.

They exist so the runtime runs end to end without any domain operator, and so
benchmarks and tests have payloads of a known size and content.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import schemas as sch
from pipeline.errors import DataError
from pipeline.operator import Operator, Params, Source, SourceParams, register


class SyntheticParams(SourceParams):
    kind: Literal["events", "samples"] = "events"
    rate_hz: float = Field(1_000_000.0, gt=0, description="items per second of sensor time")
    batch_items: int = Field(1024, ge=1, description="items per batch")
    duration_s: float = Field(1.0, gt=0, description="sensor time to generate")
    width: int = Field(640, ge=1, le=65535)
    height: int = Field(480, ge=1, le=65535)
    channels: int = Field(8, ge=1, description="channels when kind is samples")
    seed: int = 0


@register
class Synthetic(Source):
    """Known, seeded payloads: uniform random events or multi-sine samples."""

    name = "synthetic"
    outputs = {"out": "any"}
    Params = SyntheticParams

    def schemas(self, inputs):
        p = self.params
        if p.kind == "events":
            return {"out": sch.events_schema(p.width, p.height)}
        return {"out": sch.samples_schema([f"ch{i}" for i in range(p.channels)], p.rate_hz)}

    def generate(self):
        p = self.params
        schema = self.schemas({})["out"]
        rng = np.random.default_rng(p.seed)
        total = int(p.rate_hz * p.duration_s)
        step_us = 1e6 / p.rate_hz
        for start in range(0, total, p.batch_items):
            n = min(p.batch_items, total - start)
            t = ((start + np.arange(n)) * step_us).astype(np.int64)
            if p.kind == "events":
                x = rng.integers(0, p.width, n, dtype=np.uint16)
                y = rng.integers(0, p.height, n, dtype=np.uint16)
                pol = rng.random(n) < 0.5
                yield sch.events_batch(t, x, y, pol, schema)
            else:
                freqs = 5.0 + 3.0 * np.arange(p.channels)
                data = np.sin(2 * np.pi * t[:, None] * 1e-6 * freqs) + 0.1 * rng.standard_normal((n, p.channels))
                yield sch.samples_batch(t, data, schema)


@register
class Identity(Operator):
    """Passes batches through unchanged (for measuring the runtime itself)."""

    name = "identity"
    inputs = {"in": "any"}
    outputs = {"out": "any"}

    def process(self, port, batch):
        return batch


class DelayParams(Params):
    per_batch_ms: float = Field(1.0, ge=0)


@register
class Delay(Operator):
    """Holds each batch for a fixed time: a stand-in for a slow stage or sink."""

    name = "delay"
    inputs = {"in": "any"}
    outputs = {"out": "any"}
    Params = DelayParams

    def process(self, port, batch):
        time.sleep(self.params.per_batch_ms / 1000.0)
        return batch


class CountParams(Params):
    path: str | None = Field(None, description="write the counts here as JSON at the end")
    delay_ms: float = Field(0.0, ge=0, description="hold each batch this long (a slow sink)")


@register
class CountSink(Operator):
    """Counts batches and items and checksums the `t` column; optionally writes JSON."""

    name = "count_sink"
    inputs = {"in": "any"}
    Params = CountParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.batches = 0
        self.items = 0
        self.t_sum = 0
        self.t_last = None
        self._delay_s = self.params.delay_ms / 1000.0  # looked up once, not per batch

    def setup(self):
        if self.params.path:
            target = Path(self.params.path)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            except OSError as exc:
                raise DataError(f"count_sink cannot write '{target}': {exc.strerror}") from None

    def process(self, port, batch):
        if self._delay_s:
            time.sleep(self._delay_s)
        self.batches += 1
        rows = batch.num_rows
        self.items += rows
        if rows:
            idx = batch.schema.get_field_index("t")
            if idx >= 0:
                # the common `t` (int64, no nulls) as a NumPy view straight away: the checks
                # of `schemas.column` cost more than the sum of a small batch
                try:
                    t = batch.column(idx).to_numpy()
                except pa.ArrowInvalid:  # nulls or booleans: the general path
                    t = sch.column(batch, "t")
                self.t_sum += int(t.sum())
                self.t_last = int(t.item(-1))  # no NumPy scalar on the way

    def state(self):
        return {"batches": self.batches, "items": self.items, "t_sum": self.t_sum, "t_last": self.t_last}

    def restore(self, state):
        self.batches, self.items = state["batches"], state["items"]
        self.t_sum, self.t_last = state["t_sum"], state["t_last"]

    def result(self):
        return self.state()

    def close(self):
        if self.params.path:
            try:
                Path(self.params.path).write_text(json.dumps(self.result(), indent=2))
            except OSError as exc:
                raise DataError(f"count_sink cannot write '{self.params.path}': {exc.strerror}") from None
