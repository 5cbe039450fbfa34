"""iniVation's own library as the peer: AEDAT4 files that dv-processing writes (LZ4, Zstd, none)
read identically, and live DV network streams both ways on 127.0.0.1 (dv-processing's
NetworkWriter -> our dv_tcp_source; our dv_tcp_sink -> dv-processing's NetworkReader)."""

import hashlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from operators.events.dv_net import DvTcpSink, DvTcpSource, decode_events, encode_events, parse_header
from operators.events.sources import IMU_CHANNELS, Aedat4Source
from pipeline import run
from pipeline import schemas as sch
from pipeline.errors import DataError, LinkError
from pipeline.graph import Graph
from pipeline.testing import CollectSink

DAVIS = Path(__file__).parents[2] / "data" / "real" / "events" / "davis346.aedat4"
T_DIGEST = "f1e093cad5afb6ecb971dfa2ef7646ab4ae0f467f73a48804e40bb68"  # the real file's event timestamps
N_EVENTS = 78_830


def _dv_read(path):
    """Everything dv-processing's reader gives for a file."""
    import dv_processing as dv

    rec = dv.io.MonoCameraRecording(str(path))
    out = {"events": [], "frames": [], "imu": [], "triggers": []}
    while (b := rec.getNextEventBatch()) is not None:
        out["events"].append(b)
    while (f := rec.getNextFrame()) is not None:
        out["frames"].append(f)
    while (b := rec.getNextImuBatch()) is not None:
        out["imu"].extend(b)
    while (b := rec.getNextTriggerBatch()) is not None:
        out["triggers"].extend(b)
    return out


@pytest.fixture(scope="module")
def davis_dv():
    return _dv_read(DAVIS)


def _ours(path):
    src = Aedat4Source(Aedat4Source.Params(path=str(path)))
    src.schemas({})
    src.setup()
    out: dict[str, list] = {}
    for port, b in src.generate():
        out.setdefault(port, []).append(b)
    return {k: pa.Table.from_batches(v) for k, v in out.items()}, out


@pytest.mark.parametrize("compression", ["LZ4", "ZSTD", "NONE"])
def test_files_dv_processing_writes_read_identically(tmp_path, davis_dv, compression):
    import dv_processing as dv

    path = tmp_path / f"dv_{compression}.aedat4"
    cfg = dv.io.MonoCameraWriter.DAVISConfig("DAVIS346_test", (346, 260))
    cfg.compression = getattr(dv.CompressionType, compression)
    writer = dv.io.MonoCameraWriter(str(path), cfg)
    for b in davis_dv["events"]:
        writer.writeEvents(b)
    for f in davis_dv["frames"]:
        writer.writeFrame(f)
    for s in davis_dv["imu"]:
        writer.writeImu(s)
    for s in davis_dv["triggers"]:
        writer.writeTrigger(s)
    del writer
    ref = _dv_read(path)  # what dv-processing reads back from its own file
    tables, batches = _ours(path)
    ev = tables["out"]
    assert ev.num_rows == N_EVENTS
    assert hashlib.sha3_224(ev["t"].to_numpy().astype("<u8").tobytes()).hexdigest() == T_DIGEST
    theirs = np.concatenate([b.numpy() for b in ref["events"]])
    assert np.array_equal(ev["x"].to_numpy(), theirs["x"]) and np.array_equal(ev["y"].to_numpy(), theirs["y"])
    assert np.array_equal(ev["p"].to_numpy(), theirs["polarity"].astype(bool))
    fr = tables["frames"]
    assert fr.num_rows == len(ref["frames"]) == 59
    assert fr["t"].to_pylist() == [f.timestamp for f in ref["frames"]]  # dv writes the exposure start as the timestamp
    pixels = np.concatenate([sch.frames_view(b) for b in batches["frames"]])
    assert all(np.array_equal(p, f.image) for p, f in zip(pixels, ref["frames"]))
    imu = tables["imu"]
    assert imu["t"].to_pylist() == [s.timestamp for s in ref["imu"]]
    for ours, theirs in zip(IMU_CHANNELS, ("accelerometerX", "accelerometerY", "accelerometerZ", "gyroscopeX",
                                           "gyroscopeY", "gyroscopeZ", "temperature", "magnetometerX",
                                           "magnetometerY", "magnetometerZ")):
        assert np.array_equal(imu[ours].to_numpy(), np.array([getattr(s, theirs) for s in ref["imu"]], np.float32)), ours
    tr = tables["triggers"]
    assert tr["t"].to_pylist() == [s.timestamp for s in ref["triggers"]]
    assert tr["source"].to_pylist() == [int(s.type) for s in ref["triggers"]]


