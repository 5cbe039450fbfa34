"""Closed-loop stimulation trigger: fire when an ensemble's activity crosses a threshold.

Fires on an upward crossing of `threshold` on the chosen channel, at most once per
`refractory_ms` of sensor time (suppressed crossings are counted). Every command is kept
(and written to `record_path` as JSON at close) with the wall latency from the frame's
ingest to the decision. It is an actuator: a safe state mutes it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline import schemas as sch
from pipeline.errors import SchemaError
from pipeline.operator import Operator, Params, register


@register
class StimTrigger(Operator):
    """Rate-limited stimulation trigger on a community time course (recorded)."""

    name = "calcium_trigger"
    inputs = {"in": "samples"}
    actuator = True
    wants_header = True

    class Params(Params):
        channel: str = Field("comp0", description="the time course to watch")
        threshold: float = Field(0.2, description="fire when activity rises through this")
        refractory_ms: float = Field(1000.0, ge=0, description="minimum sensor time between stimuli")
        record_path: str | None = Field(None, description="write every command here (JSON)")

    def schemas(self, inputs):
        s = inputs["in"]
        if s.get_field_index(self.params.channel) < 0:
            names = [f.name for f in s if f.name != "t"]
            raise SchemaError(f"{self.node}: channel '{self.params.channel}' is not in the input (has {names})")
        return {}

    def setup(self):
        self.fired: list[dict] = []
        self.suppressed = 0
        self.above = False
        self.last_t = None
        self.muted = None
        self.latencies_ms: list[float] = []

    def process(self, port, batch, header=None):
        t = sch.column(batch, "t")
        x = sch.column(batch, self.params.channel)
        now = time.time_ns()
        for i in range(len(t)):
            up = x[i] >= self.params.threshold
            if up and not self.above:
                ti = int(t[i])
                if self.muted is not None or (self.last_t is not None and ti - self.last_t < self.params.refractory_ms * 1000):
                    self.suppressed += 1
                else:
                    lat = (now - header.ingest_ns) / 1e6 if header is not None else float("nan")
                    self.fired.append({"t_us": ti, "value": float(x[i]), "latency_ms": lat})
                    self.latencies_ms.append(lat)
                    self.last_t = ti
            self.above = up

    def safe_state(self, reason: str) -> None:
        self.muted = reason

    def state(self):
        return {"fired": list(self.fired), "suppressed": self.suppressed, "above": self.above, "last_t": self.last_t}

    def restore(self, state):
        self.fired, self.suppressed = list(state["fired"]), state["suppressed"]
        self.above, self.last_t = state["above"], state["last_t"]

    def result(self):
        lat = np.array(self.latencies_ms)
        return {
            "stimuli": len(self.fired), "suppressed": self.suppressed, "muted": self.muted,
            "latency_ms_median": float(np.median(lat)) if lat.size else None,
            "latency_ms_max": float(lat.max()) if lat.size else None,
            "t_us": [f["t_us"] for f in self.fired],
        }

    def close(self):
        if self.params.record_path:
            path = Path(self.params.record_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"commands": self.fired, "suppressed": self.suppressed}, indent=1))
