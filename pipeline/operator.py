"""The operator protocol and the registry that finds operators by name.

An operator is a small class: its `Params` model (filled from YAML), its declared
`inputs` and `outputs` (port name -> stream kind), `schemas()` to derive output schemas
from input schemas at build time, `process(port, batch)` and explicit `state()` /
`restore()`. It never knows which executor runs it.

Example::

    class Scale(Operator):
        name = "scale"
        inputs = {"in": "samples"}
        outputs = {"out": "samples"}

        class Params(Params):
            gain: float = 1.0

        def process(self, port, batch):
            cols = [batch.column(0)] + [pc.multiply(c, self.params.gain) for c in batch.columns[1:]]
            return pa.RecordBatch.from_arrays(cols, schema=batch.schema)

    register(Scale)

Every run builds fresh instances from the params (`Graph.fresh`), so anything an
operator needs at run time is set up in `setup()`, not kept from `schemas()`; what a
caller needs after a run goes into `result()`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import ConfigError, SchemaError

log = logging.getLogger(__name__)

Emitted = Iterable[tuple[str, pa.RecordBatch]] | pa.RecordBatch | None
ENTRY_POINT_GROUP = "reflexarc.operators"
# Optional: one entry per operator name -> the module that registers it, so that building a
# graph imports only the families its nodes use (the SNN family imports torch, most others
# numba). A name not in the index makes lookup() load every family, as before.
INDEX_GROUP = "reflexarc.operator_index"


class Params(BaseModel):
    """Base of every operator's parameters: strict, immutable, filled from YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceParams(Params):
    """Parameters every source has: how it is paced."""

    pacing: Literal["max", "realtime"] = "max"
    speed: float = Field(1.0, gt=0, description="realtime speed factor (2.0 = twice as fast)")


class Operator:
    """Base class of all operators; see the module docstring for a worked example."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    inputs: ClassVar[dict[str, str]] = {}
    outputs: ClassVar[dict[str, str]] = {}
    #: set by sinks that drive an actuator: they have a safe state and are muted in shadow runs
    actuator: ClassVar[bool] = False
    #: set by operators that need to know where a batch came from: the runtime then calls
    #: `process(port, batch, header)` with the batch's `pipeline.schemas.Header` (source
    #: stream, sequence number, ingest wall-clock time) on every batch, under every executor
    wants_header: ClassVar[bool] = False
    #: set by operators that talk to the driver process over loopback (a live viewer's tap):
    #: the Ray executors run their stage on the driver's node unless `place:` says otherwise
    beside_driver: ClassVar[bool] = False

    def __init__(self, params: Params | None = None, node: str | None = None):
        self.params = params if params is not None else self.Params()
        self.node = node or self.name

    # -- build time ----------------------------------------------------------------
    def schemas(self, inputs: dict[str, pa.Schema]) -> dict[str, pa.Schema]:
        """Output schemas from input schemas; raise SchemaError when inputs do not fit.

        The default passes a single input's schema through to every output.
        """
        if len(inputs) == 1 and self.outputs:
            (schema,) = inputs.values()
            return {port: schema for port in self.outputs}
        if self.outputs:
            raise NotImplementedError(f"operator '{self.name}' must define schemas()")
        return {}

    # -- run time ------------------------------------------------------------------
    def setup(self) -> None:
        """Allocate buffers, compile kernels, open files: once, before the first batch."""

    def process(self, port: str, batch: pa.RecordBatch) -> Emitted:
        """Handle one batch arriving on `port`; return output batches (see `emitted`)."""
        raise NotImplementedError

    def finish(self) -> Emitted:
        """Flush what is held at the end of the stream (a partial window, say)."""
        return None

    def close(self) -> None:
        """Release resources; called once, also after a failure."""

    def state(self) -> Any:
        """Plain data from which `restore` rebuilds this operator (None when stateless)."""
        return None

    def restore(self, state: Any) -> None:
        """Take back what `state()` returned."""

    def result(self) -> dict | None:
        """What a sink reports in the run summary."""
        return None

    def safe_state(self, reason: str) -> None:
        """Put an actuator into its safe state (zero thrust, stop); sinks override."""

    def swap_model(self, path: str, version: str) -> bool:
        """Switch to the model file at `path`, rolled out as `version`; True once switched.

        When: the edge agent calls it between two waves (never while a batch is being
        processed), on the thread that calls `process`, for every operator of the running
        graph, when the fleet manager rolls out a model. An operator with a model loads and
        checks the new one completely (readable, shapes that fit its input port, no NaN)
        before it switches, and raises (`pipeline.errors.ModelError`) to keep the old one;
        the agent reports the reason to the manager. The default has no model: False.
        """
        return False


class Source(Operator):
    """An operator with no inputs that yields batches carrying sensor timestamps in `t`."""

    Params: ClassVar[type[Params]] = SourceParams

    def generate(self) -> Iterator[tuple[str, pa.RecordBatch] | pa.RecordBatch]:
        """Yield batches (or (port, batch) pairs) in sensor-time order."""
        raise NotImplementedError

    def process(self, port, batch):  # pragma: no cover - sources have no inputs
        raise TypeError("sources take no input")


def emitted(op: Operator, result: Emitted) -> Iterable[tuple[str, pa.RecordBatch]]:
    """Normalise what `process`/`finish`/`generate` returned to (port, batch) pairs."""
    if result is None:
        return ()
    if isinstance(result, pa.RecordBatch):
        if len(op.outputs) != 1:
            raise TypeError(
                f"operator '{op.name}' returned a bare batch but has ports {list(op.outputs)}"
            )
        return ((next(iter(op.outputs)), result),)
    return result


# --- registry ------------------------------------------------------------------------

_REGISTRY: dict[str, type[Operator]] = {}
_plugins_loaded = False
_plugin_errors: dict[str, str] = {}  # family -> why it failed to import


def register(cls: type[Operator]) -> type[Operator]:
    """Register an operator class under its `name` (usable as a class decorator)."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no `name`")
    known = _REGISTRY.get(cls.name)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise TypeError(f"operator name '{cls.name}' is taken by {known.__module__}.{known.__qualname__}")
    for port, kind in {**cls.inputs, **cls.outputs}.items():
        from pipeline.schemas import ANY, KINDS

        if kind not in KINDS and kind != ANY:
            raise TypeError(f"{cls.__qualname__} port '{port}' has unknown stream kind '{kind}'")
    _REGISTRY[cls.name] = cls
    return cls


