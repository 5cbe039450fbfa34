"""The spiking place query: its kernels against plain twins, its recall on held-out data, the chip run."""

from dataclasses import replace

import numpy as np
import pytest

from operators.control.place import Ensemble, ModuleParams, metrics, synthetic
from operators.control.place.chip import chip_scores, place_network, stacked_spiking
from operators.control.place.ensemble import sad_scores
from operators.control.place.network import if_run, input_spikes, spike_score, spiking_weights


def test_input_spikes_are_regular_rate_codes():
    x = np.array([[[0.0, 0.25], [0.5, 1.0]]])
    s = input_spikes(x, 8, 1.0)
    assert s.shape == (8, 1, 4) and s.dtype == np.uint8
    assert s[:, 0].sum(axis=0).tolist() == [0, 2, 4, 8]  # x * rate * steps
    assert s[:, 0, 2].tolist() == [1, 0, 1, 0, 1, 0, 1, 0]  # evenly spaced, first at half a period
    assert input_spikes(x, 8, 0.5)[:, 0].sum(axis=0).tolist() == [0, 1, 2, 4]
    assert input_spikes(np.clip(x * 3, 0, 3), 4, 1.0).max() == 1  # at most one spike per step


def test_if_run_matches_a_scalar_twin():
    rng = np.random.default_rng(0)
    spikes = (rng.random((12, 3, 20)) < 0.4).astype(np.uint8)
    w = rng.normal(0, 1, (20, 7)).astype(np.float32)
    count, first = if_run(spikes, w, 1.5)
    for q in range(3):
        for j in range(7):
            v, c, f = 0.0, 0, 13
            for t in range(12):
                v += float(spikes[t, q].astype(np.float32) @ w[:, j])
                if v > 1.5:
                    c, f, v = c + 1, min(f, t + 1), 0.0
            assert (count[q, j], first[q, j]) == (c, f)
    assert count.sum() > 0 and (first == 13).any()


def test_spike_score_orders_by_count_then_first_spike():
    count = np.array([[3, 3, 2, 0]])
    first = np.array([[4, 2, 1, 9]])
    assert np.argsort(-spike_score(count, first, 8)[0]).tolist() == [1, 0, 2, 3]


@pytest.fixture(scope="module")
def route():
    d = synthetic(30, 4)
    ens = Ensemble.fit(d["reference"], d["calibration"], d["calibration_places"], 10,
                       ModuleParams(n_neurons=40, epochs=4, jitter_px=1), workers=0, seed=4)
    spk = ens.requeried("spiking", d["calibration"], d["calibration_places"], spike_steps=16)
    return d, ens, spk


def test_spiking_query_recall_on_held_out_traversal(route):
    d, ens, spk = route
    truth = d["query_places"]
    rate = metrics(ens.scores(d["query"]), truth)
    spiking = metrics(spk.scores(d["query"]), truth)
    sad = metrics(sad_scores(d["reference"], d["query"]), truth)
    assert spk.modules()[0].params.spike_threshold > 0 and spk.modules()[0].params.query == "spiking"
    # held-out query traversal (own appearance): today 0.97 spiking, 0.97 rate-coded, 0.93 SAD
    assert spiking["recall@1"] >= max(0.8, sad["recall@1"] - 0.05)
    assert spiking["recall@1"] >= rate["recall@1"] - 0.1
    # a broken model (labels rolled by one place in every module: 0.0 today) cannot pass that bar
    broken = Ensemble.of([replace(m, labels=np.where(m.labels >= 0, (m.labels + 1) % len(m.places), -1))
                          for m in spk.modules()])
    assert metrics(broken.scores(d["query"]), truth)["recall@1"] < 0.3


def test_the_chip_runs_the_same_network_and_counts_its_synaptic_events(route):
    d, _, spk = route
    q = d["query"][:12]
    float_best = spk.scores(q).argmax(axis=1)
    scores, rep = chip_scores(spk.modules(), q, "loihi")
    assert np.mean(scores.argmax(axis=1) == float_best) >= 0.9  # int8 weights change few answers
    # synaptic events, independently: every input spike reaches each neuron whose int8 weight is not 0
    w, col, n_places = stacked_spiking(spk.modules())
    assert scores.shape == (12, n_places) and rep["neurons"] == len(col)
    scale = np.abs(w).max() / 127
    nonzero = (np.round(w / scale) != 0).sum(axis=1)
    spikes = input_spikes(q, 16, 1.0)
    assert rep["synops"] == int((spikes.sum(axis=(0, 1)) * nonzero).sum())
    assert rep["neuron_updates"] == 12 * 16 * len(col)
    expect_uj = (rep["synops"] * 23.6 + rep["spikes"] * 1.7 + rep["neuron_updates"] * 52.0) * 1e-6  # Davies 2018
    assert rep["energy_uj_per_query"] == pytest.approx(expect_uj / 12)
    net = place_network(spk.modules())
    assert net.input_shape == (784,) and net.output_shape == (len(col),)
    assert np.allclose(net.layers["fc"].weight.detach().numpy(), w.T)


def test_spiking_weights_remove_only_a_common_offset(route):
    d, ens, _ = route
    m = ens.modules()[0]
    x = d["query"][:5].reshape(5, -1)
    drive, net = x @ m.w, x @ spiking_weights(m.w)
    shift = drive - net  # the same for every neuron of an image, up to the image's pixel sum
    assert np.allclose(shift, shift[:, :1], rtol=1e-4)
    assert np.array_equal(np.argsort(-drive, axis=1), np.argsort(-net, axis=1))


def test_the_spiking_query_is_a_nir_graph_that_round_trips(route, tmp_path):
    """The trained ensemble's spiking inference written as NIR (a file the fleet can roll out
    to an `snn` node) and read back runs the same spikes as `if_run`."""
    import torch

    from operators.snn import nir_io

    d, _, spk = route
    net = place_network(spk.modules())
    back = nir_io.load(nir_io.save(net, tmp_path / "place.nir"))
    spikes = input_spikes(d["query"][:3], 16, 1.0)
    w, _, _ = stacked_spiking(spk.modules())
    count, _ = if_run(spikes, w, spk.modules()[0].params.spike_threshold)
    for q in range(3):
        with torch.inference_mode():
            y, _ = back.run(torch.from_numpy(spikes[:, q].astype(np.float32)).unsqueeze(1))
        got = y[:, 0].numpy().sum(axis=0).astype(int)
        # float32 sums in another order (torch vs NumPy's BLAS) may flip a spike at the threshold
        assert count[q].sum() > 0 and np.abs(got - count[q]).max() <= 1 and np.mean(got == count[q]) >= 0.99
