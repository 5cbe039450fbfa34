"""The local executor: one process, deterministic, topological push of each wave."""

from __future__ import annotations

import threading

from pipeline.feed import Feed
from pipeline.graph import Graph
from pipeline.stage import Stage


def run_local(graph: Graph, monitor=None, stop: threading.Event | None = None) -> tuple[dict, list[dict]]:
    """Run `graph` to the end of its sources; return (sink results, node metrics).

    `monitor(snapshots)` is called about every 0.25 s with live metrics.
    """
    feed = Feed(graph)
    stage = Stage(graph, [n for n in graph.order if not graph.nodes[n].is_source])
    import time

    next_report = time.perf_counter() + 0.25
    errors = []
    try:
        stage.setup()
        feed.setup()
        for _, items in feed:
            stage.step(items)
            if stop is not None and stop.is_set():
                break
            if monitor is not None and time.perf_counter() >= next_report:
                monitor(_snapshots(graph, feed, stage))
                next_report = time.perf_counter() + 0.25
        stage.finish([])
    except BaseException:
        stage.safe_state("the pipeline stopped on an error")
        raise
    finally:
        errors = feed.close() + stage.close()
    if errors:
        raise errors[0]
    return {**feed.results(), **stage.results()}, _snapshots(graph, feed, stage)


def _snapshots(graph: Graph, feed: Feed, stage: Stage) -> list[dict]:
    by_node = {s["node"]: s for s in [m.snapshot() for m in feed.metrics.values()] + stage.snapshots()}
    return [by_node[n] for n in graph.order if n in by_node]
