"""Spiking neuron layers with explicit state: IF, LIF, current-based LIF and leaky integrators.

Each neuron model is a pure step function `step(x, state, p) -> (out, state)` over a
named-tuple state (the Norse convention, `norse/torch/functional/lif.py`), and a small
`torch.nn.Module` that owns the parameters and runs one step or a whole sequence.

Parameters are kept in discrete time (one step of length `dt`); `nir_io` converts to and
from NIR's continuous-time parameters with forward Euler, which is also what snnTorch's
NIR import does:

    LIF      v <- beta v + gain x + leak;  z = v > v_threshold;  v <- v_reset where z
    CubaLIF  i <- alpha i + syn_gain x;  then LIF with i as input
    IF       LIF with beta = 1, leak = 0
    LI/CubaLI  LIF/CubaLIF without a threshold: the output is the membrane v

with beta = 1 - dt/tau, gain = dt r / tau, leak = dt v_leak / tau (NIR, Pedersen et al.,
Nature Communications 2024).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

# --- spike function with a surrogate gradient ----------------------------------------


class _SpikeFn(torch.autograd.Function):
    """Heaviside forward, fast-sigmoid derivative backward (SuperSpike, Zenke & Ganguli 2018)."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return grad / (ctx.slope * x.abs() + 1.0) ** 2, None


def spike(x: Tensor, slope: float = 10.0) -> Tensor:
    """1 where x > 0, else 0; differentiable through a surrogate when gradients are on."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _SpikeFn.apply(x, slope)
    return (x > 0).to(x.dtype)


# --- states and parameters -----------------------------------------------------------


class IFState(NamedTuple):
    v: Tensor


class LIFState(NamedTuple):
    v: Tensor


class CubaLIFState(NamedTuple):
    i: Tensor
    v: Tensor


class LIState(NamedTuple):
    v: Tensor


class CubaLIState(NamedTuple):
    i: Tensor
    v: Tensor


class NeuronParams(NamedTuple):
    """Discrete-time parameters, each a tensor broadcastable to the layer's shape."""

    beta: Tensor  # membrane decay per step
    gain: Tensor  # input (or synaptic current) to membrane
    leak: Tensor  # constant drive per step (dt v_leak / tau)
    v_threshold: Tensor | None  # None: a non-spiking integrator
    v_reset: Tensor | None
    alpha: Tensor | None = None  # synaptic current decay (current-based models)
    syn_gain: Tensor | None = None


# --- pure steps ----------------------------------------------------------------------


def _fire(v: Tensor, p: NeuronParams) -> tuple[Tensor, Tensor]:
    z = spike(v - p.v_threshold)
    # the reset is not differentiated through (as in snnTorch and Norse defaults)
    zd = z.detach()
    return z, v + zd * (p.v_reset - v)


def lif_step(x: Tensor, state: LIFState, p: NeuronParams) -> tuple[Tensor, LIFState]:
    """One step of a leaky integrate-and-fire neuron."""
    v = p.beta * state.v + p.gain * x + p.leak
    z, v = _fire(v, p)
    return z, LIFState(v)


def if_step(x: Tensor, state: IFState, p: NeuronParams) -> tuple[Tensor, IFState]:
    """One step of an integrate-and-fire neuron (no leak)."""
    v = state.v + p.gain * x
    z, v = _fire(v, p)
    return z, IFState(v)


def cuba_lif_step(x: Tensor, state: CubaLIFState, p: NeuronParams) -> tuple[Tensor, CubaLIFState]:
    """One step of a current-based LIF neuron: the input charges a decaying current."""
    i = p.alpha * state.i + p.syn_gain * x
    v = p.beta * state.v + p.gain * i + p.leak
    z, v = _fire(v, p)
    return z, CubaLIFState(i, v)


def li_step(x: Tensor, state: LIState, p: NeuronParams) -> tuple[Tensor, LIState]:
    """One step of a leaky integrator; the output is the membrane."""
    v = p.beta * state.v + p.gain * x + p.leak
    return v, LIState(v)


def cuba_li_step(x: Tensor, state: CubaLIState, p: NeuronParams) -> tuple[Tensor, CubaLIState]:
    """One step of a current-based leaky integrator."""
    i = p.alpha * state.i + p.syn_gain * x
    v = p.beta * state.v + p.gain * i + p.leak
    return v, CubaLIState(i, v)


# --- modules -------------------------------------------------------------------------


