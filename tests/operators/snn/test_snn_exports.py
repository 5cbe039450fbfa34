"""Our NIR exports in the other frameworks: Norse and sinabs load them and spike as we do
(snnTorch: tests/operators/snn/test_snn_nir.py), and a recurrent graph survives our round trip."""

import contextlib
import io
from pathlib import Path

import nir
import pytest
import torch

from operators.snn import layers as L
from operators.snn import nir_io
from operators.snn.network import Affine, Conv, Flatten, Network, Pool2d

BRAILLE = Path(__file__).parents[2] / "data" / "real" / "nir-paper" / "03_rnn" / "braille_noDelay_bias_zero.nir"


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def test_norse_runs_our_lif_export_to_the_same_spikes(tmp_path):
    import norse.torch as norse

    torch.manual_seed(3)
    # Norse reads LIF as a box LIF with r = 1 (forward Euler, reset to v_reset): gain = dt / tau = 1 - beta
    net = Network.sequential((20,), [
        ("fc1", Affine(torch.randn(30, 20) * 0.8, torch.randn(30) * 0.1)), ("lif1", L.LIF((30,), beta=0.9, gain=0.1)),
        ("fc2", Affine(torch.randn(5, 30), torch.zeros(5))), ("lif2", L.LIF((5,), beta=0.8, gain=0.2)),
    ], dt=1e-4)
    path = nir_io.save(net, tmp_path / "lif.nir")
    xs = (torch.rand(100, 1, 20) < 0.3).float() * 3
    ours, _, values = net.run(xs, record=True)
    assert values["lif1"].sum() > 50 and ours.sum() > 10
    theirs = norse.from_nir(nir.read(str(path)), dt=net.dt, ignore_warnings=True)
    state, out = None, []
    for t in range(len(xs)):
        y, state = theirs(xs[t], state)
        out.append(y)
    assert torch.equal(torch.stack(out), ours)


def test_sinabs_runs_our_if_cnn_export_to_the_same_spikes(tmp_path):
    """sinabs' IAF run with NIR's IF semantics (one spike per step, reset to v_reset, no floor;
    its defaults differ, see docs/snn.md)."""
    import sinabs
    from sinabs import from_nir
    from sinabs.activation import MembraneReset, SingleSpike

    torch.manual_seed(4)
    net = Network.sequential((2, 16, 16), [
        ("conv", Conv(torch.randn(4, 2, 3, 3) * 0.8, torch.zeros(4), 1, 1)), ("if1", L.IF((4, 16, 16), v_threshold=1.0)),
        ("pool", Pool2d((2, 2), (2, 2), (0, 0), sum=True)), ("flat", Flatten()),
        ("fc", Affine(torch.randn(10, 256) * 0.3, torch.zeros(10))), ("if2", L.IF((10,), v_threshold=1.0)),
    ], dt=1.0)
    path = nir_io.save(net, tmp_path / "cnn.nir")
    xs = (torch.rand(40, 1, 2, 16, 16) < 0.3).float()
    ours, _, values = net.run(xs, record=True)
    assert values["if1"].sum() > 1000 and ours.sum() > 20
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = from_nir(nir.read(str(path), type_check=False), batch_size=1)
    for m in theirs.modules():
        if isinstance(m, sinabs.layers.IAF):
            m.spike_fn, m.reset_fn, m.min_v_mem = SingleSpike, MembraneReset(), None
    assert torch.equal(theirs(xs[:, 0])[0], ours[:, 0])


def test_a_recurrent_graph_round_trips_through_our_export(tmp_path):
    net = nir_io.load(BRAILLE)
    again = nir_io.load(nir_io.save(net, tmp_path / "braille.nir"))
    assert again.delayed == net.delayed and sorted(again.layers.keys()) == sorted(net.layers.keys())
    xs = (torch.rand(128, 1, 12) < 0.2).float()
    a, _, va = net.run(xs, record=True)
    b, _, vb = again.run(xs, record=True)
    assert va["lif1.lif"].sum() > 10 and torch.equal(va["lif1.lif"], vb["lif1.lif"]) and torch.equal(a, b)
