"""Per-operator counters and latency percentiles, cheap enough for the per-batch path."""

from __future__ import annotations

import os

import numpy as np

_RING = 4096


class Latencies:
    """A ring of the last 4096 latency samples (ns), for p50/p99 without unbounded memory."""

    __slots__ = ("buf", "n")

    def __init__(self):
        self.buf = np.zeros(_RING, dtype=np.int64)
        self.n = 0

    def add(self, ns: int) -> None:
        self.buf[self.n % _RING] = ns
        self.n += 1

    def percentiles(self) -> dict[str, float | None]:
        if self.n == 0:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        vals = self.buf[: min(self.n, _RING)] / 1e6
        p50, p99 = np.percentile(vals, [50, 99])
        return {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4), "max_ms": round(float(vals.max()), 4)}


class NodeMetrics:
    """What one node did: batches and items in and out, drops, latencies, budget misses."""

    __slots__ = (
        "node", "op", "batches_in", "items_in", "batches_out", "items_out", "drops_batches",
        "drops_items", "duplicates", "budget_misses", "safe_states", "queue_depth", "queue_max",
        "proc", "e2e",
    )

    def __init__(self, node: str, op: str):
        self.node, self.op = node, op
        self.batches_in = self.items_in = self.batches_out = self.items_out = 0
        self.drops_batches = self.drops_items = self.duplicates = 0
        self.budget_misses = self.safe_states = 0
        self.queue_depth = self.queue_max = 0
        self.proc = Latencies()
        self.e2e = Latencies()

    def snapshot(self) -> dict:
        return {
            "node": self.node,
            "op": self.op,
            "batches_in": self.batches_in,
            "items_in": self.items_in,
            "batches_out": self.batches_out,
            "items_out": self.items_out,
            "drops_batches": self.drops_batches,
            "drops_items": self.drops_items,
            "duplicates_dropped": self.duplicates,
            "queue_depth": self.queue_depth,
            "queue_max": self.queue_max,
            "latency": self.proc.percentiles(),
            "e2e_latency": self.e2e.percentiles(),
            "budget_misses": self.budget_misses,
            "safe_states": self.safe_states,
        }


def console(stderr: bool = False):
    """A rich Console for tables: the terminal's width at a terminal, and each table's own full
    width when output goes to a pipe or a file (rich would cut it to 80 columns, `path='REQUIR…`)."""
    from rich.console import Console

    out = Console(stderr=stderr)
    if out.is_terminal or "COLUMNS" in os.environ:
        return out
    return Console(stderr=stderr, width=1 << 16)  # tables are not expanded, so they keep their natural width


def table(snapshots: list[dict], title: str = "reflexarc"):
    """A rich Table of node snapshots (used live and at the end of a run)."""
    from rich.table import Table

    t = Table(title=title, expand=False)
    placed = any(s.get("ray_node") for s in snapshots)  # Ray executors: which Ray node ran each stage
    cols = ("node", "op", "in", "out", "drops", "q", "p50 ms", "p99 ms", "e2e p50", "e2e p99", "misses")
    for col in cols + (("ray node",) if placed else ()):
        t.add_column(col, justify="right" if col not in ("node", "op", "ray node") else "left")

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for s in snapshots:
        t.add_row(
            s["node"], s["op"], f"{s['items_in']:,}", f"{s['items_out']:,}",
            f"{s['drops_batches']:,}", str(s["queue_depth"]), fmt(s["latency"]["p50_ms"]),
            fmt(s["latency"]["p99_ms"]), fmt(s["e2e_latency"]["p50_ms"]), fmt(s["e2e_latency"]["p99_ms"]),
            f"{s['budget_misses']:,}",
            *((str(s.get("ray_node") or "-")[:12],) if placed else ()),
        )
    return t
