"""Spiking networks: IF/LIF/CubaLIF/LI layers with explicit state, NIR import and export,
streaming inference (`snn`) and the gesture-command sink (`gesture_command`).

Importing this package registers its operators.
"""

from operators.snn import operator  # noqa: F401  (registers snn and gesture_command)
from operators.snn.layers import IF, LI, LIF, CubaLI, CubaLIF
from operators.snn.network import Network
from operators.snn.nir_io import ModelError, from_nir, load, save, to_nir

__all__ = ["IF", "LI", "LIF", "CubaLI", "CubaLIF", "ModelError", "Network", "from_nir", "load", "save", "to_nir"]
