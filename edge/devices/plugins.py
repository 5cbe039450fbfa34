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
        import sinabs
        import torch

        from operators.snn.nir_io import to_nir

        self.torch = torch
        self.model = sinabs.from_nir(to_nir(network), batch_size=1)

    def initial_state(self):
        return None  # sinabs layers keep their own state; one backend instance per stream

    def run(self, xs, state):
        with self.torch.inference_mode():
            ys = [self.model(self.torch.as_tensor(x[None], dtype=self.torch.float32)) for x in xs]
        return np.stack([y[0].numpy() for y in ys]), state


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
