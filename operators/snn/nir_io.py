"""NIR in and out: build a `Network` from a NIR graph (with checks that name the node) and back.

Supported nodes: Input, Output, Affine, Linear, Scale, Conv1d, Conv2d, Flatten, SumPool2d,
AvgPool2d, IF, LIF, CubaLIF, LI, CubaLI, and subgraphs (NIRGraph nodes) of them, which are
flattened into dotted names (`lif1` holding `lif` and `w_rec` becomes `lif1.lif`, `lif1.w_rec`,
the names snnTorch's exports use). Cycles are allowed: the edge that closes one carries the
previous step's value (NIR's one-step delay, see `network`). Continuous-time neuron
parameters are discretised by forward Euler with the step `dt` found in the graph's
metadata (default 1e-4 s, the step snnTorch assumes when it reads NIR), see `layers`.
Input/Output shapes that differ from what flows only by singleton dimensions (rockpool
writes an Output of (1, 1, 1) after a 1-neuron layer) are accepted.

Everything wrong with a model is reported before any data flows, as a `ModelError` naming
the file, the node and the field: an unsupported node, shapes that do not chain, NaN or
infinite parameters, a non-positive time constant.
"""

from __future__ import annotations

from pathlib import Path

import nir
import numpy as np
import torch

from operators.snn import layers as L
from operators.snn.network import Affine, Conv, Flatten, Network, Pool2d, Scale, _topological
from pipeline.errors import DataError

DEFAULT_DT = 1e-4
SUPPORTED = ("Input", "Output", "Affine", "Linear", "Scale", "Conv1d", "Conv2d", "Flatten", "SumPool2d",
             "AvgPool2d", "IF", "LIF", "CubaLIF", "LI", "CubaLI")


class ModelError(DataError):
    """A NIR model that cannot be run: names the file, the node and what is wrong."""


# --- reading ---------------------------------------------------------------------------


def read(path: str | Path) -> nir.NIRGraph:
    """Read a NIR file without nir's own type check (ours names the node that is wrong)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file '{path}' does not exist")
    try:
        return nir.read(str(path), type_check=False)
    except Exception as exc:  # h5py and nir raise many kinds; the user needs one sentence
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelError(f"model file '{path}' is not a readable NIR file: {type(exc).__name__}: {reason}") from None


def load(path: str | Path, dt: float | None = None) -> Network:
    """A runnable `Network` from a NIR file; raises ModelError before anything runs."""
    return from_nir(read(path), dt=dt, where=f"model '{path}'")


def metadata(graph: nir.NIRGraph) -> dict:
    """The graph's metadata as plain Python (labels as a list of names)."""
    out = {}
    for k, v in (graph.metadata if isinstance(graph.metadata, dict) else {}).items():
        if isinstance(v, np.ndarray):
            v = v.item() if v.size == 1 else v.tolist()
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    if isinstance(out.get("labels"), str):
        out["labels"] = [s for s in out["labels"].split(",") if s]
    return out


def _arrays(node) -> dict[str, np.ndarray]:
    return {k: v for k, v in vars(node).items() if isinstance(v, np.ndarray) and k not in ("input_type", "output_type")}


def _metadata_dt(graph: nir.NIRGraph) -> float | None:
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    if "dt" in meta:
        return float(np.asarray(meta["dt"]).reshape(-1)[0])
    return None


def flatten(graph: nir.NIRGraph, where: str = "model") -> nir.NIRGraph:
    """The graph with every subgraph node `s` replaced by its nodes, named `s.<name>`.

    Edges into `s` go to what the subgraph's Input feeds; edges out of `s` leave from what
    feeds its Output.
    """
    if not any(isinstance(n, nir.NIRGraph) for n in graph.nodes.values()):
        return graph
    nodes, edges = {}, [(str(a), str(b)) for a, b in graph.edges]
    for name, node in graph.nodes.items():
        if not isinstance(node, nir.NIRGraph):
            nodes[name] = node
            continue
        sub = flatten(node, where)
        ins = [k for k, v in sub.nodes.items() if isinstance(v, nir.Input)]
        outs = [k for k, v in sub.nodes.items() if isinstance(v, nir.Output)]
        if len(ins) != 1 or len(outs) != 1:
            raise ModelError(f"{where}: subgraph '{name}' needs one Input and one Output, found inputs {ins} and outputs {outs}")
        sub_edges = [(str(a), str(b)) for a, b in sub.edges]
        entry = [f"{name}.{b}" for a, b in sub_edges if a == ins[0]]
        exit_ = [f"{name}.{a}" for a, b in sub_edges if b == outs[0]]
        for k, v in sub.nodes.items():
            if k not in (ins[0], outs[0]):
                nodes[f"{name}.{k}"] = v
        inner = [(f"{name}.{a}", f"{name}.{b}") for a, b in sub_edges if a != ins[0] and b != outs[0]]
        outer = []
        for a, b in edges:
            srcs = exit_ if a == name else [a]
            dsts = entry if b == name else [b]
            outer += [(x, y) for x in srcs for y in dsts]
        edges = outer + inner
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata, type_check=False)


