"""Event sources on real files: AEDAT4 (good and bad), faery formats, UDP, inspect, the config."""

import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from operators.events.inspect import inspect_file
from operators.events.sources import (
    UDP_DTYPE,
    Aedat4Source,
    EventFileSource,
    UdpEventSink,
    UdpEventSource,
    check_events,
)
from operators.events.synthetic import _structured, gesture_events, gesture_recording, write_aedat4
from pipeline import run
from pipeline import schemas as sch
from pipeline.errors import DataError, ReflexarcError
from pipeline.graph import Graph
from pipeline.testing import CollectSink

CONFIG = Path(__file__).parents[3] / "configs" / "events_preprocess.yaml"


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("ev") / "rec.aedat4"
    segs = gesture_recording(path, [0, 4], width=40, height=30, seed=1, duration_s=0.4, gap_s=0.1)
    return path, segs


class data_error:
    """Like pytest.raises(DataError, match=...), also when the runtime wraps it in OperatorError."""

    def __init__(self, match):
        self.ctx = pytest.raises(ReflexarcError, match=match)

    def __enter__(self):
        self.info = self.ctx.__enter__()
        return self.info

    def __exit__(self, *exc):
        out = self.ctx.__exit__(*exc)
        err = self.info.value
        assert isinstance(err, DataError) or isinstance(err.__cause__, DataError), err
        return out


def drain(src):
    """Run a source by itself (its skip counters live on this instance): its `out` batches."""
    src.schemas({})
    src.setup()
    return [b for port, b in src.generate() if port == "out"]


def collect(src, port="out"):
    g = Graph("t")
    g.add("src", src)
    g.add("sink", CollectSink(), inputs={"in": f"src.{port}"})
    return run(g), g


def cols(batches):
    return {k: np.concatenate([sch.column(b, k) for b in batches]) for k in "txyp"}


@pytest.mark.parametrize("batching", [dict(batch_us=20_000), {}, dict(batch_events=777)])
def test_aedat4_source_reads_every_event_with_sensor_size(recording, batching):
    """Packets coalesced into batches (by window, the default count, an odd count) hold
    exactly the decoder's events, packet after packet."""
    import aedat

    path, _ = recording
    src = Aedat4Source(Aedat4Source.Params(path=str(path), **batching))
    result, _ = collect(src)
    batches = result.results["sink"]["batches"]
    assert sch.fact(batches[0].schema, "width") == 40 and sch.fact(batches[0].schema, "height") == 30
    got = cols(batches)
    ref = np.concatenate([pk["events"] for pk in aedat.Decoder(str(path)) if "events" in pk])
    np.testing.assert_array_equal(got["t"], ref["t"].astype(np.int64))
    np.testing.assert_array_equal(got["x"], ref["x"])
    np.testing.assert_array_equal(got["y"], ref["y"])
    np.testing.assert_array_equal(got["p"], ref["on"])
    for b in batches:
        t = sch.column(b, "t")
        if "batch_us" in batching:
            assert t[0] // 20_000 == t[-1] // 20_000
        else:
            assert b.num_rows <= batching.get("batch_events", 262_144)


def test_aedat4_source_batch_events(recording):
    path, _ = recording
    result, _ = collect(Aedat4Source(Aedat4Source.Params(path=str(path), batch_events=1000)))
    sizes = [b.num_rows for b in result.results["sink"]["batches"]]
    assert set(sizes[:-1]) == {1000} and 0 < sizes[-1] <= 1000


