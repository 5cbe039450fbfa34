"""The agent's local loop: runs without a manager, watchdog and safe state, model swaps between steps."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import keys as K
from edge import wire
from edge.agent import Agent, AgentOptions
from pipeline.operator import Operator, Params, register


class FailParams(Params):
    at: int = 3


@register
class FailAt(Operator):
    """Test op: raises on its `at`-th batch."""

    name = "test_edge_fail_at"
    inputs = {"in": "any"}
    outputs = {"out": "any"}
    Params = FailParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.n = 0

    def process(self, port, batch):
        self.n += 1
        if self.n == self.params.at:
            raise RuntimeError("motor controller diverged")
        return batch


_RUNNING: dict = {}  # the agent a test runs, for test ops that act on it


class StopParams(Params):
    at: int = 50


@register
class StopAt(Operator):
    """Test op: asks its agent to stop on its `at`-th batch (as the manager would)."""

    name = "test_edge_stop_at"
    inputs = {"in": "any"}
    outputs = {"out": "any"}
    Params = StopParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.n = 0

    def process(self, port, batch):
        self.n += 1
        if self.n == self.params.at:
            _RUNNING["agent"].commands.put(("stop", "operator pressed stop"))
        return batch


@register
class Versioned(Operator):
    """Test op: remembers which model version handled each batch."""

    name = "test_edge_versioned"
    inputs = {"in": "any"}

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.version = "initial"
        self.seen: list[str] = []

    def swap_model(self, path, version):
        self.version = version
        return True

    def process(self, port, batch):
        self.seen.append(self.version)

    def result(self):
        return {"seen": self.seen}


def _config(stages: dict, duration_s=0.5, rate=200):
    nodes = {"sensor": {"op": "synthetic", "params": {"kind": "samples", "channels": 2, "rate_hz": rate * 10,
                                                      "batch_items": 10, "duration_s": duration_s,
                                                      "pacing": "realtime"}}}
    nodes.update(stages)
    return {"name": "agent_test", "nodes": nodes}


def _agent(tmp_path, keys, port, config, **kw):
    return Agent(AgentOptions(name="r1", manager=f"tcp://127.0.0.1:{port()}", keys=str(keys), config=config,
                              work_dir=str(tmp_path / "work"), exit_when_done=True, linger_s=0.2, **kw))


def test_loop_runs_and_spools_telemetry_with_no_manager(tmp_path, keys, port):
    cfg = _config({"motor": {"op": "actuator_log", "inputs": {"in": "sensor.out"}}}, duration_s=1.0)
    agent = _agent(tmp_path, keys, port, cfg, telemetry_hz=50, mem_bytes=2000)
    report = agent.run()
    assert report["results"]["motor"]["commands"] == 200
    assert report["results"]["motor"]["safe_states"] == 0
    assert report["link"]["connects"] == 0 and report["link"]["sent"] == 0
    assert agent.spool.spilled > 0  # telemetry past 2 kB went to disk instead of RAM


def test_missed_deadline_puts_actuator_in_safe_state(tmp_path, keys, port):
    cfg = _config({"slow": {"op": "delay", "params": {"per_batch_ms": 150}, "inputs": {"in": "sensor.out"}},
                   "motor": {"op": "actuator_log", "inputs": {"in": "slow.out"}}}, duration_s=0.05)
    report = _agent(tmp_path, keys, port, cfg, deadline_ms=50).run()
    motor = report["results"]["motor"]
    assert motor["safe_states"] >= 1
    assert "deadline" in motor["reasons"][0]


def test_stage_failure_puts_actuator_in_safe_state(tmp_path, keys, port):
    cfg = _config({"ctl": {"op": "test_edge_fail_at", "inputs": {"in": "sensor.out"}},
                   "motor": {"op": "actuator_log", "inputs": {"in": "ctl.out"}}})
    agent = _agent(tmp_path, keys, port, cfg)
    report = agent.run()
    assert agent.status == "stopped" and report["errors"]
    motor = report["results"]["motor"]
    assert motor["commands"] == 2 and motor["in_safe_state"]
    assert "stage failed" in motor["reasons"][-1] and "diverged" in motor["reasons"][-1]


def test_stop_command_puts_actuator_in_safe_state(tmp_path, keys, port):
    cfg = _config({"ctl": {"op": "test_edge_stop_at", "params": {"at": 50}, "inputs": {"in": "sensor.out"}},
                   "motor": {"op": "actuator_log", "inputs": {"in": "ctl.out"}}}, duration_s=5.0)
    agent = _RUNNING["agent"] = _agent(tmp_path, keys, port, cfg)
    report = agent.run()
    motor = report["results"]["motor"]
    assert motor["commands"] == 50  # the stop is applied before the next wave, of 1,000
    assert motor["in_safe_state"] and "operator pressed stop" in motor["reasons"][-1]


def _live(version, path="unused.nir", mode="live"):
    return ("model", {"version": version, "path": path, "sha256": "0" * 64, "mode": mode})


def test_model_switches_between_steps(tmp_path, keys, port):
    cfg = _config({"brain": {"op": "test_edge_versioned", "inputs": {"in": "sensor.out"}}}, duration_s=1.0)
    agent = _agent(tmp_path, keys, port, cfg)
    threading.Timer(0.3, lambda: agent.commands.put(_live("v2"))).start()
    seen = agent.run()["results"]["brain"]["seen"]
    assert len(seen) == 200  # no step lost to the switch
    k = seen.index("v2")
    assert 0 < k and set(seen[:k]) == {"initial"} and set(seen[k:]) == {"v2"}
    assert agent.model_version == "v2" and agent.model_hash == "0" * 64 and agent.model_error is None


def test_a_model_for_a_pipeline_without_one_is_refused_with_a_reason(tmp_path, keys, port):
    cfg = _config({"motor": {"op": "actuator_log", "inputs": {"in": "sensor.out"}}}, duration_s=0.5)
    agent = _agent(tmp_path, keys, port, cfg)
    agent.commands.put(_live("v2"))
    agent.run()
    assert agent.model_version == "initial" and "no node of the running pipeline takes a model" in agent.model_error
    assert agent._beat()["model_error"] == agent.model_error  # what the manager is told


def test_config_that_cannot_start_reports_why(tmp_path, keys, port):
    agent = _agent(tmp_path, keys, port, {"name": "broken", "nodes": {"a": {"op": "no_such_op"}}})
    agent.run()
    assert agent.status == "stopped" and "no_such_op" in agent.config_error
    assert agent._beat()["config_error"] == agent.config_error


# --- the link: refused keys, and messages from a manager that misbehaves ----------------------


class FakeManager:
    """A CURVE ROUTER with the manager's key (and its key gate) that a test drives by hand."""

    def __init__(self, keys, port):
        self.ctx = zmq.Context()
        self.gate = K.KeyGate(self.ctx, K.authorized(keys))
        self.sock = K.server_socket(self.ctx, zmq.ROUTER, keys / "manager.key_secret")
        self.endpoint = f"tcp://127.0.0.1:{port()}"
        self.sock.bind(self.endpoint)
        self.route = None

    def recv(self, timeout_ms=5000):
        if not self.sock.poll(timeout_ms):
            return None
        parts = self.sock.recv_multipart()
        self.route = parts[0]
        return wire.parse(parts[1:])

    def close(self):
        self.sock.close(linger=0)
        self.gate.stop()
        self.ctx.term()


