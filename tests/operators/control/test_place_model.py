"""The place model file: training writes it, the operator loads it, swap_model checks it first."""

import numpy as np
import pytest

from operators.control.place import model
from operators.control.place.ops import FRAMES, EnsembleParams, PlaceEnsemble
from operators.control.place.route import synthetic
from pipeline import schemas as sch
from pipeline.errors import ModelError

SMALL = {"n_places": 10, "places_per_module": 5, "n_neurons": 20, "epochs": 2, "seed": 0}
QUERY = synthetic(10, 0)["query"]  # held out: the traversal with its own appearance, never trained on


def _op(**params) -> PlaceEnsemble:
    op = PlaceEnsemble(EnsembleParams(**{**SMALL, **params}), "ens")
    op.setup()
    return op


def _places(op: PlaceEnsemble, frames=QUERY) -> list[int]:
    out = []
    for i, f in enumerate(frames):  # one frame per batch, in route order, as the pipeline feeds it
        out += sch.column(op.process("in", sch.frames_batch([i], f[None], FRAMES)), "place").tolist()
    return out


def _right(places) -> int:
    return sum(p == i for i, p in enumerate(places))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("place") / "model.npz"
    op = _op(save_model=str(path))
    answers = _places(op)
    op.close()
    return path, answers


def _rewrite(src, dst, **changes):
    """A copy of model file `src` with some arrays replaced (name -> array, or None to drop it)."""
    z = dict(np.load(src, allow_pickle=False))
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            z.pop(k)
        else:
            z[k] = v
    with open(dst, "wb") as f:
        np.savez(f, **z)
    return dst


def test_training_writes_the_model_and_the_operator_loads_it(trained):
    path, answers = trained
    assert _right(answers) >= 7  # held-out traversal; a broken model (next test) gets at most 3
    loaded = _op(model=str(path), n_places=2, epochs=1)  # the file, not the params, defines the model
    assert _places(loaded) == answers
    modules, cut, win, meta = model.load(path, 784)
    assert len(modules) == 2 and meta["n_places"] == 10 and 1 <= cut and win is not None


def test_swap_model_switches_between_waves_and_a_permuted_model_fails_the_bar(trained, tmp_path):
    path, answers = trained
    op = _op(model=str(path))
    z = np.load(path, allow_pickle=False)
    shifted = {f"m{k}__labels": np.where(z[f"m{k}.labels"] >= 0, (z[f"m{k}.labels"] + 2) % 5, -1) for k in range(2)}
    wrong = _rewrite(path, tmp_path / "wrong.npz", **shifted)
    assert op.swap_model(str(wrong), "v2-wrong") is True and op.model_version == "v2-wrong"
    assert _right(_places(op)) <= 3  # the same weights with permuted output labels: the bar catches it
    assert op.swap_model(str(path), "v1") is True
    assert _places(op) == answers


@pytest.mark.parametrize("fault, match", [
    ("bytes", "unreadable"), ("missing", "m1.w' missing"), ("nan", "NaN"), ("pixels", "pixels"),
    ("format", "format"), ("labels", "labels outside"), ("nofile", "no such file"), ("places", "continue the route")])
def test_swap_model_refuses_a_bad_file_and_keeps_the_old_model(trained, tmp_path, fault, match):
    path, answers = trained
    op = _op(model=str(path))
    z = np.load(path, allow_pickle=False)
    bad = tmp_path / "bad.npz"
    if fault == "bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif fault == "missing":
        _rewrite(path, bad, m1__w=None)
    elif fault == "nan":
        w = z["m0.w"].copy()
        w[3, 2] = np.nan
        _rewrite(path, bad, m0__w=w)
    elif fault == "pixels":
        _rewrite(path, bad, m0__w=z["m0.w"][:100], m1__w=z["m1.w"][:100])
    elif fault == "format":
        _rewrite(path, bad, format=np.array("reflexarc.place/0"))
    elif fault == "labels":
        _rewrite(path, bad, m1__labels=z["m1.labels"] + 7)
    elif fault == "places":
        _rewrite(path, bad, m1__places=z["m1.places"] + 1)
    else:
        bad = tmp_path / "absent.npz"
    with pytest.raises(ModelError, match=match):
        op.swap_model(str(bad), "v-bad")
    assert _places(op) == answers and not hasattr(op, "model_version")


def test_a_spiking_model_round_trips_with_its_threshold(tmp_path):
    path = tmp_path / "spiking.npz"
    op = _op(query="spiking", spike_steps=16, save_model=str(path))
    answers = _places(op)
    assert _right(answers) >= 7
    modules, _, _, meta = model.load(path, 784)
    assert meta["params"]["query"] == "spiking" and meta["params"]["spike_threshold"] > 0
    assert _places(_op(model=str(path))) == answers
    _rewrite(path, tmp_path / "nothreshold.npz",
             meta=np.array(str(np.load(path)["meta"]).replace('"spike_threshold": ', '"spike_threshold": -')))
    with pytest.raises(ModelError, match="spike_threshold"):
        op.swap_model(str(tmp_path / "nothreshold.npz"), "v3")
