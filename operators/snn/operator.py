"""Streaming SNN inference (`snn`) and the gesture-command sink (`gesture_command`).

`snn` reads `frames` (one frame per time step), keeps one network state per stream, and
segments the stream by activity: a frame with at least `onset_events` counts starts a
sample (the network state is reset), every frame then advances the network one step, and
a decision is emitted on `commands` when the decoded confidence passes `early_exit`
(dynamic-confidence early exit), when the activity stops, or after `max_steps`. The row
holds the class, its confidence, the steps used and every class score.

The network runs on a device backend chosen by name (`operators.snn.devices`, backends in `edge.devices`: `torch-cpu`,
`torch-cuda`, `neuromorphic-emulator`, vendor SDKs); backends are looked up by name at
setup, like operators, so this module imports only `pipeline`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.snn.devices import backend
from pipeline import schemas as sch
from pipeline.errors import ConfigError, ModelError, ReflexarcError, SchemaError
from pipeline.operator import Operator, Params, register

DEFAULT_MODEL = Path(__file__).parent / "models" / "gesture.nir"
QUIET_STEPS = 2  # frames below onset that end a sample


def fit_hint(got: tuple, want: tuple) -> str:
    """Which event operators, put before `to_frames`, turn (C, H, W) frames of `got` into `want`."""
    if len(got) != 3 or len(want) != 3 or got[0] != want[0]:
        return ""
    (_, h, w), (_, wh, ww) = got, want
    k = min(h // wh, w // ww)
    if k < 1:
        return (f"; the sensor ({w}x{h}) is smaller than the model's input ({ww}x{wh}): train a model for it "
                "(`reflexarc train`)")
    steps = []
    if (h, w) != (wh * k, ww * k):
        x, y = (w - ww * k) // 2, (h - wh * k) // 2
        steps.append(f"`roi_crop` (x: {x}, y: {y}, width: {ww * k}, height: {wh * k})")
    if k > 1:
        steps.append(f"`downsample` (factor: {k})")
    return f"; {' then '.join(steps)} between the event source and `to_frames` would fit it"


class SnnParams(Params):
    model: str | None = Field(None, description="NIR file; default: the shipped gesture model")
    device: str = Field("torch-cpu", description="device backend (registered through reflexarc.devices)")
    device_options: dict = Field(default_factory=dict, description="backend options, e.g. {chip: loihi}")
    state_per: Literal["stream", "shared"] = Field("stream", description="one network state per input stream")
    early_exit: float | None = Field(0.9, gt=0, le=1, description="decide once confidence reaches this")
    min_steps: int = Field(3, ge=1, description="steps before an early decision is allowed")
    max_steps: int | None = Field(None, ge=1, description="decide after this many steps (default: model's)")
    onset_events: float | None = Field(None, ge=0, description="counts per frame that start a sample (default: model's)")
    delta: bool = Field(False, description="propagate only input changes (reports synaptic ops skipped)")
    labels: list[str] | None = Field(None, description="class names (default: from the model)")


def model_path(params: SnnParams) -> Path:
    return Path(params.model) if params.model else DEFAULT_MODEL


@register
class Snn(Operator):
    """Spiking-network inference over frames, one decision per gesture on `commands`."""

    name = "snn"
    inputs = {"frames": "frames"}
    outputs = {"commands": "commands"}
    Params = SnnParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self._net = None
        self._backend = None
        self.streams: dict[str, dict] = {}
        self.decisions = 0
        self.steps_run = 0

    def __getstate__(self):  # picklable before setup: the network is rebuilt from the file
        d = dict(self.__dict__)
        d["_net"] = d["_backend"] = None
        return d

    # -- build time ----------------------------------------------------------------
    def _load(self):
        from operators.snn import nir_io

        path = model_path(self.params)
        net = nir_io.load(path)
        meta = nir_io.metadata(nir_io.read(path))
        return net, meta

    def schemas(self, inputs):
        frames = inputs["frames"]
        sch.check("frames", frames, f"node '{self.node}' input 'frames'")
        net, meta = self._load()
        shape = tuple(sch.fact(frames, "shape") or frames.field("frame").type.shape)
        if shape != net.input_shape:
            raise SchemaError(
                f"model '{model_path(self.params)}' expects frames of shape {net.input_shape} but the upstream "
                f"port sends {shape}{fit_hint(shape, tuple(net.input_shape))}")
        if len(net.output_shape) != 1:
            raise SchemaError(f"model '{model_path(self.params)}' outputs shape {net.output_shape}; "
                              "class scores need a 1-D output")
        labels = self._labels(meta, net.output_shape[0])
        backend(self.params.device)  # unknown or unavailable: a ConfigError now, not at run time
        self._net, self._meta = net, meta
        return {"commands": self._schema(labels)}

    def _labels(self, meta, n):
        labels = self.params.labels or meta.get("labels") or [f"class{i}" for i in range(n)]
        if len(labels) != n:
            raise ConfigError(f"node '{self.node}': {len(labels)} labels given for a model with {n} outputs")
        return list(labels)

    @staticmethod
    def _schema(labels) -> pa.Schema:
        fields = {"label": "int32", "confidence": "float32", "steps": "int32"}
        fields.update({f"score_{name}": "float32" for name in labels})
        schema = sch.commands_schema(fields, units={"confidence": "probability", "steps": "time steps"})
        meta = dict(schema.metadata)
        meta[b"labels"] = json.dumps(labels).encode()
        return schema.with_metadata(meta)

    # -- run time ------------------------------------------------------------------
    def setup(self):
        if self._net is None:
            self._net, self._meta = self._load()
        self._backend = backend(self.params.device)(self._net, delta=self.params.delta,
                                                            **self.params.device_options)
        self.labels = self._labels(self._meta, self._net.output_shape[0])
        self.schema = self._schema(self.labels)
        self.max_steps = self.params.max_steps or int(self._meta.get("steps", 20))
        self.onset = self.params.onset_events if self.params.onset_events is not None else float(
            self._meta.get("onset_events", 0.0))

    def _stream(self, key):
        s = self.streams.get(key)
        if s is None:
            s = self.streams[key] = {"phase": "idle", "quiet": 0, "steps": 0, "sum": None, "net": None}
        return s

    wants_header = True

    def process(self, port, batch, header=None):
        key = header.stream if (header is not None and self.params.state_per == "stream") else "shared"
        s = self._stream(key)
        frames = sch.frames_view(batch)
        ts = sch.column(batch, "t")
        rows = []
        for t, frame in zip(ts, frames):
            active = float(frame.sum()) >= self.onset
            s["quiet"] = 0 if active else s["quiet"] + 1
            if s["phase"] == "done":
                if s["quiet"] >= QUIET_STEPS:
                    s["phase"] = "idle"
                continue
            if s["phase"] == "idle":
                if not active:
                    continue
                s.update(phase="active", steps=0, sum=None, net=self._backend.initial_state())
            y, s["net"] = self._backend.run(frame[None], s["net"])
            s["steps"] += 1
            self.steps_run += 1
            s["sum"] = y[0].astype(np.float64) if s["sum"] is None else s["sum"] + y[0]
            scores = s["sum"] / s["steps"]
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            conf = float(probs.max())
            sure = self.params.early_exit is not None and s["steps"] >= self.params.min_steps and conf >= self.params.early_exit
            ended = s["quiet"] >= QUIET_STEPS
            if sure or ended or s["steps"] >= self.max_steps:
                rows.append((int(t), int(probs.argmax()), conf, s["steps"], probs))
                s["phase"] = "idle" if ended else "done"
                s["net"] = None
        if not rows:
            return None
        self.decisions += len(rows)
        cols = {"label": [r[1] for r in rows], "confidence": [r[2] for r in rows], "steps": [r[3] for r in rows]}
        for i, name in enumerate(self.labels):
            cols[f"score_{name}"] = [float(r[4][i]) for r in rows]
        return sch.commands_batch([r[0] for r in rows], self.schema, **cols)

    def swap_model(self, path: str, version: str) -> bool:
        """Switch to the NIR model at `path` ("" = the configured one), checked in full first.

        The new network must read frames of the shape the running one reads (the upstream
        port's), output one score per label of the running one (the output schema does not
        change while running), declare the same labels if it declares any, hold finite
        parameters and produce finite scores on a blank frame. Any failure raises ModelError
        and the old network stays. A gesture in progress restarts on the new network.
        """
        from operators.snn import nir_io

        target = Path(path) if path else model_path(self.params)
        where = f"node '{self.node}': model {version} ('{target.name}')"
        try:
            graph = nir_io.read(target)
            net, meta = nir_io.from_nir(graph, where=f"model '{target}'"), nir_io.metadata(graph)
        except ReflexarcError as exc:
            raise ModelError(f"{where}: {exc}") from None
        except Exception as exc:  # a model file is untrusted input
            raise ModelError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from None
        if tuple(net.input_shape) != tuple(self._net.input_shape):
            raise ModelError(f"{where} reads frames of shape {tuple(net.input_shape)}; the upstream port sends "
                             f"{tuple(self._net.input_shape)}")
        if tuple(net.output_shape) != (len(self.labels),):
            raise ModelError(f"{where} outputs shape {tuple(net.output_shape)}; this node emits {len(self.labels)} "
                             f"class scores ({', '.join(self.labels)})")
        labels = self.params.labels or meta.get("labels")
        if labels and list(labels) != self.labels:
            raise ModelError(f"{where} declares labels {list(labels)}; the running node emits {self.labels}")
        for name, value in net.state_dict().items():
            if value.is_floating_point() and not bool(value.isfinite().all()):
                raise ModelError(f"{where}: parameter '{name}' holds NaN or infinite values")
        try:
            backend_ = backend(self.params.device)(net, delta=self.params.delta, **self.params.device_options)
            y, _ = backend_.run(np.zeros((1, *net.input_shape), np.float32), backend_.initial_state())
        except Exception as exc:
            raise ModelError(f"{where} fails on a blank frame: {type(exc).__name__}: {exc}") from None
        if not np.all(np.isfinite(np.asarray(y))):
            raise ModelError(f"{where} gives non-finite scores on a blank frame")
        self._net, self._meta, self._backend = net, meta, backend_  # the switch: between two batches
        self.max_steps = self.params.max_steps or int(meta.get("steps", 20))
        for s in self.streams.values():
            if s["phase"] == "active":
                s.update(phase="idle", steps=0, sum=None, net=None)
        self.model_version = version
        return True

    def state(self):
        return {"streams": self.streams, "decisions": self.decisions, "steps_run": self.steps_run}

    def restore(self, state):
        self.streams = state["streams"]
        self.decisions, self.steps_run = state["decisions"], state["steps_run"]

    def result(self):
        """What the backend counted (spikes, synaptic ops, energy, delta savings), decisions and steps."""
        return {"decisions": self.decisions, "steps": self.steps_run,
                **(self._backend.report() if self._backend else {})}


class GestureCommandParams(Params):
    min_confidence: float = Field(0.0, ge=0, le=1, description="ignore decisions below this confidence")
    quiet: bool = Field(False, description="do not print, only report")


@register
class GestureCommand(Operator):
    """Prints each recognised gesture with its confidence and sensing-to-action latency."""

    name = "gesture_command"
    inputs = {"commands": "commands"}
    Params = GestureCommandParams
    wants_header = True

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.gestures: list[dict] = []

    def schemas(self, inputs):
        schema = inputs["commands"]
        for name in ("label", "confidence"):
            if schema.get_field_index(name) < 0:
                raise SchemaError(f"node '{self.node}' needs a '{name}' column (connect it to an 'snn' node)")
        return {}

    def process(self, port, batch, header=None):
        now = time.time_ns()
        labels = sch.fact(batch.schema, "labels") or []
        ts, lab, conf = sch.column(batch, "t"), sch.column(batch, "label"), sch.column(batch, "confidence")
        steps = sch.column(batch, "steps") if batch.schema.get_field_index("steps") >= 0 else np.zeros(len(ts))
        latency_ms = (now - header.ingest_ns) / 1e6 if header is not None and header.ingest_ns else float("nan")
        for t, k, c, n in zip(ts, lab, conf, steps):
            if c < self.params.min_confidence:
                continue
            name = labels[k] if 0 <= k < len(labels) else f"class{k}"
            g = {"t_us": int(t), "label": int(k), "gesture": name, "confidence": round(float(c), 4),
                 "steps": int(n), "latency_ms": round(latency_ms, 3)}
            self.gestures.append(g)
            if not self.params.quiet:
                print(f"[{t / 1e6:7.2f} s] gesture {name:<12} confidence {c:.2f}  steps {int(n):2d}  "
                      f"sensing-to-action {latency_ms:.2f} ms", file=sys.stdout, flush=True)

    def state(self):
        return list(self.gestures)

    def restore(self, state):
        self.gestures = list(state)

    def result(self):
        lat = np.array([g["latency_ms"] for g in self.gestures], float)
        lat = lat[np.isfinite(lat)]
        return {"gestures": self.gestures, "count": len(self.gestures),
                "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
                "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None}
