"""Streaming SNN inference, ours against snnTorch (and Norse when importable), same NIR weights.

The network is written once as a NIR file (conv -> LIF -> avg-pool -> conv -> LIF ->
avg-pool -> flatten -> dense -> LIF -> dense -> CubaLIF on 2x32x32 input, the node types
snnTorch's NIR import supports) and loaded by each library. Batch 1 on the CPU, one
thread, inference mode; two streaming modes:

- `1 step`: one call per time step (a robot's control loop);
- `100 steps`: one call per 100 time steps (replay, or a sensor delivering bursts);
  snnTorch has no block API, so it loops over the steps inside the timed call.

Reported per library and mode: steps/s and call latency p50/p99; the ratio ours/snnTorch.
With `--e2e`, also the demo's sensing-to-action latency p50/p99 at 1x real time under Ray.

    .venv/bin/python benchmarks/bench_snn.py [--quick] [--e2e]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "snn.json"


def build_nir(path: Path) -> Path:
    from operators.snn import layers as L
    from operators.snn import nir_io
    from operators.snn.network import Affine, Conv, Flatten, Network, Pool2d

    torch.manual_seed(0)

    def conv(cin, cout):
        m = torch.nn.Conv2d(cin, cout, 3, padding=1)
        return Conv(m.weight.data * 2, m.bias.data, 1, 1)

    net = Network.sequential((2, 32, 32), [
        ("conv1", conv(2, 16)), ("lif1", L.LIF((16, 32, 32), beta=0.9)),
        ("pool1", Pool2d((2, 2), (2, 2), (0, 0), sum=False)),
        ("conv2", conv(16, 32)), ("lif2", L.LIF((32, 16, 16), beta=0.9)),
        ("pool2", Pool2d((2, 2), (2, 2), (0, 0), sum=False)),
        ("flat", Flatten()),
        ("fc1", Affine(torch.randn(128, 2048) * 0.05, torch.zeros(128))), ("lif3", L.LIF((128,), beta=0.9)),
        ("fc2", Affine(torch.randn(10, 128) * 0.3, torch.zeros(10))), ("out", L.CubaLIF((10,), alpha=0.8, beta=0.9)),
    ])
    return nir_io.save(net, path)


def timed(fn, calls: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    lat = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        lat[i] = time.perf_counter_ns() - t0
    return lat / 1e6  # ms


def summary(lat_ms: np.ndarray, steps_per_call: int) -> dict:
    # the median-based rate is what the ratio uses: on a shared machine the mean mostly measures neighbours
    return {"steps_per_s": round(steps_per_call * len(lat_ms) / (lat_ms.sum() / 1e3), 1),
            "steps_per_s_median": round(steps_per_call * 1e3 / float(np.percentile(lat_ms, 50)), 1),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 4),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 4), "calls": len(lat_ms)}


def ours(path: Path, xs: torch.Tensor, calls: int, block: int) -> tuple[dict, torch.Tensor]:
    from operators.snn import nir_io

    net = nir_io.load(path).eval()
    state = {"s": None, "t": 0}
    T = xs.shape[0]

    def one():
        i = state["t"] % T
        y, state["s"] = net.step(xs[i], state["s"])
        state["t"] += 1
        return y

    def many():
        i = state["t"] % (T - block + 1)
        y, state["s"] = net.run(xs[i : i + block], state["s"])
        state["t"] += block
        return y

    with torch.inference_mode():
        lat = timed(one if block == 1 else many, calls, warmup=5)
        check, _ = net.run(xs[:50])
    return summary(lat, block), check


def snntorch(path: Path, xs: torch.Tensor, calls: int, block: int) -> tuple[dict, torch.Tensor]:
    import contextlib
    import io

    import nir
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # it prints warnings per node
        net = import_from_nir(nir.read(str(path))).eval()
    state = {"t": 0}
    T = xs.shape[0]

    def first(o):
        return o[0] if isinstance(o, tuple) else o

    def one():
        i = state["t"] % T
        state["t"] += 1
        return first(net(xs[i]))

    def many():
        i = state["t"] % (T - block + 1)
        out = [first(net(xs[i + k])) for k in range(block)]
        state["t"] += block
        return out

    with torch.inference_mode():
        lat = timed(one if block == 1 else many, calls, warmup=5)
        # same weights, same input from a fresh state: the spikes must agree
        with contextlib.redirect_stdout(io.StringIO()):
            fresh = import_from_nir(nir.read(str(path))).eval()
        check = torch.stack([first(fresh(xs[k])).reshape(1, -1) for k in range(50)])
    return summary(lat, block), check


def norse_available() -> bool:
    try:
        import norse  # noqa: F401

        return True
    except ImportError:
        return False


def e2e_latency(quick: bool) -> dict:
    """The demo at 1x real time under the Ray executor: sensing-to-action p50/p99."""
    import ray

    from pipeline import run
    from pipeline.graph import Graph

    overrides = ["source.pacing=realtime", "command.quiet=true",
                 f"source.path={tempfile.mkdtemp()}/g.aedat4", f"source.synth_gestures={2 if quick else 8}"]
    g = Graph.from_yaml(ROOT / "configs" / "dvs_gesture.yaml", overrides=overrides)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        result = run(g, executor="ray")
    finally:
        ray.shutdown()
    r = result.results["command"]
    return {"executor": "ray", "pacing": "realtime 1x", "gestures": r["count"],
            "latency_ms_p50": r["latency_ms_p50"], "latency_ms_p99": r["latency_ms_p99"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls")
    ap.add_argument("--e2e", action="store_true", help="also the demo's latency under Ray at 1x real time")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    calls_1, calls_100 = (200, 5) if args.quick else (2000, 30)

    with tempfile.TemporaryDirectory() as tmp:
        path = build_nir(Path(tmp) / "bench.nir")
        rng = np.random.default_rng(0)
        xs = torch.from_numpy((rng.random((300, 1, 2, 32, 32)) < 0.1).astype(np.float32))
        rows, checks = {}, {}
        for lib, fn in (("ours", ours), ("snntorch", snntorch)):
            rows[lib] = {}
            for mode, block, calls in (("1_step", 1, calls_1), ("100_steps", 100, calls_100)):
                rows[lib][mode], checks[lib] = fn(path, xs, calls, block)
        rows["norse"] = "not installed (skipped)" if not norse_available() else "installed but not wired (skipped)"
    agree = bool(torch.allclose(checks["ours"].reshape(50, -1), checks["snntorch"].reshape(50, -1), atol=1e-5))
    ratios = {mode: round(float(rows["ours"][mode]["steps_per_s_median"] / rows["snntorch"][mode]["steps_per_s_median"]), 2)
              for mode in ("1_step", "100_steps")}
    report = {"benchmark": "snn streaming inference, batch 1, CPU, 1 thread",
              "network": "2x32x32 -> conv16 -> LIF -> avgpool -> conv32 -> LIF -> avgpool -> fc128 -> LIF -> fc10 -> CubaLIF",
              "peer": "snntorch", "same_spikes_as_peer": agree, "results": rows,
              "ratio_ours_over_snntorch_median_steps_per_s": ratios, "target": ">= 2x snnTorch at batch 1 streaming",
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu": platform.processor() or platform.machine()}, "quick": args.quick}
    if args.e2e:
        report["demo_e2e"] = e2e_latency(args.quick)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))

    from rich.console import Console
    from rich.table import Table

    table = Table(title="SNN streaming inference, batch 1 (same NIR weights)")
    for col in ("library", "mode", "steps/s (median)", "steps/s (mean)", "p50 ms/call", "p99 ms/call"):
        table.add_column(col)
    for lib in ("ours", "snntorch"):
        for mode, r in rows[lib].items():
            table.add_row(lib, mode, f"{r['steps_per_s_median']:.0f}", f"{r['steps_per_s']:.0f}", f"{r['p50_ms']:.3f}",
                          f"{r['p99_ms']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"ours/snnTorch steps/s: {ratios}; same spikes: {agree}; norse: {rows['norse']}")
    if "demo_e2e" in report:
        console.print(f"demo sensing-to-action under Ray at 1x: {report['demo_e2e']}")
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
