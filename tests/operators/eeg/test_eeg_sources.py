"""EDF sources (pyedflib's own test file and our synthetic EDF+), bad files, synthetic truth."""

import numpy as np
import pyedflib
import pyedflib.data
import pytest

from operators.eeg.sources import EdfSource
from operators.eeg.synth import IDLE, SynthSpec, labels_from_edf, synth_eeg, write_edf
from pipeline import run
from pipeline import schemas as sch
from pipeline.errors import ReflexarcError
from pipeline.graph import Graph
from pipeline.testing import CollectSink


def _collect(params):
    g = Graph("edf")
    g.add("src", "edf_source", **params)
    g.add("out", CollectSink(), inputs={"in": "src.out"})
    return run(g).results["out"]["batches"]


def test_reads_the_edf_plus_file_pyedflib_ships():
    path = pyedflib.data.get_generator_filename()
    batches = _collect({"path": path, "batch_s": 5.0})
    schema = batches[0].schema
    assert sch.fact(schema, "rate_hz") == 200.0
    with pyedflib.data.test_generator() as f:
        labels = f.getSignalLabels()
        n = f.getNSamples()[0]
        sine8 = f.readSignal(labels.index("sine 8 Hz"))
    assert sch.fact(schema, "channels") == labels
    assert sum(b.num_rows for b in batches) == n
    got = np.concatenate([sch.column(b, "sine 8 Hz") for b in batches])
    np.testing.assert_allclose(got, sine8, atol=1e-3)
    t = np.concatenate([sch.column(b, "t") for b in batches])
    assert t[0] == 0 and np.all(np.diff(t) == 5000)  # 200 Hz in µs


def test_selects_channels_and_checks_the_rate():
    path = pyedflib.data.get_generator_filename()
    batches = _collect({"path": path, "channels": ["sine 15 Hz", "noise"], "rate_hz": 200.0})
    assert [f.name for f in batches[0].schema][1:] == ["sine 15 Hz", "noise"]
    with pytest.raises(ReflexarcError, match="sampled at 200.0 Hz.*rate_hz=250"):
        _collect({"path": path, "channels": ["noise"], "rate_hz": 250.0})
    with pytest.raises(ReflexarcError, match=r"no channel\(s\) \['Oz'\]"):
        _collect({"path": path, "channels": ["noise", "Oz"], "rate_hz": 200.0})


def test_non_edf_and_missing_files_are_clear_errors(tmp_path):
    bogus = tmp_path / "notes.edf"
    bogus.write_text("this is not an EDF file\n" * 20)
    with pytest.raises(ReflexarcError, match="not a readable EDF/BDF file"):
        _collect({"path": str(bogus), "channels": ["Oz"], "rate_hz": 250.0})
    with pytest.raises(ReflexarcError, match="does not exist"):
        _collect({"path": str(tmp_path / "absent.edf")})


def test_synthetic_edf_round_trip_keeps_data_and_labels(tmp_path):
    rec = synth_eeg(SynthSpec(n_trials=4, seed=3))
    path = write_edf(rec, tmp_path / "s.edf")
    batches = _collect({"path": str(path), "batch_s": 0.04})
    data = np.column_stack([np.concatenate([sch.column(b, c) for b in batches]) for c in rec.spec.channels])
    assert data.shape == rec.data.shape
    np.testing.assert_allclose(data, rec.data, atol=0.1)  # 16-bit quantisation of ±3200 µV
    labels = labels_from_edf(path, len(rec.labels), rec.spec.rate_hz)
    assert (labels == rec.labels).mean() > 0.999
    assert set(np.unique(labels)) == {IDLE, 0, 1, 2, 3}


def test_synthesize_if_missing_writes_then_reads(tmp_path):
    path = tmp_path / "sub" / "auto.edf"
    op = EdfSource(EdfSource.Params(path=str(path), synthesize_if_missing=True, seed=2))
    op.schemas({})
    assert path.exists()
    with pyedflib.EdfReader(str(path)) as f:
        assert f.getSignalLabels() == list(SynthSpec().channels)


def test_synthetic_ground_truth_is_consistent():
    rec = synth_eeg(SynthSpec(n_trials=8, seed=4))
    spec = rec.spec
    assert len(rec.data) == int(round(spec.duration_s * spec.rate_hz))
    assert [tr[2] for tr in rec.trials] and sorted({tr[2] for tr in rec.trials}) == [0, 1, 2, 3]
    j = spec.channels.index(spec.dropout_channel)
    i0 = int(spec.dropout_at_s * spec.rate_hz)
    assert (rec.data[i0:i0 + 100, j] == 0).all()
    assert rec.artefact.any()
