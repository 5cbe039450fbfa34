"""Neuron layers: pure steps, sequences equal to repeated steps, surrogate gradients."""

import torch

from operators.snn import layers as L
from operators.snn.network import Affine, Conv, Flatten, Network, Pool2d


def test_lif_step_by_hand():
    p = L.LIF((3,), beta=0.5, v_threshold=1.0).params
    z, s = L.lif_step(torch.tensor([[0.6, 1.2, 0.0]]), L.LIFState(torch.tensor([[0.8, 0.0, 2.0]])), p)
    # v = 0.5 v + x -> [1.0, 1.2, 1.0]; v > 1 fires only the second, which resets to 0
    assert z.tolist() == [[0.0, 1.0, 0.0]]
    assert torch.allclose(s.v, torch.tensor([[1.0, 0.0, 1.0]]))


def test_cuba_lif_current_then_membrane():
    p = L.CubaLIF((1,), alpha=0.5, beta=0.5, v_threshold=10.0).params
    _, s = L.cuba_lif_step(torch.ones(1, 1), L.CubaLIFState(torch.ones(1, 1) * 2, torch.ones(1, 1)), p)
    assert torch.allclose(s.i, torch.tensor([[2.0]]))  # 0.5*2 + 1
    assert torch.allclose(s.v, torch.tensor([[2.5]]))  # 0.5*1 + 2


def test_if_has_no_leak_and_li_does_not_spike():
    p = L.IF((1,), v_threshold=5.0).params
    z, s = L.if_step(torch.ones(1, 1), L.IFState(torch.ones(1, 1) * 3), p)
    assert z.item() == 0 and s.v.item() == 4
    v, s = L.li_step(torch.ones(1, 1) * 100, L.LIState(torch.zeros(1, 1)), L.LI((1,), beta=0.9).params)
    assert v.item() == 100  # the output is the membrane, never a spike


def _net():
    torch.manual_seed(0)
    return Network.sequential((2, 8, 8), [
        ("conv", Conv(torch.randn(4, 2, 3, 3), torch.zeros(4), 1, 1)),
        ("lif", L.LIF((4, 8, 8), beta=0.9)),
        ("pool", Pool2d((2, 2), (2, 2), (0, 0), sum=True)),
        ("flat", Flatten()),
        ("fc", Affine(torch.randn(5, 64) * 0.3, torch.zeros(5))),
        ("cuba", L.CubaLIF((5,))),
        ("fc2", Affine(torch.randn(3, 5), None)),
        ("out", L.CubaLI((3,))),
    ])


def test_run_equals_steps_and_is_chunking_invariant():
    net = _net()
    xs = (torch.rand(12, 2, 2, 8, 8) < 0.4).float()
    with torch.no_grad():
        whole, _ = net.run(xs)
        state, steps = None, []
        for t in range(12):
            y, state = net.step(xs[t], state)
            steps.append(y)
        a, s = net.run(xs[:5])
        b, _ = net.run(xs[5:], s)
    assert torch.equal(whole, torch.stack(steps))
    assert torch.equal(whole, torch.cat([a, b]))


def test_delta_input_gives_the_same_outputs():
    net = _net()
    xs = (torch.rand(10, 1, 2, 8, 8) < 0.4).float() * 3
    with torch.no_grad():
        plain, _ = net.run(xs)
        a, s = net.run(xs[:4], delta=True)
        b, _ = net.run(xs[4:], s, delta=True)
    assert torch.allclose(plain, torch.cat([a, b]), atol=1e-5)


def test_surrogate_gradient_reaches_the_first_layer():
    net = _net()
    xs = (torch.rand(6, 2, 2, 8, 8) < 0.4).float()
    out, _ = net.run(xs)
    out.sum().backward()
    assert net.layers["conv"].weight.grad.abs().sum() > 0


def test_in_place_inference_equals_the_pure_steps_for_every_neuron_model():
    """The fast inference loop (in place, constants looked up once) against the obviously
    correct step functions, with leaks, per-neuron resets and a buffer changed between calls."""
    torch.manual_seed(5)
    shape = (6,)
    layers = [
        L.IF(shape, gain=0.7, v_threshold=1.0),
        L.LIF(shape, beta=0.8, gain=0.5, leak=0.05, v_threshold=1.0, v_reset=torch.linspace(-0.2, 0.2, 6)),
        L.CubaLIF(shape, alpha=0.6, syn_gain=0.9, beta=0.85, gain=0.4, leak=0.02, v_threshold=0.8),
        L.CubaLIF(shape, alpha=0.5, syn_gain=1.0, beta=0.9, gain=1.0, leak=0.0, v_threshold=1.0),
        L.LI(shape, beta=0.7, gain=0.3, leak=0.01),
        L.CubaLI(shape, alpha=0.5, syn_gain=0.8, beta=0.9, gain=0.6),
    ]
    xs = torch.rand(50, 2, *shape) * 2
    with torch.no_grad():
        for m in layers:
            for _ in range(2):
                fast, fast_state = m.sequence(xs)
                state = m.initial_state(2)
                slow = []
                for x in xs:
                    y, state = m._step(x, state, m.params)
                    slow.append(y)
                assert torch.equal(fast, torch.stack(slow)), m.kind
                # the step functions reset as v + z (v_reset - v), which can miss v_reset by an ulp
                assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(fast_state, state)), m.kind
                m.gain.mul_(1.3)  # a changed constant must not be served from the cache
