"""Pulls batches from a graph's sources, merged by sensor time and paced.

Each source is paced by its own `pacing`/`speed` params. A batch that is overdue while
the source's next batch is already due is dropped (and counted) when every edge leaving
it is `drop-oldest`: a live loop then works on the newest data instead of falling behind.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator

import pyarrow as pa

from pipeline.errors import OperatorError
from pipeline.graph import Graph
from pipeline.metrics import NodeMetrics
from pipeline.operator import emitted
from pipeline.pacing import Pacer
from pipeline.stage import Item


def _first_t(batch: pa.RecordBatch) -> int | None:
    idx = batch.schema.get_field_index("t")
    if idx < 0 or batch.num_rows == 0:
        return None
    return batch.column(idx)[0].as_py()


class Feed:
    """Iterates `(source_node, items)` waves from every source of a graph."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.sources = graph.sources
        self.metrics = {s.id: NodeMetrics(s.id, s.op.name) for s in self.sources}
        self.seq: dict[tuple[str, str], int] = {}
        consumers: dict[tuple[str, str], list[str]] = {}
        for e in graph.edges():
            consumers.setdefault((e.src, e.src_port), []).append(e.policy)
        self.droppable = {k: all(p == "drop-oldest" for p in v) for k, v in consumers.items()}
        self._setup: list = []

    def setup(self) -> None:
        for s in self.sources:
            try:
                s.op.setup()
            except Exception as exc:
                raise OperatorError.of(s.id, exc, "setup failed: ") from exc
            self._setup.append(s)

    def results(self) -> dict:
        """What sources report (stalls, skipped packets, clock offsets), by node."""
        return {s.id: r for s in self.sources if (r := s.op.result()) is not None}

    def close(self) -> list[OperatorError]:
        failures = []
        for s in self._setup:
            try:
                s.op.close()
            except Exception as exc:
                failures.append(OperatorError(s.id, f"close failed: {exc}"))
        self._setup = []
        return failures

    def _pull(self, node, gen):
        try:
            return next(gen)
        except StopIteration:
            return None
        except Exception as exc:
            raise OperatorError.of(node.id, exc) from exc

    def _wave(self, sid: str, m: NodeMetrics, port: str, batch) -> tuple[str, list[Item]]:
        """One source batch as a wave: numbered per port, counted, stamped with ingest time."""
        key = (sid, port)
        seq = self.seq.get(key, 0)
        self.seq[key] = seq + 1
        m.batches_out += 1
        m.items_out += batch.num_rows
        return sid, [(sid, port, batch, seq, time.time_ns())]

    def _lone(self, s, outs) -> Iterator[tuple[str, list[Item]]]:
        """One source at max pacing: nothing to merge or wait for.

        The per-batch work of `_as_pairs` and `_wave` is written out here: this loop runs
        once per batch of a replay at max speed, where every Python call shows.
        """
        sid, m, op, seqs = s.id, self.metrics[s.id], s.op, self.seq
        now = time.time_ns
        try:
            for out in outs:
                if not isinstance(out, tuple):
                    for port, batch in emitted(op, out):
                        yield self._wave(sid, m, port, batch)
                    continue
                port, batch = out
                key = (sid, port)
                seq = seqs.get(key, 0)
                seqs[key] = seq + 1
                m.batches_out += 1
                m.items_out += batch.num_rows
                yield sid, [(sid, port, batch, seq, now())]
        except Exception as exc:
            raise OperatorError.of(sid, exc) from exc

    def __iter__(self) -> Iterator[tuple[str, list[Item]]]:
        pacers = {s.id: Pacer(getattr(s.op.params, "pacing", "max"), getattr(s.op.params, "speed", 1.0))
                  for s in self.sources}
        # sensor time orders several sources and paces realtime ones; a lone source at
        # max pacing needs neither, and reading a timestamp costs more than the rest of a hop
        # (returned, not delegated to: one generator frame fewer per batch)
        if len(self.sources) == 1 and pacers[self.sources[0].id].mode == "max":
            s = self.sources[0]
            return self._lone(s, _generated(s))
        return self._timed(pacers)

    def _timed(self, pacers: dict) -> Iterator[tuple[str, list[Item]]]:
        """Several sources, or paced ones: merged by first sensor time, each paced."""
        heap = []
        gens = {s.id: iter(_as_pairs(s.op, _generated(s))) for s in self.sources}
        for rank, s in enumerate(self.sources):
            first = self._pull(s, gens[s.id])
            if first is not None:
                heapq.heappush(heap, (_first_t(first[1]) or 0, rank, s, first))
        while heap:
            t, rank, s, (port, batch) = heapq.heappop(heap)
            nxt = self._pull(s, gens[s.id])
            if nxt is not None:
                heapq.heappush(heap, (_first_t(nxt[1]) or t, rank, s, nxt))
            pacer = pacers[s.id]
            pacer.wait(t)
            m = self.metrics[s.id]
            if (
                pacer.mode == "realtime"
                and nxt is not None
                and self.droppable.get((s.id, port))
                and time.perf_counter() >= pacer.due(_first_t(nxt[1]) or t)
            ):
                m.drops_batches += 1
                m.drops_items += batch.num_rows
                continue
            yield self._wave(s.id, m, port, batch)


def _generated(s):
    """A source node's `generate()` iterator, its errors named after the node."""
    try:
        return iter(s.op.generate())
    except Exception as exc:
        raise OperatorError.of(s.id, exc) from exc


def _as_pairs(op, gen):
    """Flatten what `generate()` yields (a batch, a (port, batch) pair, or a list) to pairs."""
    for out in gen:
        if isinstance(out, tuple):
            yield out
        else:
            yield from emitted(op, out)