def test_flatbuffer_codec_round_trip_and_refuses_other_tables():
    t = np.array([5, 9, 12], np.int64)
    packet = encode_events(t, [1, 2, 3], [4, 5, 6], [True, False, True])
    ev = decode_events(packet[4:])
    assert ev["t"].tolist() == [5, 9, 12] and ev["x"].tolist() == [1, 2, 3] and ev["on"].tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="not a EVTS FlatBuffer"):
        decode_events(b"\x10\x00\x00\x00FRME" + bytes(32))
    with pytest.raises(ValueError, match="not a IOHE FlatBuffer"):
        parse_header(packet[4:])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _source_graph(port, **params):
    """Our source, sized by parameters: a probe for the stream's size would count as a client
    of the live server for a moment (see test_the_stream_description_gives_the_sensor_size)."""
    params = {"width": 346, "height": 260, **params}
    g = Graph("dv")
    g.add("src", DvTcpSource(DvTcpSource.Params(port=port, **params)))
    g.add("sink", CollectSink(), inputs={"in": "src.out"})
    return g


def _run_in_thread(g):
    box = {}

    def go():
        try:
            box["result"] = run(g)
        except Exception as exc:  # handed to the test
            box["error"] = exc

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th, box


WRITER = """
import os, sys, time, dv_processing as dv
port, a, b, path, compression, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
rec = dv.io.MonoCameraRecording(path)
batches = []
while (e := rec.getNextEventBatch()) is not None:
    batches.append(e)
make = dv.io.Stream.EventStream if kind == "events" else dv.io.Stream.FrameStream
stream = make(0, kind, "DAVIS346_test", (346, 260))
stream.setCompression(getattr(dv.CompressionType, compression))
w = dv.io.NetworkWriter("127.0.0.1", port, stream)
deadline = time.time() + 30
while w.getClientCount() < 1 and time.time() < deadline:
    time.sleep(0.01)
for e in batches[a:b]:
    w.writeEvents(e)
while w.getQueuedPacketCount() and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.2)
print(sum(len(e) for e in batches[a:b]), flush=True)
os._exit(0)  # the server is gone, as when DV stops or crashes (and no destructor waits on a client)
"""


