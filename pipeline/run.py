"""One call to run a graph under any executor: `pipeline.run(graph, executor="local")`."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.executors import BUILTIN as EXECUTORS
from pipeline.executors import get as get_executor
from pipeline.graph import Graph


@dataclass
class RunResult:
    """What a run produced: each sink's result and each node's metrics."""

    graph: str
    executor: str
    wall_s: float
    results: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    recovery: dict = field(default_factory=dict)

    def node(self, node_id: str) -> dict:
        for m in self.metrics:
            if m["node"] == node_id:
                return m
        raise KeyError(node_id)

    def summary(self) -> dict:
        return {
            "graph": self.graph,
            "executor": self.executor,
            "wall_s": round(self.wall_s, 4),
            "results": self.results,
            "metrics": self.metrics,
            "recovery": self.recovery,
        }

    def write(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.summary(), indent=2, default=str))


def configured_executor(graph: Graph) -> tuple[str, dict]:
    """The YAML's `executor:` key: a name, or `{kind: NAME, <option>: value, ...}`."""
    spec = graph.config.get("executor")
    if spec is None:
        return "local", {}
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("kind", "local"), str):
        return spec.get("kind", "local"), {k: v for k, v in spec.items() if k != "kind"}
    raise ConfigError(f"executor: must be a name or {{kind: NAME, ...options}}, got {spec!r}", graph.source)


def run(
    graph: Graph,
    executor: str | None = None,
    *,
    address: str | None = None,
    monitor=None,
    stop: threading.Event | None = None,
    **options,
) -> RunResult:
    """Run a validated graph to completion and return its results and metrics.

    `executor` is `local`, `ray` (one actor per node or fused group, backpressure,
    crash recovery), `ray-compiled` (the same actors as a Ray Compiled Graph) or `ray-shm`
    (the same actors linked by shared-memory rings on a node, sockets between nodes);
    None takes the config's `executor:` key, else `local`. `address` joins a running
    Ray cluster (else the config's `ray: {address: ...}`, else RAY_ADDRESS, else a local
    session starts). `options` go to the executor (for Ray: `fuse`, `checkpoint_every`,
    `max_restarts`, `placement_timeout_s`); the config's `executor: {kind, ...}` options
    come first and these override them.
    """
    name, configured = configured_executor(graph)
    if executor is not None and executor != name:
        configured = {}  # options written for another executor do not apply
    name = executor or name
    options = {**configured, **options}
    if address is not None:
        options["address"] = address
    impl = get_executor(name)
    impl.check_options(options)
    graph = graph.check().fresh()
    start = time.perf_counter()
    outcome = impl.run(graph, monitor=monitor, stop=stop, **options)
    return RunResult(graph.name, name, time.perf_counter() - start, outcome.results, outcome.metrics, outcome.recovery)


__all__ = ["EXECUTORS", "RunResult", "configured_executor", "run"]
