"""A neuromorphic-chip emulator: a network under a chip's numeric and mapping constraints.

What it models (and what it does not): weights are rounded to signed `weight_bits`
integers per layer (symmetric, max-abs scaling), neuron state to signed `state_bits`
fixed point (saturating), decay factors to `decay_bits`; every neuron population must fit
the chip's fan-in and is spread over cores of `neurons_per_core`; the chip count follows.
It counts spikes and synaptic events (one per spike per outgoing synapse, one per input
event and synapse) and neuron updates, and turns them into energy with the chip's
published per-operation costs. It does not model timing, routing congestion or on-chip
learning. Numbers and their sources: `PROFILES`, docs/snn.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edge.devices.base import Backend, register_backend
from operators.snn.layers import Neuron
from operators.snn.network import Affine, Conv, Flatten, Network, Pool2d, Scale
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class ChipProfile:
    """A chip's limits and per-operation energies (pJ); `sources` cites every number."""

    name: str
    cores: int
    neurons_per_core: int
    fan_in: int  # synapses into one neuron (or input axons of a core)
    weight_bits: int
    state_bits: int
    decay_bits: int
    e_synop_pj: float  # one synaptic event
    e_spike_pj: float  # sending one spike
    e_update_pj: float  # one neuron update per time step
    sources: dict = field(default_factory=dict)


PROFILES: dict[str, ChipProfile] = {
    "loihi": ChipProfile(
        name="loihi", cores=128, neurons_per_core=1024, fan_in=4096, weight_bits=8, state_bits=24,
        decay_bits=12, e_synop_pj=23.6, e_spike_pj=1.7, e_update_pj=52.0,
        sources={
            "paper": "M. Davies et al., 'Loihi: A Neuromorphic Manycore Processor with On-Chip Learning', "
                     "IEEE Micro 38(1):82-99, 2018",
            "cores, neurons_per_core": "128 neuromorphic cores, 1,024 compartments each (Davies 2018, sec. 'Loihi chip')",
            "fan_in": "4,096 input axons per core (Davies 2018, Table 1 resource limits)",
            "weight_bits": "synaptic weights 1-9 bits; we use signed 8-bit (Davies 2018)",
            "state_bits, decay_bits": "24-bit membrane, 12-bit current/voltage decay (Davies 2018, Table 1)",
            "energies": "23.6 pJ min. synaptic spike op, 52 pJ active neuron update, 1.7 pJ within-tile "
                        "spike energy (Davies 2018, Table 2, measured at 0.75 V)",
        },
    ),
    "truenorth": ChipProfile(
        name="truenorth", cores=4096, neurons_per_core=256, fan_in=256, weight_bits=8, state_bits=20,
        decay_bits=8, e_synop_pj=26.0, e_spike_pj=0.0, e_update_pj=0.0,
        sources={
            "paper": "P. A. Merolla et al., 'A million spiking-neuron integrated circuit with a scalable "
                     "communication network and interface', Science 345(6197):668-673, 2014",
            "cores, neurons_per_core, fan_in": "4,096 cores of 256 neurons with 256 input axons (Merolla 2014)",
            "energy": "26 pJ per synaptic event (Merolla 2014); spike routing and neuron update energies are not "
                      "reported separately and are folded into that figure here (set to 0)",
            "weight_bits": "TrueNorth has 4 signed 9-bit weights per neuron selected by axon type; modelled here "
                           "as signed 8-bit per synapse, which is more permissive than the chip",
            "state_bits": "20-bit membrane potential (Akopyan et al., IEEE TCAD 34(10), 2015)",
            "decay_bits": "leak is a signed integer per tick; approximated as an 8-bit multiplicative decay",
        },
    ),
}


