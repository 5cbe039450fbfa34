"""A spiking network over a graph of layers, stepped with explicit state.

`Network` holds named layers, the edges between them (a node's inputs are summed, as in
NIR), one input and one output. `step(x, state)` advances one time step; `run(xs, state)`
advances T steps at once, evaluating layer by layer so that every synaptic layer (linear,
convolution, pooling) sees all T steps in one call and only the neuron recurrences loop
over time. Both give the same result; `run` is what makes 100-steps-at-a-time fast.

Recurrent graphs: an edge that closes a cycle (found by a depth-first walk from the input,
in the order the edges are listed) carries its source's output of the previous step, the
one-step delay NIR gives a cycle (and snnTorch's `RLeaky`/`RSynaptic` compute). Those
delayed values are part of the state (`state["__delayed__"]`). The nodes on a cycle are then
stepped one time step at a time inside `run`; everything before and after still runs layer
by layer over all T steps.

Node names may contain dots (`nir.read` flattens a subgraph `lif1` into `lif1.lif`,
`lif1.w_rec`); `layers` is keyed by the NIR names.

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
DELAYED = "__delayed__"  # the state's entry for the values that cross a recurrent edge


class _Layers(nn.ModuleDict):
    """A ModuleDict keyed by NIR node names, dots included (torch refuses dots in module names)."""

    _DOT = "\u00b7"

    def _key(self, name: str) -> str:
        return name.replace(".", self._DOT)

    def _name(self, key: str) -> str:
        return key.replace(self._DOT, ".")

    def __getitem__(self, name):
        return super().__getitem__(self._key(name))

    def __setitem__(self, name, module):
        if self._DOT in name:
            raise ValueError(f"layer name '{name}' contains '{self._DOT}'")
        super().__setitem__(self._key(name), module)

    def __contains__(self, name):
        return super().__contains__(self._key(name))

    def __iter__(self):
        return (self._name(k) for k in super().__iter__())

    def keys(self):
        return [self._name(k) for k in super().keys()]

    def items(self):
        return [(self._name(k), v) for k, v in super().items()]


# --- the network ---------------------------------------------------------------------


class Network(nn.Module):
    """Named layers wired by edges, with one input shape and one output."""

    def __init__(self, layers: dict[str, nn.Module], edges: list[tuple[str, str]], input_shape,
                 input_name: str = "input", output_name: str = "output", dt: float = 1e-4):
        super().__init__()
        self.layers = _Layers()
        for name, layer in layers.items():
            self.layers[name] = layer
        self.edges = [(str(a), str(b)) for a, b in edges]
        self.input_shape = tuple(int(s) for s in input_shape)
        self.input_name, self.output_name, self.dt = input_name, output_name, float(dt)
        known = {input_name, output_name, *layers}
        for a, b in self.edges:
            for end in (a, b):
                if end not in known:
                    raise ValueError(f"edge ({a} -> {b}) names unknown node '{end}'")
        self.order, self.delayed = _topological(known, self.edges, input_name)
        self.preds: dict[str, list[str]] = {n: [] for n in known}  # inputs of the same step
        for a, b in self.edges:
            if (a, b) not in self.delayed:
                self.preds[b].append(a)
        self.delayed_preds = {n: [a for a, b in self.delayed if b == n] for n in known}  # of the step before
        self.cycle_nodes = _on_cycles(self.order, self.edges, self.delayed)
        self.neurons = [n for n in self.order if n in self.layers and isinstance(self.layers[n], Neuron)]
        self._shapes = None
        self.output_shape = tuple(self.shapes()[output_name])

    @classmethod
    def sequential(cls, input_shape, layers: list[tuple[str, nn.Module]], dt: float = 1e-4) -> Network:
        """A chain input -> layers... -> output."""
        names = ["input", *[n for n, _ in layers], "output"]
        return cls(dict(layers), list(zip(names[:-1], names[1:])), input_shape, dt=dt)

    # -- shapes --------------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The per-sample output shape of every node (by running one zero sample)."""
        if self._shapes is None:
            with torch.no_grad():
                values = {self.input_name: torch.zeros((1, *self.input_shape))}
                for n in self.order[1:]:
                    if self.delayed_preds[n]:  # shapes first: a delayed input has its own shape
                        values[n] = self._node(n, values, None, skip_delayed=True)[0]
                    else:
                        values[n] = self._node(n, values, None)[0]
            self._shapes = {n: tuple(v.shape[1:]) for n, v in values.items()}
            # what crosses a recurrent edge before the first step: its source at rest (zero input
            # and state), e.g. an Affine's bias, as snnTorch's RSynaptic adds recurrent(0) at step 0
            self._rest = {a: values[a][0].detach().clone() for a, _ in self.delayed}
        return dict(self._shapes)

    # -- stepping ------------------------------------------------------------------
    def initial_state(self, batch: int = 1, device=None) -> dict:
        state = {n: self.layers[n].initial_state(batch, device) for n in self.neurons}
        if self.delayed:
            state[DELAYED] = self._delayed_in(None, batch, torch.zeros((), device=device))
        return state

    def _delayed_in(self, state: dict | None, batch: int, like: Tensor) -> dict:
        """The values that cross recurrent edges into this step (zeros at the start)."""
        got = (state or {}).get(DELAYED)
        if got is not None:
            return got
        self.shapes()
        return {a: r.to(like.device).expand((batch, *r.shape)).clone() for a, r in self._rest.items()}

    def _gather(self, n: str, values: dict, delayed: dict | None = None) -> Tensor:
        preds = self.preds[n]
        x = values[preds[0]]
        for p in preds[1:]:
            x = x + values[p]
        if delayed is not None:
            for p in self.delayed_preds[n]:
                x = x + delayed[p]
        return x

    def _node(self, n: str, values: dict, state: dict | None, delayed: dict | None = None, skip_delayed=False):
        x = self._gather(n, values, None if skip_delayed else delayed)
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
        delayed = self._delayed_in(state, x.shape[0], x) if self.delayed else None
        for n in self.order[1:]:
            values[n], s = self._node(n, values, state, delayed)
            if s is not None:
                new[n] = s
        if self.delayed:
            new[DELAYED] = {a: values[a] for a in delayed}
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
        if self.delayed and T == 1 and not record and not delta:  # streaming one step: no sequence bookkeeping
            y, new = self.step(xs[0], state)
            return y.unsqueeze(0), new
        values = {self.input_name: xs}
        new = {}
        if delta:
            new["__delta__"] = self._delta_prefix(xs, state, values)
        if self.delayed:
            self._run_cycles(values, state, new, T, B)
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

    def _run_cycles(self, values: dict, state: dict | None, new: dict, T: int, B: int):
        """Fill `values` for the nodes before and on the cycles; the cycle nodes step by step.

        The nodes on cycles are stepped over time (their inputs from outside the cycles are
        computed for all T steps first); the nodes after them run layer by layer afterwards.
        """
        xs = values[self.input_name]
        for n in self.order[1:]:  # everything that feeds the cycles, layer by layer over T
            if n in values or n in self.cycle_nodes or not self._before_cycles(n):
                continue
            x = self._gather(n, values)
            layer = self.layers[n]
            if isinstance(layer, Neuron):
                values[n], new[n] = layer.sequence(x, None if state is None else state.get(n))
            else:
                y = layer(x.reshape(T * B, *x.shape[2:]))
                values[n] = y.reshape(T, B, *y.shape[1:])
        delayed = self._delayed_in(state, B, xs)
        cyc = [n for n in self.order[1:] if n in self.cycle_nodes]
        outs = {n: [] for n in cyc}
        st = {n: None if state is None else state.get(n) for n in cyc}
        for t in range(T):
            vals = {n: v[t] for n, v in values.items()}
            for n in cyc:
                vals[n], s = self._node(n, vals, st, delayed)
                if s is not None:
                    st[n] = s
                outs[n].append(vals[n])
            delayed = {a: vals[a] for a in delayed}
        for n in cyc:
            values[n] = torch.stack(outs[n])
            if st[n] is not None:
                new[n] = st[n]
        new[DELAYED] = delayed

    def _before_cycles(self, n: str) -> bool:
        """Whether some cycle node depends on `n` (so `n` must run before the cycles are stepped)."""
        if not hasattr(self, "_feeds_cycles"):
            feeds, frontier = set(), set(self.cycle_nodes)
            while frontier:
                m = frontier.pop()
                for p in self.preds[m]:
                    if p not in feeds and p not in self.cycle_nodes:
                        feeds.add(p)
                        frontier.add(p)
            self._feeds_cycles = feeds
        return n in self._feeds_cycles

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


