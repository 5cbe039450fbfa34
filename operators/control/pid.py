"""A discrete PID with back-calculation anti-windup and a filtered derivative on measurement.

The derivative acts on the measurement, not the error, so set-point steps do not kick the
motor; it is low-passed with time constant `tau_d_s` (Astrom & Murray, Feedback Systems,
ch. 10). Anti-windup feeds the saturation excess back into the integrator with gain `k_aw`.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from pydantic import Field

from pipeline.operator import Params


class PIDParams(Params):
    kp: float = Field(9.0, ge=0, description="proportional gain (command units per m)")
    ki: float = Field(2.5, ge=0, description="integral gain (per m s)")
    kd: float = Field(9.0, ge=0, description="derivative gain (per m/s)")
    tau_d_s: float = Field(0.3, ge=0, description="derivative low-pass time constant")
    k_aw: float = Field(1.0, ge=0, description="anti-windup back-calculation gain")
    u_max: float = Field(3.3, gt=0, description="output saturation")


@njit(cache=True)
def pid_step(state: np.ndarray, setpoint: float, measured: float, dt: float, g: np.ndarray) -> float:
    """One PID update. state = [integral, d_filtered, previous measurement, primed]; g = gains."""
    kp, ki, kd, tau_d, k_aw, u_max = g[0], g[1], g[2], g[3], g[4], g[5]
    e = setpoint - measured
    if state[3] == 0.0:
        state[2] = measured
        state[3] = 1.0
    raw_d = -(measured - state[2]) / dt
    alpha = dt / (tau_d + dt)
    state[1] += alpha * (raw_d - state[1])
    state[2] = measured
    u_raw = kp * e + state[0] + kd * state[1]
    u = min(max(u_raw, -u_max), u_max)
    state[0] += ki * e * dt + k_aw * (u - u_raw) * dt
    return u


class PID:
    """Stateful wrapper: `step(setpoint, measured) -> u`; `state()`/`restore()` are plain lists."""

    kind = "pid"

    def __init__(self, p: PIDParams | None = None, dt: float = 0.1):
        self.p = p or PIDParams()
        self.dt = dt
        self.g = np.array([self.p.kp, self.p.ki, self.p.kd, self.p.tau_d_s, self.p.k_aw, self.p.u_max])
        self.s = np.zeros(4)

    def reset(self) -> None:
        self.s[:] = 0.0

    def step(self, setpoint: float, measured: float) -> float:
        return pid_step(self.s, setpoint, measured, self.dt, self.g)

    def state(self) -> list[float]:
        return self.s.tolist()

    def restore(self, state) -> None:
        self.s[:] = state
