"""MCAP: export every stream (Foxglove views + lossless Arrow), import it back bit for bit,
and import MCAP files others wrote (with the `mcap` library, not ours)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer
from mcap_protobuf.decoder import DecoderFactory

from pipeline import Graph, run
from pipeline import schemas as sch
from pipeline.cli import main
from pipeline.errors import DataError
from pipeline.mcap_io import import_mcap
from pipeline.operator import Source, register
from pipeline.recording import Recording, inspect_recording
from pipeline.testing import ListSource


@register
class McapTestQuiet(Source):
    """A source with a declared port that never emits (an unused IMU, say)."""

    name = "mcap_test_quiet"
    outputs = {"out": "commands"}

    def schemas(self, inputs):
        return {"out": sch.commands_schema({"thrust": "float32"})}

    def generate(self):
        return iter(())


def _recording(folder, compression="none"):
    """Events, frames, samples, commands and a stream that never emits, recorded."""
    fschema = sch.frames_schema((6, 8), "float32")
    frames = [sch.frames_batch([k * 40_000, k * 40_000 + 20_000], np.full((2, 6, 8), k, np.float32), fschema)
              for k in range(3)]
    cschema = sch.commands_schema({"thrust": "float32", "mode": "int16"})
    cmds = [sch.commands_batch([k * 10_000], cschema, thrust=[0.5 * k], mode=[k]) for k in range(5)]
    g = Graph("mcap")
    g.add("cam", "synthetic", duration_s=0.1, rate_hz=100_000, batch_items=700, width=32, height=24, seed=1)
    g.add("eeg", "synthetic", kind="samples", rate_hz=1000, batch_items=16, duration_s=0.1, channels=2)
    g.add("img", ListSource.of(frames))
    g.add("ctl", ListSource.of(cmds))
    g.add("quiet", "mcap_test_quiet")
    for n in ("cam", "eeg", "img", "ctl", "quiet"):
        g.add(f"n_{n}", "count_sink", inputs={"in": f"{n}.out"})
    g.tap(["cam.out", "eeg.out", "img.out", "ctl.out", "quiet.out"], folder, compression=compression)
    run(g)


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_export_then_import_gives_every_batch_back_bit_for_bit(tmp_path, compression):
    _recording(tmp_path / "rec", compression)
    out = tmp_path / "rec.mcap"
    assert main(["export", str(tmp_path / "rec"), "--to", "mcap", str(out), "--window-ms", "20"]) == 0
    assert main(["import", str(out), "--to", str(tmp_path / "back")]) == 0
    a, b = Recording(tmp_path / "rec"), Recording(tmp_path / "back")
    assert sorted(a.streams) == sorted(b.streams)
    for s in a.streams:
        # the files themselves: same IPC messages (batches, their custom metadata, compressed buffers)
        assert (tmp_path / "rec" / f"{s}.arrow").read_bytes() == (tmp_path / "back" / f"{s}.arrow").read_bytes()
        assert a.schema(s).equals(b.schema(s), check_metadata=True)
        for x, y in zip(a.batches(s), b.batches(s), strict=True):
            assert x.equals(y)
    ma = json.loads((tmp_path / "rec" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "back" / "manifest.json").read_text())
    for s, meta in ma["streams"].items():
        assert {k: v for k, v in meta.items() if k != "bytes"} == {k: v for k, v in mb["streams"][s].items() if k != "bytes"}
    assert mb["status"] == "complete" and mb["imported"]["from"] == str(out)
    assert Recording(tmp_path / "back").table("quiet.out").num_rows == 0  # the empty stream too
    assert main(["replay", str(tmp_path / "back")]) == 0


def test_the_mcap_file_holds_what_foxglove_shows(tmp_path):
    _recording(tmp_path / "rec")
    out = tmp_path / "rec.mcap"
    assert main(["export", str(tmp_path / "rec"), "--to", "mcap", str(out), "--window-ms", "20"]) == 0
    with open(out, "rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        topics = {c.topic: (c.message_encoding, summary.schemas[c.schema_id].name) for c in summary.channels.values()}
        counts = {summary.channels[c].topic: n for c, n in summary.statistics.channel_message_counts.items()}
        assert topics["/cam/out"] == ("protobuf", "foxglove.RawImage")
        assert topics["/img/out"] == ("protobuf", "foxglove.RawImage")
        assert topics["/eeg/out"][0] == "json" and topics["/ctl/out"][0] == "json"
        assert all(topics[f"/{s.replace('.', '/')}/arrow"][0] == "arrow.ipc" for s in ("cam.out", "eeg.out", "img.out", "ctl.out", "quiet.out"))
        assert counts["/cam/out"] == 5  # 100 ms of events in 20 ms windows
        assert counts["/img/out"] == 6 and counts["/eeg/out"] == 100 and counts["/ctl/out"] == 5
        assert counts["/cam/out/arrow"] == Recording(tmp_path / "rec").meta["cam.out"]["batches"]
        images = {}
        for _s, channel, message, decoded in reader.iter_decoded_messages(topics=["/img/out", "/cam/out"]):
            images.setdefault(channel.topic, []).append((message.log_time, decoded))
        rows = [json.loads(m.data) for _s, _c, m in reader.iter_messages(topics=["/ctl/out"])]
    t, img = images["/img/out"][3]
    assert t == 60_000_000 and (img.width, img.height, img.encoding) == (8, 6, "32FC1")
    assert np.all(np.frombuffer(img.data, np.float32) == 1.0)
    _, ev = images["/cam/out"][0]
    assert (ev.width, ev.height, ev.encoding) == (32, 24, "mono8")
    pix = np.frombuffer(ev.data, np.uint8)
    assert pix.max() > 128 and pix.min() < 128  # ON and OFF events were drawn
    assert rows[2] == {"t_us": 20_000, "thrust": 1.0, "mode": 2}


def _foreign_mcap(path, bad=False):
    """What a robot's recorder writes: Foxglove images (protobuf and JSON) and JSON telemetry."""
    from foxglove.messages import CompressedImage, RawImage, Timestamp
    from PIL import Image

    raw_schema, comp_schema = RawImage.get_schema(), CompressedImage.get_schema()
    gray = [np.full((4, 5), 10 * k, np.uint8) for k in range(3)]
    rgb = [np.dstack([np.full((3, 2), v, np.uint8) for v in (k, 100, 200)]) for k in range(2)]
    with open(path, "wb") as fh:
        w = Writer(fh)
        w.start(profile="", library="someone else's recorder")
        s_raw = w.register_schema(name=raw_schema.name, encoding="protobuf", data=raw_schema.data)
        s_comp = w.register_schema(name=comp_schema.name, encoding="protobuf", data=comp_schema.data)
        s_jraw = w.register_schema(name="foxglove.RawImage", encoding="jsonschema", data=b"{}")
        s_odom = w.register_schema(name="Odometry", encoding="jsonschema", data=b"{}")
        s_ros = w.register_schema(name="std_msgs/String", encoding="ros2msg", data=b"string data")
        c_raw = w.register_channel("/camera/image_raw", "protobuf", s_raw)
        c_png = w.register_channel("/camera/image/compressed", "protobuf", s_comp)
        c_jraw = w.register_channel("/depth", "json", s_jraw)
        c_odom = w.register_channel("/odom", "json", s_odom)
        c_ros = w.register_channel("/chatter", "cdr", s_ros)
        for k, img in enumerate(gray):
            t = (k + 1) * 100_000_000
            msg = RawImage(timestamp=Timestamp(sec=0, nsec=t), frame_id="cam", width=5, height=4,
                           encoding="mono8", step=5, data=img.tobytes())
            w.add_message(c_raw, log_time=t, data=msg.encode(), publish_time=t)
            w.add_message(c_odom, log_time=t + 1000, publish_time=t,
                          data=json.dumps({"pose": {"x": 0.5 * k, "y": -1.0}, "speed": k, "frame": "odom"}).encode())
            w.add_message(c_ros, log_time=t, data=b"\x00\x01", publish_time=t)
        for k, img in enumerate(rgb):
            t = (k + 1) * 150_000_000
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            msg = CompressedImage(timestamp=Timestamp(sec=0, nsec=t), frame_id="cam", data=buf.getvalue(), format="png")
            w.add_message(c_png, log_time=t, data=msg.encode(), publish_time=t)
        depth = np.arange(6, dtype=np.uint16).reshape(2, 3) * 1000
        for k in range(2):
            d = {"timestamp": {"sec": 0, "nsec": k}, "frame_id": "d", "width": 3, "height": 2, "encoding": "mono16",
                 "step": 6, "data": base64.b64encode((depth + k).tobytes()).decode()}
            if bad and k == 1:
                d["height"] = 9  # more rows than the data holds
            w.add_message(c_jraw, log_time=(k + 1) * 50_000_000, data=json.dumps(d).encode(), publish_time=0)
        w.finish()
    return gray, rgb, depth


