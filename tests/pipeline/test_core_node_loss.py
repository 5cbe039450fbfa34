"""A whole Ray node lost mid-stream: `ray` recovers exactly once, `ray-shm` ends with one clear error.

Each test has a cluster of its own (a head and two workers that both offer `accel`),
since it removes a node: `cluster.remove_node` kills the node's raylet and every
process on it, as a machine that dies would.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pipeline import Graph, run
from pipeline.errors import ClusterError
from pipeline.testing import CollectSink, ListSource, MultiNode, event_batches, tables_equal


@pytest.fixture
def cluster():
    edge = {"resources": {"accel": 1}, "labels": {"role": "edge"}}
    with MultiNode.connected(workers=[edge, edge]) as nodes:
        yield nodes


def _batches(n=30, rows=25):
    return event_batches(n, rows, seed=11, size=16, span_us=100)


def _graph(batches, marker: Path) -> Graph:
    g = Graph("node_loss")
    g.add("src", ListSource.of(batches))
    # hangs at batch 9 (once) until its node is removed under it
    g.add("work", "crash_once", at_batch=8, marker=str(marker), mode="hang", hang_s=90,
          inputs={"in": "src.out"}, place={"resources": {"accel": 1}})
    g.add("out", CollectSink(), inputs={"in": "work.out"}, place={"resources": {"head": 1}})
    return g


def _kill_when_marked(nodes: MultiNode, marker: Path, killed: list) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        node_id = marker.read_text().strip()
        victim = next((w for w in nodes.workers if w.node_id == node_id), None)
        if victim is None:  # said by the test's assertion, not lost in this thread
            killed.append(f"no worker node {node_id!r} (workers {[w.node_id for w in nodes.workers]})")
            return
        killed.append(node_id)
        nodes.cluster.remove_node(victim, allow_graceful=False)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_ray_restarts_the_stage_on_another_node_and_loses_nothing(cluster, tmp_path):
    batches = _batches()
    marker = tmp_path / "hung"
    killed: list = []
    watcher = _kill_when_marked(cluster, marker, killed)
    result = run(_graph(batches, marker), "ray", checkpoint_every=3)
    watcher.join(5)
    assert killed, "the node was never removed"
    assert killed[0] in {w.node_id for w in cluster.workers}, killed[0]
    got = result.results["out"]["batches"]
    assert tables_equal(got, batches) and [b.num_rows for b in got] == [25] * 30  # every item once, in order
    assert result.recovery["actor_restarts"] == 1
    survivor = {w.node_id for w in cluster.workers} - set(killed)
    assert result.recovery["ray_nodes"]["work"] in survivor  # restarted where `accel` still is
    # counts continue from the checkpoint: the table says what the sink got, not what the
    # second incarnation saw
    assert result.node("work")["items_in"] == result.node("out")["items_in"] == 30 * 25
    (line,) = result.recovery["recovered"]
    assert "stage 'work' restarted on node" in line and f"was {killed[0][:12]}, lost" in line


@pytest.mark.parametrize("executor", ["ray-shm", "ray-compiled"])
def test_shm_and_compiled_end_with_one_error_naming_the_node_and_its_stages(cluster, tmp_path, executor):
    before = {d for d in os.listdir("/dev/shm") if d.startswith("reflexarc-shm-")}
    marker = tmp_path / "hung"
    killed: list = []
    watcher = _kill_when_marked(cluster, marker, killed)
    with pytest.raises(ClusterError) as info:
        run(_graph(_batches(), marker), executor)
    watcher.join(5)
    text = str(info.value)
    assert f"lost Ray node {killed[0]} (stages work)" in text and "does not recover from a lost node" in text
    assert {d for d in os.listdir("/dev/shm") if d.startswith("reflexarc-shm-")} <= before  # no rings left
