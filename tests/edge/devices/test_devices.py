"""Device backends: one interface, torch on CPU/CUDA, the chip emulator, vendor plug-ins."""

import numpy as np
import pytest
import torch

from edge.devices import PROFILES, backend, backends, quantisation_loss
from operators.snn import layers as L
from operators.snn.network import Affine, Conv, Flatten, Network, Pool2d
from pipeline.errors import ConfigError


def _net(width=16, conv_out=4):
    torch.manual_seed(3)
    return Network.sequential((2, width, width), [
        ("conv", Conv(torch.randn(conv_out, 2, 3, 3), torch.zeros(conv_out), 1, 1)),
        ("lif", L.LIF((conv_out, width, width), beta=0.9)),
        ("pool", Pool2d((4, 4), (4, 4), (0, 0), sum=True)),
        ("flat", Flatten()),
        ("fc", Affine(torch.randn(5, conv_out * (width // 4) ** 2) * 0.3, torch.zeros(5))),
        ("li", L.LI((5,), beta=0.9)),
    ])


def _input(T=20, width=16, seed=0):
    return np.random.default_rng(seed).poisson(0.4, (T, 2, width, width)).astype(np.float32)


def test_registry_names_and_unknown():
    names = backends()
    for name in ("torch-cpu", "torch-cuda", "neuromorphic-emulator", "sinabs", "lava"):
        assert name in names
    with pytest.raises(ConfigError, match="unknown device backend 'tpu'"):
        backend("tpu")


def test_torch_cpu_matches_the_network_and_carries_state():
    net = _net()
    xs = _input()
    b = backend("torch-cpu")(net)
    a, s = b.run(xs[:7], b.initial_state())
    c, _ = b.run(xs[7:], s)
    with torch.no_grad():
        ref, _ = net.run(torch.from_numpy(xs).unsqueeze(1))
    assert np.allclose(np.concatenate([a, c]), ref[:, 0].numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_cuda_matches_cpu():
    net = _net()
    xs = _input()
    cpu = backend("torch-cpu")(net)
    y_cpu, _ = cpu.run(xs, cpu.initial_state())
    gpu = backend("torch-cuda")(_net())
    y_gpu, _ = gpu.run(xs, gpu.initial_state())
    assert np.allclose(y_cpu, y_gpu, atol=1e-4)


def test_emulator_counts_and_energy():
    net = _net()
    b = backend("neuromorphic-emulator")(net, chip="loihi")
    y, _ = b.run(_input(), b.initial_state())
    r = b.report()
    assert y.shape == (20, 5)
    assert r["spikes"] > 0 and r["synops"] > r["spikes"]
    assert r["cores"] >= 2 and r["chips"] == 1
    # quantised, so close to but not exactly the float network
    with torch.no_grad():
        ref, _ = net.run(torch.from_numpy(_input()).unsqueeze(1))
    assert np.corrcoef(y.ravel(), ref[:, 0].numpy().ravel())[0, 1] > 0.9


# Loihi's energies per operation as published (Davies et al., IEEE Micro 38(1), 2018,
# Table 2): synaptic spike op 23.6 pJ, within-tile spike 1.7 pJ, neuron update 52 pJ.
LOIHI_PJ = {"synop": 23.6, "spike": 1.7, "update": 52.0}


def test_emulator_energy_from_counts_taken_by_hand():
    # 3 inputs -> 2 LIF neurons, every weight 2.0 (exact in 8 bits): each input event drives
    # both neurons over threshold 1 in its step, and they reset to 0, so the float network,
    # the chip and this count agree on every spike
    net = Network.sequential((3,), [("fc", Affine(torch.full((2, 3), 2.0), None)), ("lif", L.LIF((2,)))])
    x = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 1]], np.float32)
    b = backend("neuromorphic-emulator")(net, chip="loihi")
    y, _ = b.run(x, b.initial_state())
    spiking_steps = int((x.sum(1) > 0).sum())  # 3 steps with input
    assert y.tolist() == [[1.0, 1.0] if row.any() else [0.0, 0.0] for row in x]
    r = b.report()
    synops = int(x.sum()) * 2  # 6 input events, each reaching 2 synapses
    spikes = spiking_steps * 2
    updates = len(x) * 2  # every neuron updates every step
    assert (r["synops"], r["spikes"], r["neuron_updates"]) == (synops, spikes, updates)
    energy_pj = synops * LOIHI_PJ["synop"] + spikes * LOIHI_PJ["spike"] + updates * LOIHI_PJ["update"]
    assert r["energy_uj"] == pytest.approx(energy_pj * 1e-6)
    assert r["energy_per_step_uj"] == pytest.approx(energy_pj * 1e-6 / len(x))


def test_synop_count_by_hand():
    # 3 inputs -> 2 neurons, all connected: each input event reaches 2 synapses
    net = Network.sequential((3,), [("fc", Affine(torch.ones(2, 3) * 0.1, None)), ("lif", L.LIF((2,)))])
    b = backend("neuromorphic-emulator")(net, chip="loihi")
    b.run(np.array([[1, 0, 2], [0, 0, 0]], np.float32), b.initial_state())
    assert b.report()["synops"] == 6  # (1 + 2) events x 2 synapses


def test_fan_in_limit_is_a_clear_error():
    # 2 channels x 3x3 kernel x 4x4 pooled (off-chip pooling aside) -> conv fan-in 18; fc fan-in 256 > ok for loihi
    wide = Network.sequential((300,), [("fc", Affine(torch.ones(4, 300), None)), ("lif", L.LIF((4,)))])
    with pytest.raises(ConfigError, match=r"population 'lif' needs a fan-in of 300 .* 'truenorth' allows 256"):
        backend("neuromorphic-emulator")(wide, chip="truenorth")
    backend("neuromorphic-emulator")(wide, chip="loihi")  # fits there


def test_profiles_cite_sources():
    assert len(PROFILES) >= 2
    for p in PROFILES.values():
        assert p.sources.get("paper")


def test_quantisation_loss_is_reported():
    net = _net()
    frames = np.stack([_input(10, seed=s) for s in range(6)])
    # label each clip with the float network's own decision (mean readout, as training
    # decodes), computed here: the float accuracy must then be exactly 1
    with torch.no_grad():
        labels = np.array([int(net.run(torch.from_numpy(c).unsqueeze(1))[0][:, 0].mean(0).argmax()) for c in frames])
    r = quantisation_loss(net, frames, labels, chip="loihi")
    assert r["float_accuracy"] == 1.0
    chip = backend("neuromorphic-emulator")(_net(), chip="loihi")
    agree = np.mean([int(chip.run(c, chip.initial_state())[0].mean(0).argmax()) == k for c, k in zip(frames, labels)])
    assert r["chip_accuracy"] == pytest.approx(agree) and agree >= 0.5
    assert r["accuracy_lost"] == pytest.approx(1.0 - agree)


def test_sinabs_backend_steps_the_same_network():
    # sinabs is installed by `make setup` (without its deps): the converted network must give
    # the float network's outputs, step by step, conv, pooling and the LI readout included
    net = _net()
    xs = _input()
    cpu = backend("torch-cpu")(net)
    want, _ = cpu.run(xs, cpu.initial_state())
    sb = backend("sinabs")(_net())
    got, _ = sb.run(xs[:7], sb.initial_state())
    more, _ = sb.run(xs[7:], None)  # sinabs layers carry their own state between calls
    got = np.concatenate([got, more])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_lava_says_why_it_cannot_run():
    import importlib.util

    match = "lava-nc" if importlib.util.find_spec("lava") is None else "not wired"
    with pytest.raises(ConfigError, match=match):
        backend("lava")
