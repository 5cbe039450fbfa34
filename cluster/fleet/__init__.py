"""The fleet manager: registers robots, collects their telemetry, deploys configs and models."""

from cluster.fleet.manager import Manager, ManagerOptions
from cluster.fleet.recording import FleetRecording

__all__ = ["FleetRecording", "Manager", "ManagerOptions"]
