"""Streaming SNN inference, ours against snnTorch (and Norse when importable), same NIR weights.

The network is written once as a NIR file (conv -> LIF -> avg-pool -> conv -> LIF ->
avg-pool -> flatten -> dense -> LIF -> dense -> CubaLIF on 2x32x32 input, the node types
snnTorch's NIR import supports) and loaded by each library. Batch 1 on the CPU, one
thread, inference mode; two streaming modes:

- `1 step`: one call per time step (a robot's control loop);
- `100 steps`: one call per 100 time steps (replay, or a sensor delivering bursts);
  snnTorch has no block API, so it loops over the steps inside the timed call.

Reported per library and mode: steps/s and call latency p50/p99; the ratio ours/snnTorch.
Before anything is timed, both our paths (`step`, one call per step, and `run`) are checked
against snnTorch's spikes on the same input; a mismatch stops the benchmark.

Second row, a real graph: the NIR paper's braille RNN (snnTorch's export, a recurrent CubaLIF
layer, tests/data/real/nir-paper/03_rnn), batch 1, one frame per call *through the `snn`
operator* (an Arrow frames batch in, the operator's per-frame bookkeeping and the device
backend included) against snnTorch stepping the same graph with its own modules. The spikes of
our step path are checked against snnTorch's first (with the immediate reset its importer asks
for; docs/snn.md says why that is applied by hand).

With `--e2e`, also the demo's sensing-to-action latency p50/p99 at 1x real time under Ray.

    .venv/bin/python benchmarks/bench_snn.py [--quick] [--e2e]
"""

from __future__ import annotations

import argparse
import json
import os
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


def check_step_path(path: Path, xs: torch.Tensor, peer: torch.Tensor) -> None:
    """Our step path (one call per step) gives snnTorch's spikes; stop the benchmark if not."""
    from operators.snn import nir_io

    net = nir_io.load(path).eval()
    state, out = None, []
    with torch.inference_mode():
        for k in range(len(peer)):
            y, state = net.step(xs[k], state)
            out.append(y.reshape(1, -1))
    if not torch.equal(torch.stack(out), peer.reshape(len(peer), 1, -1)):
        raise SystemExit("bench_snn: our step path and snnTorch disagree on the same input; nothing timed")


BRAILLE = ROOT / "tests" / "data" / "real" / "nir-paper" / "03_rnn" / "braille_noDelay_bias_zero.nir"


def braille_snntorch(path: Path):
    """snnTorch's own modules for the braille graph (its NIR import's per-node conversion; its
    `import_from_nir` stops in nirtorch 2.6 on the recurrent subgraph), and a step function."""
    import contextlib
    import io

    import nir
    from snntorch import import_nir as sni

    graph = nir.read(str(path), type_check=False)
    with contextlib.redirect_stdout(io.StringIO()):
        graph = sni._replace_rnn_subgraph_with_nirgraph(graph)
        mods = {k: sni._nir_to_snntorch_module(v, init_hidden=False) for k, v in graph.nodes.items()}
    fc1, rec, fc2, out = (mods[k] for k in ("fc1", "lif1", "fc2", "lif2"))
    n_hidden, n_out = fc1.out_features, fc2.out_features

    def fresh():
        z = torch.zeros(1, n_hidden)
        return [(z, z, z), (torch.zeros(1, n_out),) * 2]

    def step(x, st):
        spk, syn, mem = rec(fc1(x), *st[0])
        mem = mem * (1 - spk)  # reset_delay=False: snnTorch 1.0's RSynaptic computes this reset and drops it
        st[0] = (spk, syn, mem)
        o, syn2, mem2 = out(fc2(spk), *st[1])
        st[1] = (syn2, mem2)
        return o

    return fresh, step


