"""Closed-loop control: blimp plants, altimeter, PID, the evolved spiking controller, loop operators.

Importing this package registers `blimp_loop`, `motor` and `loop_monitor`. (The place
recognition subpackage `operators.control.place` registers itself separately.)
"""

from operators.control import loop  # noqa: F401  (registers the operators)
from operators.control.loop import BlimpLoop, LoopMonitor, Motor, make_controller
from operators.control.pid import PID, PIDParams
from operators.control.plant import AltimeterParams, MotorParams, PlantParams
from operators.control.sim import ClosedLoop, DisturbanceParams, WatchdogParams, metrics, profile
from operators.control.snn import SNNController, SNNModel, to_nir

__all__ = [
    "PID",
    "AltimeterParams",
    "BlimpLoop",
    "ClosedLoop",
    "DisturbanceParams",
    "LoopMonitor",
    "Motor",
    "MotorParams",
    "PIDParams",
    "PlantParams",
    "SNNController",
    "SNNModel",
    "WatchdogParams",
    "make_controller",
    "metrics",
    "profile",
    "to_nir",
]
