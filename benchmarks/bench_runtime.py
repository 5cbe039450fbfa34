"""Runtime overhead: per-hop latency and 4-stage chain throughput, ours against plain Ray.

Run: .venv/bin/python benchmarks/bench_runtime.py [--quick]   -> benchmarks/results/runtime.json

Peers measured in the same run on the same payloads (1 k and 64 k events per batch):
plain Ray actor calls (a chain of actor calls passing references), Ray Compiled Graphs,
and dora-rs (bench_dora.py,
run from here in its own processes after Ray has shut down). Ratios are in each payload's
`ratios`. Per-hop latency of our
executors and of the Ray peers is the slope of latency over chain length (1 hop vs 4
hops), so the source's and the driver's own cost cancel out.

`cross_node`: the same on a real two-node Ray cluster started on this machine (a head and
a worker): ray-shm with every stage on one node (shared-memory rings) against every hop
crossing nodes (the socket channel; both nodes share this machine, so it is a TCP socket
over loopback, not a network), plain Ray calls and a bare Compiled Graph placed the same
ways. `--only-cross-node` runs that section alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import ray

from pipeline import Graph, run
from pipeline import schemas as sch
from pipeline.executors.actors import remove_leaked_semaphores, shm_semaphores
from pipeline.graph import Placement
from pipeline.testing import ListSource


def payload(n: int, count: int) -> list:
    s = sch.events_schema(640, 480)
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        t = np.arange(i * n, (i + 1) * n, dtype=np.int64)
        out.append(sch.events_batch(t, rng.integers(0, 640, n), rng.integers(0, 480, n), rng.random(n) < 0.5, s))
    return out


def chain(batches, hops: int, gap_ms: float | None = None) -> Graph:
    """Source -> (hops - 1) identities -> sink; `gap_ms` paces batches that far apart."""
    g = Graph(f"chain{hops}")
    if gap_ms is None:
        g.add("src", ListSource.of(batches))
    else:
        span_ms = batches[0].num_rows / 1000.0  # payload timestamps advance 1 us per event
        g.add("src", ListSource.of(batches, pacing="realtime", speed=span_ms / gap_ms))
    up = "src.out"
    for i in range(hops - 1):
        g.add(f"s{i}", "identity", inputs={"in": up})
        up = f"s{i}.out"
    g.add("sink", "count_sink", inputs={"in": up})
    return g


GAP_S = 0.020  # latency runs, ours and the peers' (dora too): batches 20 ms apart, so no queueing
LATENCY_BATCHES = 150  # per latency run: enough that one slow wake-up does not move the p50


def ours_latency(executor: str, batches, **opts) -> dict:
    lat = {}
    for hops in (1, 4):
        res = run(chain(batches[:LATENCY_BATCHES], hops, gap_ms=GAP_S * 1e3), executor, **opts)
        lat[hops] = res.node("sink")["e2e_latency"]
    per_hop = {k: max(0.0, (lat[4][k] - lat[1][k]) / 3) for k in ("p50_ms", "p99_ms")}
    return {"per_hop_p50_ms": per_hop["p50_ms"], "per_hop_p99_ms": per_hop["p99_ms"], "sink_1hop": lat[1], "sink_4hop": lat[4]}


def local_hop_cost(batches, repeats: int = 5) -> dict:
    """What one more identity hop adds per batch in the local executor, warm, at pacing max.

    CPU time per batch of a 4-hop chain minus a 1-hop chain, over 3: the latency slope
    above is taken with batches 20 ms apart, when caches have gone cold between batches.
    """
    many = (batches * (-(-2000 // len(batches))))[:2000]
    cost = {1: [], 4: []}
    for _ in range(repeats):
        for hops in (1, 4):
            t = time.process_time()
            run(chain(many, hops), "local")
            cost[hops].append(time.process_time() - t)
    per = {h: float(np.median(v)) / len(many) * 1e6 for h, v in cost.items()}
    return {"warm_per_hop_cpu_us": (per[4] - per[1]) / 3, "per_batch_cpu_us": per, "batches": len(many)}


def ours_throughput(executor: str, batches, **opts) -> float:
    g = chain(batches, 5)  # source + 4 stages (3 identity + sink)
    res = run(g, executor, **opts)
    # steady state: actor start-up is excluded, as it is for the plain-Ray peer (warmed up)
    seconds = res.recovery.get("streaming_s", res.wall_s)
    return sum(b.num_rows for b in batches) / seconds


@ray.remote(num_cpus=0)
class Hop:
    def f(self, x):
        return x


def _chained(actors, b):
    r = b
    for a in actors:
        r = a.f.remote(r)
    return r


def plain_ray(batches, actors=None) -> dict:
    """Plain Ray actor calls measured as ours are: per hop = slope of round-trip latency from
    1 to 4 chained actors (each passes the batch's reference on), batches GAP_S apart."""
    own = actors is None
    actors = actors or [Hop.remote() for _ in range(4)]
    ray.get([a.f.remote(1) for a in actors])
    lat = {}
    for hops in (1, 4):
        times = []
        for b in batches:
            time.sleep(GAP_S)
            t0 = time.perf_counter()
            ray.get(_chained(actors[:hops], b))
            times.append(time.perf_counter() - t0)
        lat[hops] = np.percentile(np.array(times) * 1e3, [50, 99])
    # throughput: pipelined refs through 4 actors
    t0 = time.perf_counter()
    ray.get([_chained(actors, b) for b in batches])
    wall = time.perf_counter() - t0
    if own:
        for a in actors:
            ray.kill(a)
    per_hop = (lat[4] - lat[1]) / 3
    return {"per_hop_p50_ms": float(max(per_hop[0], 0.0)), "per_hop_p99_ms": float(max(per_hop[1], 0.0)),
            "round_trip_1_actor_p50_ms": float(lat[1][0]), "round_trip_4_actors_p50_ms": float(lat[4][0]),
            "chain4_events_per_s": sum(b.num_rows for b in batches) / wall}


def _compiled_chain(actors):
    from ray.dag import InputNode

    with InputNode() as inp:
        node = inp
        for a in actors:
            node = a.f.bind(node)
    return node.experimental_compile(_buffer_size_bytes=8 << 20)


def compiled_ray(batches, actors=None) -> dict:
    """Bare Ray Compiled Graph: per hop = slope of round-trip latency from 1 to 4 actors."""
    actors = actors or [Hop.remote() for _ in range(4)]
    lat = {}
    wall = None
    for hops in (1, 4):
        dag = _compiled_chain(actors[:hops])
        try:
            for b in batches[:5]:
                ray.get(dag.execute(b), timeout=120)  # warm the channels
            times = []
            for b in batches:
                time.sleep(GAP_S)  # paced like our executors' latency runs: idle actors wake per batch
                t0 = time.perf_counter()
                ray.get(dag.execute(b), timeout=120)
                times.append(time.perf_counter() - t0)
            lat[hops] = np.percentile(np.array(times) * 1e3, [50, 99])
            if hops == 4:
                t0 = time.perf_counter()
                for b in batches:
                    ray.get(dag.execute(b), timeout=120)
                wall = time.perf_counter() - t0
        finally:
            dag.teardown()
    for a in actors:
        ray.kill(a)
    per_hop = (lat[4] - lat[1]) / 3
    return {"per_hop_p50_ms": float(max(per_hop[0], 0.0)), "per_hop_p99_ms": float(max(per_hop[1], 0.0)),
            "round_trip_1_actor_p50_ms": float(lat[1][0]), "round_trip_4_actors_p50_ms": float(lat[4][0]),
            "chain4_events_per_s": sum(b.num_rows for b in batches) / wall}


def run_dora(quick: bool, gap_ms: float) -> dict:
    """dora-rs, the robotics dataflow peer, through bench_dora.py in its own processes."""
    cmd = [sys.executable, str(Path(__file__).with_name("bench_dora.py"))] + (["--quick"] if quick else []) + ["--gap-ms", str(gap_ms)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    out = Path(__file__).parent / "results" / "runtime_dora.json"
    if done.returncode != 0 or not out.exists():
        return {"error": (done.stderr or done.stdout)[-1000:]}
    d = json.loads(out.read_text())
    if "error" in d:
        return {"error": d["error"]}
    return {
        str(n): {
            "per_hop_p50_ms": d["latency"][str(n)]["per_hop"]["p50_us"] / 1e3,
            "per_hop_p99_ms": d["latency"][str(n)]["per_hop"]["p99_us"] / 1e3,
            "chain4_events_per_s": d["throughput_4stage"][str(n)]["events_per_s"],
        }
        for n in (1024, 65536)
    } | {"version": d.get("dora_version"), "detail": "benchmarks/results/runtime_dora.json"}


def placed_chain(batches, hops: int, nodes: list[str], gap_ms: float) -> Graph:
    """`chain` with stage i (the sink last) pinned to nodes[i % len(nodes)] by node id."""
    g = chain(batches, hops, gap_ms)
    stages = [n for n in g.order if n != "src"] if g.order else [f"s{i}" for i in range(hops - 1)] + ["sink"]
    for i, n in enumerate(stages):
        g.nodes[n].place = Placement(node=nodes[i % len(nodes)])
    return g


def _per_hop_ratio(row: dict, ours: str, peer: str) -> float | None:
    x, y = row.get(ours, {}).get("per_hop_p50_ms"), row.get(peer, {}).get("per_hop_p50_ms")
    return x / y if x is not None and y else None


def cross_node(quick: bool) -> dict:
    """ray-shm on a real two-node Ray cluster on this machine: every hop on one node (rings)
    against every hop crossing nodes (the socket channel, here a local TCP socket), with plain
    Ray actor calls and a bare Compiled Graph placed the same ways, per hop as the 1 -> 4 slope."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.testing import MultiNode

    nodes = MultiNode(workers=[{"resources": {"w": 1}}], fast_failure=False)
    ray.init(address=nodes.address, include_dashboard=False, log_to_driver=False)
    head, worker = nodes.head_id, nodes.worker_id
    # the driver is on the head: "same" keeps every stage there, "across" alternates, so each
    # hop from the driver's source through the sink crosses between the two nodes
    layouts = {"same_node": [head], "across_nodes": [worker, head]}
    out: dict = {"nodes": {"head": head, "worker": worker}, "transport_note":
                 "both Ray nodes run on this one machine: the cross-node channel is a TCP socket over loopback"}
    try:
        for n in (1024, 65536):
            batches = payload(n, 40 if quick else 120)
            row: dict = {}
            for name, where in layouts.items():
                lat = {}
                for hops in (1, 4):
                    g = placed_chain(batches, hops, where, GAP_S * 1e3)
                    res = run(g, "ray-shm")
                    lat[hops] = res.node("sink")["e2e_latency"]
                    if hops == 4:
                        row.setdefault("channels", {})[name] = res.recovery["channels"]
                per = {k: max(0.0, (lat[4][k] - lat[1][k]) / 3) for k in ("p50_ms", "p99_ms")}
                row[f"ray_shm_{name}"] = {"per_hop_p50_ms": per["p50_ms"], "per_hop_p99_ms": per["p99_ms"]}

                actors = [Hop.options(scheduling_strategy=NodeAffinitySchedulingStrategy(where[i % len(where)], soft=False))
                          .remote() for i in range(4)]
                row[f"peer_plain_ray_{name}"] = plain_ray(batches, actors)
                try:
                    row[f"peer_ray_compiled_graph_{name}"] = compiled_ray(batches, actors)
                except Exception as exc:  # reported, not hidden
                    row[f"peer_ray_compiled_graph_{name}"] = {"error": str(exc)[:300]}
                for a in actors:
                    ray.kill(a)

            row["ratios"] = {
                "ray_shm_across_vs_same_node": _per_hop_ratio(row, "ray_shm_across_nodes", "ray_shm_same_node"),
                "ray_shm_across_vs_plain_ray_across": _per_hop_ratio(row, "ray_shm_across_nodes", "peer_plain_ray_across_nodes"),
                "ray_shm_across_vs_compiled_graph_across": _per_hop_ratio(row, "ray_shm_across_nodes",
                                                                          "peer_ray_compiled_graph_across_nodes"),
                "ray_shm_same_vs_plain_ray_same": _per_hop_ratio(row, "ray_shm_same_node", "peer_plain_ray_same_node"),
            }
            out[f"{n}_events"] = row
            print(json.dumps({f"cross_node_{n}": row}, indent=1, default=str))
    finally:
        ray.shutdown()
        nodes.shutdown()
    return out


def ratios(row: dict, dora: dict, n: int) -> dict:
    """Ours over each peer (per hop: lower is better; throughput: higher is better)."""

    def get(d, key):
        return d.get(key) if isinstance(d, dict) else None

    def div(a, b):
        return a / b if a is not None and b else None

    plain, cg, dr = row["peer_plain_ray"], row.get("peer_ray_compiled_graph", {}), dora.get(str(n), {})
    out = {}
    for ours, peer, peer_row in (("ray", "plain_ray", plain), ("ray_compiled", "ray_compiled_graph", cg),
                                 ("ray_compiled", "dora", dr), ("ray_shm", "ray_compiled_graph", cg),
                                 ("ray_shm", "dora", dr), ("local", "dora", dr), ("ray_fused", "dora", dr)):
        mine = row.get(ours, {})
        out[f"{ours}_per_hop_vs_{peer}"] = div(get(mine, "per_hop_p50_ms"), get(peer_row, "per_hop_p50_ms"))
        out[f"{ours}_throughput_vs_{peer}"] = div(get(mine, "chain4_events_per_s"), get(peer_row, "chain4_events_per_s"))
    return {k: v for k, v in out.items() if v is not None}


def main() -> None:
    global GAP_S
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--executors", default="local,ray,ray-compiled,ray-shm", help="ours to measure (comma list)")
    ap.add_argument("--gap-ms", type=float, default=GAP_S * 1e3,
                    help="latency runs: ms between batches, for ours and every peer (default 20)")
    ap.add_argument("--out", default=None, help="default results/runtime.json (runtime_quick.json with --quick)")
    ap.add_argument("--only-cross-node", action="store_true", help="only the two-node section")
    ap.add_argument("--no-cross-node", action="store_true", help="skip the two-node section")
    args = ap.parse_args()
    rows = args.executors.split(",")
    GAP_S = args.gap_ms / 1e3
    if args.out is None:
        args.out = str(Path(__file__).parent / "results" / ("runtime_quick.json" if args.quick else "runtime.json"))
    if args.only_cross_node:
        report = {"machine": f"{os.cpu_count()} cores", "load_start": os.getloadavg(), "latency_gap_ms": args.gap_ms,
                  "cross_node": cross_node(args.quick)}
        report["load_end"] = os.getloadavg()
        out = Path(args.out).with_name(Path(args.out).stem + "_cross_node.json")
        out.write_text(json.dumps(report, indent=2, default=str))
        print(f"written {out}")
        return
    semaphores = shm_semaphores()  # the compiled-graph peer and ray-compiled leave some in /dev/shm
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    report = {"machine": f"{os.cpu_count()} cores", "load_start": os.getloadavg(), "latency_gap_ms": args.gap_ms,
              "payloads": {}}
    try:
        for n in (1024, 65536):
            count = 50 if args.quick else 200
            batches = payload(n, count)
            row = {}
            for executor in ("local", "ray", "ray-compiled", "ray-shm"):
                if executor not in rows:
                    continue
                key = executor.replace("-", "_")
                try:
                    row[key] = ours_latency(executor, batches)
                    row[key]["chain4_events_per_s"] = ours_throughput(executor, batches)
                except Exception as exc:  # reported, not hidden
                    row[key] = {"error": str(exc)[:300]}
                if executor == "local":
                    row["local"].update(local_hop_cost(batches))
                if executor == "ray":
                    row["ray_fused"] = {"chain4_events_per_s": ours_throughput("ray", batches, fuse="chains")}
            row["peer_plain_ray"] = plain_ray(batches)
            try:
                row["peer_ray_compiled_graph"] = compiled_ray(batches)
            except Exception as exc:
                row["peer_ray_compiled_graph"] = {"error": str(exc)[:300]}
            report["payloads"][f"{n}_events"] = row
            print(json.dumps({n: {k: v for k, v in row.items()}}, indent=1, default=str))
    finally:
        ray.shutdown()
        remove_leaked_semaphores(semaphores)
    if not args.no_cross_node:
        report["cross_node"] = cross_node(args.quick)
    dora = run_dora(args.quick, args.gap_ms)
    report["peer_dora_rs"] = dora
    for n in (1024, 65536):
        row = report["payloads"][f"{n}_events"]
        row["ratios"] = ratios(row, dora, n)
    report["load_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
