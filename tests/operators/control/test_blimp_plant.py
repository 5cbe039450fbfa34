"""Plant physics sanity: the motor model and both plants behave as their equations say."""

import numpy as np
import pytest
from pydantic import ValidationError

from operators.control.plant import (
    Altimeter,
    AltimeterParams,
    MotorParams,
    PlantParams,
    motor_command,
    plant_state,
    plant_step,
    plant_vector,
)
from operators.control.sim import hover_command


def fly(p: PlantParams, commands, force=0.0, dt=0.1):
    x, vec = plant_state(p), plant_vector(p)
    zs, applied = [], []
    for u in commands:
        applied.append(plant_step(x, u, force, dt, p.substeps, vec))
        zs.append(x.copy())
    return np.array(zs), np.array(applied)


def test_motor_saturates_and_has_a_dead_zone():
    assert motor_command(10.0, 3.3, 0.1) == 3.3
    assert motor_command(-10.0, 3.3, 0.1) == -3.3
    assert motor_command(0.05, 3.3, 0.1) == 0.0
    assert motor_command(float("nan"), 3.3, 0.1) == 0.0
    assert motor_command(0.5, 3.3, 0.1) == 0.5


def test_heavy_blimp_sinks_to_terminal_velocity_and_rests_on_the_floor():
    p = PlantParams(z0_m=50.0, net_lift_n=-0.05)
    xs, _ = fly(p, [0.0] * 600)
    v_end = xs[-1, 1]
    # terminal velocity solves lift = d1 v + d2 v|v|
    d1, d2 = p.drag_lin_ns_per_m, p.drag_quad_ns2_per_m2
    v_term = -(-d1 + np.sqrt(d1 * d1 + 4 * d2 * 0.05)) / (2 * d2)
    assert v_end == pytest.approx(v_term, rel=0.02)
    xs, _ = fly(PlantParams(z0_m=0.5, net_lift_n=-0.05), [0.0] * 200)
    assert xs[-1, 0] == 0.0 and xs[-1, 1] == 0.0


def test_hover_command_holds_altitude():
    p = PlantParams(z0_m=1.0, net_lift_n=-0.03)
    u = hover_command(p)
    assert u == pytest.approx(0.03 / p.motor.thrust_n_per_u)
    xs, _ = fly(p, [u] * 300)
    falling, _ = fly(p, [0.0] * 300)
    assert abs(xs[-1, 1]) < 0.005  # forces balance: only the motor-lag transient's drift is left
    assert abs(xs[-1, 0] - 1.0) < 0.15 and falling[-1, 0] < 0.5


def test_double_integrator_follows_its_equation():
    p = PlantParams(model="double_integrator", di_gain=0.2, di_bias=-0.1, z0_m=10.0, motor=MotorParams(tau_s=1e-4))
    xs, _ = fly(p, [1.5] * 50)
    acc = 0.2 * 1.5 - 0.1
    assert xs[-1, 0] == pytest.approx(10.0 + 0.5 * acc * 5.0**2, rel=0.01)


def test_rotor_flip_waits_before_reversing():
    p = PlantParams(motor=MotorParams(flip_delay_s=0.5, tau_s=0.01))
    x, vec = plant_state(p), plant_vector(p)
    for _ in range(10):
        plant_step(x, 2.0, 0.0, 0.1, 10, vec)
    assert x[2] == pytest.approx(2.0, rel=1e-3)
    plant_step(x, -2.0, 0.0, 0.1, 10, vec)
    assert abs(x[2]) < 0.01  # stopped, not yet reversed
    for _ in range(6):
        plant_step(x, -2.0, 0.0, 0.1, 10, vec)
    assert x[2] == pytest.approx(-2.0, rel=1e-2)


def test_thrust_lags_the_command():
    p = PlantParams(motor=MotorParams(tau_s=1.0, flip_delay_s=0.0))
    x, vec = plant_state(p), plant_vector(p)
    plant_step(x, 3.0, 0.0, 1.0, 100, vec)
    assert x[2] == pytest.approx(3.0 * (1 - np.exp(-1.0)), rel=0.02)


def test_altimeter_latency_rate_noise_and_stop():
    alt = Altimeter(AltimeterParams(rate_hz=20, latency_s=0.1, noise_m=0.0, bias_m=0.05, stop_after_s=1.0))
    readings = []
    for k in range(30):
        t = k * 0.1
        alt.observe(t, z_true=t)  # altitude equals time
        readings.append(alt.read(t)[0])
    assert np.isnan(readings[0])
    assert readings[5] == pytest.approx(0.4 + 0.05)  # the newest sample delivered by t=0.5 was taken at 0.4
    assert all(np.isnan(readings[-5:]))  # silent after stop


def test_bad_motor_params_are_rejected():
    with pytest.raises(ValidationError, match="dead_zone"):
        MotorParams(dead_zone=5.0)
    with pytest.raises(ValidationError):
        PlantParams(mass_kg=-1.0)
