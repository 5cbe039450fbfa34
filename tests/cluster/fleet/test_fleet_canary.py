"""Canary rollouts on live data: a good gesture model promotes by itself; a model with permuted
output labels rolls back by itself, and no command the robot acted on ever came from it."""

from __future__ import annotations

import threading

import nir
import numpy as np
import pytest

from cluster.fleet.admin import request
from cluster.fleet.manager import canary_verdict
from edge.agent import Agent, AgentOptions
from pipeline.graph import Graph
from pipeline.run import run

from .conftest import ROOT

GESTURE_MODEL = ROOT / "operators" / "snn" / "models" / "gesture.nir"


def _pipeline(recording, pacing="realtime"):
    return {"name": "canary_test", "nodes": {
        "source": {"op": "aedat4_source", "params": {"path": str(recording), "synthesize_if_missing": True,
                                                     "synth_gestures": 16, "synth_seed": 7, "batch_us": 10000,
                                                     "pacing": pacing, "speed": 4.0}},
        "denoise": {"op": "background_filter", "inputs": {"in": "source.out"}, "params": {"time_us": 5000}},
        "frames": {"op": "to_frames", "inputs": {"in": "denoise.out"}, "params": {"window_us": 50000}},
        "snn": {"op": "snn", "inputs": {"frames": "frames.out"}},
        "command": {"op": "gesture_command", "inputs": {"commands": "snn.commands"}, "params": {"quiet": True}}}}


def _variant(path, kind: str):
    """The shipped gesture model, its readout weights nudged (good) or its output rows rolled (wrong)."""
    g = nir.read(str(GESTURE_MODEL))
    fc = g.nodes["fc2"]
    if kind == "good":
        rng = np.random.default_rng(0)
        fc.weight = fc.weight * (1 + 1e-3 * rng.standard_normal(fc.weight.shape))
    else:
        fc.weight, fc.bias = np.roll(fc.weight, 1, axis=0), np.roll(fc.bias, 1)
    nir.write(str(path), g)
    return path


@pytest.mark.parametrize("kind", ["good", "permuted"])
def test_canary_promotes_a_good_model_and_rolls_back_a_wrong_one(tmp_path, keys, manager, helpers, kind):
    mgr, endpoint = manager
    recording = tmp_path / "gestures.aedat4"
    reference = run(Graph.from_dict(_pipeline(recording, pacing="max"))).results["command"]["gestures"]
    assert len(reference) == 16
    model = _variant(tmp_path / f"gesture_{kind}.nir", kind)
    agent = Agent(AgentOptions(name="r1", manager=endpoint, keys=str(keys), config=_pipeline(recording),
                               work_dir=str(tmp_path / "r1"), heartbeat_s=0.2, linger_s=1.0, deadline_ms=1000))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        helpers.wait_for(lambda: "r1" in mgr.agents and agent.status == "running" and agent.stats["step"] > 0,
                         60, "r1 to run its pipeline")
        reply = request(endpoint, str(keys), "rollout", data=model.read_bytes(), version=kind, file=model.name,
                        canary={"robots": ["r1"], "threshold": 0.75, "window": 4})
        assert reply["ok"] and reply["mode"] == "shadow" and reply["canary"] == ["r1"]
        helpers.wait_for(lambda: mgr.history, 60, "the canary's verdict")
        verdict = mgr.history[-1]
        helpers.wait_for(lambda: agent.status == "done", 60, "the recording to play out")
    finally:
        stop.set()
        thread.join(timeout=15)
    shadow = verdict["canary"]["r1"]
    assert shadow["compared"] >= 4 and shadow["errors"] == 0
    if kind == "good":
        assert verdict["verdict"] == "promote", verdict
        assert shadow["agree"] == shadow["compared"]
        assert agent.model_version == "good" and agent.model_hash == reply["sha256"]
    else:
        assert verdict["verdict"] == "rollback" and "agreement" in verdict["why"], verdict
        assert shadow["agree"] == 0
        assert agent.model_version == "initial" and not agent.shadows
    # what the robot acted on: the live model's decisions only, gesture for gesture
    acted = agent.results["command"]["gestures"]
    assert [g["label"] for g in acted] == [g["label"] for g in reference]


def test_a_candidate_that_cannot_load_rolls_back_at_once(tmp_path, keys, manager, helpers):
    mgr, endpoint = manager
    agent = Agent(AgentOptions(name="r1", manager=endpoint, keys=str(keys), config=_pipeline(tmp_path / "g.aedat4"),
                               work_dir=str(tmp_path / "r1"), heartbeat_s=0.2, linger_s=1.0, deadline_ms=1000))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        helpers.wait_for(lambda: "r1" in mgr.agents and agent.status == "running", 60, "r1 to run")
        request(endpoint, str(keys), "rollout", data=b"not a NIR file", version="junk", file="junk.nir",
                canary={"fraction": 1.0})
        helpers.wait_for(lambda: mgr.history, 30, "the verdict")
    finally:
        stop.set()
        thread.join(timeout=15)
    assert mgr.history[-1]["verdict"] == "rollback" and "not a readable NIR file" in mgr.history[-1]["why"]
    assert agent.model_version == "initial"


def test_verdicts():
    good = {"version": "v", "compared": 20, "agree": 20, "errors": 0, "live_p50_ms": 2.0, "shadow_p50_ms": 2.5,
            "live_p99_ms": 2.0, "shadow_p99_ms": 40.0}  # a p99 spike alone is no regression
    assert canary_verdict({"a": good, "b": None}, "v", 0.95, 20, 3.0)[0] is None  # b has not reported
    assert canary_verdict({"a": good, "b": good}, "v", 0.95, 20, 3.0)[0] == "promote"
    assert canary_verdict({"a": {**good, "agree": 18}}, "v", 0.95, 20, 3.0)[0] == "rollback"
    assert canary_verdict({"a": {**good, "compared": 5, "agree": 0}}, "v", 0.95, 20, 3.0)[0] is None
    assert canary_verdict({"a": {**good, "shadow_p50_ms": 9.0}}, "v", 0.95, 20, 3.0)[0] == "rollback"
    assert canary_verdict({"a": {**good, "compared": 1, "error": "boom"}}, "v", 0.95, 20, 3.0) == ("rollback", "a: boom")
    assert canary_verdict({"a": {**good, "version": "old"}}, "v", 0.95, 20, 3.0)[0] is None
