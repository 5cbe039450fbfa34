"""The spiking controller: fast kernel vs slow reference, feature traces, NIR export, the shipped model."""

import numpy as np
import pytest

from operators.control.fit import evaluate, features
from operators.control.snn import (
    DEFAULT_MODEL,
    Layout,
    SNNController,
    SNNModel,
    decode,
    new_state,
    reference_step,
    snn_step,
    to_nir,
)


def random_model(hidden, seed=0):
    layout = Layout(pairs=4, hidden_size=6, hidden=hidden)
    rng = np.random.default_rng(seed)
    return decode(rng.standard_normal(layout.size), layout, rng.standard_normal(2 * 6))


@pytest.mark.parametrize("hidden", ["adaptive", "plain", "recurrent"])
def test_kernel_matches_slow_reference(hidden):
    m = random_model(hidden)
    fast = new_state(m)
    names = ["ie", "ve", "ih", "vh", "bh", "sh", "y"]
    slow = {k: a.copy() for k, a in zip(names, new_state(m))}
    xs = np.random.default_rng(1).normal(0, 1.0, 300)
    spikes = 0.0
    for x in xs:
        u_fast = snn_step(x, *m.arrays()[:8], m.decay, *fast)
        u_slow = reference_step(m, x, slow)
        assert u_fast == pytest.approx(u_slow, abs=1e-9)
        spikes += fast[5].sum()
    assert spikes > 0  # the test means something only if neurons fire
    if hidden == "plain":
        assert not m.hid_c.any()
    if hidden == "recurrent":
        assert m.w_rec.any()


def test_feature_traces_reproduce_the_decoder_output():
    m = random_model("adaptive", seed=3)
    errors = np.random.default_rng(2).normal(0, 0.5, (2, 120))
    F = features(m, errors)
    ctl = SNNController(m, u_max=1e9)
    for s in range(2):
        ctl.reset()
        us = [ctl.step(e, 0.0) for e in errors[s]]
        assert np.allclose(F[s] @ m.w_out.ravel(), us)


def test_readout_fit_beats_a_zero_controller():
    layout = Layout(pairs=4, hidden_size=8)
    rng = np.random.default_rng(0)
    errors = rng.normal(0, 0.5, (3, 200))
    commands = np.clip(3.0 * errors, -3.3, 3.3)
    loss, w = evaluate(rng.standard_normal(layout.size) * 0.3, layout, errors, commands)
    assert w.shape == (16,)
    assert loss < 1.0 + np.mean(np.abs(commands))  # zero output: MAE + (1 - 0)


def test_layout_enforces_the_neuron_budget_and_hidden_kind():
    with pytest.raises(ValueError, match="budget is 160"):
        Layout(pairs=20, hidden_size=60)
    with pytest.raises(ValueError, match="hidden must be"):
        Layout(hidden="lstm")
    with pytest.raises(ValueError, match="genes"):
        decode(np.zeros(3), Layout())


def test_nir_export_has_the_two_networks():
    nir = pytest.importorskip("nir")
    m = random_model("recurrent")
    g = to_nir(m)
    kinds = {k: type(v).__name__ for k, v in g.nodes.items()}
    assert sum(v == "CubaLIF" for v in kinds.values()) == 4
    assert sum(v == "LI" for v in kinds.values()) == 2
    assert g.nodes["net0_hid_in"].weight.shape == (6, 8)
    assert g.nodes["net1_enc_in"].weight.shape == (8, 1)
    assert ("net0_dec", "output") in g.edges and ("net0_rec", "net0_hid") in g.edges
    assert isinstance(g, nir.NIRGraph)


def test_model_save_load_round_trip(tmp_path):
    m = random_model("adaptive")
    m.save(tmp_path / "m.json")
    back = SNNModel.load(tmp_path / "m.json")
    for a, b in zip(m.arrays(), back.arrays()):
        assert np.array_equal(a, b)


def test_shipped_model_loads_and_fits_the_budget():
    m = SNNModel.load(DEFAULT_MODEL)
    assert m.neurons <= 160
    assert np.any(m.w_out)
    ctl = SNNController(m)
    u = [ctl.step(1.5, 1.0) for _ in range(30)]
    assert np.all(np.isfinite(u)) and max(u) > 0  # below the set point -> push up


def test_missing_model_file_is_a_clear_error(tmp_path):
    from pipeline.errors import DataError

    with pytest.raises(DataError, match="cannot read SNN model"):
        SNNModel.load(tmp_path / "nope.json")
