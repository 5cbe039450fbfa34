"""The fleet manager with in-process agents: telemetry in order, deploy, rollout, bad messages."""

from __future__ import annotations

import hashlib
import io
import json
import threading

import numpy as np
import pyarrow as pa
import zmq
from rich.console import Console

from cluster.fleet.admin import request, status_table
from edge import keys as K
from edge import wire
from edge.agent import Agent, AgentOptions, telemetry_payload

from .conftest import ROOT

BLIMP_MODEL = ROOT / "operators" / "control" / "models" / "blimp_snn.json"
PIPELINE = {"name": "fleet_test", "nodes": {
    "loop": {"op": "blimp_loop", "params": {"controller": "snn", "rate_hz": 10.0, "duration_s": 600.0,
                                            "pacing": "realtime", "speed": 5.0}},
    "motor": {"op": "motor", "inputs": {"in": "loop.command"}}}}


def _start(tmp_path, keys, endpoint, name, tags, **kw):
    agent = Agent(AgentOptions(name=name, manager=endpoint, keys=str(keys), tags=tags, work_dir=str(tmp_path / name),
                               heartbeat_s=0.2, telemetry_hz=20, linger_s=2.0, **kw))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    return agent, stop, thread


def test_deploy_rollout_promote_rollback_and_ordered_telemetry(tmp_path, keys, manager, helpers):
    mgr, endpoint = manager
    agents = {n: _start(tmp_path, keys, endpoint, n, t) for n, t in (("r1", ["lab"]), ("r2", ["field"]))}
    try:
        helpers.wait_for(lambda: len(mgr.agents) == 2, what="both robots to register")
        admin = dict(manager=endpoint, keys=str(keys))

        reply = request(**admin, op="deploy", config=PIPELINE, target="tag:lab")
        assert reply["agents"] == ["r1"]
        r1, r2 = agents["r1"][0], agents["r2"][0]
        helpers.wait_for(lambda: r1.status == "running" and r1.stats["step"] > 5, 30, "r1 to run the deployed config")
        assert r1.version == reply["version"] and r2.version == "none"

        v2 = tmp_path / "blimp_v2.json"
        v2.write_bytes(BLIMP_MODEL.read_bytes())
        reply = request(**admin, op="rollout", data=v2.read_bytes(), version="v2", file=v2.name, fraction=0.5)
        assert reply["canary"] == ["r1"] and reply["mode"] == "live"
        helpers.wait_for(lambda: r1.model_version == "v2", what="r1 to take model v2")
        assert r1.model_hash == reply["sha256"] == hashlib.sha256(v2.read_bytes()).hexdigest()
        assert (tmp_path / "r1" / "models" / "sha256" / reply["sha256"] / v2.name).read_bytes() == v2.read_bytes()
        assert r2.model_version == "initial"
        step = r1.stats["step"]
        assert request(**admin, op="rollback")["agents"] == ["r1"]
        helpers.wait_for(lambda: r1.model_version == "initial", what="r1 to roll back")
        assert r1.stats["step"] > step and r1.status == "running"  # the loop never stopped

        bad = tmp_path / "blimp_bad.json"
        bad.write_bytes(bytes(range(256)))  # a file of random bytes: refused, the old model stays
        request(**admin, op="rollout", data=bad.read_bytes(), version="bad", file=bad.name, fraction=0.5)
        helpers.wait_for(lambda: "model bad" in (mgr.agents["r1"].model_error or ""), what="the refusal")
        assert "not JSON" in mgr.agents["r1"].model_error and r1.model_version == "initial"
        request(**admin, op="rollback")

        v3 = json.loads(BLIMP_MODEL.read_text())
        v3["w_out"] = (np.asarray(v3["w_out"]) * 1.01).tolist()
        request(**admin, op="rollout", data=json.dumps(v3).encode(), version="v3", file="blimp.json", fraction=0.5)
        assert request(**admin, op="promote")["agents"] == ["r1", "r2"]
        helpers.wait_for(lambda: r1.model_version == "v3" and r2.pending_model is not None, what="promotion to all")
        assert r2.model_version == "initial" and r2.pending_model["version"] == "v3"  # r2 runs no pipeline yet
        request(**admin, op="deploy", config=PIPELINE, target="r2")
        helpers.wait_for(lambda: r2.model_version == "v3", what="r2 to take v3 when its pipeline starts")

        helpers.wait_for(lambda: mgr.agents["r1"].model_version == mgr.agents["r2"].model_version == "v3",
                         what="heartbeats to carry v3")
        report = request(**admin, op="status")
        console = Console(record=True, width=250)
        console.print(status_table(request(**admin, op="status")))
        text = console.export_text()
        assert "r1" in text and "r2" in text and "fleet_test@" in text
        assert {a["name"]: a["link"] for a in report["agents"]} == {"r1": "up", "r2": "up"}
        assert {a["name"]: a["model_hash"] for a in report["agents"]} == {"r1": r1.model_hash, "r2": r2.model_hash}
        assert f"v3 {r1.model_hash[:8]}" in text
    finally:
        for _, stop, _thread in agents.values():
            stop.set()
        for _, _, thread in agents.values():
            thread.join(timeout=10)
    for name, (agent, _, _) in agents.items():
        assert agent.link["acked"] == agent.spool.next_seq - 1  # everything delivered before exit
        assert helpers.seqs(mgr.recording.folder, f"{name}.telemetry") == list(range(agent.spool.next_seq))
        assert mgr.agents[name].duplicates == 0