def _quantise(t: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-tensor rounding to signed `bits` integers (times a float scale)."""
    top = 2 ** (bits - 1) - 1
    scale = t.abs().max() / top
    if scale == 0:
        return t.clone()
    return torch.clamp(torch.round(t / scale), -top, top) * scale


class Emulated:
    """The quantised copy of a network, its populations and the linear maps that count synapses."""

    def __init__(self, network: Network, chip: ChipProfile):
        self.chip = chip
        self.net = copy.deepcopy(network).eval()
        with torch.no_grad():
            for m in self.net.layers.values():
                if isinstance(m, (Affine, Conv)):
                    m.weight.copy_(_quantise(m.weight, chip.weight_bits))
                    if m.bias is not None:
                        m.bias.copy_(_quantise(m.bias, 16))
                elif isinstance(m, Neuron):
                    self._fix_neuron(m)
        self.populations = [n for n in self.net.neurons]
        # sum-pooling straight after the input runs in the sensor interface (as Speck's DVS
        # pooling layer does): each pooled pixel is one input axon of the chip
        self.offchip = []
        for n in self.net.order[1:]:
            preds = self.net.preds[n]
            if (isinstance(self.net.layers[n], Pool2d) if n in self.net.layers else False) and \
                    all(p == self.net.input_name or p in self.offchip for p in preds):
                self.offchip.append(n)
        self.masks = self._masks()
        self.mapping = self._map()

    def _fix_neuron(self, m: Neuron) -> None:
        step = 2.0 ** -self.chip.decay_bits
        for name in ("beta", "alpha"):
            t = getattr(m, name)
            if t is not None:
                t.copy_(torch.round(t / step) * step)
        # fixed point: 8 bits of headroom above the threshold (or the largest drive for integrators)
        ref = m.v_threshold.abs().max().item() if m.v_threshold is not None else 64.0
        grid = max(ref, 1e-6) / 2 ** (self.chip.state_bits - 9)
        top = 2 ** (self.chip.state_bits - 1) - 1
        m.state_quant = (grid, -top - 1, top)

    def _masks(self) -> dict[str, nn.Module]:
        """Per stateless layer, the same layer with |connection| = 1 and no bias: it counts synapses."""
        masks = {}
        for n, m in self.net.layers.items():
            if isinstance(m, Affine):
                a = Affine((m.weight != 0).float(), None)
                masks[n] = a
            elif isinstance(m, Conv):
                masks[n] = Conv((m.weight != 0).float(), None, m.stride, m.padding, m.dilation, m.groups)
            elif isinstance(m, Pool2d):
                masks[n] = Pool2d(m.kernel_size, m.stride, m.padding, sum=True)
            elif isinstance(m, Scale):
                s = Scale((m.scale != 0).float())
                masks[n] = s
            elif isinstance(m, Flatten):
                masks[n] = m
        return masks

    def connections(self, values: dict) -> torch.Tensor:
        """Synaptic events per step from every node's recorded (T, B, ...) output: (T,) tensor."""
        net = self.net
        conn = {net.input_name: values[net.input_name].abs()}
        total = torch.zeros(values[net.input_name].shape[0])
        for n in net.order[1:]:
            if n == net.output_name:
                continue
            m = net.layers[n]
            x = sum(conn[p] for p in net.preds[n])
            if isinstance(m, Neuron):
                total += x.flatten(1).sum(1)  # events arriving at this population
                conn[n] = values[n].abs()
            else:
                T, B = x.shape[:2]
                y = self.masks[n](x.reshape(T * B, *x.shape[2:]))
                conn[n] = y.reshape(T, B, *y.shape[1:])
        return total

    def _map(self) -> dict:
        """Fan-in and core count per population; ConfigError when the network does not fit."""
        net = self.net
        shapes = net.shapes()
        fan = {net.input_name: torch.ones((1, 1, *net.input_shape))}
        for n in self.offchip:
            fan[n] = torch.ones((1, 1, *shapes[n]))
        report = {}
        cores = 0
        with torch.no_grad():
            for n in net.order[1:]:
                if n == net.output_name:
                    continue
                m = net.layers[n]
                x = sum(fan[p] for p in net.preds[n])
                if n in self.offchip:
                    continue
                if isinstance(m, Neuron):
                    fan_in = int(x.max().item())
                    size = int(np.prod(shapes[n]))
                    need = math.ceil(size / self.chip.neurons_per_core)
                    if fan_in > self.chip.fan_in:
                        raise ConfigError(
                            f"population '{n}' needs a fan-in of {fan_in} synapses per neuron but chip "
                            f"'{self.chip.name}' allows {self.chip.fan_in}")
                    report[n] = {"neurons": size, "fan_in": fan_in, "cores": need}
                    cores += need
                    fan[n] = torch.ones((1, 1, *shapes[n]))
                else:
                    y = self.masks[n](x.reshape(1, *x.shape[2:]))
                    fan[n] = y.reshape(1, 1, *y.shape[1:])
        chips = math.ceil(cores / self.chip.cores)
        return {"populations": report, "cores": cores, "chips": chips}


@register_backend
class NeuromorphicEmulator(Backend):
    """Runs a network as a chip would (int weights, fixed-point state) and counts its work."""

    name = "neuromorphic-emulator"

    def __init__(self, network: Network, chip: str = "loihi", delta: bool = False):
        super().__init__(network, chip=chip, delta=delta)
        if chip not in PROFILES:
            raise ConfigError(f"unknown chip profile '{chip}' (known: {', '.join(PROFILES)})")
        self.chip = PROFILES[chip]
        self.delta = delta
        self.emu = Emulated(network, self.chip)
        self.counts = {"steps": 0, "spikes": 0, "synops": 0, "neuron_updates": 0}
        self.neurons = sum(p["neurons"] for p in self.emu.mapping["populations"].values())

    def initial_state(self):
        return self.emu.net.initial_state(1)

    def run(self, xs: np.ndarray, state):
        with torch.inference_mode():
            x = torch.as_tensor(np.array(xs, dtype=np.float32, copy=True)).unsqueeze(1)
            y, state, values = self.emu.net.run(x, state, record=True, delta=self.delta)
            if self.delta:
                values = {**values, self.emu.net.input_name: values["__delta_input__"]}
            self.counts["synops"] += int(self.emu.connections(values).sum().item())
            self.counts["spikes"] += int(sum(values[n].sum().item() for n in self.emu.populations
                                             if self.emu.net.layers[n].spiking))
            self.counts["steps"] += len(xs)
            self.counts["neuron_updates"] += self.neurons * len(xs)
        return y[:, 0].numpy(), state

    def report(self) -> dict:
        c, chip = self.counts, self.chip
        energy_pj = c["synops"] * chip.e_synop_pj + c["spikes"] * chip.e_spike_pj + c["neuron_updates"] * chip.e_update_pj
        return {**c, "chip": chip.name, "cores": self.emu.mapping["cores"], "chips": self.emu.mapping["chips"],
                "populations": self.emu.mapping["populations"], "energy_uj": energy_pj * 1e-6,
                "energy_per_step_uj": energy_pj * 1e-6 / max(c["steps"], 1)}


def quantisation_loss(network: Network, frames: np.ndarray, labels: np.ndarray, chip: str = "loihi") -> dict:
    """Accuracy of the float network and of the emulated chip on labelled clips (N, T, *input_shape).

    Decodes each clip by the mean readout over its steps (as `operators.snn.train.decode`).
    """
    accs = {}
    for which in ("float", "chip"):
        b = NeuromorphicEmulator(network, chip) if which == "chip" else None
        preds = []
        for clip in frames:
            if b is None:
                with torch.inference_mode():
                    y, _ = network.run(torch.from_numpy(np.ascontiguousarray(clip, np.float32)).unsqueeze(1))
                    y = y[:, 0].numpy()
            else:
                y, _ = b.run(clip, b.initial_state())
            preds.append(int(np.argmax(y.mean(0))))
        accs[which] = float((np.asarray(preds) == labels).mean())
    return {"chip": chip, "float_accuracy": accs["float"], "chip_accuracy": accs["chip"],
            "accuracy_lost": accs["float"] - accs["chip"]}