def test_import_reads_foxglove_images_and_json_that_others_wrote(tmp_path, capsys):
    gray, rgb, depth = _foreign_mcap(tmp_path / "robot.mcap")
    assert main(["import", str(tmp_path / "robot.mcap"), "--to", str(tmp_path / "rec")]) == 0
    err = capsys.readouterr().err
    assert "/chatter (cdr, std_msgs/String)" in err  # said, not silently dropped
    rec = Recording(tmp_path / "rec")
    assert sorted(rec.streams) == ["camera_image_compressed.out", "camera_image_raw.out", "depth.out", "odom.out"]
    raw = rec.table("camera_image_raw.out")
    np.testing.assert_array_equal(raw.column("t").to_numpy(), [100_000, 200_000, 300_000])
    got = sch.frames_view(raw.to_batches()[0])
    np.testing.assert_array_equal(got, np.stack(gray))
    png = sch.frames_view(rec.table("camera_image_compressed.out").combine_chunks().to_batches()[0])
    np.testing.assert_array_equal(png, np.stack(rgb))
    d = rec.table("depth.out")
    assert d.schema.field("frame").type.value_type == pa.uint16()
    np.testing.assert_array_equal(sch.frames_view(d.to_batches()[0])[1], depth + 1)
    odom = rec.table("odom.out")
    assert odom.column_names == ["t", "pose.x", "pose.y", "speed"]
    np.testing.assert_array_equal(odom.column("pose.x").to_numpy(), [0.0, 0.5, 1.0])
    assert main(["inspect", str(tmp_path / "rec")]) == 0
    assert main(["replay", str(tmp_path / "rec")]) == 0


