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
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    mode: str = Field("exit", pattern="^(exit|raise|hang)$",
                      description="exit the process, raise, or hang (up to hang_s) until something outside kills it")
    hang_s: float = Field(60.0, gt=0)


@register
class CrashOnce(Operator):
    """Passes batches through, and kills its process (or raises, or hangs) once at a given batch."""

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
            # where it happened, for tests that kill that node; written whole, then renamed, so a
            # watcher that polls for the file never reads it empty
            part = marker.with_name(marker.name + ".part")
            part.write_text(_ray_node() or "crashed")
            os.replace(part, marker)
            if self.params.mode == "exit":
                os._exit(1)
            if self.params.mode == "hang":  # a test kills the whole node meanwhile
                deadline = time.monotonic() + self.params.hang_s
                while time.monotonic() < deadline:
                    time.sleep(0.05)
                return batch
            raise RuntimeError(f"injected failure at batch {self.seen}")
        return batch

    def state(self):
        return self.seen

    def restore(self, state):
        self.seen = state


class MultiNode:
    """A real two-node Ray cluster on this machine: a head and one worker, each with its own
    custom resources and labels and a capped object store (`ray.cluster_utils.Cluster`)."""

    def __init__(self, workers: list[dict] | None = None, fast_failure: bool = True):
        from ray.cluster_utils import Cluster

        head = {"num_cpus": 1, "resources": {"head": 1}, "labels": {"role": "head"}, "object_store_memory": 100 << 20}
        if fast_failure:  # a lost node is noticed in ~1.5 s instead of ~30 s
            head["_system_config"] = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                                      "health_check_failure_threshold": 3}
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.head_id = self.cluster.head_node.node_id
        self.workers = []
        for spec in workers or [{"resources": {"camera": 1, "accel": 2}, "labels": {"role": "edge"}}]:
            node = self.cluster.add_node(num_cpus=1, object_store_memory=100 << 20, **spec)
            self.workers.append(node)
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    @property
    def worker_id(self) -> str:
        return self.workers[0].node_id

    def shutdown(self) -> None:
        self.cluster.shutdown()

    @classmethod
    @contextmanager
    def connected(cls, **kw) -> Iterator[MultiNode]:
        """A cluster with this process connected as its driver, for a `with` block."""
        import ray

        nodes = cls(**kw)
        ray.init(address=nodes.address, include_dashboard=False, log_to_driver=False)
        try:
            yield nodes
        finally:
            ray.shutdown()
            nodes.shutdown()


def event_batches(n: int = 12, rows: int = 50, seed: int = 0, size: int = 32, span_us: int = 1000) -> list[pa.RecordBatch]:
    """`n` batches of `rows` random events on a size x size sensor, time-ordered across batches."""
    import numpy as np

    from pipeline import schemas as sch

    rng = np.random.default_rng(seed)
    schema = sch.events_schema(size, size)
    out, t0 = [], 0
    for _ in range(n):
        t = t0 + np.sort(rng.integers(0, span_us, rows))
        t0 = int(t[-1]) + 1
        out.append(sch.events_batch(t, rng.integers(0, size, rows), rng.integers(0, size, rows), rng.random(rows) < 0.5, schema))
    return out


def _ray_node() -> str | None:
    """The Ray node id this process runs on, when it runs in Ray."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def tables_equal(a: list[pa.RecordBatch], b: list[pa.RecordBatch]) -> bool:
    """True when two batch lists hold the same rows (however they are cut into batches)."""
    if not a and not b:
        return True
    if not a or not b:
        return False
    ta = pa.Table.from_batches(a).combine_chunks()
    tb = pa.Table.from_batches(b).combine_chunks()
    return ta.replace_schema_metadata(None).equals(tb.replace_schema_metadata(None))