def test_refused_key_is_logged_once_with_the_manager_address(tmp_path, keys, port, caplog):
    fake = FakeManager(keys, port)
    agent = Agent(AgentOptions(name="stranger", manager=fake.endpoint, keys=str(keys), work_dir=str(tmp_path / "w"),
                               heartbeat_s=0.1, refused_retry_s=0.2))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    try:
        with caplog.at_level(logging.ERROR, logger="edge.agent"):
            thread.start()
            deadline = time.monotonic() + 15
            while agent.link["refused"] < 3 and time.monotonic() < deadline:  # it keeps trying
                time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
        fake.close()
    assert agent.link["refused"] >= 3 and fake.gate.refused >= 3
    refused = [r.getMessage() for r in caplog.records if "refused this robot's key" in r.getMessage()]
    assert len(refused) == 1 and fake.endpoint in refused[0] and "stranger.key_secret" in refused[0]


MANAGER_KINDS = [b"welcome", b"ack", b"nack", b"who", b"hb", b"deploy", b"model", b"bogus"]
MODEL = b"model bytes"
VALID = {b"welcome": {"acked": -1}, b"ack": {"seq": 0}, b"nack": {"expect": 0}, b"who": {}, b"hb": {"t": 1.0},
         b"deploy": {"config": {"name": "x", "nodes": {}}},
         b"model": {"version": "v2", "file": "m.nir", "sha256": hashlib.sha256(MODEL).hexdigest(), "mode": "live"}}
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=10)
    | st.sampled_from(["..", ".", "../../escape", "/abs/dir", "shadow", "end-shadow", "live"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@st.composite
def manager_message(draw) -> list[bytes]:
    kind = draw(st.sampled_from(MANAGER_KINDS))
    head = dict(VALID.get(kind, {}))
    how = draw(st.sampled_from(["valid", "replace", "drop", "random", "raw"]))
    if how in ("replace", "drop") and head:
        key = draw(st.sampled_from(sorted(head)))
        if how == "drop":
            del head[key]
        else:
            head[key] = draw(JSONISH)
    elif how == "random":
        head = draw(st.dictionaries(st.text(max_size=8), JSONISH, max_size=4))
    header = draw(st.binary(max_size=30)) if how == "raw" else json.dumps(head).encode()
    frames = draw(st.sampled_from([[], [MODEL], [b""], [MODEL, MODEL]])) if kind == b"model" else []
    return [kind, header, *frames]


def test_random_and_mutated_manager_messages_never_stop_the_agent(tmp_path, keys, port):
    fake = FakeManager(keys, port)
    work = tmp_path / "work"
    agent = Agent(AgentOptions(name="r1", manager=fake.endpoint, keys=str(keys), work_dir=str(work),
                               heartbeat_s=0.1, telemetry_hz=20, link_timeout_s=60))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    sent = {"n": 0}
    try:
        kind, head, _ = fake.recv()
        assert kind == b"hello" and head["name"] == "r1"

        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(manager_message(), min_size=1, max_size=8))
        def throw(messages):
            for parts in messages:
                fake.sock.send_multipart([fake.route, *parts])
                sent["n"] += 1
            end = time.monotonic() + 10
            while agent.link["received"] < sent["n"] and time.monotonic() < end:
                time.sleep(0.002)
            assert agent.link["received"] == sent["n"]  # every message seen, none lost or stuck

        throw()
        assert thread.is_alive() and sum(agent.link["bad"].values()) > 0 and agent.link["internal_errors"] == 0
        fake.sock.send_multipart([fake.route, b"welcome", b'{"acked": -1}'])  # the agent still talks
        end = time.monotonic() + 10
        got = None
        while time.monotonic() < end and got != b"tel":
            got = (fake.recv(1000) or (None,))[0]
        assert got == b"tel"
    finally:
        stop.set()
        thread.join(timeout=10)
        fake.close()
    assert not thread.is_alive()
    for path in work.rglob("*"):  # nothing outside its spool and its model store
        rel = path.relative_to(work).parts
        assert rel[0].startswith("spool") or rel[0] == "models" and (len(rel) == 1 or rel[1] in ("sha256", "index.json")), rel