def _default_dt(graph: nir.NIRGraph) -> float:
    """The step for a graph that does not give one: DEFAULT_DT, or 1 for a graph without time constants.

    A graph whose neurons are all IF has no time scale: sinabs writes such graphs with r = 1
    meaning one input unit per step, and snnTorch reads them so (it refuses r != 1 and
    ignores dt). With 1e-4 s every input would count 1e-4 and the network would never spike.
    """
    timed = ("LIF", "CubaLIF", "LI", "CubaLI")
    if any(type(n).__name__ in timed for n in graph.nodes.values()):
        return DEFAULT_DT
    return 1.0


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(int(s) for s in shape if int(s) != 1)


def from_nir(graph: nir.NIRGraph, dt: float | None = None, where: str = "model") -> Network:
    """Build and check a `Network` from a NIR graph (one Input, one Output; cycles delayed one step)."""
    graph = flatten(graph, where)
    dt = dt if dt is not None else (_metadata_dt(graph) or _default_dt(graph))

    def fail(name, msg):
        raise ModelError(f"{where}: node '{name}' {msg}")

    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    for name, kind in kinds.items():
        if kind not in SUPPORTED:
            fail(name, f"is a {kind}, which is not supported; supported nodes: {', '.join(SUPPORTED)}")
        for field, arr in _arrays(graph.nodes[name]).items():
            if np.issubdtype(arr.dtype, np.number) and not np.all(np.isfinite(arr)):
                bad = int(np.size(arr) - np.isfinite(arr).sum())
                fail(name, f"({kind}) has {bad} NaN or infinite value(s) in '{field}'")
    inputs = [n for n, k in kinds.items() if k == "Input"]
    outputs = [n for n, k in kinds.items() if k == "Output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{where}: needs exactly one Input and one Output node, found inputs {inputs} and outputs {outputs}")
    edges = [(str(a), str(b)) for a, b in graph.edges]
    for a, b in edges:
        for end in (a, b):
            if end not in graph.nodes:
                raise ModelError(f"{where}: edge ({a} -> {b}) names unknown node '{end}'")
    try:
        order, delayed = _topological(set(graph.nodes), edges, inputs[0])
    except ValueError as exc:
        raise ModelError(f"{where}: {exc}") from None

    in_shape = tuple(int(s) for s in np.asarray(graph.nodes[inputs[0]].input_type["input"]).reshape(-1))
    shapes = {inputs[0]: in_shape}
    preds = {n: [a for a, b in edges if b == n and (a, b) not in delayed] for n in graph.nodes}
    modules: dict[str, torch.nn.Module] = {}
    for name in order[1:]:
        got = {p: shapes[p] for p in preds[name]}
        if len(set(got.values())) > 1:
            fail(name, f"sums inputs of different shapes: {', '.join(f'{p} {s}' for p, s in got.items())}")
        shape = next(iter(got.values()))
        node = graph.nodes[name]
        kind = kinds[name]
        if kind == "Output":
            declared = node.output_type.get("output") if isinstance(node.output_type, dict) else None
            declared = None if declared is None else tuple(int(s) for s in np.asarray(declared).reshape(-1))
            if declared and declared != shape and _squeezed(declared) != _squeezed(shape):
                fail(name, f"(Output) declares shape {declared} but receives {shape}")
            shapes[name] = shape
            continue
        module = _module(name, kind, node, shape, dt, fail)
        try:
            with torch.no_grad():
                out = module(torch.zeros((1, *shape)))
                out = out[0] if isinstance(out, tuple) else out
        except RuntimeError as exc:
            fail(name, f"({kind}) cannot take input of shape {shape}: {str(exc).splitlines()[0]}")
        modules[name] = module
        shapes[name] = tuple(out.shape[1:])
    for a, b in delayed:
        if b != outputs[0] and shapes[a] != _input_shape(shapes, preds[b], b):
            fail(b, f"receives {shapes[a]} from '{a}' over a recurrent edge but {_input_shape(shapes, preds[b], b)} "
                    "from its other inputs")
    return Network(modules, edges, in_shape, input_name=inputs[0], output_name=outputs[0], dt=dt)


