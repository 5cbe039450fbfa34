"""Test helpers that ship with the library: list sources and sinks, and a crash injector.

A flow test reads: batches in -> graph -> batches out::

    g = Graph("t")
    g.add("src", ListSource.of(batches))
    g.add("mid", "identity", inputs={"in": "src.out"})
    g.add("out", CollectSink(), inputs={"in": "mid.out"})
    result = run(g)
    result.results["out"]["batches"]   # what arrived, in order
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
from pydantic import Field

from pipeline.operator import Operator, Params, Source, SourceParams, register


class ListParams(SourceParams):
    model_config = {"arbitrary_types_allowed": True, "frozen": True, "extra": "forbid"}
    batches: list = Field(default_factory=list)
    port: str = "out"


@register
class ListSource(Source):
    """Yields a fixed list of batches (from Python; not usable from YAML files)."""

    name = "list_source"
    outputs = {"out": "any"}
    Params = ListParams

    @classmethod
    def of(cls, batches: list[pa.RecordBatch], **params) -> ListSource:
        return cls(ListParams(batches=list(batches), **params))

    def schemas(self, inputs):
        if not self.params.batches:
            raise ValueError("list_source needs at least one batch to know its schema")
        return {"out": self.params.batches[0].schema}

    def generate(self):
        yield from self.params.batches


@register
class CollectSink(Operator):
    """Keeps every batch it receives; its result holds them in arrival order."""

    name = "collect_sink"
    inputs = {"in": "any"}

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.batches: list[pa.RecordBatch] = []

    def process(self, port, batch):
        self.batches.append(batch)

    def state(self):
        return list(self.batches)

    def restore(self, state):
        self.batches = list(state)

    def result(self):
        return {"batches": self.batches, "items": sum(b.num_rows for b in self.batches)}


class CrashParams(Params):
    at_batch: int = Field(3, ge=0, description="crash when this many batches have passed")
    marker: str = Field(..., description="file that records the crash happened (crash once)")
    mode: str = Field("exit", pattern="^(exit|raise)$")


@register
class CrashOnce(Operator):
    """Passes batches through, and kills its process (or raises) once at a given batch."""

    name = "crash_once"
    inputs = {"in": "any"}
    outputs = {"out": "any"}
    Params = CrashParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.seen = 0

    def process(self, port, batch):
        self.seen += 1
        marker = Path(self.params.marker)
        if self.seen > self.params.at_batch and not marker.exists():
            marker.write_text("crashed")
            if self.params.mode == "exit":
                os._exit(1)
            raise RuntimeError(f"injected failure at batch {self.seen}")
        return batch

    def state(self):
        return self.seen

    def restore(self, state):
        self.seen = state


def tables_equal(a: list[pa.RecordBatch], b: list[pa.RecordBatch]) -> bool:
    """True when two batch lists hold the same rows (however they are cut into batches)."""
    if not a and not b:
        return True
    if not a or not b:
        return False
    ta = pa.Table.from_batches(a).combine_chunks()
    tb = pa.Table.from_batches(b).combine_chunks()
    return ta.replace_schema_metadata(None).equals(tb.replace_schema_metadata(None))