def braille_row(calls: int) -> dict:
    """The braille RNN, batch 1, one frame per call: our `snn` operator against snnTorch."""
    from operators.snn.operator import Snn
    from pipeline import schemas as sch

    rng = np.random.default_rng(1)
    T = 256
    frames = (rng.random((T, 12)) < 0.2).astype(np.float32)
    xs = torch.from_numpy(frames)[:, None]
    fresh, peer_step = braille_snntorch(BRAILLE)
    with torch.inference_mode():
        st = fresh()
        peer_spikes = torch.stack([peer_step(xs[k], st) for k in range(T)])
    check_step_path(BRAILLE, xs, peer_spikes)  # same spikes, step by step, before timing

    schema = sch.frames_schema((12,), "float32")
    batches = [sch.frames_batch([k * 5000], frames[k : k + 1], schema) for k in range(T)]
    op = Snn(Snn.Params(model=str(BRAILLE), early_exit=None, onset_events=0, max_steps=10**9))
    op.schemas({"frames": schema})
    op.setup()
    state = {"t": 0}

    def ours_call():
        k = state["t"] % T
        state["t"] += 1
        op.process("frames", batches[k])

    peer_state = {"t": 0, "s": fresh()}

    def peer_call():
        k = peer_state["t"] % T
        peer_state["t"] += 1
        peer_step(xs[k], peer_state["s"])

    rows = {}
    with torch.inference_mode():
        for _ in range(2):  # interleaved, so both see the same neighbours
            for lib, fn in (("ours_snn_operator", ours_call), ("snntorch", peer_call)):
                lat = timed(fn, calls, warmup=20)
                rows.setdefault(lib, []).append(lat)
    rows = {lib: summary(np.concatenate(lats), 1) for lib, lats in rows.items()}
    return {"graph": "NIR paper braille RNN (snnTorch export): 12 -> fc 38 -> recurrent CubaLIF 38 -> fc 7 -> CubaLIF 7",
            "file": str(BRAILLE.relative_to(ROOT)), "mode": "1 step per call, batch 1",
            "ours": "the snn operator's process() on a 1-frame Arrow batch (operator + torch-cpu backend + network)",
            "peer": "snnTorch 1.0 modules of the same graph, one step per call",
            "same_spikes_as_peer_step_path": True, "results": rows,
            "ratio_ours_over_snntorch_median_steps_per_s": round(
                rows["ours_snn_operator"]["steps_per_s_median"] / rows["snntorch"]["steps_per_s_median"], 2),
            "target": ">= 2x snnTorch"}


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
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
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
    ap.add_argument("--out", default=None, help="default: results/snn.json (snn_quick.json with --quick)")
    args = ap.parse_args()
    args.out = args.out or str(OUT.with_name("snn_quick.json") if args.quick else OUT)
    torch.set_num_threads(1)
    calls_1, calls_100 = (200, 5) if args.quick else (2000, 30)

    with tempfile.TemporaryDirectory() as tmp:
        path = build_nir(Path(tmp) / "bench.nir")
        rng = np.random.default_rng(0)
        xs = torch.from_numpy((rng.random((300, 1, 2, 32, 32)) < 0.1).astype(np.float32))
        rows, checks = {}, {}
        _, peer_check = snntorch(path, xs, 1, 1)
        check_step_path(path, xs, peer_check)  # our step path against snnTorch, before anything is timed
        for lib, fn in (("ours", ours), ("snntorch", snntorch)):
            rows[lib] = {}
            for mode, block, calls in (("1_step", 1, calls_1), ("100_steps", 100, calls_100)):
                rows[lib][mode], checks[lib] = fn(path, xs, calls, block)
        rows["norse"] = "not installed (skipped)" if not norse_available() else "installed but not wired (skipped)"
    agree = bool(torch.allclose(checks["ours"].reshape(50, -1), checks["snntorch"].reshape(50, -1), atol=1e-5))
    if not agree:
        raise SystemExit("bench_snn: our run path and snnTorch disagree on the same input")
    braille = braille_row(300 if args.quick else 3000)
    ratios = {mode: round(float(rows["ours"][mode]["steps_per_s_median"] / rows["snntorch"][mode]["steps_per_s_median"]), 2)
              for mode in ("1_step", "100_steps")}
    report = {"benchmark": "snn streaming inference, batch 1, CPU, 1 thread",
              "network": "2x32x32 -> conv16 -> LIF -> avgpool -> conv32 -> LIF -> avgpool -> fc128 -> LIF -> fc10 -> CubaLIF",
              "peer": "snntorch", "same_spikes_as_peer": agree, "step_path_checked": True, "results": rows,
              "ratio_ours_over_snntorch_median_steps_per_s": ratios, "target": ">= 2x snnTorch at batch 1 streaming",
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu": platform.processor() or platform.machine()}, "quick": args.quick,
              "braille_rnn": braille, "load_average_1_5_15": list(os.getloadavg())}
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
    console.print(f"braille RNN through the snn operator, 1 step per call: {braille['results']}; "
                  f"ours/snnTorch {braille['ratio_ours_over_snntorch_median_steps_per_s']}x")
    if "demo_e2e" in report:
        console.print(f"demo sensing-to-action under Ray at 1x: {report['demo_e2e']}")
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