class Neuron(nn.Module):
    """A population of neurons of one model with per-neuron (or shared) parameters.

    `forward(x, state)` runs one step; `sequence(xs, state)` runs xs[0], xs[1], ...
    with the input drive computed for all steps at once (the recurrence stays a loop).
    """

    kind = ""
    State: type = LIFState
    _step = staticmethod(lif_step)
    #: fixed-point emulation: (grid, lo, hi) rounds the state to integers of `grid` in [lo, hi]
    state_quant: tuple[float, float, float] | None = None

    def __init__(self, shape, *, beta=1.0, gain=1.0, leak=0.0, v_threshold=None, v_reset=0.0,
                 alpha=None, syn_gain=None):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

        def buf(name, value):
            t = None if value is None else torch.as_tensor(value, dtype=torch.float32).clone()
            self.register_buffer(name, t)

        buf("beta", beta)
        buf("gain", gain)
        buf("leak", leak)
        buf("v_threshold", v_threshold)
        buf("v_reset", None if v_threshold is None else v_reset)
        buf("alpha", alpha)
        buf("syn_gain", syn_gain)

    @property
    def params(self) -> NeuronParams:
        return NeuronParams(self.beta, self.gain, self.leak, self.v_threshold, self.v_reset,
                            self.alpha, self.syn_gain)

    @property
    def spiking(self) -> bool:
        return self.v_threshold is not None

    def initial_state(self, batch: int, device=None, dtype=torch.float32):
        zeros = torch.zeros((batch, *self.shape), device=device, dtype=dtype)
        return self.State(*([zeros] * len(self.State._fields)))

    def forward(self, x: Tensor, state=None):
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        if not torch.is_grad_enabled() and self.state_quant is None:
            return self._step_inference(x, state)
        return self._step(x, state, self.params)

    def _step_inference(self, x: Tensor, state):
        """One step of `_sequence_inference`, the same operations in the same order, without
        its (1, ...) sequence buffer: batch-1 streaming calls this once per step per layer."""
        alpha, syn_gain, beta, gain, leak, threshold, reset = self._plan()
        cuba = alpha is not None
        if cuba:
            i = state[0].clone()
            v = state[1].clone()
            i.mul_(alpha).add_(syn_gain * x)
            v.mul_(beta).add_(gain * i)  # not addcmul_, as in the sequence loop
        else:
            v = state[0].clone()
            v.mul_(beta).add_(gain * x)
        if leak is not None:
            v.add_(leak)
        if threshold is None:
            y = v.clone()
        else:
            z = v > threshold
            y = z.to(v.dtype)
            if isinstance(reset, float):
                v.masked_fill_(z, reset)
            else:
                v = torch.where(z, reset, v)
        return y, (self.State(i, v) if cuba else self.State(v))

    def _plan(self) -> tuple:
        """What the inference loop needs, looked up once (re-derived when a buffer is replaced or changed)."""
        b = self._buffers
        key = tuple((id(t), t._version) for t in b.values() if t is not None)
        plan = self.__dict__.get("_plan_cache")
        if plan is None or plan[0] != key:
            reset = b["v_reset"]
            scalar = reset is not None and bool(torch.all(reset == reset.reshape(-1)[0]))
            leak = b["leak"]
            plan = (key, b["alpha"], b["syn_gain"], b["beta"], b["gain"],
                    None if not bool(torch.any(leak != 0)) else leak, b["v_threshold"],
                    float(reset.reshape(-1)[0]) if scalar else reset)
            self.__dict__["_plan_cache"] = plan
        return plan[1:]

    def _sequence_inference(self, xs: Tensor, state):
        """The same recurrence without autograd: in place, no per-step allocation but the spikes.

        Batch-1 streaming runs one step per call, so the few tensor operations per step are
        the cost: the current-based models update the current in place too, a zero leak is
        not added, and a reset shared by all neurons is a masked fill.
        """
        alpha, syn_gain, beta, gain, leak, threshold, reset = self._plan()
        cuba = alpha is not None
        if cuba:
            drive = syn_gain * xs
            i = state[0].clone()
            v = state[1].clone()
        else:
            drive = gain * xs
            v = state[0].clone()
        out = torch.empty_like(drive)
        for t in range(xs.shape[0]):
            if cuba:
                i.mul_(alpha).add_(drive[t])
                v.mul_(beta).add_(gain * i)  # not addcmul_: a fused multiply-add rounds differently from the step functions
                if leak is not None:
                    v.add_(leak)
            else:  # (beta v + gain x) + leak, associated as the step functions do
                v.mul_(beta).add_(drive[t])
                if leak is not None:
                    v.add_(leak)
            if threshold is not None:
                z = v > threshold
                out[t] = z
                if isinstance(reset, float):
                    v.masked_fill_(z, reset)
                else:
                    v = torch.where(z, reset, v)
            else:
                out[t] = v
        return out, (self.State(i, v) if cuba else self.State(v))

    def _quant(self, v: Tensor) -> Tensor:
        grid, lo, hi = self.state_quant
        return torch.clamp(torch.round(v / grid), lo, hi) * grid

    def sequence(self, xs: Tensor, state=None):
        """Run T steps (xs is (T, B, *shape)); returns (outputs (T, B, *shape), state)."""
        if state is None:
            state = self.initial_state(xs.shape[1], xs.device, xs.dtype)
        if not torch.is_grad_enabled() and self.state_quant is None:
            return self._sequence_inference(xs, state)
        p = self.params
        q = self._quant if self.state_quant is not None else None
        outs = []
        if p.alpha is not None:
            drive = p.syn_gain * xs
            i, v = state
            for t in range(xs.shape[0]):
                i = p.alpha * i + drive[t]
                if q:
                    i = q(i)
                v = p.beta * v + p.gain * i + p.leak
                if q:
                    v = q(v)
                if p.v_threshold is not None:
                    z, v = _fire(v, p)
                    outs.append(z)
                else:
                    outs.append(v)
            return torch.stack(outs), self.State(i, v)
        drive = p.gain * xs + p.leak
        (v,) = state
        for t in range(xs.shape[0]):
            v = p.beta * v + drive[t]
            if q:
                v = q(v)
            if p.v_threshold is not None:
                z, v = _fire(v, p)
                outs.append(z)
            else:
                outs.append(v)
        return torch.stack(outs), self.State(v)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class IF(Neuron):
    kind = "IF"
    State = IFState
    _step = staticmethod(if_step)

    def __init__(self, shape, *, gain=1.0, v_threshold=1.0, v_reset=0.0):
        super().__init__(shape, beta=1.0, gain=gain, leak=0.0, v_threshold=v_threshold, v_reset=v_reset)


