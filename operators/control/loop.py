"""Closed-loop blimp operators: the `blimp_loop` source, the `motor` actuator and `loop_monitor`.

The runtime graph is a DAG, so the feedback path (motor -> plant -> altimeter) cannot be
an edge. `blimp_loop` therefore owns the plant, the altimeter, the controller kernel and
the watchdog, and ticks them at the control rate (see `sim.ClosedLoop`); it emits the
telemetry it flew and the commands it applied. Downstream, `motor` is the actuator sink a
real rotor driver would be (safe state on a missed latency budget or a silent command
stream), and `loop_monitor` scores the flight (RMSE, overshoot, ...).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from operators.control.pid import PID, PIDParams
from operators.control.plant import AltimeterParams, PlantParams
from operators.control.sim import (
    ClosedLoop,
    DisturbanceParams,
    NoControl,
    WatchdogParams,
    hover_command,
    metrics,
    profile,
)
from pipeline import schemas as sch
from pipeline.errors import DataError, ModelError
from pipeline.operator import Operator, Params, Source, SourceParams, register

TELEMETRY = ["setpoint", "z", "measured", "u", "applied", "safe", "nan_reading"]


def make_controller(kind: str, dt_s: float, pid: PIDParams | None = None, model: str | None = None, u_max: float = 3.3):
    """A controller by name: `pid`, `snn` (evolved model JSON; the shipped one by default), `none`."""
    if kind == "pid":
        return PID(pid or PIDParams(u_max=u_max), dt_s)
    if kind == "snn":
        from operators.control.snn import SNNController, SNNModel

        m = SNNModel.load(model)
        if abs(m.dt_s - dt_s) > 1e-9:
            raise DataError(f"SNN model was evolved at dt {m.dt_s} s, the loop runs at {dt_s} s")
        return SNNController(m, u_max)
    if kind == "none":
        return NoControl()
    raise ValueError(f"unknown controller '{kind}' (expected pid, snn, none)")


class BlimpLoopParams(SourceParams):
    controller: Literal["pid", "snn", "none"] = "snn"
    model: str | None = Field(None, description="SNN model JSON (default: the shipped evolved model)")
    rate_hz: float = Field(10.0, gt=0, le=1000, description="control rate")
    profile: Literal["step", "staircase", "sine", "random"] = "staircase"
    duration_s: float = Field(60.0, gt=0)
    base_m: float = 1.0
    seed: int = 0
    ticks_per_batch: int = Field(1, ge=1, description="group ticks per batch (1 for live loops)")
    pid: PIDParams = PIDParams()
    plant: PlantParams = PlantParams()
    altimeter: AltimeterParams = AltimeterParams()
    watchdog: WatchdogParams = WatchdogParams()
    disturbance: DisturbanceParams = DisturbanceParams()


@register
class BlimpLoop(Source):
    """Altimeter -> controller -> watchdog -> motor -> plant, ticked at the control rate."""

    name = "blimp_loop"
    outputs = {"telemetry": "samples", "command": "commands"}
    Params = BlimpLoopParams

    def schemas(self, inputs):
        p = self.params
        return {
            "telemetry": sch.samples_schema(TELEMETRY, p.rate_hz, ["m", "m", "m", "u", "u", "flag", "flag"]),
            "command": sch.commands_schema({"thrust": "float32", "safe": "int8"}, {"thrust": "motor units [-3.3, 3.3]"}),
        }

    def setup(self):
        p = self.params
        dt = 1.0 / p.rate_hz
        ctl = make_controller(p.controller, dt, p.pid, p.model, p.plant.motor.u_max)
        self.loop = ClosedLoop(p.plant, p.altimeter, ctl, dt, p.watchdog, p.disturbance, p.seed)
        self.setpoints = profile(p.profile, p.duration_s, dt, p.base_m, p.seed)

    def generate(self):
        p = self.params
        out = self.schemas({})
        n, k = len(self.setpoints), p.ticks_per_batch
        for start in range(0, n, k):
            sp = self.setpoints[start : start + k]
            rows = np.zeros((len(sp), len(TELEMETRY)))
            t = np.zeros(len(sp), dtype=np.int64)
            for i, s in enumerate(sp):
                t[i] = int(round(self.loop.t * 1e6))
                nan_before = self.loop.counts["nan_readings"]
                z, meas, u, applied, safe = self.loop.tick(float(s))
                rows[i] = (s, z, meas, u, applied, safe, self.loop.counts["nan_readings"] - nan_before)
            yield "telemetry", sch.samples_batch(t, rows, out["telemetry"])
            yield "command", sch.commands_batch(t, out["command"], thrust=rows[:, 4].astype(np.float32),
                                                safe=rows[:, 5].astype(np.int8))

    def swap_model(self, path: str, version: str) -> bool:
        """Fly on the evolved SNN model at `path` ("" = the configured one) from the next tick on.

        Only an `snn` controller takes a model. The new one must load, have consistent finite
        arrays (`SNNModel.check`), run at this loop's rate, and give a finite command on a probe
        step before it replaces the flying controller; otherwise ModelError, and the old one stays.
        The new controller starts from rest (its own network state), at the last altitude read.
        """
        from operators.control.snn import SNNController, SNNModel

        if self.params.controller != "snn":
            return False
        where = f"node '{self.node}': model {version}"
        try:
            model = SNNModel.load(path or self.params.model).check(where)
        except DataError as exc:
            raise ModelError(f"{where}: {exc}") from None
        dt = 1.0 / self.params.rate_hz
        if abs(model.dt_s - dt) > 1e-9:
            raise ModelError(f"{where} was evolved at dt {model.dt_s} s; this loop runs at {dt} s")
        ctl = SNNController(model, self.params.plant.motor.u_max)
        try:
            u = SNNController(model, self.params.plant.motor.u_max).step(self.params.base_m, self.params.base_m)
        except Exception as exc:
            raise ModelError(f"{where} fails a probe step: {type(exc).__name__}: {exc}") from None
        if not np.isfinite(u):
            raise ModelError(f"{where} gives a non-finite command on a probe step")
        ctl.prev = getattr(self.loop.controller, "prev", float("nan"))
        self.loop.controller = ctl
        return True

    def state(self):
        loop = getattr(self, "loop", None)
        return None if loop is None else {"x": loop.x.tolist(), "t": loop.t, "counts": dict(loop.counts),
                                          "controller": loop.controller.state()}

    def restore(self, state):
        self.loop.x[:] = state["x"]
        self.loop.t = state["t"]
        self.loop.counts = dict(state["counts"])
        self.loop.controller.restore(state["controller"])


class MotorParams(Params):
    safe: Literal["zero", "hover"] = "hover"
    hover_thrust: float | None = Field(None, description="hover command; default: from `plant`")
    command_timeout_s: float = Field(0.5, gt=0, description="a gap this long in commands -> safe state")
    plant: PlantParams = PlantParams()


@register
class Motor(Operator):
    """The rotor driver: holds the last command; on a fault it switches to zero or hover thrust."""

    name = "motor"
    inputs = {"in": "commands"}
    actuator = True
    Params = MotorParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        p = self.params
        hover = p.hover_thrust if p.hover_thrust is not None else hover_command(p.plant)
        self.safe_value = 0.0 if p.safe == "zero" else float(hover)
        self.command = 0.0
        self.commands = 0
        self.safe_events: list[str] = []
        self.loop_safe_ticks = 0
        self.last_t: int | None = None

    def schemas(self, inputs):
        if "thrust" not in inputs["in"].names:
            raise ValueError(f"motor needs a 'thrust' column, the stream has {inputs['in'].names}")
        return {}

    def process(self, port, batch):
        if batch.num_rows == 0:
            return None
        t = sch.column(batch, "t")
        if self.last_t is not None and (t[0] - self.last_t) > self.params.command_timeout_s * 1e6:
            self.safe_state(f"no command for {(t[0] - self.last_t) / 1e6:.2f} s")
        self.last_t = int(t[-1])
        thrust = sch.column(batch, "thrust")
        if batch.schema.get_field_index("safe") >= 0:
            self.loop_safe_ticks += int(sch.column(batch, "safe").sum())
        self.command = float(thrust[-1]) if np.isfinite(thrust[-1]) else self.safe_value
        self.commands += batch.num_rows
        return None

    def safe_state(self, reason: str) -> None:
        self.command = self.safe_value
        self.safe_events.append(reason)

    def state(self):
        return {"command": self.command, "commands": self.commands, "last_t": self.last_t}

    def restore(self, state):
        self.command, self.commands, self.last_t = state["command"], state["commands"], state["last_t"]

    def result(self):
        return {"commands": self.commands, "last_command": self.command, "safe_states": len(self.safe_events),
                "safe_reasons": self.safe_events[-5:], "loop_safe_ticks": self.loop_safe_ticks}


class MonitorParams(Params):
    band_m: float = Field(0.05, gt=0, description="settling band")


@register
class LoopMonitor(Operator):
    """Scores a flight from its telemetry: RMSE, overshoot, settling, steady-state error, effort."""

    name = "loop_monitor"
    inputs = {"in": "samples"}
    Params = MonitorParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.parts: list[np.ndarray] = []
        self.rate_hz = 10.0

    def schemas(self, inputs):
        missing = [c for c in ("setpoint", "z", "applied") if c not in inputs["in"].names]
        if missing:
            raise ValueError(f"loop_monitor needs telemetry columns {missing} (from blimp_loop.telemetry)")
        self.rate_hz = float(sch.fact(inputs["in"], "rate_hz", 10.0))
        return {}

    def process(self, port, batch):
        cols = [c for c in TELEMETRY if batch.schema.get_field_index(c) >= 0]
        self.parts.append(np.column_stack([sch.column(batch, c).astype(np.float64) for c in cols]))
        self.cols = cols

    def result(self):
        if not self.parts:
            return {"ticks": 0}
        data = np.vstack(self.parts)
        run = {c: data[:, i] for i, c in enumerate(self.cols)}
        out = {k: round(v, 4) for k, v in metrics(run, 1.0 / self.rate_hz, self.params.band_m).items()}
        out["ticks"] = len(data)
        out["safe_ticks"] = int(run.get("safe", np.zeros(1)).sum())
        out["nan_readings"] = int(run.get("nan_reading", np.zeros(1)).sum())
        return out
