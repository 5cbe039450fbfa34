"""Every shipped config runs, shortened with overrides (`--set`), and its result is checked.

`tests/pipeline/test_core_configs.py` validates each pipeline config; here each one the
other suites do not already run end to end is run the way a user would, and what it
produced is compared with what it must produce.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import Graph, run
from pipeline.cli import main as cli_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _run(name: str, *overrides: str):
    graph = Graph.from_yaml(CONFIGS / f"{name}.yaml", overrides=list(overrides))
    result = run(graph, "local")
    return result, {m["node"]: m for m in result.metrics}


def test_dvs_gesture_names_all_eight_gestures_in_order(tmp_path):
    from operators.events import GESTURES

    # `make demo` as it stands, with its synthetic recording written to a scratch folder
    result, metrics = _run("dvs_gesture", f"source.path={tmp_path / 'gestures.aedat4'}")
    said = result.results["command"]["gestures"]
    assert [g["gesture"] for g in said] == list(GESTURES)  # the recording holds them in class order
    assert [g["t_us"] for g in said] == sorted(g["t_us"] for g in said)
    assert all(0.5 < g["confidence"] <= 1.0 for g in said), said
    assert metrics["snn"]["items_out"] == 8 and metrics["command"]["items_in"] == 8


def test_demo_counts_every_event_it_made(tmp_path):
    counts = tmp_path / "counts.json"
    result, metrics = _run("demo", "camera.duration_s=0.2", "camera.pacing=max", f"sink.path={counts}")
    # 1 M events/s for 0.2 s, one per microsecond: 200,000 events with t = 0 .. 199,999
    n = 200_000
    expected = {"items": n, "t_sum": n * (n - 1) // 2, "t_last": n - 1}
    got = result.results["sink"]
    assert {k: got[k] for k in expected} == expected
    assert json.loads(counts.read_text())["items"] == n
    assert [metrics[s]["items_out"] for s in ("camera", "stage1", "stage2")] == [n, n, n]


def test_edge_robot_actuator_receives_every_command(tmp_path):
    log = tmp_path / "motor.json"
    result, metrics = _run("edge_robot", "sensor.duration_s=0.3", "sensor.pacing=max", f"motor.path={log}")
    # 1 kHz in batches of 10 for 0.3 s: 30 commands reach the stand-in actuator
    assert result.results["motor"]["commands"] == 30
    assert metrics["motor"]["items_in"] == 300
    assert json.loads(log.read_text())["commands"] == 30


def test_record_demo_records_then_replays_identically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rec = tmp_path / "rec"
    result, _ = _run("record_demo", "camera.duration_s=0.1", "eeg.duration_s=0.1", f"record.dir={rec}")
    # 2 M events/s and 1 kHz x 8 channels for 0.1 s
    assert result.results["count_events"]["items"] == 200_000
    assert result.results["count_eeg"]["items"] == 100
    streams = result.results["__record__"]["streams"]
    assert {k: v["rows"] for k, v in streams.items()} == {
        "camera.out": 200_000, "eeg.out": 100, "events_out.out": 200_000,
    }
    # the config's own recipe: replay through it in shadow mode, diffed against itself
    summary = tmp_path / "replay.json"
    rc = cli_main(["replay", str(rec), "--through", str(CONFIGS / "record_demo.yaml"), "--shadow",
                   "--golden", str(rec), "--json", str(summary)])
    assert rc == 0
    text = summary.read_text()
    assert "events_out.out" in text and "diverged" in text


def test_place_recognition_localises_the_held_out_traversal():
    # trained on the reference traversal, queried on the other one (different lighting, jitter)
    result, _ = _run("place_recognition", "route.n_places=20", "ensemble.n_places=20", "ensemble.epochs=2")
    out = result.results["localiser"]
    assert out["frames"] == 20
    right = sum(p == i for i, p in enumerate(out["places"]))
    assert right >= 15, out["places"]  # chance is 1 in 20


def test_microcircuit_fires_at_cortical_rates():
    from cluster.brainsim import NetworkSpec

    duration_s, scale = 0.05, 0.02
    result, metrics = _run("microcircuit", f"brain.duration_s={duration_s}", f"brain.network.scale={scale}")
    spec = NetworkSpec(model="potjans_diesmann_2014", scale=scale).expanded()
    neurons = sum(p.size for p in spec.populations if p.model not in ("poisson", "spike_source"))
    count = result.results["count"]
    assert count["items"] == metrics["brain"]["items_out"]
    assert 0 <= count["t_last"] < duration_s * 1e6
    rate_hz = count["items"] / neurons / duration_s
    assert 1.0 < rate_hz < 15.0, rate_hz  # PD14: every layer below ~10 Hz, none silent


# -- config files that are not pipelines, and mistakes in ones that are -------------


def _validate(path, capsys) -> tuple[int, str]:
    rc = cli_main(["validate", str(path)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_validate_checks_an_evolution_config(capsys):
    rc, text = _validate(CONFIGS / "blimp_evolve.yaml", capsys)
    assert rc == 0, text
    assert "valid `evolve:` config" in text and "reflexarc evolve" in text


def test_validate_reports_a_bad_evolution_config(tmp_path, capsys):
    bad = tmp_path / "evolve.yaml"
    bad.write_text((CONFIGS / "blimp_evolve.yaml").read_text().replace("popsize: 16", "popsize: -3"))
    rc, text = _validate(bad, capsys)
    assert rc == 2 and "popsize" in text, text


def test_run_of_an_evolution_config_names_the_right_command(capsys):
    rc = cli_main(["run", str(CONFIGS / "blimp_evolve.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "reflexarc evolve" in err, err


def test_duplicate_key_names_the_key_and_line(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("name: x\nnodes:\n  a: {op: synthetic}\n  b:\n    op: count_sink\n"
                   "    inputs: {in: a.out}\n    op: identity\n")
    rc, text = _validate(cfg, capsys)
    assert rc == 2
    assert "duplicate key 'op'" in text and "line 7" in text and "line 5" in text, text


def test_cycle_error_names_only_the_nodes_on_the_cycle(tmp_path, capsys):
    cfg = tmp_path / "cycle.yaml"
    cfg.write_text(
        "nodes:\n  src: {op: synthetic}\n"
        "  a: {op: identity, inputs: {in: b.out}}\n  b: {op: identity, inputs: {in: a.out}}\n"
        "  below: {op: count_sink, inputs: {in: b.out}}\n"
    )
    rc, text = _validate(cfg, capsys)
    assert rc == 2 and "cycle through a, b" in text, text
    assert "below" not in text.split("cycle through")[1]


@pytest.mark.parametrize("name", ["brunel", "microcircuit"])
def test_validate_of_a_brainsim_config(name, capsys):
    rc, text = _validate(CONFIGS / f"{name}.yaml", capsys)
    assert rc == 0 and "ok:" in text, text


def test_a_sensor_the_model_does_not_fit_names_the_operators_that_would(tmp_path, capsys):
    # a 128x128 camera in front of the 64x64 gesture model
    sets = [f"source.path={tmp_path / 'big.aedat4'}", "source.synth_gestures=1",
            "source.synth_width=128", "source.synth_height=128"]
    rc = cli_main(["validate", str(CONFIGS / "dvs_gesture.yaml"), *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert rc == 2 and "expects frames of shape (2, 64, 64)" in err and "`downsample` (factor: 2)" in err, err
    # and with that operator in place the same config validates
    from pipeline.graph import read_yaml

    cfg = read_yaml(CONFIGS / "dvs_gesture.yaml")
    cfg["nodes"]["shrink"] = {"op": "downsample", "inputs": {"in": "denoise.out"}, "params": {"factor": 2}}
    cfg["nodes"]["frames"]["inputs"] = {"in": "shrink.out"}
    graph = Graph.from_dict(cfg, overrides=sets)
    assert graph.schemas[("frames", "out")] is not None


def test_validate_checks_a_nir_model_and_points_data_to_inspect(tmp_path, capsys):
    model = Path(__file__).resolve().parents[1] / "operators" / "snn" / "models" / "gesture.nir"
    rc, text = _validate(model, capsys)
    assert rc == 0 and "input_shape (2, 64, 64)" in text, text
    bad = tmp_path / "broken.nir"
    bad.write_text("not hdf5")
    rc, text = _validate(bad, capsys)
    assert rc != 0 and "not a readable NIR file" in text, text
    rc = cli_main(["run", str(model)])
    assert rc == 2 and "reflexarc validate" in capsys.readouterr().err
    data = tmp_path / "clip.aedat4"
    data.write_bytes(b"")
    rc, text = _validate(data, capsys)
    assert rc == 2 and "reflexarc inspect" in text, text
    rc, text = _validate(tmp_path, capsys)
    assert rc == 2 and "reflexarc inspect" in text, text