class LIF(Neuron):
    kind = "LIF"
    State = LIFState
    _step = staticmethod(lif_step)

    def __init__(self, shape, *, beta=0.9, gain=1.0, leak=0.0, v_threshold=1.0, v_reset=0.0):
        super().__init__(shape, beta=beta, gain=gain, leak=leak, v_threshold=v_threshold, v_reset=v_reset)


class CubaLIF(Neuron):
    kind = "CubaLIF"
    State = CubaLIFState
    _step = staticmethod(cuba_lif_step)

    def __init__(self, shape, *, alpha=0.8, syn_gain=1.0, beta=0.9, gain=1.0, leak=0.0, v_threshold=1.0,
                 v_reset=0.0):
        super().__init__(shape, beta=beta, gain=gain, leak=leak, v_threshold=v_threshold, v_reset=v_reset,
                         alpha=alpha, syn_gain=syn_gain)


class LI(Neuron):
    kind = "LI"
    State = LIState
    _step = staticmethod(li_step)

    def __init__(self, shape, *, beta=0.9, gain=1.0, leak=0.0):
        super().__init__(shape, beta=beta, gain=gain, leak=leak)


class CubaLI(Neuron):
    kind = "CubaLI"
    State = CubaLIState
    _step = staticmethod(cuba_li_step)

    def __init__(self, shape, *, alpha=0.8, syn_gain=1.0, beta=0.9, gain=1.0, leak=0.0):
        super().__init__(shape, beta=beta, gain=gain, leak=leak, alpha=alpha, syn_gain=syn_gain)


NEURONS = {cls.kind: cls for cls in (IF, LIF, CubaLIF, LI, CubaLI)}

__all__ = [
    "IF",
    "LI",
    "LIF",
    "NEURONS",
    "CubaLI",
    "CubaLIF",
    "CubaLIFState",
    "CubaLIState",
    "IFState",
    "LIFState",
    "LIState",
    "Neuron",
    "NeuronParams",
    "cuba_li_step",
    "cuba_lif_step",
    "if_step",
    "li_step",
    "lif_step",
    "spike",
]
