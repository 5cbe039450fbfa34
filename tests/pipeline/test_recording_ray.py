"""Replay is deterministic in logical time: the same outputs under local and Ray, every time."""

from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest

import pipeline.run  # noqa: F401  (the executors, Ray's among them: a plain import, no skip)
from pipeline import Graph, run
from pipeline import schemas as sch
from pipeline.operator import Operator, register
from pipeline.recording import Recording
from pipeline.testing import CollectSink

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


@register
class RecTestZip(Operator):
    """Two inputs, output depends on their interleaving: any reordering shows up."""

    name = "rec_test_zip"
    inputs = {"a": "events", "b": "samples"}
    outputs = {"out": "commands"}

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.seen_a = self.seen_b = 0

    def schemas(self, inputs):
        return {"out": sch.commands_schema({"a": "int64", "b": "int64", "port": "uint8"})}

    def process(self, port, batch):
        if port == "a":
            self.seen_a += batch.num_rows
        else:
            self.seen_b += batch.num_rows
        t = sch.column(batch, "t")[:1]
        return sch.commands_batch(t, self.schemas({})["out"], a=[self.seen_a], b=[self.seen_b],
                                  port=[0 if port == "a" else 1])


def _recording(folder):
    g = Graph("rec")
    g.add("cam", "synthetic", duration_s=0.05, rate_hz=100_000, batch_items=333)
    g.add("eeg", "synthetic", kind="samples", rate_hz=1000, batch_items=3, duration_s=0.05, channels=2)
    g.add("n1", "count_sink", inputs={"in": "cam.out"})
    g.add("n2", "count_sink", inputs={"in": "eeg.out"})
    g.tap(["cam.out", "eeg.out"], folder)
    run(g)


def _through(folder, out):
    g = Graph("det")
    g.add("rep", "replay", dir=str(folder), streams={"cam": "cam.out", "eeg": "eeg.out"})
    g.add("slow", "delay", per_batch_ms=0.3, inputs={"in": "rep.cam"})
    g.add("zip", "rec_test_zip", inputs={"a": "slow.out", "b": "rep.eeg"})
    g.add("sink", CollectSink(), inputs={"in": "zip.out"})
    g.tap(["zip.out", "slow.out"], out)
    return g


def test_replay_gives_identical_outputs_under_local_and_ray(tmp_path, ray_session):
    _recording(tmp_path / "r")
    outs = {}
    for i, executor in enumerate(["local", "ray", "ray", "local"]):
        res = run(_through(tmp_path / "r", tmp_path / f"o{i}"), executor)
        outs[i] = res.results["sink"]["batches"]
        rec = Recording(tmp_path / f"o{i}")
        assert rec.table("slow.out").num_rows == 5000
        assert rec.report["status"] == "complete"  # the recorder in its actor saw every stream end
    reference = outs[0]
    assert len(reference) == 16 + 17  # every batch of both streams, one command each
    ports = [b.column("port")[0].as_py() for b in reference]
    assert 0 in ports and 1 in ports and ports != sorted(ports)  # really interleaved
    for i in (1, 2, 3):
        assert len(outs[i]) == len(reference)
        for a, b in zip(outs[i], reference, strict=True):
            assert a.equals(b)
        got = Recording(tmp_path / f"o{i}").table("zip.out")
        assert got.equals(Recording(tmp_path / "o0").table("zip.out"))
    t = np.array([b.column("t")[0].as_py() for b in reference])
    assert (np.diff(t) >= 0).all()  # merged in sensor-time order


class _Broken(Operator):
    """Fails on its third batch, as a kernel meeting bad data would."""

    name = "rec_test_broken"
    inputs = {"in": "events"}
    outputs = {"out": "events"}

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.seen = 0

    def process(self, port, batch):
        self.seen += 1
        if self.seen == 3:
            raise ValueError("bad batch")
        return batch


register(_Broken)


def test_a_failed_ray_run_leaves_a_failed_recording(tmp_path, ray_session):
    from pipeline.errors import ReflexarcError
    from pipeline.recording import inspect_recording
    from pipeline.recording_cli import RunExtras

    g = Graph("broken")
    g.add("cam", "synthetic", duration_s=0.05, rate_hz=100_000, batch_items=500)
    g.add("bad", "rec_test_broken", inputs={"in": "cam.out"})
    g.add("n", "count_sink", inputs={"in": "bad.out"})
    extras = RunExtras(g, record=str(tmp_path / "r"))
    with pytest.raises(ReflexarcError, match="bad batch"):
        with extras:
            run(g, "ray")
    report = inspect_recording(tmp_path / "r")
    assert report["status"] == "failed" and "bad batch" in report["error"] and not report["ok"]
    assert report["streams"]["cam.out"]["rows"] >= 1000  # what was written before the error is kept
