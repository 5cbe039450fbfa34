"""Offload: the cluster's answer when it is in time, the local stage (counted) when it is late."""

from __future__ import annotations

import threading

import pytest

from cluster.fleet.offload import serve_offload
from pipeline.graph import Graph
from pipeline.run import run


@pytest.mark.parametrize(("remote_ms", "expect_remote"), [(0.0, True), (150.0, False)])
def test_offload_within_budget_or_falls_back(keys, port, remote_ms, expect_remote):
    endpoint = f"tcp://127.0.0.1:{port()}"
    stop, ready = threading.Event(), threading.Event()
    server = threading.Thread(target=serve_offload, kwargs=dict(
        bind=endpoint, keys=str(keys), op="delay", params={"per_batch_ms": remote_ms}, stop=stop, ready=ready,
        identity="manager"))
    server.start()
    try:
        assert ready.wait(10)
        g = Graph("offload_test")
        g.add("sensor", "synthetic", kind="samples", channels=2, rate_hz=1000.0, batch_items=10, duration_s=0.2)
        g.add("stage", "offload", inputs={"in": "sensor.out"}, endpoint=endpoint, keys=str(keys), identity="r1",
              budget_ms=1000.0 if expect_remote else 20.0, fallback={"op": "identity"})
        g.add("sink", "count_sink", inputs={"in": "stage.out"})
        g.add("ref", "count_sink", inputs={"in": "sensor.out"})
        result = run(g)
    finally:
        stop.set()
        server.join(timeout=10)
    stage = result.results["stage"]
    assert result.results["sink"] == result.results["ref"]  # every batch answered, remote or local
    if expect_remote:
        assert stage["remote"] == 20 and stage["fallbacks"] == 0
    else:
        assert stage["fallbacks"] == 20 and stage["remote"] == 0