def load_plugins() -> None:
    """Import every module named in the `reflexarc.operators` entry-point group once.

    Our own operator families register this way too, so a missing optional family
    (a module not yet installed) is skipped, while a family that fails to import for
    another reason is reported.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import pipeline.builtins  # noqa: F401  (the runtime's own operators)
    import pipeline.recording  # noqa: F401  (record, replay, shadow_sink; pyarrow.compute, so not in builtins)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except ModuleNotFoundError as exc:
            if exc.name and ep.value.split(":")[0].startswith(exc.name):
                log.debug("operator plug-in %s not present: %s", ep.name, exc)
                continue
            _plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # one broken family must not hide all the others
            _plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
            log.warning("operator family '%s' failed to import: %s", ep.name, exc)


def _load_indexed(name: str) -> None:
    """Import the runtime's own operators, then the one module the index names for `name`."""
    import pipeline.builtins  # noqa: F401

    if name in _REGISTRY:
        return
    for ep in entry_points(group=INDEX_GROUP, name=name):
        try:
            ep.load()
        except Exception as exc:  # load_plugins() reports the family's failure
            log.debug("operator index: %s -> %s failed: %s", name, ep.value, exc)
        return


def lookup(name: str) -> type[Operator]:
    """The operator class registered as `name`; ConfigError lists close names."""
    if name not in _REGISTRY and not _plugins_loaded:
        _load_indexed(name)
    if name not in _REGISTRY:
        load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        broken = "".join(f"; operator family '{k}' failed to import ({v})" for k, v in _plugin_errors.items())
        raise ConfigError(f"unknown operator '{name}'{hint}{broken}") from None


def registry() -> dict[str, type[Operator]]:
    """Every registered operator by name."""
    load_plugins()
    return dict(sorted(_REGISTRY.items()))


def describe(cls: type[Operator]) -> dict:
    """A JSON-able description of an operator: ports, kinds, params and defaults."""
    return {
        "name": cls.name,
        "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        "source": issubclass(cls, Source),
        "inputs": dict(cls.inputs),
        "outputs": dict(cls.outputs),
        "actuator": cls.actuator,
        "params": cls.Params.model_json_schema(),
    }


def make(name: str, params: dict | None = None, node: str | None = None) -> Operator:
    """Build an operator by registry name from a plain params dict."""
    cls = lookup(name)
    return cls(cls.Params(**(params or {})), node=node)


__all__ = [
    "Emitted",
    "Operator",
    "Params",
    "SchemaError",
    "Source",
    "SourceParams",
    "describe",
    "emitted",
    "lookup",
    "make",
    "register",
    "registry",
]
