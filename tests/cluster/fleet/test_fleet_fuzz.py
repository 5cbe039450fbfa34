"""A manager nobody can crash: random and mutated hello / telemetry / admin messages from
authorized peers over real CurveZMQ sockets. No exit, no hang, every message counted, and
nothing written outside the manager's folder."""

from __future__ import annotations

import json

import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.fleet.admin import request
from edge import keys as K
from edge import wire
from edge.agent import telemetry_payload

GOOD_TEL = telemetry_payload(1_000_000, step=3)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["..", ".", "../../escape", "/abs/dir", "r1", "v2", "a" * 80]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def _mutate(draw, head: dict) -> dict:
    """A valid header with one field replaced, dropped, or one extra field."""
    head = dict(head)
    key = draw(st.sampled_from(sorted(head) + ["extra"]))
    action = draw(st.sampled_from(["replace", "drop"]))
    if action == "drop":
        head.pop(key, None)
    else:
        head[key] = draw(JSONISH)
    return head


def _flip(draw, data: bytes) -> bytes:
    """Bytes with a few positions changed, or cut short."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    return bytes(b[: draw(st.integers(0, len(b)))]) if draw(st.booleans()) else bytes(b)


@st.composite
def robot_message(draw) -> list[bytes]:
    kind = draw(st.sampled_from([b"hello", b"hb", b"tel", b"nonsense"]))
    valid = {b"hello": {"name": "r1", "pid": 7, "first": 0, "tags": ["lab"], "version": "none", "status": "running"},
             b"hb": {"name": "r1", "step": 5, "loop_hz": 10.0, "canary": None},
             b"tel": {"seq": 0}}.get(kind, {})
    how = draw(st.sampled_from(["mutated", "random", "raw"]))
    head = _mutate(draw, valid) if how == "mutated" and valid else draw(st.dictionaries(st.text(max_size=8), JSONISH,
                                                                                       max_size=4))
    header = json.dumps(head).encode() if how != "raw" else draw(st.binary(max_size=40))
    frames = []
    if kind == b"tel":
        payload = draw(st.sampled_from(["good", "flipped", "random", "zero_rows", "none", "two"]))
        frames = {"good": [GOOD_TEL], "flipped": [_flip(draw, GOOD_TEL)], "random": [draw(st.binary(max_size=300))],
                  "zero_rows": [_zero_rows()], "none": [],
                  "two": [GOOD_TEL, GOOD_TEL]}[payload]
    return [kind, header, *frames]


def _zero_rows() -> bytes:
    import io

    import pyarrow as pa

    from edge.agent import TELEMETRY_SCHEMA

    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, TELEMETRY_SCHEMA) as w:
        w.write_batch(pa.RecordBatch.from_pylist([], schema=TELEMETRY_SCHEMA))
    return sink.getvalue()


@st.composite
def admin_message(draw) -> list[bytes]:
    op = draw(st.sampled_from(["status", "deploy", "rollout", "promote", "rollback", "stop", "bogus"]))
    valid = {"deploy": {"op": "deploy", "config": {"name": "x", "nodes": {}}, "target": "nobody"},
             "rollout": {"op": "rollout", "version": "v2", "file": "m.nir", "fraction": 0.5,
                         "canary": {"fraction": 0.5, "threshold": 0.9, "window": 3}},
             "stop": {"op": "stop", "target": "nobody"}}.get(op, {"op": op})
    head = _mutate(draw, valid) if draw(st.booleans()) else valid
    frames = [draw(st.sampled_from([b"model bytes", b""]))] if op == "rollout" and draw(st.booleans()) else []
    return [b"admin", json.dumps(head).encode(), *frames]


def _socket(ctx, keys, name):
    s = K.client_socket(ctx, zmq.DEALER, keys / f"{name}.key_secret", keys / "manager.key")
    s.rcvhwm = s.sndhwm = 0
    return s


def test_random_and_mutated_messages_never_stop_the_manager(tmp_path, keys, manager, helpers):
    mgr, endpoint = manager
    ctx = zmq.Context()
    robot, admin = _socket(ctx, keys, "r1"), _socket(ctx, keys, "admin")
    sent = {"n": 0}
    try:
        robot.connect(endpoint)
        admin.connect(endpoint)
        wire.send(robot, b"hello", {"name": "r1", "pid": 1, "first": 0})  # registered: its tel/hb are looked at
        helpers.wait_for(lambda: "r1" in mgr.agents, what="r1 to register")
        base = mgr.counters["messages"]

        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(st.one_of(robot_message().map(lambda m: ("r", m)), admin_message().map(lambda m: ("a", m))),
                        min_size=1, max_size=8))
        def throw(messages):
            for who, parts in messages:
                (robot if who == "r" else admin).send_multipart(parts)
                sent["n"] += 1
            helpers.wait_for(lambda: mgr.counters["messages"] - base >= sent["n"], 10, "every message to be counted")

        throw()
        assert mgr.counters["messages"] - base == sent["n"]
        assert mgr.counters["internal_errors"] == 0  # every bad message was caught by a check, not by luck
        assert sum(mgr.counters["bad"].values()) + mgr.counters["bad_schema"] > 0
        assert request(endpoint, str(keys), "status", timeout_s=5.0)["counters"]["messages"] > base
    finally:
        robot.close(linger=0)
        admin.close(linger=0)
        ctx.term()
    out = tmp_path / "fleet"
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {"keys", "fleet"}, written
    models = out / "models"
    if models.exists():
        assert {p.name for p in models.iterdir()} <= {"sha256", "index.json"}


def test_each_known_crash_is_a_counted_bad_message(tmp_path, keys, manager, helpers):
    """The four one-message crashes of the issue: each is refused with a reason and counted."""
    mgr, endpoint = manager
    ctx = zmq.Context()
    robot = _socket(ctx, keys, "r1")
    try:
        robot.connect(endpoint)
        wire.send(robot, b"hello", {"name": "r1", "pid": 1, "first": "abc"})
        wire.send(robot, b"hello", {"name": "r1", "pid": 1, "tags": 5})
        helpers.wait_for(lambda: mgr.counters["bad"].get("hello") == 2, what="two bad hellos counted")
        wire.send(robot, b"hello", {"name": "r1", "pid": 1, "first": 0})
        helpers.wait_for(lambda: "r1" in mgr.agents, what="r1 to register")
        wire.send(robot, b"tel", {"seq": 0}, extra=[_zero_rows()])
        helpers.wait_for(lambda: mgr.counters["bad_schema"] == 1, what="the zero-row batch to be refused")
        reply = request(endpoint, str(keys), "deploy", timeout_s=5.0)
        assert not reply["ok"] and "config" in reply["error"]
        for version in ("../../../escape", "/abs/dir", "..", "."):
            reply = request(endpoint, str(keys), "rollout", data=b"x", version=version, file="m.nir", timeout_s=5.0)
            assert not reply["ok"] and "version" in reply["error"], reply
        reply = request(endpoint, str(keys), "rollout", data=b"x", version="v2", file="../m.nir", timeout_s=5.0)
        assert not reply["ok"] and "file" in reply["error"]
        assert mgr.counters["bad"]["admin"] == 6 and mgr.counters["internal_errors"] == 0
        assert mgr.counters["bad_by_peer"] == {"r1": 3, "admin": 6}
        assert mgr.agents["r1"].bad == 1  # the two bad hellos came before r1 was registered
    finally:
        robot.close(linger=0)
        ctx.term()
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()
