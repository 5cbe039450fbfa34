"""swap_model of the shipped operators that take a model: a good one switches, each bad one is
refused with its reason before anything switches, and the old model keeps running."""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.operator import make

from .conftest import ROOT

GESTURE = ROOT / "operators" / "snn" / "models" / "gesture.nir"
BLIMP = ROOT / "operators" / "control" / "models" / "blimp_snn.json"


def _gesture(path, change):
    g = nir.read(str(GESTURE))
    change(g)
    nir.write(str(path), g)
    return str(path)


def _nan(g):
    g.nodes["fc2"].weight[0, 0] = np.nan


def _seven_classes(g):
    fc, ro = g.nodes["fc2"], g.nodes["readout"]
    fc.weight, fc.bias = fc.weight[:7], fc.bias[:7]
    ro.tau, ro.r, ro.v_leak = ro.tau[:7], ro.r[:7], ro.v_leak[:7]
    g.nodes["output"].output_type = {"output": np.array([7])}
    g.metadata["labels"] = ",".join(g.metadata["labels"].split(",")[:7])


def _other_input(g):
    g.nodes["input"].input_type = {"input": np.array([2, 32, 32])}


def _relabelled(g):
    g.metadata["labels"] = ",".join(reversed(g.metadata["labels"].split(",")))


@pytest.fixture()
def snn():
    op = make("snn", {"early_exit": None, "max_steps": 3}, node="snn")
    op.setup()
    return op


def test_snn_takes_a_good_model(tmp_path, snn):
    path = _gesture(tmp_path / "good.nir", lambda g: setattr(g.nodes["fc2"], "weight", g.nodes["fc2"].weight * 1.01))
    old = snn._backend
    assert snn.swap_model(path, "v2") is True and snn._backend is not old
    assert snn.swap_model("", "initial") is True  # back to the configured model


@pytest.mark.parametrize("change, reason", [
    (_nan, "NaN"), (_seven_classes, r"outputs shape \(7,\)"), (_other_input, "shape"), (_relabelled, "labels"),
])
def test_snn_refuses_a_bad_model_and_keeps_the_old_one(tmp_path, snn, change, reason):
    path = _gesture(tmp_path / "bad.nir", change)
    old = snn._backend, snn._net
    with pytest.raises(ModelError, match=reason) as err:
        snn.swap_model(path, "bad")
    assert "node 'snn'" in str(err.value) and (snn._backend, snn._net) == old


@pytest.mark.parametrize("data, reason", [
    (b"", "not a readable NIR file"), (b"\x89HDF\r\n\x1a\n garbage", "not a readable NIR file"),
])
def test_snn_refuses_unreadable_files(tmp_path, snn, data, reason):
    (tmp_path / "m.nir").write_bytes(data)
    with pytest.raises(ModelError, match=reason):
        snn.swap_model(str(tmp_path / "m.nir"), "junk")


@pytest.fixture()
def blimp():
    op = make("blimp_loop", {"controller": "snn", "rate_hz": 10.0, "duration_s": 2.0}, node="loop")
    op.setup()
    return op


def _blimp_model(tmp_path, change):
    data = json.loads(BLIMP.read_text())
    change(data)
    path = tmp_path / "blimp.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_blimp_takes_a_good_model_and_keeps_flying(tmp_path, blimp):
    gen = blimp.generate()
    for _ in range(10):
        next(gen)
    old = blimp.loop.controller
    path = _blimp_model(tmp_path, lambda d: d.update(w_out=(np.asarray(d["w_out"]) * 1.01).tolist()))
    assert blimp.swap_model(path, "v2") is True and blimp.loop.controller is not old
    port, batch = next(gen)
    rest = list(gen)
    assert np.isfinite(np.concatenate([b.column("thrust").to_numpy() for p, b in [(port, batch), *rest]
                                       if p == "command"])).all()


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["w_out"][0].__setitem__(0, float("nan")), "NaN"),
    (lambda d: d.update(w_hid=d["w_hid"][:1]), "shape"),
    (lambda d: d.update(dt_s=0.05), "dt"),
    (lambda d: d.pop("decay"), "lacks"),
])
def test_blimp_refuses_a_bad_model_and_keeps_the_old_one(tmp_path, blimp, change, reason):
    old = blimp.loop.controller
    with pytest.raises(ModelError, match=reason):
        blimp.swap_model(_blimp_model(tmp_path, change), "bad")
    assert blimp.loop.controller is old


def test_a_pid_blimp_takes_no_model(tmp_path):
    op = make("blimp_loop", {"controller": "pid", "duration_s": 1.0}, node="loop")
    op.setup()
    assert op.swap_model(str(BLIMP), "v2") is False
