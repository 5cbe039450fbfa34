"""Spiking brain simulation: networks partitioned over Ray actors, Numba event-driven kernels.

Importing this package registers the `brainsim` pipeline source.
"""

from cluster.brainsim.engine import Simulation
from cluster.brainsim.operator import Brainsim
from cluster.brainsim.simulate import load_config, simulate
from cluster.brainsim.spec import NetworkSpec, Population, Projection

__all__ = ["Brainsim", "NetworkSpec", "Population", "Projection", "Simulation", "load_config", "simulate"]
