"""A stage: a set of graph nodes pushed in topological order, one "wave" at a time.

Both executors are built from stages. The local executor runs every non-source node in
one stage; the Ray executor runs one stage per actor (a node, or a fused chain). A wave is
everything that follows from one source batch. Within a stage each node takes its inputs
ordered by the topological rank of their producer, so the same graph and input give the
same outputs however the nodes are grouped into stages.

An item on an edge is a plain tuple `(src_node, src_port, batch, seq, ingest_ns)`.
"""

from __future__ import annotations

from collections import defaultdict
from time import perf_counter_ns, time_ns

from pipeline.errors import OperatorError
from pipeline.graph import Graph
from pipeline.metrics import NodeMetrics
from pipeline.operator import emitted
from pipeline.schemas import Header

Item = tuple  # (src_node, src_port, batch, seq, ingest_ns)


_COUNTS = ("batches_in", "items_in", "batches_out", "items_out", "drops_batches", "drops_items",
           "budget_misses", "safe_states")


class Stage:
    """Runs a topologically ordered subset of a graph's nodes on waves of items."""

    def __init__(self, graph: Graph, node_ids: list[str]):
        rank = {n: i for i, n in enumerate(graph.order)}
        self.ids = [n for n in graph.order if n in set(node_ids)]
        self.rank = rank
        self.nodes = {n: graph.nodes[n] for n in self.ids}
        self.ops = {n: graph.nodes[n].op for n in self.ids}
        self.metrics = {n: NodeMetrics(n, self.ops[n].name) for n in self.ids}
        self.routes: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        self.exported: set[tuple[str, str]] = set()
        members = set(self.ids)
        for node in graph.nodes.values():
            for port, edge in node.inputs.items():
                if node.id in members:
                    self.routes[(edge.src, edge.src_port)].append((node.id, port))
                elif edge.src in members:
                    self.exported.add((edge.src, edge.src_port))
        self.routes = dict(self.routes)
        self.seq: dict[tuple[str, str], int] = defaultdict(int)
        self.headers = {n: self.ops[n].wants_header for n in self.ids}
        # a node whose outputs go nowhere in this stage (a sink; under Ray, any lone node):
        # an item for it alone needs no topological walk, so `step` hands it straight over
        fed = {src for src, _ in self.routes}
        self._direct = {key: dsts[0] for key, dsts in self.routes.items()
                        if len(dsts) == 1 and dsts[0][0] not in fed}
        self._hot = self._hot_path()
        self._setup_done: list[str] = []

    def _hot_path(self) -> dict:
        """Per node, what the per-batch path needs, looked up once (after setup: ports may change)."""
        return {
            n: (
                self.ops[n],
                self.metrics[n],
                self.headers[n],
                not self.ops[n].outputs or self.nodes[n].latency_budget_ms is not None,
                self.nodes[n].latency_budget_ms,
            )
            for n in self.ids
        }

    # -- lifecycle -----------------------------------------------------------------
    def setup(self) -> None:
        for n in self.ids:
            try:
                self.ops[n].setup()
            except Exception as exc:
                raise OperatorError.of(n, exc, "setup failed: ") from exc
            self._setup_done.append(n)
        self._hot = self._hot_path()

    def close(self) -> list[OperatorError]:
        """Close every operator that was set up; return (not raise) what failed."""
        failures = []
        for n in self._setup_done:
            try:
                self.ops[n].close()
            except Exception as exc:
                failures.append(OperatorError(n, f"close failed: {exc}"))
        self._setup_done = []
        return failures

    # -- waves ---------------------------------------------------------------------
    def step(self, items: list[Item]) -> list[Item]:
        """Push one wave of incoming items through the stage; return items that leave it."""
        if len(items) == 1:  # the common wave: one batch, for one node that feeds no other here
            item = items[0]
            dst = self._direct.get((item[0], item[1]))
            if dst is not None:
                out: list[Item] = []
                self._process(dst[0], dst[1], item, None, out)
                return out
        return self._run(items, flush=False)

    def finish(self, items: list[Item]) -> list[Item]:
        """The last wave: push `items`, then flush every node in order."""
        return self._run(items, flush=True)

    def _run(self, items: list[Item], flush: bool) -> list[Item]:
        pending: dict[str, list] = {}
        out: list[Item] = []
        routes = self.routes
        for item in items:
            for dst, dport in routes.get((item[0], item[1]), ()):
                pending.setdefault(dst, []).append((dport, item))
        for n in self.ids:
            inbox = pending.pop(n, None)
            if inbox:
                if len(inbox) > 1:
                    inbox.sort(key=lambda e: self.rank[e[1][0]])
                for dport, item in inbox:
                    self._process(n, dport, item, pending, out)
            if flush:
                self._flush(n, pending, out)
        return out

    def _process(self, n: str, port: str, item: Item, pending: dict, out: list) -> None:
        op, m, wants_header, timed_e2e, budget = self._hot[n]
        src, src_port, batch, seq, ingest = item
        m.batches_in += 1
        m.items_in += batch.num_rows
        t0 = perf_counter_ns()
        try:
            if wants_header:
                result = op.process(port, batch, Header(f"{src}.{src_port}", seq, ingest))
            else:
                result = op.process(port, batch)
            if result is not None:
                self._emit(n, emitted(op, result), ingest, pending, out)
        except Exception as exc:
            raise OperatorError.of(n, exc, seq=seq) from exc
        m.proc.add(perf_counter_ns() - t0)
        if timed_e2e:
            e2e = time_ns() - ingest
            m.e2e.add(e2e)
            if budget is not None and e2e > budget * 1e6:
                m.budget_misses += 1
                if self.nodes[n].on_budget_miss == "safe_state":
                    m.safe_states += 1
                    op.safe_state(f"latency budget of {budget} ms missed ({e2e / 1e6:.2f} ms)")

    def _flush(self, n: str, pending: dict, out: list) -> None:
        op = self.ops[n]
        try:
            pairs = emitted(op, op.finish())
            self._emit(n, pairs, time_ns(), pending, out)
        except Exception as exc:
            raise OperatorError.of(n, exc, "finish failed: ") from exc

    def _emit(self, n: str, pairs, ingest: int, pending: dict, out: list) -> None:
        m = self.metrics[n]
        for port, batch in pairs:
            key = (n, port)
            seq = self.seq[key]
            self.seq[key] = seq + 1
            m.batches_out += 1
            m.items_out += batch.num_rows
            new = (n, port, batch, seq, ingest)
            for dst, dport in self.routes.get(key, ()):
                pending.setdefault(dst, []).append((dport, new))
            if key in self.exported:
                out.append(new)

    # -- state and reports ---------------------------------------------------------
    def state(self, with_metrics: bool = False) -> dict:
        """Every operator's state and the stream sequence numbers; with the node counters
        when asked (a checkpoint, so that a restarted stage counts on from it)."""
        state = {"ops": {n: self.ops[n].state() for n in self.ids}, "seq": dict(self.seq)}
        if with_metrics:
            state["counts"] = {n: {k: getattr(m, k) for k in _COUNTS} for n, m in self.metrics.items()}
        return state

    def restore(self, state: dict) -> None:
        for n, s in state["ops"].items():
            if s is not None:
                self.ops[n].restore(s)
        self.seq = defaultdict(int, state["seq"])
        for n, counts in state.get("counts", {}).items():
            for k, v in counts.items():
                setattr(self.metrics[n], k, v)

    def results(self) -> dict:
        return {n: self.ops[n].result() for n in self.ids if self.ops[n].result() is not None}

    def snapshots(self) -> list[dict]:
        return [self.metrics[n].snapshot() for n in self.ids]

    def safe_state(self, reason: str) -> None:
        for n in self.ids:
            if self.ops[n].actuator:
                self.ops[n].safe_state(reason)
