"""The closed loop itself (altimeter -> controller -> watchdog -> motor -> plant), profiles and metrics.

`ClosedLoop.tick(setpoint)` is one control period. The `blimp_loop` operator, the evaluation
and the evolution's training data all run through it, so they see the same loop.

Watchdog: a control period falls back to the safe command (zero or hover thrust) when
the controller's wall-clock time exceeds `deadline_ms`, when it returns NaN, or when the
altimeter has delivered no valid reading for `sensor_timeout_s`. A NaN or missing reading
inside the timeout is counted and the last valid one is held.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
from pydantic import Field

from operators.control.pid import PID, PIDParams
from operators.control.plant import (
    Altimeter,
    AltimeterParams,
    PlantParams,
    motor_command,
    plant_state,
    plant_step,
    plant_vector,
)
from pipeline.operator import Params


class WatchdogParams(Params):
    deadline_ms: float | None = Field(50.0, gt=0, description="controller compute deadline per period")
    sensor_timeout_s: float = Field(0.5, gt=0, description="no valid reading this long -> safe state")
    safe: Literal["zero", "hover"] = Field("hover", description="safe command: zero or hover thrust")


class DisturbanceParams(Params):
    gust_n: float = Field(0.0, ge=0, description="std of the gust force (N), Ornstein-Uhlenbeck")
    gust_tau_s: float = Field(2.0, gt=0, description="gust correlation time")
    lift_drift_n_per_min: float = Field(0.0, description="buoyancy drift (helium leak, heating)")


class NoControl:
    """The open-loop baseline: always commands zero."""

    kind = "none"

    def reset(self):
        pass

    def step(self, setpoint, measured):
        return 0.0

    def state(self):
        return None

    def restore(self, state):
        pass


def hover_command(p: PlantParams) -> float:
    """The command that cancels the net lift (or the double integrator's bias)."""
    m = p.motor
    u = -p.di_bias / p.di_gain if p.model == "double_integrator" else -p.net_lift_n / m.thrust_n_per_u
    u = float(np.clip(u, -m.u_max, m.u_max))
    if abs(u) < m.dead_zone:  # inside the dead zone the rotor does nothing anyway
        return 0.0
    return u


class ClosedLoop:
    """One blimp, its altimeter, a controller and the watchdog, stepped at `dt_s`."""

    def __init__(
        self,
        plant: PlantParams,
        altimeter: AltimeterParams,
        controller,
        dt_s: float = 0.1,
        watchdog: WatchdogParams | None = None,
        disturbance: DisturbanceParams | None = None,
        seed: int = 0,
        clock=time.perf_counter,
    ):
        """`clock` (seconds) times the controller against the deadline; tests pass one they advance."""
        self.plant, self.alt_p, self.controller, self.dt = plant, altimeter, controller, dt_s
        self.clock = clock
        self.wd = watchdog or WatchdogParams()
        self.dist = disturbance or DisturbanceParams()
        self.seed = seed
        self.p = plant_vector(plant)
        self.safe_u = 0.0 if self.wd.safe == "zero" else hover_command(plant)
        self.reset()

    def reset(self) -> None:
        self.x = plant_state(self.plant)
        self.altimeter = Altimeter(self.alt_p, seed=self.seed)
        self.rng = np.random.default_rng(self.seed + 1)
        self.t = 0.0
        self.gust = 0.0
        self.last_valid = self.plant.z0_m
        self.last_valid_t = 0.0
        self.counts = {"ticks": 0, "nan_readings": 0, "deadline_misses": 0, "sensor_timeouts": 0, "safe_ticks": 0}
        self.controller.reset()
        self.controller.step(0.0, 0.0)  # compile kernels now, not inside the first deadline
        self.controller.reset()
        self.altimeter.observe(0.0, self.x[0])

    def _disturbance(self) -> float:
        d = self.dist
        if d.gust_n > 0:
            a = math.exp(-self.dt / d.gust_tau_s)
            self.gust = a * self.gust + d.gust_n * math.sqrt(1 - a * a) * self.rng.standard_normal()
        f = self.gust + d.lift_drift_n_per_min * self.t / 60.0
        if self.plant.model == "double_integrator":
            f /= self.plant.mass_kg + self.plant.added_mass_kg  # the DI takes an acceleration
        return f

    def tick(self, setpoint: float) -> tuple[float, float, float, float, bool]:
        """One period: (true altitude, reading used, command asked, command applied, safe?)."""
        c = self.counts
        c["ticks"] += 1
        reading, _ = self.altimeter.read(self.t)
        if math.isnan(reading):
            c["nan_readings"] += 1
        else:
            self.last_valid, self.last_valid_t = reading, self.t
        safe = False
        if self.t - self.last_valid_t > self.wd.sensor_timeout_s:
            c["sensor_timeouts"] += 1
            safe = True
            u = self.safe_u
        else:
            t0 = self.clock()
            u = float(self.controller.step(setpoint, self.last_valid))
            spent_ms = (self.clock() - t0) * 1e3
            if self.wd.deadline_ms is not None and spent_ms > self.wd.deadline_ms:
                c["deadline_misses"] += 1
                safe, u = True, self.safe_u
            elif math.isnan(u):
                safe, u = True, self.safe_u
        if safe:
            c["safe_ticks"] += 1
        applied = plant_step(self.x, u, self._disturbance(), self.dt, self.plant.substeps, self.p)
        self.t += self.dt
        self.altimeter.observe(self.t, self.x[0])
        return float(self.x[0]), self.last_valid, u, applied, safe

    def run(self, setpoints: np.ndarray) -> dict[str, np.ndarray]:
        """Run a whole set-point trajectory; arrays t, setpoint, z, measured, u, applied, safe."""
        n = len(setpoints)
        out = {k: np.zeros(n) for k in ("t", "setpoint", "z", "measured", "u", "applied", "safe")}
        for i, sp in enumerate(setpoints):
            out["t"][i] = self.t
            out["setpoint"][i] = sp
            z, meas, u, applied, safe = self.tick(float(sp))
            out["z"][i], out["measured"][i], out["u"][i], out["applied"][i], out["safe"][i] = z, meas, u, applied, safe
        return out


# --- set-point profiles ---------------------------------------------------------------


def profile(kind: str, duration_s: float, dt_s: float = 0.1, base_m: float = 1.0, seed: int = 0) -> np.ndarray:
    """Set points: `step`, `staircase`, `sine`, or `random` (training: random holds and ramps)."""
    n = int(round(duration_s / dt_s))
    t = np.arange(n) * dt_s
    if kind == "step":
        return np.where(t >= 2.0, base_m + 1.0, base_m)
    if kind == "staircase":
        levels = base_m + np.array([0.0, 0.5, 1.0, 0.5, 0.0, 1.0, 0.25])
        hold = max(duration_s / len(levels), dt_s)
        return levels[np.minimum((t // hold).astype(int), len(levels) - 1)]
    if kind == "sine":
        return base_m + 0.5 + 0.5 * np.sin(2 * np.pi * t / 20.0)
    if kind == "random":
        rng = np.random.default_rng(seed)
        sp = np.empty(n)
        i, level = 0, base_m
        while i < n:
            hold = int(rng.uniform(4.0, 14.0) / dt_s)
            new = base_m + rng.uniform(-0.5, 1.2)
            if rng.random() < 0.3:  # a ramp instead of a step
                ramp = int(rng.uniform(2.0, 6.0) / dt_s)
                sp[i : i + ramp] = np.linspace(level, new, ramp)[: max(0, min(ramp, n - i))]
                i += ramp
            sp[i : i + hold] = new
            i += hold
            level = new
        return sp
    raise ValueError(f"unknown profile '{kind}' (expected step, staircase, sine, random)")


# --- metrics --------------------------------------------------------------------------


def _segments(sp: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of every hold that follows a set-point change."""
    changes = np.flatnonzero(np.abs(np.diff(sp)) > 1e-9) + 1
    bounds = list(changes) + [len(sp)]
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b - a > 5]


def _hold(sp: np.ndarray, z: np.ndarray, a: int, b: int) -> tuple[float, np.ndarray]:
    """Overshoot (m past the new set point) and the error over the last quarter of hold a..b."""
    direction = np.sign(sp[a] - sp[a - 1])
    over = max(0.0, float((direction * (z[a:b] - sp[a])).max()))
    tail = a + int(0.75 * (b - a))
    return over, sp[tail:b] - z[tail:b]


def metrics(run: dict[str, np.ndarray], dt_s: float = 0.1, band_m: float = 0.05) -> dict[str, float]:
    """RMSE, overshoot, settling time, steady-state error (all m / s) and mean |command|."""
    sp, z = run["setpoint"], run["z"]
    err = sp - z
    out = {"rmse_m": float(np.sqrt(np.mean(err**2))), "effort": float(np.mean(np.abs(run["applied"])))}
    segs = _segments(sp) if np.ptp(sp) > 0 and len(_segments(sp)) <= 20 else []
    if not segs:
        out.update(overshoot_m=math.nan, settling_s=math.nan, ss_error_m=math.nan, ss_std_m=math.nan)
        return out
    overs, settle, sse, sss = [], [], [], []
    for a, b in segs:
        over, tail = _hold(sp, z, a, b)
        overs.append(over)
        outside = np.flatnonzero(np.abs(err[a:b]) > band_m)
        # a hold that never settles counts as its whole length (censored)
        settle.append(0.0 if not len(outside) else (outside[-1] + 1) * dt_s)
        sse.append(float(np.abs(tail.mean())))
        sss.append(float(tail.std()))
    out.update(
        overshoot_m=float(max(overs)),
        settling_s=float(np.mean(settle)),
        ss_error_m=float(np.mean(sse)),
        ss_std_m=float(np.mean(sss)),
    )
    return out


def pid_traces(
    n: int, duration_s: float, seed: int = 0, dt_s: float = 0.1, pid: PIDParams | None = None,
    randomise: bool = True, model: str = "heave",
) -> tuple[np.ndarray, np.ndarray]:
    """Training data: (inputs, commands) of PID flying `n` random trajectories.

    inputs (n, T, 2) are what the SNN controller sees: the error and the climb-rate error
    (-(change of the reading) / dt, 0 on the first tick); commands (n, T) are the PID's.

    Plant mass, lift, drag, motor lag and sensor noise are drawn per trajectory so the
    SNN learns the PID's behaviour, not one airframe.
    """
    rng = np.random.default_rng(seed)
    T = int(round(duration_s / dt_s))
    inputs, commands = np.zeros((n, T, 2)), np.zeros((n, T))
    for i in range(n):
        base = PlantParams(model=model)
        if randomise:
            motor = base.motor.model_copy(update={"tau_s": rng.uniform(0.05, 0.2)})
            base = base.model_copy(update={
                "mass_kg": base.mass_kg * rng.uniform(0.8, 1.2),
                "net_lift_n": rng.uniform(-0.06, 0.04),
                "drag_lin_ns_per_m": base.drag_lin_ns_per_m * rng.uniform(0.5, 1.5),
                "di_bias": rng.uniform(-0.15, 0.1),
                "motor": motor,
            })
        alt = AltimeterParams(noise_m=rng.uniform(0.0, 0.02))
        dist = DisturbanceParams(gust_n=rng.uniform(0.0, 0.01))
        loop = ClosedLoop(base, alt, PID(pid, dt_s), dt_s, WatchdogParams(deadline_ms=None), dist, seed=seed * 1000 + i)
        run = loop.run(profile("random", duration_s, dt_s, seed=seed * 1000 + i))
        inputs[i, :, 0] = run["setpoint"] - run["measured"]
        inputs[i, 1:, 1] = -np.diff(run["measured"]) / dt_s
        commands[i] = run["u"]
    return inputs, commands


__all__ = ["ClosedLoop", "DisturbanceParams", "NoControl", "WatchdogParams", "hover_command", "metrics", "motor_command", "pid_traces", "profile"]
