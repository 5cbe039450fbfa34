"""The closed loop as a pipeline: watchdog safe states, NaN handling, config errors, eval runner."""

from pathlib import Path

import numpy as np
import pytest
import yaml

import pipeline
from operators.control.loop import Motor, MotorParams
from operators.control.pid import PID
from operators.control.plant import AltimeterParams, PlantParams
from operators.control.sim import ClosedLoop, WatchdogParams, hover_command, profile
from pipeline import schemas as sch
from pipeline.errors import ConfigError
from pipeline.graph import Graph

CONFIG = Path(__file__).parents[3] / "configs" / "blimp_altitude.yaml"


class Clock:
    """Time that passes only when a controller says it spent it (deadlines without load flakes)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class SlowPID(PID):
    """A PID that takes 20 ms of `clock` time from tick `late_from` on, and none before."""

    def __init__(self, late_from, clock):
        super().__init__()
        self.late_from, self.calls, self.clock = late_from, 0, clock

    def reset(self):
        super().reset()
        self.calls = 0

    def step(self, setpoint, measured):
        self.calls += 1
        if self.calls > self.late_from:
            self.clock.now += 0.02
        return super().step(setpoint, measured)


def test_sensor_stop_puts_the_motor_in_hover():
    plant = PlantParams()
    loop = ClosedLoop(plant, AltimeterParams(stop_after_s=3.0), PID(), watchdog=WatchdogParams(sensor_timeout_s=0.5, safe="hover"))
    run = loop.run(profile("step", 10.0))
    t_safe = run["t"][run["safe"] > 0]
    assert loop.counts["sensor_timeouts"] > 0
    assert 3.4 <= t_safe.min() <= 3.8  # stop + latency + timeout
    assert np.all(run["u"][run["safe"] > 0] == pytest.approx(hover_command(plant)))
    assert np.all(run["safe"][run["t"] > 4.0] == 1)


def test_deadline_miss_gives_zero_thrust_when_configured():
    clock = Clock()
    loop = ClosedLoop(PlantParams(), AltimeterParams(), SlowPID(late_from=20, clock=clock),
                      watchdog=WatchdogParams(deadline_ms=5.0, safe="zero"), clock=clock)
    run = loop.run(profile("step", 3.0))
    assert loop.counts["deadline_misses"] == 10
    assert np.all(run["u"][20:] == 0.0) and np.all(run["safe"][20:] == 1)
    assert not run["safe"][:20].any()


def test_nan_readings_are_counted_and_never_reach_the_motor():
    loop = ClosedLoop(PlantParams(), AltimeterParams(dropout=0.3), PID(), seed=3)
    run = loop.run(profile("staircase", 30.0))
    assert loop.counts["nan_readings"] > 20
    assert np.all(np.isfinite(run["u"])) and np.all(np.isfinite(run["measured"]))
    assert np.sqrt(np.mean((run["setpoint"] - run["z"]) ** 2)) < 0.5  # still flies


def test_motor_sink_goes_safe_on_a_command_gap_and_on_request():
    m = Motor(MotorParams(safe="zero", command_timeout_s=0.5))
    schema = sch.commands_schema({"thrust": "float32", "safe": "int8"})
    m.process("in", sch.commands_batch([0], schema, thrust=[1.5], safe=[0]))
    assert m.command == 1.5
    m.process("in", sch.commands_batch([2_000_000], schema, thrust=[1.0], safe=[0]))
    assert m.result()["safe_states"] == 1 and "no command" in m.result()["safe_reasons"][0]
    m.safe_state("test")
    assert m.command == 0.0 and Motor.actuator


def short_graph(**loop):
    cfg = yaml.safe_load(CONFIG.read_text())
    params = cfg["nodes"]["loop"]["params"]
    params.update({"pacing": "max", "duration_s": 10.0, "controller": "pid", "ticks_per_batch": 10})
    params.update(loop)
    return Graph.from_dict(cfg)


def test_config_runs_as_a_pipeline_with_pid():
    result = pipeline.run(short_graph(), "local")
    mon, motor = result.results["monitor"], result.results["motor"]
    assert mon["ticks"] == 100 and motor["commands"] == 100
    assert mon["rmse_m"] < 0.6
    assert motor["loop_safe_ticks"] == 0 and mon["safe_ticks"] == 0  # (the motor budget is wall-clock: not asserted)


def test_sensor_stop_in_the_pipeline_shows_in_results():
    result = pipeline.run(short_graph(altimeter={"stop_after_s": 2.0}), "local")
    assert result.results["monitor"]["safe_ticks"] > 60
    assert result.results["motor"]["loop_safe_ticks"] == result.results["monitor"]["safe_ticks"]


@pytest.mark.parametrize(
    "override, field",
    [
        ("loop.controller=lqr", "controller"),
        ("loop.rate_hz=-5", "rate_hz"),
        ("loop.plant.motor.dead_zone=4.0", "dead_zone"),
        ("loop.watchdog.safe=panic", "safe"),
        ("loop.altimeter.dropout=1.5", "dropout"),
    ],
)
def test_bad_config_values_are_clear_errors(override, field):
    with pytest.raises(ConfigError, match=field):
        Graph.from_yaml(CONFIG, [override])


def test_missing_model_file_fails_at_setup_naming_the_node(tmp_path):
    g = short_graph(controller="snn", model=str(tmp_path / "missing.json"))
    with pytest.raises(pipeline.OperatorError, match="loop.*cannot read SNN model"):
        pipeline.run(g, "local")


def test_eval_runner_quick(tmp_path):
    from operators.control.evaluate import run

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["eval"]["profiles"] = {"step": 12, "staircase": 20}
    report = run(CONFIG, cfg, tmp_path, quick=True)
    st = report["profiles"]["staircase"]
    assert st["pid"]["rmse_m"] < st["none"]["rmse_m"]
    assert st["snn"]["rmse_m"] < st["none"]["rmse_m"]
    assert set(report["targets"]) == {"staircase_rmse_within_10pct_of_pid", "snn_steady_state_error_le_3cm", "snn_overshoot_below_pid"}
    assert all(Path(p).stat().st_size > 1000 for p in report["plots"])
    assert report["pipeline"]["monitor"]["ticks"] == 200


def test_same_flight_under_local_and_ray(ray_session):
    local = pipeline.run(short_graph(), "local").results
    remote = pipeline.run(short_graph(), "ray").results
    assert remote["monitor"] == local["monitor"]
    assert remote["motor"]["last_command"] == local["motor"]["last_command"]