def _topological(nodes: set[str], edges: list[tuple[str, str]], start: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(an order of the nodes from `start`, the edges that close cycles: one-step delays).

    A depth-first walk from `start`, following each node's edges in the order listed, marks
    as delayed every edge that goes back to a node still on the walk's path; without them
    the graph is acyclic and Kahn's order of it is returned.
    """
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        succ[a].append(b)
    has_input = {b for _, b in edges}
    extra = sorted(n for n in nodes if n not in has_input and n != start)
    if extra:
        raise ValueError(f"nodes {extra} have no input (only '{start}' may start the graph)")
    delayed: list[tuple[str, str]] = []
    colour = {n: 0 for n in nodes}  # 0 unvisited, 1 on the path, 2 done
    colour[start] = 1
    stack = [(start, iter(succ[start]))]
    while stack:
        n, it = stack[-1]
        m = next(it, None)
        if m is None:
            colour[n] = 2
            stack.pop()
        elif colour[m] == 1:
            delayed.append((n, m))
        elif colour[m] == 0:
            colour[m] = 1
            stack.append((m, iter(succ[m])))
    unreachable = sorted(n for n in nodes if colour[n] == 0)
    if unreachable:
        raise ValueError(f"nodes {unreachable} cannot be reached from '{start}'")
    indeg = {n: 0 for n in nodes}
    fwd: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        if (a, b) not in delayed:
            indeg[b] += 1
            fwd[a].append(b)
    ready = [start]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in fwd[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    return order, delayed


def _on_cycles(order: list[str], edges: list[tuple[str, str]], delayed: list[tuple[str, str]]) -> set[str]:
    """The nodes on some cycle: reachable from a delayed edge's target and reaching its source."""
    fwd: dict[str, list[str]] = {n: [] for n in order}
    back: dict[str, list[str]] = {n: [] for n in order}
    for a, b in edges:
        if (a, b) not in delayed:
            fwd[a].append(b)
            back[b].append(a)

    def reach(seed, nxt):
        seen, todo = {seed}, [seed]
        while todo:
            for m in nxt[todo.pop()]:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen

    out: set[str] = set()
    for a, b in delayed:
        out |= reach(b, fwd) & reach(a, back)
    return out


__all__ = ["SYNAPTIC", "Affine", "Conv", "Flatten", "Network", "Pool2d", "Scale"]