def _input_shape(shapes, preds, name):
    return shapes[preds[0]] if preds else None


def _module(name, kind, node, shape, dt, fail):
    """One torch module for a NIR node whose input has per-sample `shape`."""
    if kind in ("Affine", "Linear"):
        w = np.asarray(node.weight)
        if w.ndim != 2:
            fail(name, f"({kind}) has a weight of {w.ndim} dimensions; only 2-D weights are supported")
        if shape != (w.shape[1],):
            fail(name, f"({kind}) expects input of shape ({w.shape[1]},) but receives {shape}")
        return Affine(torch.from_numpy(w.astype(np.float32)),
                      torch.from_numpy(np.asarray(node.bias, np.float32)) if kind == "Affine" else None)
    if kind in ("Conv1d", "Conv2d"):
        w = np.asarray(node.weight)
        dims = 1 if kind == "Conv1d" else 2
        if len(shape) != dims + 1:
            fail(name, f"({kind}) expects (channels, {'length' if dims == 1 else 'height, width'}) input but receives {shape}")
        if shape[0] != w.shape[1] * int(node.groups):
            fail(name, f"({kind}) expects {w.shape[1] * int(node.groups)} input channels but receives {shape[0]} (shape {shape})")
        pad = node.padding if isinstance(node.padding, str) else _ints(node.padding)
        bias = None if node.bias is None else np.asarray(node.bias, np.float32)
        return Conv(w.astype(np.float32), bias, _ints(node.stride), pad, _ints(node.dilation), int(node.groups))
    if kind in ("SumPool2d", "AvgPool2d"):
        if len(shape) != 3:
            fail(name, f"({kind}) expects (channels, height, width) input but receives {shape}")
        return Pool2d(_pair(node.kernel_size), _pair(node.stride), _pair(node.padding), sum=kind == "SumPool2d")
    if kind == "Flatten":
        return Flatten(int(node.start_dim), int(node.end_dim))
    if kind == "Scale":
        s = np.asarray(node.scale, np.float32)
        if s.size != 1 and s.shape != shape:
            fail(name, f"(Scale) has scale of shape {s.shape} but receives {shape}")
        return Scale(s)
    p = {k: _param(name, kind, k, v, shape, fail) for k, v in _arrays(node).items()}
    for tau in ("tau", "tau_mem", "tau_syn"):
        if tau in p and np.any(p[tau] <= 0):
            fail(name, f"({kind}) has a non-positive time constant '{tau}'")
    if kind == "IF":
        return L.IF(shape, gain=dt * p["r"], v_threshold=p["v_threshold"], v_reset=p["v_reset"])
    if kind in ("LIF", "LI"):
        args = dict(beta=1 - dt / p["tau"], gain=dt * p["r"] / p["tau"], leak=dt * p["v_leak"] / p["tau"])
        if kind == "LI":
            return L.LI(shape, **args)
        return L.LIF(shape, **args, v_threshold=p["v_threshold"], v_reset=p["v_reset"])
    # CubaLIF, CubaLI
    args = dict(alpha=1 - dt / p["tau_syn"], syn_gain=dt * p["w_in"] / p["tau_syn"], beta=1 - dt / p["tau_mem"],
                gain=dt * p["r"] / p["tau_mem"], leak=dt * p["v_leak"] / p["tau_mem"])
    if kind == "CubaLI":
        return L.CubaLI(shape, **args)
    return L.CubaLIF(shape, **args, v_threshold=p["v_threshold"], v_reset=p["v_reset"])


