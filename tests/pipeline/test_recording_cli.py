"""`reflexarc replay/export/import/inspect` end to end: shadow runs, golden diffs, bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml
from pydantic import Field

from pipeline import schemas as sch
from pipeline.cli import main
from pipeline.operator import Operator, Params, register
from pipeline.recording import Recording, inspect_recording
from pipeline.replay import replay


class GainParams(Params):
    gain: float = 1.0


@register
class RecTestGain(Operator):
    """thrust = gain * ch0: a stand-in controller whose output a parameter changes."""

    name = "rec_test_gain"
    inputs = {"in": "samples"}
    outputs = {"out": "commands"}
    Params = GainParams

    def schemas(self, inputs):
        return {"out": sch.commands_schema({"thrust": "float32"})}

    def process(self, port, batch):
        thrust = sch.column(batch, "ch0") * np.float32(self.params.gain)
        return sch.commands_batch(sch.column(batch, "t"), self.schemas({})["out"], thrust=thrust)


class MotorParams(Params):
    path: str = Field(..., description="file the 'motor' writes each command to")


@register
class RecTestMotor(Operator):
    """An actuator that leaves a trace on disk, so a test sees whether it was driven."""

    name = "rec_test_motor"
    inputs = {"in": "commands"}
    Params = MotorParams
    actuator = True

    def process(self, port, batch):
        with open(self.params.path, "a") as fh:
            fh.write(f"{batch.num_rows}\n")


def _config(tmp_path: Path, name="cfg.yaml", source="eeg", channels=2, gain=1.0) -> Path:
    cfg = {
        "name": "shadow_test",
        "nodes": {
            source: {"op": "synthetic", "params": {"kind": "samples", "rate_hz": 1000, "batch_items": 10,
                                                   "duration_s": 0.1, "channels": channels}},
            "ctrl": {"op": "rec_test_gain", "params": {"gain": gain}, "inputs": {"in": f"{source}.out"}},
            "motor": {"op": "rec_test_motor", "params": {"path": str(tmp_path / "motor.log")},
                      "inputs": {"in": "ctrl.out"}},
        },
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def field(tmp_path):
    """A 'field recording': the live pipeline run with every stream recorded."""
    cfg = _config(tmp_path)
    assert main(["run", str(cfg), "--record", str(tmp_path / "field"), "--quiet"]) == 0
    assert (tmp_path / "motor.log").exists()
    (tmp_path / "motor.log").unlink()
    return tmp_path / "field", cfg


def test_run_record_then_inspect(field, capsys):
    folder, _ = field
    capsys.readouterr()
    assert main(["inspect", str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "complete" and report["config_name"] == "shadow_test"
    assert report["streams"]["eeg.out"]["rows"] == 100 and report["streams"]["ctrl.out"]["kind"] == "commands"


def test_shadow_replay_matches_the_field_run_and_never_drives_the_motor(field, capsys):
    folder, cfg = field
    code = main(["replay", str(folder), "--through", str(cfg), "--shadow", "--golden", str(folder)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "muted actuator motor" in out and "same     ctrl.out: 100 rows" in out
    assert "OK: 1 streams compared" in out
    assert not (Path(cfg).parent / "motor.log").exists()


def test_a_changed_model_diverges_and_exits_1(field, capsys, tmp_path):
    folder, cfg = field
    golden = tmp_path / "golden"
    assert main(["replay", str(folder), "--through", str(cfg), "--shadow", "--record", str(golden)]) == 0
    capsys.readouterr()
    code = main(["replay", str(folder), "--through", str(cfg), "--shadow", "--golden", str(golden),
                 "--set", "ctrl.gain=1.5"])
    out = capsys.readouterr().out
    assert code == 1
    first = Recording(golden).table("ctrl.out")
    old = first.column("thrust")[0].as_py()
    assert "diverged ctrl.out: first at row 0 (t=0 us), field 'thrust'" in out
    assert f"old {old!r}" in out and "DIVERGED" in out
    # within tolerance it passes
    loose = main(["replay", str(folder), "--through", str(cfg), "--shadow", "--golden", str(golden),
                  "--set", "ctrl.gain=1.0001", "--tolerance", "0.01"])
    assert loose == 0
    assert not (tmp_path / "motor.log").exists()


def test_replay_without_shadow_drives_actuators(field):
    folder, cfg = field
    out = replay(folder, cfg)
    assert out["notes"]["muted"] == []
    assert (Path(cfg).parent / "motor.log").exists()


def test_a_config_whose_sources_are_not_in_the_recording(field, tmp_path, capsys):
    folder, _ = field
    other = _config(tmp_path, "other.yaml", source="camera")
    code = main(["replay", str(folder), "--through", str(other)])
    err = capsys.readouterr().err
    assert code == 2
    assert "source 'camera' (synthetic) has no stream in the recording" in err
    assert "it holds: ctrl.out, eeg.out" in err


def test_a_config_whose_schemas_do_not_match(field, tmp_path, capsys):
    folder, _ = field
    wider = _config(tmp_path, "wider.yaml", channels=3)
    assert main(["replay", str(folder), "--through", str(wider)]) == 2
    err = capsys.readouterr().err
    assert "schema mismatch: the recording's 'eeg.out' has fields" in err and "'ch2': 'float'" in err


def test_a_folder_that_is_not_a_recording(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["replay", str(tmp_path / "x")]) == 2  # bad input, never the 1 of a divergence
    assert "is not a reflexarc recording" in capsys.readouterr().err


def test_export_to_parquet_is_queryable(field, tmp_path):
    folder, _ = field
    assert main(["export", str(folder), "--to", "parquet", str(tmp_path / "pq")]) == 0
    table = ds.dataset(tmp_path / "pq" / "ctrl.out", format="parquet").to_table()
    assert table.num_rows == 100
    assert table.column("thrust").equals(Recording(folder).table("ctrl.out").column("thrust"))


def _events_recording(folder: Path):
    from pipeline import Graph, run

    g = Graph("ev")
    g.add("cam", "synthetic", duration_s=0.02, rate_hz=200_000, batch_items=512, width=128, height=96, seed=3)
    g.add("n", "count_sink", inputs={"in": "cam.out"})
    g.tap(["cam.out"], folder)
    run(g)
    return Recording(folder).table("cam.out")


def test_export_events_to_aedat4_and_import_them_back(tmp_path):
    import aedat

    events = _events_recording(tmp_path / "r")
    target = tmp_path / "out.aedat4"
    assert main(["export", str(tmp_path / "r"), "--to", "aedat4", str(target)]) == 0
    got = [p["events"] for p in aedat.Decoder(str(target)) if "events" in p]
    arr = np.concatenate(got)
    assert aedat.Decoder(str(target)).id_to_stream()[0]["width"] == 128
    np.testing.assert_array_equal(arr["t"].astype(np.int64), events.column("t").to_numpy())
    np.testing.assert_array_equal(arr["x"], events.column("x").to_numpy())
    np.testing.assert_array_equal(arr["on"], events.column("p").to_numpy(zero_copy_only=False))

    assert main(["import", str(target), "--to", str(tmp_path / "back")]) == 0
    back = Recording(tmp_path / "back").table("camera.out")
    assert back.num_rows == events.num_rows
    np.testing.assert_array_equal(back.column("t").to_numpy(), events.column("t").to_numpy())
    np.testing.assert_array_equal(back.column("y").to_numpy(), events.column("y").to_numpy())
    assert inspect_recording(tmp_path / "back")["streams"]["camera.out"]["kind"] == "events"


def test_export_aedat4_needs_an_events_stream(field, tmp_path, capsys):
    folder, _ = field
    assert main(["export", str(folder), "--to", "aedat4", str(tmp_path / "x.aedat4")]) == 1
    assert "has 0 events streams" in capsys.readouterr().err


def test_replay_counts_every_stream_without_a_config(field, capsys):
    folder, _ = field
    assert main(["replay", str(folder), "--streams", "ctrl.out", "--json", str(folder.parent / "s.json")]) == 0
    summary = json.loads((folder.parent / "s.json").read_text())
    assert summary["run"]["results"]["count__ctrl__out"]["items"] == 100
    assert pa.__version__  # pyarrow present (keeps the import honest)


# --- every recording replays, failures say so (#21) -------------------------------------

EVENTS_CFG = Path(__file__).resolve().parents[2] / "configs" / "events_preprocess.yaml"


def _events_run(tmp_path, aedat, *extra):
    return ["run", str(EVENTS_CFG), "--set", f"source.path={aedat}", "--set", "source.synth_gestures=1",
            "--set", f"preview.png={tmp_path / 'p.png'}", "--set", f"preview.summary={tmp_path / 's.json'}",
            "--quiet", *extra]


@pytest.fixture
def gestures(tmp_path):
    """An events-only AEDAT4 file (what most cameras write) and a copy cut off mid-packet."""
    f = tmp_path / "g.aedat4"
    assert main(_events_run(tmp_path, f)) == 0  # the synthetic camera writes it
    cut = tmp_path / "cut.aedat4"
    data = f.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    return f, cut


def test_an_events_only_file_records_and_replays_with_its_empty_ports(gestures, tmp_path, capsys):
    f, _ = gestures
    rec = tmp_path / "rec"
    assert main(_events_run(tmp_path, f, "--record", str(rec))) == 0
    assert main(["inspect", str(rec)]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {s: report["streams"][s]["rows"] for s in ("source.out", "source.frames", "source.imu", "source.triggers")}
    assert rows["source.out"] > 1000 and rows["source.frames"] == rows["source.imu"] == rows["source.triggers"] == 0
    assert report["streams"]["source.frames"]["kind"] == "frames"  # the declared schema, not a guess
    assert main(["replay", str(rec)]) == 0
    assert main(["replay", str(rec), "--through", str(EVENTS_CFG), "--set", f"preview.png={tmp_path / 'q.png'}",
                 "--set", f"preview.summary={tmp_path / 'q.json'}", "--golden", str(rec)]) == 0
    assert "OK: 4 streams compared" in capsys.readouterr().out  # hot, refractory, denoise, frames


def test_a_skipped_packet_warns_at_the_end_and_strict_fails_the_run(gestures, tmp_path, capsys):
    _, cut = gestures
    capsys.readouterr()
    assert main(_events_run(tmp_path, cut, "--record", str(tmp_path / "ok"))) == 0
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(line) == 1 and "node 'source' (aedat4_source) skipped 1 bad packet" in line[0]
    assert str(cut) in line[0] and "--strict" in line[0] and "(first: packet " in line[0] and "unreadable" in line[0]
    assert main(_events_run(tmp_path, cut, "--record", str(tmp_path / "strict"), "--strict")) == 1
    err = capsys.readouterr().err
    assert f"AEDAT4 file '{cut}' packet" in err and "unreadable" in err
    manifest = json.loads((tmp_path / "strict" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "unreadable" in manifest["error"]
    assert main(["inspect", str(tmp_path / "strict")]) == 1
    assert "not a complete recording: the run that made it failed: " in capsys.readouterr().err


def test_a_run_that_raises_leaves_a_failed_recording(gestures, tmp_path, capsys):
    _, cut = gestures
    rec = tmp_path / "rec"
    assert main(_events_run(tmp_path, cut, "--set", "source.on_error=raise", "--record", str(rec))) == 1
    capsys.readouterr()
    assert main(["inspect", str(rec)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "failed" and "packet" in report["error"] and not report["ok"]
    # what was written before the error still replays (a failed run's recording is data)
    assert main(["replay", str(rec)]) == 0
    assert "the run that made it failed" in capsys.readouterr().err
    assert main(["replay", str(rec), "--strict"]) == 1


def test_import_skips_a_bad_packet_with_a_warning_and_strict_refuses(gestures, tmp_path, capsys):
    _, cut = gestures
    capsys.readouterr()
    assert main(["import", str(cut), "--to", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 bad packet" in err and "(first: packet " in err
    assert main(["inspect", str(tmp_path / "a")]) == 0
    assert main(["import", str(cut), "--to", str(tmp_path / "b"), "--strict"]) == 1
    assert "unreadable" in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["status"] == "failed"
    assert main(["inspect", str(tmp_path / "b")]) == 1


def test_a_killed_recording_is_recovered_and_inspect_says_so(field, capsys):
    folder, _ = field
    m = json.loads((folder / "manifest.json").read_text())
    m["status"], m["pid"] = "recording", 2**22 + 12345  # as a SIGKILLed recorder leaves it
    (folder / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert main(["inspect", str(folder)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "recovered" and "never closed it" in captured.err
    assert main(["replay", str(folder), "--streams", "ctrl.out"]) == 0  # still replays
    assert main(["replay", str(folder), "--strict"]) == 1


def test_record_flag_and_a_config_record_block_make_one_tap(tmp_path, capsys):
    cfg = yaml.safe_load(_config(tmp_path).read_text())
    cfg["record"] = {"dir": str(tmp_path / "from_config"), "streams": ["eeg.out"], "compression": "lz4"}
    path = tmp_path / "with_record.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--record", str(tmp_path / "cli"), "--quiet"]) == 0
    assert "replaces the config's record.dir" in capsys.readouterr().err
    assert not (tmp_path / "from_config").exists()
    m = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert list(m["streams"]) == ["eeg.out"] and m["options"]["compression"] == "lz4"
    assert main(["run", str(path), "--record", str(tmp_path / "cli2"), "--streams", "ctrl.out", "--quiet"]) == 0
    assert list(json.loads((tmp_path / "cli2" / "manifest.json").read_text())["streams"]) == ["ctrl.out"]
    assert main(["run", str(path), "--streams", "ctrl.out", "--quiet"]) == 2  # --streams without --record
    assert "--streams" in capsys.readouterr().err


def test_shadow_exit_codes_a_missing_golden_is_bad_input(field, tmp_path, capsys):
    folder, cfg = field
    code = main(["replay", str(folder), "--through", str(cfg), "--shadow", "--golden", str(tmp_path / "nope")])
    assert code == 2
    assert "--golden" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    assert main(["replay", str(folder), "--through", str(cfg), "--shadow", "--golden", str(tmp_path / "junk")]) == 2
