"""PID behaviour: sign, integral action, anti-windup, no derivative kick, filtered derivative."""

import numpy as np
import pytest

from operators.control.pid import PID, PIDParams
from operators.control.plant import AltimeterParams, PlantParams
from operators.control.sim import ClosedLoop, WatchdogParams, metrics, profile


def test_proportional_sign_and_saturation():
    pid = PID(PIDParams(kp=2.0, ki=0.0, kd=0.0))
    assert pid.step(1.0, 0.5) == pytest.approx(1.0)
    assert PID(PIDParams(kp=100.0, ki=0, kd=0)).step(1.0, 0.0) == 3.3
    assert PID(PIDParams(kp=100.0, ki=0, kd=0)).step(0.0, 1.0) == -3.3


def test_integral_removes_the_bias_of_a_double_integrator():
    plant = PlantParams(model="double_integrator", di_bias=-0.1)
    runs = {}
    for ki in (0.0, 2.5):
        loop = ClosedLoop(plant, AltimeterParams(noise_m=0.0), PID(PIDParams(ki=ki)), watchdog=WatchdogParams(deadline_ms=None))
        runs[ki] = metrics(loop.run(profile("step", 60.0)))
    assert runs[0.0]["ss_error_m"] > 0.05  # P+D alone leaves the bias's offset
    assert runs[2.5]["ss_error_m"] < 0.01


def test_anti_windup_bounds_the_integrator_under_saturation():
    def integral_after(k_aw):
        pid = PID(PIDParams(k_aw=k_aw))
        for _ in range(200):  # a large error the actuator cannot remove
            pid.step(10.0, 0.0)
        return pid.state()[0]

    assert abs(integral_after(1.0)) < 0.3 * abs(integral_after(0.0))


def test_derivative_acts_on_measurement_so_setpoint_steps_do_not_kick():
    pid = PID(PIDParams(kp=0.0, ki=0.0, kd=5.0))
    pid.step(0.0, 0.0)
    assert pid.step(1.0, 0.0) == 0.0  # set point jumped, measurement did not
    u = pid.step(1.0, 0.1)  # measurement rises -> damping pushes down, filtered
    raw = -5.0 * 0.1 / 0.1
    assert raw < u < 0.0


def test_state_round_trip():
    a, b = PID(), PID()
    for sp in np.linspace(0, 1, 7):
        a.step(sp, 0.2)
    b.restore(a.state())
    assert a.step(1.0, 0.3) == b.step(1.0, 0.3)
