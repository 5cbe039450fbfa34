"""Device backends for `operators.snn`: one small contract for every place a spiking network can run.

A backend takes a `Network` (built from NIR) and advances it over a block of time steps
with caller-held state::

    class Echo(Backend):
        name = "echo"

        def initial_state(self):
            return None

        def run(self, xs, state):
            return xs, state

    register_backend(Echo)
    b = backend("echo")(network)
    ys, state = b.run(np.zeros((10, *network.input_shape), np.float32), b.initial_state())

`run` takes (T, *input_shape) float32 and returns (T, *output_shape) float32; the state is
opaque to the caller but must pickle (the streaming operator checkpoints it). `report()`
says what the device counted (spikes, synaptic operations, energy), if anything.

Backends are found by name through the entry-point group `reflexarc.devices`, as
operators are through `reflexarc.operators`: each entry names a module that registers its
backends when imported. Ours live in `edge/devices` (torch, the neuromorphic emulator,
vendor SDK adapters that register only when their SDK is installed); this module is the
contract and the registry, beside the operator that uses them, so the arrow points from
`edge` down to `operators` and never back.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "reflexarc.devices"


class Backend:
    """Runs a `Network` on some device; subclasses implement `initial_state` and `run`."""

    name: ClassVar[str] = ""

    def __init__(self, network, **options: Any):
        self.network = network
        self.options = options

    @classmethod
    def available(cls) -> str | None:
        """None when this backend can run here, else the reason it cannot."""
        return None

    def initial_state(self) -> Any:
        raise NotImplementedError

    def run(self, xs: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def report(self) -> dict:
        return {}


_BACKENDS: dict[str, type[Backend]] = {}
_plugins_loaded = False


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Register a backend class under its `name` (usable as a decorator)."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no `name`")
    _BACKENDS[cls.name] = cls
    return cls


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party plug-in must not take ours down
            log.warning("device plug-in %s failed to load: %s", ep.name, exc)


def backends() -> dict[str, type[Backend]]:
    """Every registered backend by name (including ones that cannot run here)."""
    _load_plugins()
    return dict(sorted(_BACKENDS.items()))


def backend(name: str) -> type[Backend]:
    """The backend class called `name`; ConfigError if unknown or unable to run here."""
    _load_plugins()
    cls = _BACKENDS.get(name)
    if cls is None:
        raise ConfigError(f"unknown device backend '{name}' (known: {', '.join(sorted(_BACKENDS))})")
    why = cls.available()
    if why:
        raise ConfigError(f"device backend '{name}' cannot run here: {why}")
    return cls
