"""The agent's local loop: runs without a manager, watchdog and safe state, model swaps between steps."""

from __future__ import annotations

import threading

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
