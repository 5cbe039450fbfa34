"""Device backends for spiking networks: torch on CPU or CUDA, a neuromorphic-chip emulator,
and vendor SDK adapters loaded when installed. Pick one by name: `backend("torch-cpu")`.
"""

from edge.devices import emulator, torch_backend  # noqa: F401  (register their backends)
from edge.devices.base import Backend, backend, backends, register_backend
from edge.devices.emulator import PROFILES, ChipProfile, NeuromorphicEmulator, quantisation_loss

__all__ = ["PROFILES", "Backend", "ChipProfile", "NeuromorphicEmulator", "backend", "backends",
           "quantisation_loss", "register_backend"]
