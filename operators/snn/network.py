"""A feed-forward spiking network over a graph of layers, stepped with explicit state.

`Network` holds named layers, the edges between them (a node's inputs are summed, as in
NIR), one input and one output. `step(x, state)` advances one time step; `run(xs, state)`
advances T steps at once, evaluating layer by layer so that every synaptic layer (linear,
convolution, pooling) sees all T steps in one call and only the neuron recurrences loop
over time. Both give the same result; `run` is what makes 100-steps-at-a-time fast.

State is a plain dict {layer name: named-tuple state} that the caller keeps, which is how
the streaming operator keeps one network state per stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.snn.layers import Neuron

# --- stateless layers that remember their NIR parameters -----------------------------


class Affine(nn.Linear):
    """y = W x (+ b): NIR Affine (with bias) or Linear (without)."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            self.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            if bias is not None:
                self.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


class Conv(nn.Module):
    """NIR Conv1d / Conv2d with torch's semantics (cross-correlation)."""

    def __init__(self, weight, bias, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        w = torch.as_tensor(weight, dtype=torch.float32)
        self.dims = w.dim() - 2
        self.weight = nn.Parameter(w.clone())
        self.bias = None if bias is None else nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).clone())
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: Tensor) -> Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Pool2d(nn.Module):
    """NIR SumPool2d (`sum=True`) or AvgPool2d."""

    def __init__(self, kernel_size, stride, padding, sum: bool):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.sum = tuple(kernel_size), tuple(stride), tuple(padding), sum

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                            divisor_override=1 if self.sum else None)


