"""The SSVEP wheelchair loop end to end: config, dwell, safety stops, bad channels, eval."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from operators.eeg.decode import ARTEFACT, GAP, LOST
from operators.eeg.evaluate import run as run_eval
from operators.eeg.ops import WheelchairSink, decision_schema
from operators.eeg.synth import SynthSpec, synth_eeg, write_edf
from pipeline import run
from pipeline import schemas as sch
from pipeline.graph import Graph
from pipeline.operator import registry

CONFIG = Path(__file__).parents[3] / "configs" / "ssvep_wheelchair.yaml"


def _decisions(rows):
    t, target, flags = zip(*rows)
    return sch.commands_batch(np.array(t) * 250_000, decision_schema(), target=np.array(target, np.int16),
                              confidence=np.ones(len(t), np.float32), flags=np.array(flags, np.int32))


def _chair(rows, **params):
    sink = WheelchairSink(WheelchairSink.Params(**params))
    sink.process("in", _decisions(rows))
    return sink


def test_operators_are_registered_and_params_round_trip_through_yaml():
    names = {"edf_source", "lsl_source", "eeg_synthetic", "eeg_filter", "ssvep_decoder", "wheelchair_sink"}
    ops = registry()
    assert names <= set(ops)
    for name in names:
        cls = ops[name]
        fields = {"path": "x.edf"} if name == "edf_source" else {}
        if name == "lsl_source":
            fields = {"channels": ["Oz"], "rate_hz": 250.0}
        p = cls.Params(**fields)
        assert cls.Params(**yaml.safe_load(yaml.safe_dump(p.model_dump(mode="json")))) == p
    assert ops["wheelchair_sink"].actuator


def test_dwell_confirms_a_command_only_after_agreeing_windows():
    assert _chair([(1, 0, 0), (2, 0, 0)], dwell=3).current == "stop"
    sink = _chair([(1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 1, 0), (5, 1, 0), (6, 1, 0)], dwell=3)
    assert [c["command"] for c in sink.issued] == ["forward", "left"]
    assert _chair([(1, 0, 0), (2, 1, 0), (3, 0, 0), (4, 1, 0)], dwell=2).issued == []


@pytest.mark.parametrize("flag,reason", [(ARTEFACT, "artefact"), (GAP, "timestamp gap"), (LOST, "signal loss")])
def test_unsafe_windows_stop_the_chair(flag, reason):
    sink = _chair([(1, 0, 0), (2, 0, 0), (3, flag and 0, flag)], dwell=2)
    assert sink.current == "stop" and sink.issued[-1]["reason"] == f"safety: {reason}"
    assert sink.safety_stops == {reason: 1}


def test_idle_holds_then_stops_and_decision_loss_stops():
    sink = _chair([(1, 1, 0), (2, 1, 0)] + [(i, -1, 0) for i in range(3, 10)], dwell=2)
    assert sink.current == "left"  # idle holds the last command by default
    sink = _chair([(1, 1, 0), (2, 1, 0)] + [(i, -1, 0) for i in range(3, 12)], dwell=2, idle_stop_s=1.5)
    assert sink.current == "stop" and sink.issued[-1]["reason"] == "idle"
    sink = _chair([(1, 2, 0), (2, 2, 0), (20, 2, 0)], dwell=2, loss_s=1.0)  # 4.5 s without decisions
    assert sink.safety_stops == {"signal loss": 1}


def test_safe_state_and_end_of_stream_stop():
    sink = _chair([(1, 0, 0), (2, 0, 0)], dwell=2)
    sink.safe_state("link lost")
    assert sink.current == "stop" and sink.issued[-1]["reason"] == "safety: link lost"
    sink = _chair([(1, 3, 0), (2, 0, 0), (3, 0, 0)], dwell=2)
    sink.finish()
    assert sink.issued[-1] == {**sink.issued[-1], "command": "stop", "reason": "end of stream"}


def _graph(path, **overrides):
    sets = [f"src.params.path={path}", "src.params.pacing=max"] + [f"{k}={v}" for k, v in overrides.items()]
    return Graph.from_yaml(CONFIG, overrides=sets)


def test_config_drives_the_chair_from_a_synthetic_edf(tmp_path):
    rec = synth_eeg(SynthSpec(n_trials=8, seed=11))
    path = write_edf(rec, tmp_path / "s.edf")
    result = run(_graph(path))
    chair = result.results["wheelchair"]
    commands = ["forward", "left", "right", "stop"]
    moves = [c for c in chair["issued"] if c["reason"] == "confirmed"]
    assert len(moves) >= 5
    # a confirmed command matches the target being attended at that time
    rate = rec.spec.rate_hz
    truth = [rec.labels[min(int(c["t_us"] * rate / 1e6), len(rec.labels) - 1)] for c in moves]
    hits = sum(t >= 0 and commands[t] == c["command"] for t, c in zip(truth, moves))
    assert hits / len(moves) >= 0.7
    assert chair["current"] == "stop"
    decoder = result.results["decoder"]
    assert decoder["windows"] > 100 and decoder["degraded"] > 0  # the PO8 dropout was seen
    assert result.results["filter"]["bad_channel_samples"] > 0


def test_flat_recording_is_signal_loss_and_never_moves(tmp_path):
    rec = synth_eeg(SynthSpec(n_trials=2, seed=12))
    rec.data[:] = 0.0
    path = write_edf(rec, tmp_path / "flat.edf")
    result = run(_graph(path))
    assert result.results["decoder"]["lost"] == result.results["decoder"]["windows"] > 0
    assert result.results["wheelchair"]["commands"] == 0


def test_saturated_channels_are_flagged_and_counted(tmp_path):
    rec = synth_eeg(SynthSpec(n_trials=2, seed=13))
    rec.data[:, 1:4] = 3200.0  # three channels pinned at the rail
    path = write_edf(rec, tmp_path / "sat.edf")
    result = run(_graph(path))
    assert result.results["filter"]["bad_channel_samples"] >= 3 * len(rec.data) * 0.99
    assert result.results["decoder"]["degraded"] == result.results["decoder"]["windows"]


def test_config_rejects_a_rate_mismatch(tmp_path):
    rec = synth_eeg(SynthSpec(n_trials=1, seed=1, rate_hz=256.0))
    path = write_edf(rec, tmp_path / "r256.edf")
    with pytest.raises(Exception, match="sampled at 256.0 Hz.*rate_hz=250"):
        run(_graph(path))


def test_eval_reports_metrics_per_decoder_and_window(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config["eval"].update({"decoders": ["fbcca", "fft"], "quick_windows_s": [2.0], "quick_trials": 8,
                           "latency": False})
    report = run_eval(CONFIG, config, tmp_path, quick=True)
    rows = {r["decoder"]: r for r in report["rows"]}
    assert set(rows) == {"fbcca", "fft"}
    for r in rows.values():
        assert 0 <= r["pseudo_online_nmcc"] <= 1 and r["pseudo_online_itr_bits_min"] >= 0
    assert rows["fbcca"]["offline_accuracy"] >= 0.75
    assert rows["fbcca"]["pseudo_online_nmcc"] > 0.6  # well above chance (0.5)
    assert -16 < report["snr"]["wideband_db_oz"] < -6
    assert (tmp_path / "eeg_eval.png").stat().st_size > 1000
    assert (tmp_path / "eeg_eval.json").exists()


def test_decoder_state_restores_mid_stream():
    from operators.eeg.ops import SsvepDecoder

    rec = synth_eeg(SynthSpec(n_trials=1, seed=14))
    schema = sch.samples_schema(list(rec.spec.channels), rec.spec.rate_hz)
    b = [sch.samples_batch(rec.t_us[i:i + 100], rec.data[i:i + 100], schema) for i in range(0, 1500, 100)]
    p = SsvepDecoder.Params(window_s=1.0, hop_s=0.2, idle_threshold=0.0)
    whole = SsvepDecoder(p)
    ref = [whole.process("in", x) for x in b]
    first = SsvepDecoder(p)
    got = [first.process("in", x) for x in b[:7]]
    second = SsvepDecoder(p)
    second.restore(first.state())
    got += [second.process("in", x) for x in b[7:]]
    assert [None if r is None else r.to_pydict() for r in ref] == [None if g is None else g.to_pydict() for g in got]