def test_missing_file_is_a_data_error_or_synthesised(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Aedat4Source(Aedat4Source.Params(path=str(tmp_path / "none.aedat4"))).schemas({})
    path = tmp_path / "made.aedat4"
    src = Aedat4Source(Aedat4Source.Params(path=str(path), synthesize_if_missing=True, synth_gestures=1,
                                           synth_width=32, synth_height=16))
    assert sch.fact(src.schemas({})["out"], "width") == 32 and path.exists()


def _bad(tmp_path, data: bytes, name="bad.aedat4") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_bad_magic_and_truncation(recording, tmp_path):
    data = Path(recording[0]).read_bytes()
    with pytest.raises(DataError, match=r"bad.aedat4.*magic"):
        Aedat4Source(Aedat4Source.Params(path=str(_bad(tmp_path, b"XX" + data[2:])))).schemas({})
    trunc = _bad(tmp_path, data[: len(data) // 2], "trunc.aedat4")
    with data_error(r"trunc.aedat4' packet \d+: unreadable"):
        collect(Aedat4Source(Aedat4Source.Params(path=str(trunc))))
    src = Aedat4Source(Aedat4Source.Params(path=str(trunc), on_error="skip"))
    assert sum(b.num_rows for b in drain(src)) > 0 and src.skipped_packets == 1


def test_corrupt_packet_skipped_and_counted(recording, tmp_path):
    data = bytearray(Path(recording[0]).read_bytes())
    data[3000:3200] = bytes(200)  # breaks one compressed packet (LZ4 checksum)
    path = _bad(tmp_path, bytes(data), "corrupt.aedat4")
    with data_error(r"corrupt.aedat4' packet 0"):
        collect(Aedat4Source(Aedat4Source.Params(path=str(path))))
    src = Aedat4Source(Aedat4Source.Params(path=str(path), on_error="skip"))
    assert sum(b.num_rows for b in drain(src)) > 0 and src.skipped_packets >= 1


def test_events_outside_sensor_or_backwards(tmp_path):
    ev = gesture_events(0, width=16, height=16, duration_s=0.2)
    ev_big = dict(ev, x=ev["x"] * 2)  # up to 30 on a 16-wide sensor
    path = tmp_path / "outside.aedat4"
    write_aedat4(path, ev_big, 32, 16)  # encoders refuse such events: shrink the header afterwards
    data = path.read_bytes().replace(b'"sizeX" type="int">32<', b'"sizeX" type="int">16<')
    path.write_bytes(data)
    with data_error(r"outside.aedat4' packet \d+: coordinates outside the 16x16 sensor"):
        collect(Aedat4Source(Aedat4Source.Params(path=str(path))))
    src = Aedat4Source(Aedat4Source.Params(path=str(path), on_error="skip"))
    kept = drain(src)
    assert src.skipped_packets >= 1
    assert not kept or cols(kept)["x"].max() < 16
    # encoders (faery, aedat) refuse to write backwards timestamps, so the packet check is tested directly
    t = np.array([10, 20, 15], np.int64)
    assert "backwards (15 µs after 20 µs)" in check_events(t, t.astype(np.uint16) % 4, t.astype(np.uint16) % 4, 4, 4, 0)
    assert "backwards (10 µs after 50 µs)" in check_events(t, t.astype(np.uint16) % 4, t.astype(np.uint16) % 4, 4, 4, 50)


def test_udp_refuses_backwards_and_ragged_datagrams():
    port = _free_port()
    src = UdpEventSource(UdpEventSource.Params(port=port, width=8, height=8, idle_timeout_s=0.5, on_error="raise"))
    src.setup()
    rec = np.zeros(2, UDP_DTYPE)
    rec["t"] = [100, 50]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(rec.tobytes(), ("127.0.0.1", port))
    with pytest.raises(DataError, match="datagram 0: timestamps go backwards"):
        list(src.generate())
    src.close()
    src = UdpEventSource(UdpEventSource.Params(port=port, width=8, height=8, idle_timeout_s=0.5))
    src.setup()
    rec["t"] = [50, 100]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(rec.tobytes()[:-3], ("127.0.0.1", port))
        s.sendto(rec.tobytes(), ("127.0.0.1", port))
    got = list(src.generate())
    src.close()
    assert src.bad_datagrams == 1 and sum(b.num_rows for b in got) == 2


def _description(w, h):
    import faery

    A, N = faery.aedat.DescriptionAttribute, faery.aedat.DescriptionNode
    info = N("info", "/mainloop/Recorder/outInfo/0/info/", {"sizeX": A("int", w), "sizeY": A("int", h),
                                                            "source": A("string", "test")}, [])
    stream = N("0", "/mainloop/Recorder/outInfo/0/", {"compression": A("string", "NONE"),
                                                       "originalOutputName": A("string", "events"),
                                                       "typeIdentifier": A("string", "EVTS")}, [info])
    return [N("outInfo", "/mainloop/Recorder/outInfo/", {}, [stream])]


def test_no_event_stream(tmp_path):
    import faery

    A, N = faery.aedat.DescriptionAttribute, faery.aedat.DescriptionNode
    stream = N("0", "/mainloop/Recorder/outInfo/0/", {"compression": A("string", "NONE"),
                                                       "originalOutputName": A("string", "imu"),
                                                       "typeIdentifier": A("string", "IMUS")}, [])
    path = tmp_path / "imu_only.aedat4"
    with faery.aedat.Encoder(path, description=[N("outInfo", "/mainloop/Recorder/outInfo/", {}, [stream])],
                             compression=None):
        pass
    with pytest.raises(DataError, match=r"imu_only.aedat4' has no event stream"):
        Aedat4Source(Aedat4Source.Params(path=str(path))).schemas({})


@pytest.mark.parametrize("suffix", [".raw", ".dat", ".es", ".csv"])
def test_event_file_source_and_inspect(tmp_path, suffix):
    import faery

    ev = gesture_events(2, width=32, height=32, duration_s=0.3)
    path = tmp_path / f"g{suffix}"
    faery.events_stream_from_array(_structured(ev), dimensions=(32, 32)).to_file(str(path))
    result, _ = collect(EventFileSource(EventFileSource.Params(path=str(path), batch_events=777)))
    got = cols(result.results["sink"]["batches"])
    np.testing.assert_array_equal(got["x"], ev["x"])
    np.testing.assert_array_equal(got["t"] - got["t"][0], ev["t"] - ev["t"][0])
    info = inspect_file(path)
    assert info["events"] == len(ev["t"])
    assert info["sensor"] == ([32, 32] if suffix != ".csv" else [int(ev["x"].max()) + 1, int(ev["y"].max()) + 1])


def test_inspect_aedat4(recording):
    path, segs = recording
    info = inspect_file(path)
    assert info["format"] == "AEDAT4" and info["sensor"] == [40, 30]
    assert info["streams"][0]["type"] == "events" and info["events"] == info["streams"][0]["items"] > 0
    assert info["duration_s"] > 0.8 and info["peak_rate_meps_1ms"] >= info["mean_rate_meps"]
    json.dumps(info)
    assert inspect_file(Path("something.txt")) is None


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_udp_round_trip():
    port = _free_port()
    ev = gesture_events(1, width=32, height=32, duration_s=0.2)
    n = len(ev["t"])
    src = UdpEventSource(UdpEventSource.Params(port=port, width=32, height=32, batch_events=500,
                                               idle_timeout_s=2.0, max_events=n))
    src.setup()
    sink = UdpEventSink(UdpEventSink.Params(port=port, events_per_datagram=200, pause_us=200))
    sink.setup()
    schema = sch.events_schema(32, 32)
    sender = threading.Thread(target=sink.process, args=("in", sch.events_batch(ev["t"], ev["x"], ev["y"], ev["p"], schema)))
    sender.start()
    got = list(src.generate())
    sender.join(5)
    src.close()
    sink.close()
    c = cols(got)
    assert len(c["t"]) == n  # loopback with a paced sender loses nothing
    np.testing.assert_array_equal(c["t"], ev["t"])
    np.testing.assert_array_equal(c["p"], ev["p"])


def test_config_runs_and_writes_preview(tmp_path):
    rec = tmp_path / "rec.aedat4"
    overrides = [f"source.path={rec}", "source.synth_gestures=2", f"preview.png={tmp_path / 'p.png'}",
                 f"preview.summary={tmp_path / 's.json'}"]
    result = run(Graph.from_yaml(CONFIG, overrides=overrides))
    assert rec.exists() and (tmp_path / "p.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames"] > 20 and summary["events"] > 1000
    assert result.results["preview"]["frames"] == summary["frames"]


def _records(t, x=None, align=False):
    dtype = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")], align=align)
    rec = np.zeros(len(t), dtype)
    rec["t"] = t
    rec["x"] = np.arange(len(t)) % 8 if x is None else x
    rec["y"] = 1
    rec["on"] = np.arange(len(t)) % 2 == 1
    return rec


def test_batcher_coalesces_packets_and_refuses_a_bad_one_whole():
    from operators.events.sources import _Batcher

    b = _Batcher(sch.events_schema(8, 8), None, 5)
    assert b.append(_records([1, 2, 3]))
    assert not b.append(_records([4, 2]))  # goes backwards inside the packet
    assert not b.append(_records([9], x=[8]))  # outside the 8x8 sensor
    assert not b.append(_records([0]))  # before the last event taken
    assert b.append(_records([4, 5, 6], align=True))  # an aligned layout is repacked, not misread
    assert b.due
    out = list(b.ready()) + list(b.flush())
    assert [o.num_rows for o in out] == [5, 1]
    got = cols(out)
    np.testing.assert_array_equal(got["t"], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(got["x"], [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(got["p"], [False, True, False, False, True, False])


def test_batcher_cuts_aligned_windows_across_packets():
    from operators.events.sources import _Batcher

    b = _Batcher(sch.events_schema(8, 8), 10, None)
    out = []
    for packet in ([1, 5], [9, 12, 25], [26, 27], [40]):
        assert b.append(_records(packet))
        if b.due:
            out += list(b.ready())
    out += list(b.flush())
    assert [sch.column(o, "t").tolist() for o in out] == [[1, 5, 9], [12], [25, 26, 27], [40]]


def test_batcher_takes_a_strided_packet_like_its_copy():
    """A packet that is a strided view (not contiguous) is repacked, not read as packed bytes."""
    from operators.events.sources import _Batcher

    rec = _records(np.arange(10, 30), x=np.arange(20) % 7)
    a, b = _Batcher(sch.events_schema(8, 8), None, 100), _Batcher(sch.events_schema(8, 8), None, 100)
    assert a.append(rec[::3]) and b.append(rec[::3].copy())
    got, want = cols(list(a.flush())), cols(list(b.flush()))
    for k in "txyp":
        np.testing.assert_array_equal(got[k], want[k])
    np.testing.assert_array_equal(got["t"], np.arange(10, 30)[::3])


def test_batcher_grows_for_a_window_longer_than_its_first_block():
    """With batch_us, a window holding more events than the first block (65,536 + 8,192)
    moves them to a larger block and loses none."""
    from operators.events.sources import _Batcher

    b = _Batcher(sch.events_schema(8, 8), 1_000_000, None)
    t = np.arange(100_000)
    for a in range(0, len(t), 4096):
        assert b.append(_records(t[a : a + 4096]))
    assert b.append(_records([1_000_000]))  # the next window: the first is complete
    out = list(b.ready()) + list(b.flush())
    assert [o.num_rows for o in out] == [100_000, 1]
    np.testing.assert_array_equal(cols(out)["t"], np.append(t, 1_000_000))