class Flatten(nn.Module):
    """NIR Flatten: dims count within one sample (batch excluded)."""

    def __init__(self, start_dim: int = 0, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        end = self.end_dim if self.end_dim < 0 else self.end_dim + 1
        return x.flatten(self.start_dim + 1, end)


class Scale(nn.Module):
    """NIR Scale: elementwise product with a fixed array."""

    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


SYNAPTIC = (Affine, Conv)


# --- the network ---------------------------------------------------------------------


class Network(nn.Module):
    """Named layers wired by edges, with one input shape and one output."""

    def __init__(self, layers: dict[str, nn.Module], edges: list[tuple[str, str]], input_shape,
                 input_name: str = "input", output_name: str = "output", dt: float = 1e-4):
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.edges = [(str(a), str(b)) for a, b in edges]
        self.input_shape = tuple(int(s) for s in input_shape)
        self.input_name, self.output_name, self.dt = input_name, output_name, float(dt)
        known = {input_name, output_name, *layers}
        for a, b in self.edges:
            for end in (a, b):
                if end not in known:
                    raise ValueError(f"edge ({a} -> {b}) names unknown node '{end}'")
        self.preds: dict[str, list[str]] = {n: [] for n in known}
        for a, b in self.edges:
            self.preds[b].append(a)
        self.order = _topological(known, self.edges, input_name)
        self.neurons = [n for n in self.order if n in self.layers and isinstance(self.layers[n], Neuron)]
        self.output_shape = tuple(self.shapes()[output_name])

    @classmethod
    def sequential(cls, input_shape, layers: list[tuple[str, nn.Module]], dt: float = 1e-4) -> Network:
        """A chain input -> layers... -> output."""
        names = ["input", *[n for n, _ in layers], "output"]
        return cls(dict(layers), list(zip(names[:-1], names[1:])), input_shape, dt=dt)

    # -- shapes --------------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The per-sample output shape of every node (by running one zero sample)."""
        with torch.no_grad():
            x = torch.zeros((1, *self.input_shape))
            values = {self.input_name: x}
            for n in self.order[1:]:
                values[n] = self._node(n, values, None)[0]
        return {n: tuple(v.shape[1:]) for n, v in values.items()}

    # -- stepping ------------------------------------------------------------------
    def initial_state(self, batch: int = 1, device=None) -> dict:
        return {n: self.layers[n].initial_state(batch, device) for n in self.neurons}

    def _gather(self, n: str, values: dict) -> Tensor:
        preds = self.preds[n]
        x = values[preds[0]]
        for p in preds[1:]:
            x = x + values[p]
        return x

    def _node(self, n: str, values: dict, state: dict | None):
        x = self._gather(n, values)
        if n == self.output_name:
            return x, None
        layer = self.layers[n]
        if isinstance(layer, Neuron):
            return layer(x, None if state is None else state.get(n))
        return layer(x), None

    def step(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        """One time step: x is (B, *input_shape); returns (output (B, *output_shape), new state)."""
        values = {self.input_name: x}
        new = {}
        for n in self.order[1:]:
            values[n], s = self._node(n, values, state)
            if s is not None:
                new[n] = s
        return values[self.output_name], new

    def run(self, xs: Tensor, state: dict | None = None, record: bool = False, delta: bool = False):
        """T steps: xs is (T, B, *input_shape); returns (outputs (T, B, *out), new state).

        With `record`, also returns every node's (T, B, ...) output (for counting spikes
        and synaptic operations). With `delta`, the layers between the input and the first
        neurons see only the change of the input since the previous step and accumulate
        (sigma-delta; Neil et al., ICML 2017): same result, and a zero change costs no
        synaptic operation on event-driven hardware. `values["__delta_input__"]` is that change.
        """
        T, B = xs.shape[:2]
        values = {self.input_name: xs}
        new = {}
        if delta:
            new["__delta__"] = self._delta_prefix(xs, state, values)
        for n in self.order[1:]:
            if n in values:
                continue
            x = self._gather(n, values)
            if n == self.output_name:
                values[n] = x
                continue
            layer = self.layers[n]
            if isinstance(layer, Neuron):
                values[n], new[n] = layer.sequence(x, None if state is None else state.get(n))
            else:
                y = layer(x.reshape(T * B, *x.shape[2:]))
                values[n] = y.reshape(T, B, *y.shape[1:])
        if record:
            return values[self.output_name], new, values
        return values[self.output_name], new

    def linear_prefix(self) -> list[str]:
        """Nodes between the input and the first neurons: stateless, so linear in the input up to a constant."""
        prefix: list[str] = []
        for n in self.order[1:]:
            if n == self.output_name or isinstance(self.layers[n], Neuron):
                continue
            if all(p == self.input_name or p in prefix for p in self.preds[n]):
                prefix.append(n)
        return prefix

    def _delta_prefix(self, xs: Tensor, state: dict | None, values: dict) -> dict:
        """Fill `values` for the linear prefix from input changes; return the carried sums."""
        prefix = self.linear_prefix()
        carried = (state or {}).get("__delta__")
        T, B = xs.shape[:2]
        x_prev = carried["x"] if carried else torch.zeros_like(xs[0])
        dx = torch.diff(xs, dim=0, prepend=x_prev.unsqueeze(0))
        values["__delta_input__"] = dx
        zero = {self.input_name: torch.zeros_like(xs[:1, :1])}
        dvals = {self.input_name: dx}
        for n in prefix:
            for vals, t, b in ((dvals, T, B), (zero, 1, 1)):
                x = self._gather(n, vals)
                y = self.layers[n](x.reshape(t * b, *x.shape[2:]))
                vals[n] = y.reshape(t, b, *y.shape[1:])
        sums = {}
        for n in prefix:
            base = carried["y"][n] if carried else zero[n][0].expand_as(dvals[n][0])
            # the constant part (biases) is in `base` once; every change adds only W dx
            values[n] = base.unsqueeze(0) + torch.cumsum(dvals[n] - zero[n], dim=0)
            sums[n] = values[n][-1]
        return {"x": xs[-1], "y": sums}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _topological(nodes: set[str], edges: list[tuple[str, str]], start: str) -> list[str]:
    """Kahn's order from `start`; a cycle (a recurrent connection) is refused."""
    indeg = {n: 0 for n in nodes}
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        indeg[b] += 1
        succ[a].append(b)
    ready = sorted(n for n in nodes if indeg[n] == 0)
    if ready != [start]:
        extra = [n for n in ready if n != start]
        raise ValueError(f"nodes {extra} have no input (only '{start}' may start the graph)")
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    if len(order) != len(nodes):
        stuck = sorted(n for n in nodes if n not in order)
        raise ValueError(f"recurrent connections are not supported (cycle through {stuck})")
    return order


__all__ = ["SYNAPTIC", "Affine", "Conv", "Flatten", "Network", "Pool2d", "Scale"]