def _writer(tmp_path, port, a, b, compression="LZ4", kind="events") -> subprocess.Popen:
    """dv-processing's NetworkWriter in its own process (its destructor can wait forever on a
    client in this one), serving the recording's event batches a..b once a client is there."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(port), str(a), str(b), str(DAVIS), compression, kind],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _serve(tmp_path, port, a, b, compression="LZ4") -> int:
    w = _writer(tmp_path, port, a, b, compression)
    out, err = w.communicate(timeout=60)
    assert w.returncode == 0, err
    return int(out)


def _listening(port, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)


@pytest.mark.parametrize("compression", ["LZ4", "NONE"])
def test_dv_network_writer_into_our_source(tmp_path, davis_dv, compression):
    port = _free_port()
    th, box = _run_in_thread(_source_graph(port, max_events=N_EVENTS, batch_events=20_000, reconnects=100,
                                           backoff_s=0.02, backoff_max_s=0.2))
    assert _serve(tmp_path, port, 0, len(davis_dv["events"]), compression) == N_EVENTS
    th.join(60)
    assert "error" not in box, box.get("error")
    res = box["result"]
    got = pa.Table.from_batches(res.results["sink"]["batches"])
    assert got.num_rows == N_EVENTS
    assert sch.fact(got.schema, "width") == 346 and sch.fact(got.schema, "height") == 260
    assert hashlib.sha3_224(got["t"].to_numpy().astype("<u8").tobytes()).hexdigest() == T_DIGEST
    assert res.results["src"]["connections"] == 1


def test_our_source_reconnects_with_backoff_and_keeps_what_it_received(tmp_path, davis_dv):
    """The server (dv-processing's NetworkWriter in its own process) dies after the first half
    of the recording; another comes up on the same port and serves the rest."""
    port = _free_port()
    half = len(davis_dv["events"]) // 2
    g = _source_graph(port, max_events=N_EVENTS, batch_events=4096, reconnects=100, backoff_s=0.02, backoff_max_s=0.2)
    th, box = _run_in_thread(g)
    sent = []
    for a, b in ((0, half), (half, len(davis_dv["events"]))):
        sent.append(_serve(tmp_path, port, a, b))
        time.sleep(0.3)  # nobody serves the port for a while: the source backs off
    th.join(60)
    assert "error" not in box, box.get("error")
    res = box["result"].results
    got = pa.Table.from_batches(res["sink"]["batches"])
    assert sum(sent) == got.num_rows == N_EVENTS and 0 < sent[0] < N_EVENTS
    assert hashlib.sha3_224(got["t"].to_numpy().astype("<u8").tobytes()).hexdigest() == T_DIGEST
    assert res["src"]["connections"] == 2 and res["src"]["reconnects"] >= 2  # refused tries, then the second server


def test_the_stream_description_gives_the_sensor_size_and_a_frame_stream_is_refused(tmp_path):
    port = _free_port()
    w = _writer(tmp_path, port, 0, 1)
    try:
        _listening(port)
        src = DvTcpSource(DvTcpSource.Params(port=port, reconnects=0))
        schema = src.schemas({})["out"]
        assert (sch.fact(schema, "width"), sch.fact(schema, "height")) == (346, 260)
        assert src.sock is None  # the probe connection is closed
    finally:
        w.kill()
        w.wait()
    port = _free_port()
    w = _writer(tmp_path, port, 0, 0, kind="frames")
    try:
        _listening(port)
        src = DvTcpSource(DvTcpSource.Params(port=port, reconnects=0))
        with pytest.raises(DataError, match=rf"dv_tcp_source 127.0.0.1:{port}: the stream 'frames' \(frames, FRME\) "
                                            r"is not an event stream"):
            src.schemas({})
    finally:
        w.kill()
        w.wait()


def test_no_server_is_a_link_error_after_the_counted_retries():
    port = _free_port()
    src = DvTcpSource(DvTcpSource.Params(port=port, reconnects=3, backoff_s=0.01))
    with pytest.raises(LinkError, match=rf"127.0.0.1:{port}: no DV stream to connect to \(tried 4 times\)"):
        src.schemas({})
    assert src.reconnects == 3


READER = """
import sys, time, numpy as np, dv_processing as dv
port, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
deadline = time.time() + 30
while True:
    try:
        r = dv.io.NetworkReader("127.0.0.1", port)
        break
    except Exception:
        if time.time() > deadline:
            raise
        time.sleep(0.05)
got, total = [], 0
while total < n and time.time() < deadline:
    b = r.getNextEventBatch()
    if b is None:
        time.sleep(0.002)
        continue
    got.append(b.numpy())
    total += len(got[-1])
np.save(out, np.concatenate(got))
print(*r.getEventResolution(), flush=True)
"""


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_our_sink_into_dv_network_reader(tmp_path, compression):
    """dv-processing's reader runs in its own process: its constructor holds the GIL while it
    waits for the header, which would stall a server thread in the same interpreter."""
    port = _free_port()
    script = tmp_path / "reader.py"
    script.write_text(READER)
    out = tmp_path / "got.npy"
    reader = subprocess.Popen([sys.executable, str(script), str(port), str(N_EVENTS), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        g = Graph("sink")
        g.add("src", Aedat4Source(Aedat4Source.Params(path=str(DAVIS), batch_events=8192)))
        g.add("net", DvTcpSink(DvTcpSink.Params(port=port, compression=compression, wait_for_client_s=30)),
              inputs={"in": "src.out"})
        res = run(g).results["net"]
        stdout, stderr = reader.communicate(timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, stderr
    assert stdout.split() == ["346", "260"]
    assert res["sent"] == N_EVENTS and res["unsent"] == 0 and res["clients"] == 1
    got = np.load(out)
    assert len(got) == N_EVENTS
    assert hashlib.sha3_224(got["timestamp"].astype("<u8").tobytes()).hexdigest() == T_DIGEST
    tables, _ = _ours(DAVIS)
    assert np.array_equal(got["x"], tables["out"]["x"].to_numpy()) and np.array_equal(got["y"], tables["out"]["y"].to_numpy())
    assert np.array_equal(got["polarity"].astype(bool), tables["out"]["p"].to_numpy())


def test_our_sink_into_our_source(davis_dv):
    """Both ends ours, through the wire format: the same events; the sink counts what it sent."""
    port = _free_port()
    rx = _source_graph(port, max_events=N_EVENTS, reconnects=100, backoff_s=0.02, backoff_max_s=0.1)
    th, box = _run_in_thread(rx)
    g = Graph("tx")
    g.add("src", Aedat4Source(Aedat4Source.Params(path=str(DAVIS), batch_events=8192)))
    g.add("net", DvTcpSink(DvTcpSink.Params(port=port, compression="lz4", wait_for_client_s=30)), inputs={"in": "src.out"})
    sent = run(g).results["net"]
    th.join(60)
    assert "error" not in box, box.get("error")
    got = pa.Table.from_batches(box["result"].results["sink"]["batches"])
    assert sent["sent"] == got.num_rows == N_EVENTS
    assert hashlib.sha3_224(got["t"].to_numpy().astype("<u8").tobytes()).hexdigest() == T_DIGEST


def test_sink_without_a_client_counts_what_nobody_received():
    from pipeline.testing import ListSource

    schema = sch.events_schema(8, 8)
    batch = sch.events_batch([1, 2, 3], [1, 2, 3], [0, 1, 2], [True, False, True], schema)
    g = Graph("alone")
    g.add("src", ListSource.of([batch, batch]))
    g.add("net", DvTcpSink(DvTcpSink.Params(port=0)), inputs={"in": "src.out"})
    res = run(g).results["net"]
    assert res["sent"] == 0 and res["unsent"] == 6 and res["clients"] == 0 and res["port"] > 0
