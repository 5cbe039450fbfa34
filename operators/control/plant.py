"""Blimp heave plants and an altimeter: pure kernels plus the pydantic params that fill them.

Two plant models share one motor model (saturation, dead zone, rotor-flip delay, first-order
thrust lag):

- `double_integrator`: z'' = gain * u + bias, the reference's fast test plant.
- `heave`: (m + m_added) z'' = F_thrust + F_net_lift + F_disturbance - d1 z' - d2 z'|z'|,
  a first-principles vertical model of a small indoor blimp.

Default values are orders of magnitude for ~1 m-long helium indoor blimps (see docs/control.md
for the sources); they are not identified from one particular airframe.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numba import njit
from pydantic import Field, model_validator

from pipeline.operator import Params

G = 9.81


class MotorParams(Params):
    """The vertical rotor: command limits, dead zone, flip delay and thrust lag."""

    u_max: float = Field(3.3, gt=0, description="command saturation (|u| <= u_max)")
    dead_zone: float = Field(0.1, ge=0, description="commands with |u| below this give no thrust")
    flip_delay_s: float = Field(0.2, ge=0, description="rotor stands still this long when it reverses")
    tau_s: float = Field(0.1, gt=0, description="first-order thrust lag time constant")
    thrust_n_per_u: float = Field(0.045, gt=0, description="thrust per unit command (N)")

    @model_validator(mode="after")
    def _dead_zone_below_max(self):
        if self.dead_zone >= self.u_max:
            raise ValueError(f"dead_zone ({self.dead_zone}) must be below u_max ({self.u_max})")
        return self


class PlantParams(Params):
    """Vertical blimp dynamics; `model` picks the double integrator or the heave model."""

    model: Literal["heave", "double_integrator"] = "heave"
    mass_kg: float = Field(0.25, gt=0, description="blimp mass including helium")
    added_mass_kg: float = Field(0.12, ge=0, description="added (virtual) mass of air in heave")
    net_lift_n: float = Field(-0.03, description="buoyancy minus weight (N); negative = heavy")
    drag_lin_ns_per_m: float = Field(0.03, ge=0, description="linear drag coefficient")
    drag_quad_ns2_per_m2: float = Field(0.15, ge=0, description="quadratic drag 0.5*rho*Cd*A")
    di_gain: float = Field(0.12, gt=0, description="double integrator: m/s^2 per unit thrust")
    di_bias: float = Field(-0.08, description="double integrator: constant acceleration bias (m/s^2)")
    floor_m: float = Field(0.0, description="the ground; the blimp rests on it")
    z0_m: float = Field(1.0, description="initial altitude")
    substeps: int = Field(10, ge=1, le=1000, description="integration substeps per control step")
    motor: MotorParams = MotorParams()


class AltimeterParams(Params):
    """A range sensor: sample rate, latency, white noise, bias, dropouts."""

    rate_hz: float = Field(25.0, gt=0, le=1000, description="sample rate")
    latency_s: float = Field(0.04, ge=0, le=1.0, description="delay from measurement to reading")
    noise_m: float = Field(0.01, ge=0, description="white noise standard deviation")
    bias_m: float = Field(0.0, description="constant offset")
    dropout: float = Field(0.0, ge=0, lt=1, description="probability a reading is NaN")
    stop_after_s: float | None = Field(None, gt=0, description="the sensor goes silent after this time")


def plant_vector(p: PlantParams) -> np.ndarray:
    """The plant params as the float64 vector the kernel takes (order fixed here)."""
    m = p.motor
    return np.array(
        [
            0.0 if p.model == "heave" else 1.0,
            p.mass_kg + p.added_mass_kg,
            p.net_lift_n,
            p.drag_lin_ns_per_m,
            p.drag_quad_ns2_per_m2,
            p.di_gain,
            p.di_bias,
            m.u_max,
            m.dead_zone,
            m.flip_delay_s,
            m.tau_s,
            m.thrust_n_per_u,
            p.floor_m,
        ],
        dtype=np.float64,
    )


def plant_state(p: PlantParams) -> np.ndarray:
    """Initial state: [z, vz, thrust_level, rotor_direction, flip_timer]."""
    return np.array([p.z0_m, 0.0, 0.0, 0.0, 0.0])


@njit(cache=True)
def motor_command(u: float, u_max: float, dead_zone: float) -> float:
    """Saturate and apply the dead zone: what the rotor is asked to do."""
    if u != u:  # NaN command -> no thrust
        return 0.0
    if u > u_max:
        u = u_max
    elif u < -u_max:
        u = -u_max
    if abs(u) < dead_zone:
        return 0.0
    return u


@njit(cache=True)
def plant_step(state: np.ndarray, u_cmd: float, force_n: float, dt: float, substeps: int, p: np.ndarray) -> float:
    """Advance `state` in place by `dt` under command `u_cmd`; return the applied command.

    `force_n` is an external disturbance force (gusts; for the double integrator it is
    taken as an acceleration). Semi-implicit Euler over `substeps`.
    """
    is_di = p[0] > 0.5
    m, lift, d1, d2, di_gain, di_bias = p[1], p[2], p[3], p[4], p[5], p[6]
    u_max, dead, flip_delay, tau_m, k_t, floor = p[7], p[8], p[9], p[10], p[11], p[12]
    u = motor_command(u_cmd, u_max, dead)
    sign = 0.0
    if u > 0:
        sign = 1.0
    elif u < 0:
        sign = -1.0
    if sign != 0.0 and state[3] != 0.0 and sign != state[3]:
        state[4] = flip_delay  # the rotor must stop and reverse
    if sign != 0.0:
        state[3] = sign
    h = dt / substeps
    for _ in range(substeps):
        target = u
        if state[4] > 0.0:
            target = 0.0
            state[4] -= h
        state[2] += (target - state[2]) * min(1.0, h / tau_m)
        z, v = state[0], state[1]
        if is_di:
            acc = di_gain * state[2] + di_bias + force_n
        else:
            f = k_t * state[2] + lift + force_n - d1 * v - d2 * v * abs(v)
            acc = f / m
        v += acc * h
        z += v * h
        if z < floor:
            z = floor
            if v < 0:
                v = 0.0
        state[0], state[1] = z, v
    return u


class Altimeter:
    """Samples true altitude at `rate_hz`, delivers it `latency_s` later with noise and bias."""

    def __init__(self, p: AltimeterParams, seed: int = 0):
        self.p = p
        self.rng = np.random.default_rng(seed)
        self.samples: list[tuple[float, float]] = []  # (sample time, value) in flight
        self.next_sample_t = 0.0
        self.latest = float("nan")
        self.latest_t = float("-inf")

    def observe(self, t: float, z_true: float) -> None:
        """Take every sample due up to time `t` (called once per plant step with its altitude)."""
        p = self.p
        while self.next_sample_t <= t + 1e-9:
            if p.stop_after_s is not None and self.next_sample_t >= p.stop_after_s:
                self.next_sample_t = float("inf")
                break
            value = z_true + p.bias_m + p.noise_m * self.rng.standard_normal()
            if p.dropout and self.rng.random() < p.dropout:
                value = float("nan")
            self.samples.append((self.next_sample_t, value))
            self.next_sample_t += 1.0 / p.rate_hz

    def read(self, t: float) -> tuple[float, float]:
        """(value, sample time) of the newest reading delivered by time `t`; NaN if none new."""
        delivered = None
        while self.samples and self.samples[0][0] + self.p.latency_s <= t + 1e-9:
            delivered = self.samples.pop(0)
        if delivered is None:
            return float("nan"), self.latest_t
        self.latest, self.latest_t = delivered[1], delivered[0]
        return delivered[1], delivered[0]
