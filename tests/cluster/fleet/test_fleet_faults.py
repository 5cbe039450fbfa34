"""Faults with real processes: manager killed and restarted, robot killed and restarted, 20 robots."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from cluster.fleet.admin import request
from edge.agent import Agent, AgentOptions
from pipeline.errors import LinkError


def _status(endpoint, keys):
    try:
        return request(endpoint, str(keys), "status", timeout_s=1.0)
    except LinkError:
        return None


def _serve(helpers, keys, endpoint, out, log):
    return helpers.spawn("cluster.fleet", "serve", "--keys", str(keys), "--bind", endpoint, "--out", str(out),
                         "--heartbeat-s", "0.2", "--lost-after-s", "1.0", log=log)


def test_manager_and_robot_killed_and_restarted_lose_and_duplicate_nothing(tmp_path, keys, helpers):
    endpoint = f"tcp://127.0.0.1:{helpers.free_port()}"
    out = tmp_path / "fleet"
    procs = []
    # resend_s beyond the test: after each (re)connect the welcome says where the stream stands,
    # so with no timed resends the restarted manager must see each message exactly once
    agent = Agent(AgentOptions(name="r1", manager=endpoint, keys=str(keys), work_dir=str(tmp_path / "r1"),
                               telemetry_hz=20, heartbeat_s=0.2, link_timeout_s=1.0, resend_s=60.0, linger_s=5.0))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    try:
        procs.append(_serve(helpers, keys, endpoint, out, tmp_path / "m1.log"))
        helpers.wait_for(lambda: _status(endpoint, keys) is not None, 30, "the manager to start")
        thread.start()
        # r2 too: no timed resends within the test (go-back-N while the manager was down would
        # resend what the killed manager had recorded but not acknowledged: dropped, but counted)
        robot = ["edge", "run", "none", "--manager", endpoint, "--name", "r2", "--keys", str(keys),
                 "--telemetry-hz", "20", "--work-dir", str(tmp_path / "r2"), "--resend-s", "60"]
        procs.append(helpers.spawn(*robot, log=tmp_path / "r2a.log"))
        helpers.wait_for(lambda: len((_status(endpoint, keys) or {"agents": []})["agents"]) == 2, 30, "2 robots")
        helpers.wait_for(lambda: agent.link["acked"] > 20, 15, "telemetry to flow")

        helpers.kill(procs[0])  # SIGKILL the manager mid-stream
        helpers.wait_for(lambda: agent.link["state"] == "down", 15, "the robot to notice the manager is gone")
        helpers.wait_for(lambda: len(agent.spool) > 10, 15, "the robot to keep spooling telemetry")
        procs[0] = _serve(helpers, keys, endpoint, out, tmp_path / "m2.log")
        helpers.wait_for(lambda: agent.link["state"] == "up" and agent.link["connects"] == 2, 30, "reconnect")

        helpers.wait_for(lambda: len((_status(endpoint, keys) or {"agents": []})["agents"]) == 2, 30,
                         "r2 to register with the restarted manager")
        helpers.kill(procs[1])  # SIGKILL the robot; it comes back and re-registers
        procs[1] = helpers.spawn(*robot, log=tmp_path / "r2b.log")
        helpers.wait_for(lambda: any(a["name"] == "r2" and a["restarts"] == 1
                                     for a in (_status(endpoint, keys) or {"agents": []})["agents"]),
                         30, "the manager to notice r2's restart")
        time.sleep(1.0)
        stop.set()
        thread.join(timeout=15)
        helpers.kill(procs[1], signal.SIGTERM)  # a clean stop flushes the robot's spool
        report = _status(endpoint, keys)
    finally:
        stop.set()
        for p in procs:
            helpers.kill(p, signal.SIGTERM)
    assert agent.link["acked"] == agent.spool.next_seq - 1
    assert helpers.seqs(out / "telemetry", "r1.telemetry") == list(range(agent.spool.next_seq))
    r2 = helpers.seqs(out / "telemetry", "r2.telemetry")
    assert r2 == list(range(len(r2))) and len(r2) > 20  # the restarted robot continued its numbering
    rows = {a["name"]: a for a in report["agents"]}
    assert agent.link["resent"] == 0
    assert rows["r1"]["duplicates"] == 0 and rows["r2"]["restarts"] == 1
    # r2 is a separate robot process that lives through the manager's SIGKILL: what it had in
    # flight to the killed manager (recorded there, never acknowledged) can reach the restarted
    # one again. Those are dropped (the recorded stream above is exactly once) and counted, at
    # most one window's worth. Seen: 0 in most runs, 30-31 in about one run in seven.
    assert 0 <= rows["r2"]["duplicates"] <= AgentOptions.window


@pytest.mark.slow
def test_twenty_robot_processes_against_one_manager(tmp_path, keys, manager, helpers):
    mgr, endpoint = manager
    names = [f"r{i}" for i in range(1, 21)]
    procs = []
    try:
        for name in names:
            procs.append(helpers.spawn("edge", "run", "none", "--manager", endpoint, "--name", name, "--keys",
                                       str(keys), "--telemetry-hz", "5", "--tags", "scale",
                                       "--work-dir", str(tmp_path / name)))
        helpers.wait_for(lambda: len(mgr.agents) == 20, 90, "20 robots to register")
        helpers.wait_for(lambda: all(r.received >= 5 for r in mgr.agents.values()), 30, "telemetry from all")
        assert all(r.link == "up" for r in mgr.agents.values())
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            helpers.kill(p, signal.SIGTERM)
    time.sleep(0.5)
    for name in names:
        got = helpers.seqs(mgr.recording.folder, f"{name}.telemetry")
        assert got == list(range(len(got))) and len(got) == mgr.agents[name].received
    # resends after a slow ack may reach the manager twice; they are dropped, never recorded twice
    assert sum(r.received for r in mgr.agents.values()) == sum(
        len(helpers.seqs(mgr.recording.folder, f"{n}.telemetry")) for n in names)
