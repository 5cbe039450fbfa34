"""The executor seam: one small protocol that every executor implements, and its registry.

An executor takes a checked graph with fresh operators and runs it to the end of its
sources; `pipeline.run` resolves which one (argument, YAML `executor:` key, or `local`),
times the run and wraps what comes back. In the spirit of httpx's `BaseTransport`: one
method, no knowledge of the CLI.

Example, a (useless but complete) executor that runs the graph in the caller's thread
through the local one, logging each wave::

    from pipeline.executors import Executor, Outcome, register
    from pipeline.executors.local import LocalExecutor

    class Chatty(Executor):
        name = "chatty"

        def run(self, graph, *, monitor=None, stop=None, **options):
            waves = []
            local = LocalExecutor()
            return local.run(graph, monitor=monitor, stop=stop, on_wave=lambda i, out: waves.append(i))

    register(Chatty)

Third-party executors register through the entry-point group `reflexarc.executors`
(name -> `module:Class`), as operators do through `reflexarc.operators`.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import ClassVar

from pipeline.errors import ConfigError
from pipeline.graph import Graph

ENTRY_POINT_GROUP = "reflexarc.executors"


@dataclass
class Outcome:
    """What an executor hands back: sink results, node metrics and how the run went."""

    results: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    #: executor-specific facts: actor restarts, resent waves, channels taken, Ray nodes used
    recovery: dict = field(default_factory=dict)


class Executor:
    """Runs a checked graph (fresh operators) to the end of its sources.

    `run` is called once per run. `monitor(snapshots)`, when given, is called about every
    0.25-0.5 s with live node metrics; `stop`, when set, ends the stream early (the run
    still flushes and reports). `options` are the executor's own (`fuse`, `address`, ...);
    an executor refuses the ones it does not know with a ConfigError.
    """

    name: ClassVar[str] = ""
    #: option names this executor accepts (others are a ConfigError naming them)
    options: ClassVar[frozenset[str]] = frozenset()

    def run(self, graph: Graph, *, monitor=None, stop: threading.Event | None = None, **options) -> Outcome:
        raise NotImplementedError

    def check_options(self, options: dict) -> None:
        unknown = sorted(set(options) - self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"executor '{self.name}' has no option {', '.join(map(repr, unknown))} (it takes: {known})")


# name -> "module:Class", imported on first use so that `reflexarc --help` never imports Ray
_BUILTIN = {
    "local": "pipeline.executors.local:LocalExecutor",
    "ray": "pipeline.executors.ray_calls:RayCallsExecutor",
    "ray-compiled": "pipeline.executors.ray_compiled:RayCompiledExecutor",
    "ray-shm": "pipeline.executors.ray_shm:RayShmExecutor",
}
_REGISTRY: dict[str, type[Executor]] = {}
_external: dict[str, str] | None = None


def register(cls: type[Executor]) -> type[Executor]:
    """Register an executor class under its `name` (usable as a class decorator)."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no `name`")
    _REGISTRY[cls.name] = cls
    return cls


def _plugins() -> dict[str, str]:
    global _external
    if _external is None:
        _external = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _external


def names() -> tuple[str, ...]:
    """Every executor name: the four built in, then registered and plugged-in ones."""
    extra = [n for n in (*_REGISTRY, *_plugins()) if n not in _BUILTIN]
    return (*_BUILTIN, *dict.fromkeys(extra))


def get(name: str) -> Executor:
    """An instance of the executor registered as `name`; ConfigError lists the known ones."""
    cls = _REGISTRY.get(name)
    if cls is None:
        target = _BUILTIN.get(name) or _plugins().get(name)
        if target is None:
            raise ConfigError(f"unknown executor '{name}' (expected one of {', '.join(names())})")
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = cls
    return cls()
