"""The device-backend contract and registry, re-exported: they live in `operators.snn.devices`.

Backends here register through the `reflexarc.devices` entry points (pyproject.toml).
"""

from operators.snn.devices import ENTRY_POINT_GROUP, Backend, backend, backends, register_backend

__all__ = ["ENTRY_POINT_GROUP", "Backend", "backend", "backends", "register_backend"]
