"""Blimp control speed: controller step latency, closed-loop steps/s, evolution fitness evals/s.

Peers side by side: the SNN's step against the PID's (the controller it replaces), the
NumPy/Numba SNN kernel against the same network in torch, and fitness evaluation on
2 Ray workers against 1. Writes benchmarks/results/control.json.

    .venv/bin/python benchmarks/bench_control.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from operators.control.pid import PID
from operators.control.plant import AltimeterParams, PlantParams
from operators.control.sim import ClosedLoop, DisturbanceParams, WatchdogParams, profile
from operators.control.snn import Layout, SNNController, SNNModel


def interleaved_us(fns: dict, n: int) -> dict:
    """Per-call latency of each peer, timed in alternating rounds so load drifts hit all alike."""
    names = list(fns)
    for _ in range(min(n, 200)):  # warm up (Numba compiled on the first call)
        for k in names:
            fns[k]()
    samples = {k: np.empty(n) for k in names}
    for i in range(n):
        for k in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter_ns()
            fns[k]()
            samples[k][i] = time.perf_counter_ns() - t0
    return {k: {"p50_us": float(np.median(v) / 1e3), "p99_us": float(np.percentile(v, 99) / 1e3), "n": n}
            for k, v in samples.items()}


def measured(fn, *args) -> dict:
    """Run one section; add its CPU seconds and the load average before and after."""
    load0, cpu0 = os.getloadavg(), time.process_time()
    out = fn(*args)
    out["cpu_s"] = round(time.process_time() - cpu0, 3)
    out["loadavg_1m_before_after"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    return out


def torch_step_fn(model: SNNModel):
    """The same network stepped with torch CPU tensors (the peer a PyTorch SNN would be)."""
    import torch

    from operators.control.snn import ARRAYS

    torch.set_num_threads(1)
    f = {k: torch.tensor(v) for k, v in zip(ARRAYS, model.arrays())}
    N, P, H = model.nets, model.pairs, model.hidden_size
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(P)
    st = {k: torch.zeros(N, s, dtype=torch.float64) for k, s in (("ie", 2 * P), ("ve", 2 * P), ("ih", H), ("vh", H), ("bh", H), ("sh", H))}
    st["y"] = torch.zeros(N, dtype=torch.float64)

    @torch.no_grad()
    def step(x=0.3, xd=-0.1):
        d = f["decay"]
        pair = (f["enc_w"] * x + f["enc_wd"] * xd) * f["in_scale"][:, None]
        enc_in = pair.repeat_interleave(2, 1) * sign + f["enc_b"].repeat_interleave(2, 1)
        for _ in range(model.substeps):
            st["ie"] = d[:, 0:1] * st["ie"] + enc_in
            v = d[:, 1:2] * st["ve"] + st["ie"]
            se = (v >= 1.0).double()
            st["ve"] = v - se
            cur = f["hid_b"] + torch.einsum("nj,njh->nh", se, f["w_hid"]) + torch.einsum("nk,nkh->nh", st["sh"], f["w_rec"])
            st["ih"] = d[:, 2:3] * st["ih"] + cur
            st["bh"] = d[:, 4:5] * st["bh"] + f["hid_c"] * st["ih"]
            thr = torch.clamp(1.0 + st["bh"], min=0.1)
            v = d[:, 3:4] * st["vh"] + st["ih"]
            sh = (v >= thr).double()
            st["vh"], st["sh"] = v - sh * thr, sh
            st["y"] = d[:, 5] * st["y"] + (f["w_out"] * sh).sum(1)
        return float(st["y"].sum())

    return step


def check_torch_port(model: SNNModel, steps: int = 500, tol: float = 1e-9) -> dict:
    """The torch port and our kernel, from zero state, on the same random inputs: the same
    commands, or SystemExit before anything is timed (a faster wrong port proves nothing)."""
    from operators.control.snn import new_state, snn_step

    inputs = np.random.default_rng(0).normal(0.0, 0.5, (steps, 2))
    state = new_state(model)
    ours = np.array([snn_step(x, xd, *model.arrays(), model.substeps, *state) for x, xd in inputs])
    step = torch_step_fn(model)
    port = np.array([step(x, xd) for x, xd in inputs])
    diff = float(np.abs(ours - port).max())
    if not diff <= tol or not np.any(ours != 0):
        raise SystemExit(f"bench_control: the torch port and the kernel differ (largest |du| {diff:g} over "
                         f"{steps} steps, allowed {tol:g}), so nothing was timed")
    return {"steps": steps, "max_abs_diff": diff, "tolerance": tol}


def bench_latency(n: int) -> dict:
    model = SNNModel.load()
    checked = check_torch_port(model)
    pid, snn = PID(), SNNController(model)
    # two interleaved pairs: a ~2 ms torch call between two microsecond calls slows them
    # several-fold (caches), so each ratio is taken within its own pair
    out = interleaved_us({"pid": lambda: pid.step(1.0, 0.9), "snn_numba": lambda: snn.step(1.0, 0.9)}, n)
    out["snn_torch_cpu"] = None
    try:
        pair = interleaved_us({"snn_numba": lambda: snn.step(1.0, 0.9), "snn_torch_cpu": torch_step_fn(model)},
                              max(n // 4, 100))
        out["snn_torch_cpu"], out["snn_numba_beside_torch"] = pair["snn_torch_cpu"], pair["snn_numba"]
    except ImportError:  # pragma: no cover
        pass
    out["substeps"] = model.substeps
    out["torch_port_checked"] = checked
    try:
        import edge.devices  # noqa: F401  (the emulator backend, if another package ships it)

        out["snn_emulator"] = "edge.devices present, but its emulator takes an operators.snn Network; the two-network controller is not wired to it yet"
    except ImportError:
        out["snn_emulator"] = "edge.devices not present"
    out["ratio_snn_over_pid_p50"] = out["snn_numba"]["p50_us"] / out["pid"]["p50_us"]
    if out["snn_torch_cpu"]:
        out["ratio_torch_over_numba_p50"] = out["snn_torch_cpu"]["p50_us"] / out["snn_numba_beside_torch"]["p50_us"]
    return out


def bench_loop(seconds: float) -> dict:
    out = {}
    for kind, ctl in (("pid", PID()), ("snn", SNNController())):
        loop = ClosedLoop(PlantParams(), AltimeterParams(), ctl, 0.1, WatchdogParams(deadline_ms=None), DisturbanceParams(gust_n=0.01))
        sp = profile("staircase", seconds)
        t0 = time.perf_counter()
        loop.run(sp)
        out[f"closed_loop_{kind}_steps_per_s"] = len(sp) / (time.perf_counter() - t0)
    import yaml

    import pipeline
    from pipeline.graph import Graph

    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "blimp_altitude.yaml").read_text())
    for tpb in (1, 50):
        cfg["nodes"]["loop"]["params"].update({"pacing": "max", "duration_s": seconds, "ticks_per_batch": tpb})
        r = pipeline.run(Graph.from_dict(cfg), "local")
        out[f"pipeline_snn_steps_per_s_batch{tpb}"] = r.results["monitor"]["ticks"] / r.wall_s
    out["realtime_need_steps_per_s"] = 10.0
    return out


def bench_evolution(generations: int, popsize: int) -> dict:
    import ray

    from cluster.evolution import EvolveConfig, Pool
    from operators.control.fit import scenarios
    from operators.control.sim import pid_traces

    cfg0 = EvolveConfig()
    d = cfg0.data
    errors, commands = pid_traces(d.trajectories, d.duration_s, seed=d.seed)
    closed = scenarios(d.closed_loop, d.duration_s, d.seed + 5000)
    rng = np.random.default_rng(0)
    genomes = [rng.standard_normal(Layout().size) * 0.5 for _ in range(popsize)]
    out = {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for workers in (0, 1, 2):
            pool = Pool(cfg0.model_copy(update={"workers": workers}), errors, commands, closed)
            pool.map(genomes[: max(workers, 1)])  # warm up: compile in every worker
            t0 = time.perf_counter()
            for _ in range(generations):
                pool.map(genomes)
            out[f"evals_per_s_workers{workers}"] = generations * popsize / (time.perf_counter() - t0)
            pool.close()
    finally:
        ray.shutdown()
    out["ratio_2_over_1_workers"] = out["evals_per_s_workers2"] / out["evals_per_s_workers1"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="default results/control.json (control_quick.json with --quick)")
    args = ap.parse_args()
    if args.out is None:  # a quick run never overwrites the full figures
        args.out = str(Path(__file__).parent / "results" / ("control_quick.json" if args.quick else "control.json"))
    q = args.quick
    result = {
        "machine": {"python": platform.python_version(), "cpus_note": "shared 2-core dev box unless stated"},
        "quick": q,
        "latency": measured(bench_latency, 2000 if q else 20000),
        "loop": measured(bench_loop, 60.0 if q else 300.0),
        "evolution": measured(bench_evolution, 2 if q else 5, 16),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