def _bad_schema_payload() -> bytes:
    batch = pa.record_batch({"t": pa.array([1], pa.int64()), "evil": pa.array(["x"])})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue()


def test_bad_signature_and_bad_schema_are_rejected_and_counted(tmp_path, keys, manager, helpers):
    mgr, endpoint = manager
    agent, stop, thread = _start(tmp_path, keys, endpoint, "r1", [])
    ctx = zmq.Context()
    rogue = K.client_socket(ctx, zmq.DEALER, keys / "r2.key_secret", keys / "manager.key")
    try:
        helpers.wait_for(lambda: "r1" in mgr.agents, what="r1 to register")
        rogue.connect(endpoint)
        wire.send(rogue, b"hello", {"name": "r1", "pid": 1})  # r2's key claiming to be r1
        helpers.wait_for(lambda: mgr.counters["bad_signature"] == 1, what="the forged hello to be counted")
        assert mgr.agents["r1"].pid != 1

        wire.send(rogue, b"hello", {"name": "r2", "pid": 2, "first": 0})
        assert rogue.poll(5000)
        kind, head, _ = wire.parse(rogue.recv_multipart())
        assert kind == b"welcome" and head["acked"] == -1
        wire.send(rogue, b"tel", {"seq": 0}, extra=[_bad_schema_payload()])
        wire.send(rogue, b"tel", {"seq": 1}, extra=[telemetry_payload(123, step=7)])
        rogue.send_multipart([b"tel", b"not json"])
        helpers.wait_for(lambda: mgr.counters["bad"].get("malformed") == 1 and mgr.agents["r2"].received == 1,
                         what="the good message to be recorded")
        assert mgr.counters["bad_schema"] == 1 and mgr.agents["r2"].rejected == 1
        before = mgr.agents["r1"].received
        helpers.wait_for(lambda: mgr.agents["r1"].received > before + 5, what="r1 to carry on unharmed")
    finally:
        rogue.close(linger=0)
        ctx.term()
        stop.set()
        thread.join(timeout=10)
    assert helpers.seqs(mgr.recording.folder, "r2.telemetry") == [1]
    assert helpers.seqs(mgr.recording.folder, "r1.telemetry") == list(range(agent.spool.next_seq))


def test_telemetry_folder_is_a_readable_recording(tmp_path, keys, manager, helpers):
    from pipeline.recording import inspect_recording

    mgr, endpoint = manager
    agent, stop, thread = _start(tmp_path, keys, endpoint, "r1", [])
    try:
        helpers.wait_for(lambda: "r1" in mgr.agents and mgr.agents["r1"].received >= 10, what="telemetry")
    finally:
        stop.set()
        thread.join(timeout=10)
    mgr.recording.write_manifest()
    report = inspect_recording(mgr.recording.folder, repair=False)
    stream = report["streams"]["r1.telemetry"]
    assert stream["batches"] == mgr.agents["r1"].received and stream["seq_gaps"] == 0
    assert not report["damage"]


def test_a_config_the_robot_cannot_start_shows_why_in_the_status(tmp_path, keys, manager, helpers):
    mgr, endpoint = manager
    agent, stop, thread = _start(tmp_path, keys, endpoint, "r1", [])
    try:
        helpers.wait_for(lambda: "r1" in mgr.agents, what="r1 to register")
        # the CLI would refuse this config locally; straight through the admin API it reaches the robot
        reply = request(manager=endpoint, keys=str(keys), op="deploy",
                        config={"name": "broken", "nodes": {"a": {"op": "no_such_op"}}}, target="r1")
        assert reply["ok"]
        helpers.wait_for(lambda: "no_such_op" in (mgr.agents["r1"].config_error or ""), what="the reason")
        row = request(manager=endpoint, keys=str(keys), op="status")["agents"][0]
        assert row["status"] == "config-error" and "config 'broken' rejected" in row["config_error"]
        console = Console(record=True, width=400)
        console.print(status_table(request(manager=endpoint, keys=str(keys), op="status")))
        assert "no_such_op" in console.export_text()
    finally:
        stop.set()
        thread.join(timeout=10)