def test_a_bad_foreign_message_is_skipped_with_a_warning_or_fails_under_strict(tmp_path, capsys):
    _foreign_mcap(tmp_path / "bad.mcap", bad=True)
    assert main(["import", str(tmp_path / "bad.mcap"), "--to", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "warning: channel /depth" in err and "skipped 1 message" in err and "RawImage data holds 12 bytes" in err
    assert Recording(tmp_path / "a").table("depth.out").num_rows == 1
    assert main(["import", str(tmp_path / "bad.mcap"), "--to", str(tmp_path / "b"), "--strict"]) == 1
    assert "channel /depth message" in capsys.readouterr().err


def test_a_truncated_or_foreign_file_is_a_clear_error(tmp_path, capsys):
    _recording(tmp_path / "rec")
    out = tmp_path / "rec.mcap"
    assert main(["export", str(tmp_path / "rec"), "--to", "mcap", str(out)]) == 0
    data = out.read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["import", str(tmp_path / "cut.mcap"), "--to", str(tmp_path / "x")]) == 1
    assert "cut.mcap" in capsys.readouterr().err
    (tmp_path / "not.mcap").write_bytes(b"hello, not an mcap file at all")
    with pytest.raises(DataError, match="not a readable MCAP file"):
        import_mcap(tmp_path / "not.mcap", tmp_path / "y")
    with pytest.raises(DataError, match="already holds a recording"):
        import_mcap(out, tmp_path / "rec")


def test_a_cut_off_recording_exports_its_whole_batches(tmp_path, capsys):
    import os

    _recording(tmp_path / "rec")
    f = tmp_path / "rec" / "cam.out.arrow"
    before = len(list(Recording(tmp_path / "rec").batches("cam.out")))
    os.truncate(f, f.stat().st_size - 3000)  # into the last batches, as a killed recorder leaves it
    whole = list(Recording(tmp_path / "rec").batches("cam.out"))
    assert 0 < len(whole) < before
    assert main(["export", str(tmp_path / "rec"), "--to", "mcap", str(tmp_path / "cut.mcap")]) == 0
    assert main(["import", str(tmp_path / "cut.mcap"), "--to", str(tmp_path / "back")]) == 0
    back = list(Recording(tmp_path / "back").batches("cam.out"))
    assert len(back) == len(whole)  # every whole batch, nothing of the cut one
    report = inspect_recording(tmp_path / "back")  # the manifest counts what came back
    assert report["streams"]["cam.out"]["batches"] == len(whole) and not report["damage"]
    for x, y in zip(back, whole, strict=True):
        assert x.equals(y)
