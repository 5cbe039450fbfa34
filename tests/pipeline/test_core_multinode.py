"""Multi-node: placement, every executor across two real Ray nodes, joining a running cluster.

The `multinode` fixture is a real Ray cluster on this machine (a head and a worker with
their own resources and labels). Node loss has its own clusters in test_core_node_loss.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from pipeline import Graph, run
from pipeline.errors import ClusterError, ConfigError
from pipeline.testing import CollectSink, ListSource, event_batches, tables_equal


def _batches(n=10, rows=40, seed=3):
    return event_batches(n, rows, seed=seed, span_us=500)


def _placed(batches, a_place=None, b_place=None, out_place=None):
    """src -> a -> b -> out, with `place:` on a, b and out as given."""
    g = Graph("placed")
    g.add("src", ListSource.of(batches))
    g.add("a", "identity", inputs={"in": "src.out"}, place=a_place)
    g.add("b", "identity", inputs={"in": "a.out"}, place=b_place)
    g.add("out", CollectSink(), inputs={"in": "b.out"}, place=out_place)
    return g


def test_placement_lands_on_the_node_asked_for(multinode):
    g = _placed(_batches(4), a_place={"resources": {"camera": 1}}, b_place={"labels": {"role": "head"}},
                out_place={"node": multinode.worker_id})
    result = run(g, "ray")
    where = {m["node"]: m["ray_node"] for m in result.metrics}
    assert where["a"] == multinode.worker_id  # the only node with a camera
    assert where["b"] == multinode.head_id  # the only node labelled role=head
    assert where["out"] == multinode.worker_id  # named by node id
    assert where["src"] == multinode.head_id  # sources run in the driver
    assert result.recovery["ray_nodes"]["a"] == multinode.worker_id


@pytest.mark.parametrize("executor", ["ray", "ray-compiled", "ray-shm"])
def test_every_executor_gives_the_local_outputs_across_two_nodes(multinode, executor):
    batches = _batches(12)
    before = {d for d in os.listdir("/dev/shm") if d.startswith("reflexarc-shm-")}
    local = run(_placed(batches), "local").results["out"]["batches"]
    g = _placed(batches, a_place={"resources": {"accel": 1}}, b_place={"resources": {"head": 1}})
    result = run(g, executor)
    got = result.results["out"]["batches"]
    assert tables_equal(got, local) and len(got) == len(local)
    assert all(x.equals(y) for x, y in zip(got, local))
    nodes = {m["node"]: m["ray_node"] for m in result.metrics}
    assert nodes["a"] == multinode.worker_id and nodes["b"] == multinode.head_id
    if executor == "ray-shm":
        # driver (head) -> a (worker) and a -> b (head) cross nodes: sockets; b -> out (both on
        # the head, `out` pinned beside the driver): a ring
        kinds = result.recovery["channels"]
        by_link = {name: kind for name, kind in kinds.items()}
        assert sorted(by_link.values()) == ["ring", "socket", "socket"], by_link
        assert {d for d in os.listdir("/dev/shm") if d.startswith("reflexarc-shm-")} <= before  # rings removed


def test_shm_socket_channel_keeps_backpressure_across_nodes(multinode):
    batches = _batches(20, 30)
    g = Graph("bp")
    g.add("src", ListSource.of(batches))
    g.add("slow", "delay", per_batch_ms=3, inputs={"in": {"from": "src.out", "capacity": 2}},
          place={"resources": {"camera": 1}})
    g.add("out", CollectSink(), inputs={"in": "slow.out"})
    result = run(g, "ray-shm")
    assert tables_equal(result.results["out"]["batches"], batches)
    assert result.recovery["channels"]["src-0"] == "socket"
    assert 1 <= result.node("slow")["queue_max"] <= 2


def test_a_placement_no_node_can_meet_names_the_nodes_and_what_they_lack(multinode):
    g = _placed(_batches(2), a_place={"resources": {"lidar": 1}})
    with pytest.raises(ClusterError) as info:
        run(g, "ray")
    text = str(info.value)
    assert "stage 'a' asks for lidar=1" in text
    assert multinode.worker_id[:12] in text and multinode.head_id[:12] in text and "lacks resource lidar" in text


def test_a_placement_that_cannot_be_scheduled_in_time_is_an_error_not_a_hang(multinode):
    # both stages want the worker's single camera: one of them (Ray picks which) can never start
    g = _placed(_batches(2), a_place={"resources": {"camera": 1}}, b_place={"resources": {"camera": 1}})
    with pytest.raises(ClusterError, match=r"not placed within 3 s") as info:
        run(g, "ray", placement_timeout_s=3)
    stuck = re.findall(r"'(\w+)' \(camera=1\)", str(info.value))
    assert len(stuck) == 1 and stuck[0] in ("a", "b"), str(info.value)


def test_a_placed_source_must_be_met_by_the_driver_node(multinode):
    g = Graph("src_placed")
    g.add("src", ListSource.of(_batches(2)), place={"resources": {"camera": 1}})
    g.add("out", CollectSink(), inputs={"in": "src.out"})
    with pytest.raises(ClusterError, match="sources run in the driver"):
        run(g, "ray")
    assert tables_equal(run(g, "local").results["out"]["batches"], _batches(2))  # local ignores place:


def test_fusing_differently_placed_nodes_is_refused_at_validation():
    g = Graph("fused")
    g.add("src", ListSource.of(_batches(2)))
    g.add("a", "identity", inputs={"in": "src.out"}, fuse="x", place={"resources": {"camera": 1}})
    g.add("b", "identity", inputs={"in": "a.out"}, fuse="x")
    g.add("out", CollectSink(), inputs={"in": "b.out"})
    with pytest.raises(ConfigError, match="fuse group 'x' joins nodes placed differently"):
        g.check()


def test_bad_place_and_ray_keys_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError) as info:
        Graph.from_dict({"name": "x", "ray": {"adress": "h:1"}, "nodes": {
            "src": {"op": "synthetic", "place": {"resources": {"camera": -1}, "zone": "a"}},
            "out": {"op": "count_sink", "inputs": {"in": "src.out"}, "place": {"resources": {"CPU": 1}}}}})
    text = str(info.value)
    assert "ray.adress: unknown key" in text
    assert "src.place.resources.camera: must be a positive number, got -1" in text
    assert "src.place.zone: unknown placement key" in text
    assert "out.place.resources.CPU: is a built-in Ray resource" in text


def _cli(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_cli_joins_a_running_cluster_and_leaves_it_running(multinode, tmp_path):
    import json

    import ray

    cfg = tmp_path / "placed.yaml"
    cfg.write_text(
        "name: placed\n"
        "nodes:\n"
        "  camera: {op: synthetic, params: {kind: events, rate_hz: 200000, batch_items: 1000, duration_s: 0.05}}\n"
        "  work: {op: identity, inputs: {in: camera.out}, place: {resources: {accel: 1}}}\n"
        "  sink: {op: count_sink, inputs: {in: work.out}}\n"
    )
    summary = tmp_path / "s.json"
    # RAY_ADDRESS, as a user of a cluster would have it set
    done = _cli("run", str(cfg), "--executor", "ray", "--summary", str(summary), "--quiet",
                env={"RAY_ADDRESS": multinode.address})
    assert done.returncode == 0, done.stderr
    result = json.loads(summary.read_text())
    assert result["results"]["sink"]["items"] == 10_000
    assert result["recovery"]["ray_nodes"]["work"] == multinode.worker_id
    # --address, and validate checks each placement against the live nodes
    ok = _cli("validate", str(cfg), "--address", multinode.address)
    assert ok.returncode == 0, ok.stderr
    assert f"stage 'work' (accel=1) fits node(s) {multinode.worker_id[:12]}" in ok.stdout
    bad = _cli("validate", str(cfg), "--address", multinode.address, "--set", "work.place={resources: {lidar: 1}}")
    assert bad.returncode == 1 and "no live node can hold it" in bad.stderr and "lacks resource lidar" in bad.stderr
    # the cluster is still up, both nodes alive, after two drivers joined and left
    assert sum(n["Alive"] for n in ray.nodes()) == 2
    assert ray.is_initialized()
