"""Live Foxglove: a real WebSocket client on loopback subscribes and gets images and plots."""

from __future__ import annotations

import json
import struct
import threading
import time

import pytest
from mcap.records import Schema
from mcap_protobuf.decoder import DecoderFactory
from websockets.sync.client import connect

from pipeline import Graph, run
from pipeline.errors import ConfigError
from pipeline.foxglove import FoxgloveTapParams, LiveViewer, parse_address
from pipeline.recording_cli import RunExtras


def _graph(seconds=20.0):
    g = Graph("live")
    g.add("cam", "synthetic", duration_s=seconds, rate_hz=50_000, batch_items=500, width=32, height=24,
          pacing="realtime")
    g.add("eeg", "synthetic", kind="samples", rate_hz=500, batch_items=10, duration_s=seconds, channels=2,
          pacing="realtime")
    g.add("n1", "count_sink", inputs={"in": "cam.out"})
    g.add("n2", "count_sink", inputs={"in": "eeg.out"})
    return g


def _watch(address: str, want: set[str], deadline_s: float = 60.0) -> dict:
    """Be a Foxglove viewer: subscribe to every advertised channel, collect a message of each wanted topic."""
    got: dict = {}
    channels: dict = {}
    with connect(f"ws://{address}", subprotocols=["foxglove.sdk.v1"], open_timeout=10) as ws:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and not want <= set(got):
            try:
                frame = ws.recv(timeout=1.0)
            except TimeoutError:
                continue
            if isinstance(frame, str):
                msg = json.loads(frame)
                if msg.get("op") == "advertise":
                    subs = []
                    for ch in msg["channels"]:
                        channels[ch["id"]] = ch
                        subs.append({"id": ch["id"], "channelId": ch["id"]})
                    ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))
                elif msg.get("op") == "status" and msg.get("message", "").startswith("Unknown channel ID: "):
                    # the SDK's server sends a channel's advertise before it adds the channel to
                    # the client's table, so a client as quick as this one on loopback can be told
                    # the channel is unknown; a viewer asks again, as Foxglove's app does
                    cid = int(msg["message"].rsplit(" ", 1)[1])
                    if cid in channels:
                        time.sleep(0.05)
                        ws.send(json.dumps({"op": "subscribe", "subscriptions": [{"id": cid, "channelId": cid}]}))
                continue
            opcode, sub_id, log_ns = struct.unpack_from("<BIQ", frame)
            if opcode != 1:
                continue
            ch = channels[sub_id]
            got.setdefault(ch["topic"], (ch, log_ns, bytes(frame[13:])))
    return got


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_viewer_on_loopback_gets_images_and_plots(executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_session")
    g = _graph()
    stop = threading.Event()
    outcome: dict = {}
    extras = RunExtras(g, foxglove="127.0.0.1:0")
    with extras:
        def go():
            try:
                outcome["run"] = run(g, executor, stop=stop)
            except Exception as exc:  # said in the assertion below, not lost in the thread
                outcome["error"] = exc

        runner = threading.Thread(target=go)
        runner.start()
        try:
            got = _watch(extras.viewer.address, {"/cam/out", "/eeg/out"})
        finally:
            stop.set()
            runner.join(120)
    assert {"/cam/out", "/eeg/out"} <= set(got), f"the viewer saw only {sorted(got)}; run: {outcome.get('error')!r}"
    ch, _, payload = got["/cam/out"]
    assert (ch["encoding"], ch["schemaName"]) == ("protobuf", "foxglove.RawImage")
    import base64

    schema = Schema(id=1, name=ch["schemaName"], encoding=ch["schemaEncoding"], data=base64.b64decode(ch["schema"]))
    img = DecoderFactory().decoder_for("protobuf", schema)(payload)
    assert (img.width, img.height, img.encoding, len(img.data)) == (32, 24, "mono8", 32 * 24)
    ch, _, payload = got["/eeg/out"]
    row = json.loads(payload)
    assert ch["encoding"] == "json" and set(row) == {"t_us", "ch0", "ch1"}
    tap = outcome["run"].results["__foxglove__"]
    assert tap["sent"] >= 2 and extras.viewer.stats.logged >= 2


def test_a_dead_viewer_never_holds_the_pipeline_back(tmp_path):
    # nobody listens on the endpoint: every message is dropped for the viewer and counted,
    # and the pipeline runs to its end as it would without a viewer
    g = _graph(seconds=0.2)
    for n in ("cam", "eeg"):
        g.replace(n, "synthetic", {**g.nodes[n].op.params.model_dump(exclude_unset=True), "pacing": "max"})
    g.add("__foxglove__", "foxglove_tap", inputs={"cam__out": "cam.out", "eeg__out": "eeg.out"},
          endpoint="tcp://127.0.0.1:9", streams=["cam.out", "eeg.out"], max_hz=1000)
    res = run(g)
    tap = res.results["__foxglove__"]
    assert tap["sent"] == 0 and tap["dropped_driver_busy"] >= 2
    assert res.results["n1"]["items"] == 10_000


def test_bad_addresses_are_named():
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_address("localhost")
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        LiveViewer("127.0.0.1:99999")
    assert FoxgloveTapParams(endpoint="tcp://127.0.0.1:1", streams=["a.b"]).max_hz == 30.0


def _decode_raw_image(payload: bytes):
    from foxglove.messages import RawImage

    s = RawImage.get_schema()
    schema = Schema(id=1, name=s.name, encoding=s.encoding, data=bytes(s.data))
    return DecoderFactory().decoder_for("protobuf", schema)(payload)


def test_images_of_every_layout_become_raw_images():
    import numpy as np

    from pipeline.foxglove import raw_image, render_events

    pol = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # to_frames: (polarity, H, W)
    img = _decode_raw_image(raw_image(1_500_000, "f", pol))
    assert (img.width, img.height, img.encoding, img.timestamp.seconds, img.timestamp.nanos) == (4, 3, "32FC1", 1, 500_000_000)
    np.testing.assert_array_equal(np.frombuffer(img.data, np.float32).reshape(3, 4), pol.sum(axis=0))
    rgb = np.zeros((5, 2, 3), np.uint8)  # (H, W, RGB)
    rgb[4, 1] = (1, 2, 3)
    img = _decode_raw_image(raw_image(0, "f", rgb))
    assert (img.encoding, img.step, img.height) == ("rgb8", 6, 5) and img.data[-3:] == b"\x01\x02\x03"
    img = _decode_raw_image(raw_image(0, "f", np.full((2, 2), 7, np.uint16)))
    assert img.encoding == "mono16"
    # two ON events at one pixel saturate white, one OFF darkens another, the rest stays grey
    ev = render_events(np.array([1, 1, 0], np.uint16), np.array([0, 0, 1], np.uint16), np.array([1, 1, 0], bool), 2, 2)
    np.testing.assert_array_equal(ev, [[128, 255], [64, 128]])


def test_a_replay_can_be_watched_live(tmp_path):
    import socket

    from pipeline.replay import replay

    g = _graph(seconds=4.0)  # recorded at once, replayed in 4 s of real time
    for n in ("cam", "eeg"):
        g.replace(n, "synthetic", {**g.nodes[n].op.params.model_dump(exclude_unset=True), "pacing": "max"})
    g.tap(["cam.out", "eeg.out"], tmp_path / "rec")
    run(g)
    with socket.socket() as s:  # a free port for the viewer (replay() serves on the one it is given)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome: dict = {}

    def replaying():
        try:
            outcome["out"] = replay(tmp_path / "rec", pacing="realtime", foxglove=f"127.0.0.1:{port}")
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    runner = threading.Thread(target=replaying, daemon=True)
    runner.start()
    time.sleep(0.5)
    try:
        got = _watch(f"127.0.0.1:{port}", {"/cam/out", "/eeg/out"}, deadline_s=30)
    except Exception as exc:
        raise AssertionError(f"{exc}; the replay: {outcome}") from None
    runner.join(60)
    assert {"/cam/out", "/eeg/out"} <= set(got), outcome.get("error")  # shown under the recorded names
    assert "messages on 2 channels" in outcome["out"]["notes"]["foxglove"]
