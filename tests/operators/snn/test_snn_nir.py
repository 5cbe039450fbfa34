"""NIR: round trip, interop with snnTorch, and clear errors for models that cannot run."""

import nir
import numpy as np
import pytest
import torch

from operators.snn import layers as L
from operators.snn import nir_io
from operators.snn.network import Affine, Conv, Flatten, Network, Pool2d, Scale


def _conv_net():
    torch.manual_seed(1)
    return Network.sequential((2, 16, 16), [
        ("scale", Scale(np.full((2, 16, 16), 0.5, np.float32))),
        ("pool0", Pool2d((2, 2), (2, 2), (0, 0), sum=True)),
        ("conv", Conv(torch.randn(6, 2, 3, 3) * 0.6, torch.randn(6) * 0.1, 1, 1)),
        ("lif", L.LIF((6, 8, 8), beta=0.8, v_threshold=1.0, leak=0.01)),
        ("avg", Pool2d((2, 2), (2, 2), (0, 0), sum=False)),
        ("flat", Flatten()),
        ("fc", Affine(torch.randn(10, 96) * 0.5, torch.zeros(10))),
        ("if", L.IF((10,), v_threshold=1.0)),
        ("fc2", Affine(torch.randn(4, 10), None)),
        ("cuba", L.CubaLIF((4,), alpha=0.7, beta=0.9)),
        ("li", L.LI((4,), beta=0.8)),
    ])


def test_export_import_gives_identical_spikes(tmp_path):
    net = _conv_net()
    xs = (torch.rand(30, 3, 2, 16, 16) < 0.3).float()
    with torch.no_grad():
        _, _, before = net.run(xs, record=True)
    path = nir_io.save(net, tmp_path / "m.nir")
    again = nir_io.load(path)
    with torch.no_grad():
        _, _, after = again.run(xs, record=True)
    for name in ("lif", "if", "cuba", "li"):
        assert torch.equal(before[name], after[name]), name
    assert before["lif"].sum() > 0 and before["cuba"].sum() > 0  # the comparison is not vacuous
    # and a second export is the same file content
    g1, g2 = nir_io.to_nir(net), nir_io.to_nir(again)
    for name, node in g1.nodes.items():
        for k, v in vars(node).items():
            if isinstance(v, np.ndarray) and k not in ("input_type", "output_type"):
                assert np.array_equal(v, getattr(g2.nodes[name], k)), (name, k)


def test_snntorch_runs_our_nir_file_to_the_same_spikes(tmp_path):
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(2)
    net = Network.sequential((20,), [
        ("fc1", Affine(torch.randn(30, 20) * 0.5, torch.randn(30) * 0.1)),
        ("lif1", L.LIF((30,), beta=0.9)),
        ("fc2", Affine(torch.randn(5, 30) * 0.5, torch.zeros(5))),
        ("cuba", L.CubaLIF((5,), alpha=0.8, beta=0.9)),
    ])
    path = nir_io.save(net, tmp_path / "dense.nir")
    theirs = import_from_nir(nir.read(str(path)))
    xs = (torch.rand(60, 1, 20) < 0.3).float()
    with torch.no_grad():
        ours, _ = net.run(xs)
        out = [theirs(xs[t]) for t in range(60)]
    theirs_spikes = torch.stack([o[0] if isinstance(o, tuple) else o for o in out])
    assert ours.sum() > 5
    assert torch.allclose(ours, theirs_spikes, atol=1e-6)


def _write(tmp_path, nodes, edges, name="bad.nir"):
    path = tmp_path / name
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    return path


def test_unsupported_node_is_named(tmp_path):
    path = _write(tmp_path, {
        "input": nir.Input(input_type=np.array([3])),
        "delay": nir.Delay(delay=np.ones(3)),
        "output": nir.Output(output_type=np.array([3])),
    }, [("input", "delay"), ("delay", "output")])
    with pytest.raises(nir_io.ModelError, match=r"node 'delay' is a Delay, which is not supported"):
        nir_io.load(path)


def test_mismatched_shapes_are_named(tmp_path):
    path = _write(tmp_path, {
        "input": nir.Input(input_type=np.array([4])),
        "fc": nir.Affine(weight=np.ones((3, 5)), bias=np.zeros(3)),
        "output": nir.Output(output_type=np.array([3])),
    }, [("input", "fc"), ("fc", "output")])
    with pytest.raises(nir_io.ModelError, match=r"node 'fc' \(Affine\) expects input of shape \(5,\) but receives \(4,\)"):
        nir_io.load(path)


def test_nan_weights_are_named(tmp_path):
    w = np.ones((3, 4))
    w[1, 2] = np.nan
    path = _write(tmp_path, {
        "input": nir.Input(input_type=np.array([4])),
        "fc": nir.Linear(weight=w),
        "output": nir.Output(output_type=np.array([3])),
    }, [("input", "fc"), ("fc", "output")])
    with pytest.raises(nir_io.ModelError, match=r"node 'fc' \(Linear\) has 1 NaN or infinite value\(s\) in 'weight'"):
        nir_io.load(path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(nir_io.ModelError, match="does not exist"):
        nir_io.load(tmp_path / "nope.nir")
    junk = tmp_path / "junk.nir"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(nir_io.ModelError, match="not a readable NIR file"):
        nir_io.load(junk)
