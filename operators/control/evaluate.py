"""`reflexarc eval configs/blimp_altitude.yaml`: no control vs PID vs evolved SNN on the blimp.

Flies step, staircase and sine set-point profiles under gusts and buoyancy drift with the
plant, altimeter and watchdog of the config's `blimp_loop` node; prints a table, writes
PNG plots and checks the targets (SNN staircase RMSE within 10% of PID's, steady-state
error <= 3 cm, overshoot below PID's). Finally runs the config itself as a pipeline
(local executor, max pacing) so the report also covers the operator path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from operators.control.loop import BlimpLoopParams, make_controller
from operators.control.sim import ClosedLoop, DisturbanceParams, metrics, profile
from pipeline.errors import ConfigError

DEFAULT_PROFILES = {"step": 30.0, "staircase": 84.0, "sine": 60.0}
COLUMNS = [("rmse_m", "RMSE [cm]", 100), ("overshoot_m", "overshoot [cm]", 100), ("settling_s", "settling [s]", 1),
           ("ss_error_m", "ss error [cm]", 100), ("ss_std_m", "ss std [cm]", 100), ("effort", "effort |u|", 1)]


def _loop_params(config: dict, node: str, path) -> BlimpLoopParams:
    spec = (config.get("nodes") or {}).get(node)
    if not isinstance(spec, dict) or spec.get("op") != "blimp_loop":
        raise ConfigError(f"eval.loop_node '{node}' must name a 'blimp_loop' node", str(path))
    try:
        return BlimpLoopParams(**(spec.get("params") or {}))
    except Exception as exc:
        raise ConfigError(f"nodes.{node}.params: {exc}", str(path)) from None


def fly(lp: BlimpLoopParams, controller: str, prof: str, duration_s: float, dist: DisturbanceParams, seed: int) -> dict:
    """One flight with the loop node's plant/sensor/watchdog; returns the run arrays."""
    dt = 1.0 / lp.rate_hz
    ctl = make_controller(controller, dt, lp.pid, lp.model, lp.plant.motor.u_max)
    loop = ClosedLoop(lp.plant, lp.altimeter, ctl, dt, lp.watchdog, dist, seed)
    run = loop.run(profile(prof, duration_s, dt, lp.base_m, seed))
    run["counts"] = dict(loop.counts)
    return run


def _plot(out_dir: Path, prof: str, runs: dict[str, dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    first = next(iter(runs.values()))
    ax1.plot(first["t"], first["setpoint"], "k--", lw=1, label="set point")
    for name, run in runs.items():
        ax1.plot(run["t"], run["z"], lw=1.2, label=name)
        ax2.plot(run["t"], run["applied"], lw=1, label=name)
    ax1.set_ylabel("altitude [m]")
    ax2.set_ylabel("motor command")
    ax2.set_xlabel("time [s]")
    ax1.legend(loc="best", fontsize=8)
    ax1.set_title(f"blimp altitude, {prof} profile (gusts + buoyancy drift)")
    fig.tight_layout()
    path = out_dir / f"blimp_{prof}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _mean(ms: list[dict]) -> dict:
    return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}


def run(config_path, config: dict, out_dir: Path, quick: bool = False) -> dict:
    """The eval runner the config's `eval:` names; returns the report (also printed as a table)."""
    from rich.console import Console
    from rich.table import Table

    spec = config.get("eval") or {}
    lp = _loop_params(config, spec.get("loop_node", "loop"), config_path)
    try:
        dist = DisturbanceParams(**(spec.get("disturbance") or {}))
    except Exception as exc:
        raise ConfigError(f"eval.disturbance: {exc}", str(config_path)) from None
    profiles = dict(spec.get("profiles") or DEFAULT_PROFILES)
    controllers = list(spec.get("controllers") or ["none", "pid", "snn"])
    seeds = 1 if quick else int(spec.get("seeds", 3))
    targets = {"rmse_ratio": 1.10, "ss_error_m": 0.03} | dict(spec.get("targets") or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"profiles": {}, "plots": [], "seeds": seeds}
    table = Table(title="blimp altitude control (mean over seeds)")
    table.add_column("profile")
    table.add_column("controller")
    for _, title, _ in COLUMNS:
        table.add_column(title, justify="right")
    for prof, duration in profiles.items():
        duration = min(float(duration), 30.0) if quick else float(duration)
        shown = {}
        report["profiles"][prof] = {}
        for ctl in controllers:
            runs = [fly(lp, ctl, prof, duration, dist, seed) for seed in range(seeds)]
            shown[ctl] = runs[0]
            m = _mean([metrics(r, 1.0 / lp.rate_hz) for r in runs])
            m["safe_ticks"] = int(sum(r["counts"]["safe_ticks"] for r in runs))
            report["profiles"][prof][ctl] = m
            table.add_row(prof, ctl, *["-" if math.isnan(m[k]) else f"{m[k] * s:.2f}" for k, _, s in COLUMNS])
        report["plots"].append(str(_plot(out_dir, prof, shown)))
    report["targets"] = _targets(report["profiles"], targets)
    report["pipeline"] = _pipeline_run(config_path, quick)
    console = Console()
    console.print(table)
    for name, t in report["targets"].items():
        mark = "[green]met[/]" if t["met"] else "[red]missed[/]"
        console.print(f"  target {name}: {mark}  ({t['detail']})")
    return report


def _targets(profiles: dict, targets: dict) -> dict:
    out = {}
    st = profiles.get("staircase", {})
    if "pid" in st and "snn" in st:
        ratio = st["snn"]["rmse_m"] / st["pid"]["rmse_m"]
        out["staircase_rmse_within_10pct_of_pid"] = {
            "met": bool(ratio <= targets["rmse_ratio"]), "detail": f"SNN/PID RMSE = {ratio:.3f}"}
        out["snn_steady_state_error_le_3cm"] = {
            "met": bool(st["snn"]["ss_error_m"] <= targets["ss_error_m"]),
            "detail": f"{100 * st['snn']['ss_error_m']:.2f} cm"}
    step = profiles.get("step", {})
    if "pid" in step and "snn" in step:
        out["snn_overshoot_below_pid"] = {
            "met": bool(step["snn"]["overshoot_m"] < step["pid"]["overshoot_m"]),
            "detail": f"SNN {100 * step['snn']['overshoot_m']:.1f} cm vs PID {100 * step['pid']['overshoot_m']:.1f} cm"}
    return out


def _pipeline_run(config_path, quick: bool) -> dict:
    """Run the config as a pipeline (max pacing) and return the monitor's and motor's results."""
    import pipeline
    from pipeline.graph import Graph

    overrides = ["loop.pacing=max", "loop.ticks_per_batch=50"] + (["loop.duration_s=20"] if quick else [])
    try:
        graph = Graph.from_yaml(config_path, overrides)
    except ConfigError as exc:
        return {"error": str(exc)}
    result = pipeline.run(graph, "local")
    return {"wall_s": round(result.wall_s, 3), **result.results}