def _param(name, kind, field, value, shape, fail) -> np.ndarray:
    v = np.asarray(value, np.float64)
    if v.size == 1:
        return v.reshape(())
    if v.shape == shape:
        return v
    if v.size == int(np.prod(shape)):
        return v.reshape(shape)
    fail(name, f"({kind}) has '{field}' of shape {v.shape} but the layer receives {shape}")


def _ints(v):
    if isinstance(v, (int, np.integer)):
        return int(v)
    t = tuple(int(x) for x in np.asarray(v).reshape(-1))
    return t[0] if len(t) == 1 else t


def _pair(v):
    t = tuple(int(x) for x in np.asarray(v).reshape(-1))
    return t * 2 if len(t) == 1 else t


# --- writing ---------------------------------------------------------------------------


def to_nir(net: Network) -> nir.NIRGraph:
    """The NIR graph of a `Network` (parameters converted back to continuous time)."""
    dt = net.dt
    shapes = net.shapes()
    nodes: dict[str, nir.NIRNode] = {
        net.input_name: nir.Input(input_type=np.array(net.input_shape)),
        net.output_name: nir.Output(output_type=np.array(net.output_shape)),
    }
    for name, m in net.layers.items():
        in_shape = shapes[net.preds[name][0]]
        nodes[name] = _node(m, in_shape, dt)
    return nir.NIRGraph(nodes=nodes, edges=list(net.edges), metadata={"dt": dt}, type_check=False)


def save(net: Network, path: str | Path) -> Path:
    """Write a `Network` as a NIR file (gzip-compressed HDF5)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nir.write(str(path), to_nir(net))
    return path


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def _node(m, in_shape, dt) -> nir.NIRNode:
    if isinstance(m, Affine):
        w = m.weight.detach().cpu().numpy().copy()
        if m.bias is None:
            return nir.Linear(weight=w)
        return nir.Affine(weight=w, bias=m.bias.detach().cpu().numpy().copy())
    if isinstance(m, Conv):
        w = m.weight.detach().cpu().numpy().copy()
        b = np.zeros(w.shape[0], np.float32) if m.bias is None else m.bias.detach().cpu().numpy().copy()
        cls = nir.Conv1d if m.dims == 1 else nir.Conv2d
        spatial = in_shape[1] if m.dims == 1 else tuple(in_shape[1:])
        return cls(input_shape=spatial, weight=w, stride=m.stride, padding=m.padding, dilation=m.dilation,
                   groups=m.groups, bias=b)
    if isinstance(m, Pool2d):
        cls = nir.SumPool2d if m.sum else nir.AvgPool2d
        return cls(kernel_size=np.array(m.kernel_size), stride=np.array(m.stride), padding=np.array(m.padding))
    if isinstance(m, Flatten):
        return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=m.start_dim, end_dim=m.end_dim)
    if isinstance(m, Scale):
        return nir.Scale(scale=_np(m.scale))
    if isinstance(m, L.Neuron):
        full = lambda t: np.broadcast_to(_np(t), m.shape).copy()  # noqa: E731
        beta, gain, leak = full(m.beta), full(m.gain), full(m.leak)
        if m.kind == "IF":
            return nir.IF(r=gain / dt, v_threshold=full(m.v_threshold), v_reset=full(m.v_reset))
        if m.kind in ("LIF", "LI"):
            tau = dt / (1 - beta)
            r, v_leak = gain * tau / dt, leak * tau / dt
            if m.kind == "LI":
                return nir.LI(tau=tau, r=r, v_leak=v_leak)
            return nir.LIF(tau=tau, r=r, v_leak=v_leak, v_threshold=full(m.v_threshold), v_reset=full(m.v_reset))
        tau_syn = dt / (1 - full(m.alpha))
        tau_mem = dt / (1 - beta)
        args = dict(tau_syn=tau_syn, tau_mem=tau_mem, r=gain * tau_mem / dt, v_leak=leak * tau_mem / dt,
                    w_in=full(m.syn_gain) * tau_syn / dt)
        if m.kind == "CubaLI":
            return nir.CubaLI(**args)
        return nir.CubaLIF(**args, v_threshold=full(m.v_threshold), v_reset=full(m.v_reset))
    raise TypeError(f"layer {type(m).__name__} has no NIR equivalent")


__all__ = ["DEFAULT_DT", "SUPPORTED", "ModelError", "from_nir", "load", "metadata", "read", "save", "to_nir"]
