"""Place-recognition scaling: places grow with modules (10 places each).

Per size: training time on 1 and 2 Ray workers (wall, and the workers' CPU seconds);
query latency p50/p99 and queries/s of one frame at a time, in-process (the stacked exact
product, and the experimental coarse-to-fine search) and through 1 and 2 Ray actors; the peer
is the SAD baseline over the same references, timed interleaved with ours in the same
loop (a per-query ratio, so machine load hits both alike). Also the coarse search's top-1
agreement with the exact one, and Recall@1 of both methods on a query subsample.

    .venv/bin/python benchmarks/bench_place.py [--quick] [--sizes 500 1000 2000 5000]
        [--train-workers 1 2] [--out FILE]
    -> benchmarks/results/place.json (place_quick.json with --quick)

Training uses short settings (2 epochs, no jitter) so that 5,000 places train in minutes
on a shared 2-core machine; accuracy figures come from `reflexarc eval`, not from here.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from operators.control.place import Ensemble, ModuleParams, metrics, sad_scores, synthetic
from operators.control.place.ensemble import topk


def _stats(wall, cpu) -> dict:
    wall, cpu = np.array(wall) * 1e3, np.array(cpu) * 1e3
    return {"p50_ms": round(float(np.percentile(wall, 50)), 3), "p99_ms": round(float(np.percentile(wall, 99)), 3),
            "queries_per_s": round(1e3 / float(wall.mean()), 1), "cpu_ms_mean": round(float(cpu.mean()), 3)}


def _interleaved(fns: dict, frames, reps) -> dict:
    """Time each query function on the same frame in turn, rep after rep."""
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for i in range(reps):
        f = frames[i % len(frames)][None]
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn(f)
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    out = {k: _stats(wall[k], cpu[k]) for k in fns}
    base = np.array(wall["sad"])
    for k in fns:
        if k != "sad":
            out[k]["median_ratio_to_sad"] = round(float(np.median(np.array(wall[k]) / base)), 3)
    return out


def _sad_top(ref):
    return lambda f: topk(sad_scores(ref, f), 5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*", help="place counts (default 500 1000 2000 5000; quick 50 100)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--jitter", type=int, default=0)
    ap.add_argument("--train-workers", type=int, nargs="*", default=[1, 2], help="Ray worker counts to train with")
    ap.add_argument("--out", help="results file (default results/place.json, place_quick.json with --quick)")
    args = ap.parse_args()
    sizes = args.sizes or ([50, 100] if args.quick else [500, 1000, 2000, 5000])
    params = ModuleParams(epochs=args.epochs, jitter_px=args.jitter)
    ppm = 10
    reps = 30 if args.quick else 200
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # one BLAS thread for ours and SAD alike; spinning threads distort a loaded machine
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    Ensemble.fit(synthetic(4)["reference"], workers=0, places_per_module=4, params=params)  # Numba warm-up
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        d = synthetic(n)
        row = {"places": n, "modules": -(-n // ppm), "data_s": round(time.perf_counter() - t0, 1)}
        mods = None
        for workers in args.train_workers:
            t = time.perf_counter()
            ens = Ensemble.fit(d["reference"], d["calibration"], d["calibration_places"], ppm, params, workers)
            row[f"train_s_{workers}w"] = round(time.perf_counter() - t, 2)
            row[f"train_cpu_s_{workers}w"] = round(sum(ray.get([w.cpu_s.remote() for w in ens.workers])), 1)
            row[f"load_train_{workers}w"] = [round(x, 1) for x in os.getloadavg()]
            row[f"query_ray_{workers}w"] = _interleaved(
                {"ours": lambda f, e=ens: e.top(f, 5), "sad": _sad_top(d["reference"])}, d["query"], reps // 4)["ours"]
            if mods is None:
                mods = ens.modules()
            ens.close()
        local = Ensemble.of(mods)
        local.scores(d["query"][:2])
        local.scores(d["query"][:2], coarse=True)  # build the stacked index outside the timing
        q = _interleaved({"ours": lambda f, e=local: e.top(f, 5),
                          "ours_coarse": lambda f, e=local: topk(e.scores(f, coarse=True), 5),
                          "sad": _sad_top(d["reference"])}, d["query"], reps)
        row["query_local"], row["query_local_coarse"], row["sad_query"] = q["ours"], q["ours_coarse"], q["sad"]
        row["load_query"] = [round(x, 1) for x in os.getloadavg()]
        sub = np.linspace(0, n - 1, min(n, 200)).astype(int)
        coarse, exact = local.scores(d["query"][sub], coarse=True), local.scores(d["query"][sub])
        row["coarse_top1_agreement"] = round(float(np.mean(coarse.argmax(1) == exact.argmax(1))), 3)
        truth = d["query_places"][sub]
        row["recall@1_subsample"] = {"ours": round(metrics(exact, truth)["recall@1"], 3),
                                     "ours_coarse": round(metrics(coarse, truth)["recall@1"], 3),
                                     "sad": round(metrics(sad_scores(d["reference"], d["query"][sub]), truth)["recall@1"], 3)}
        if "train_s_2w" in row:
            row["train_speedup_2w"] = round(row["train_s_1w"] / row["train_s_2w"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    ray.shutdown()
    first, last = rows[0], rows[-1]
    growth = {"places": round(last["places"] / first["places"], 2),
              "query_p50_local": round(last["query_local"]["p50_ms"] / first["query_local"]["p50_ms"], 2),
              "query_cpu_local": round(last["query_local"]["cpu_ms_mean"] / first["query_local"]["cpu_ms_mean"], 2),
              "query_p50_local_coarse": round(last["query_local_coarse"]["p50_ms"] / first["query_local_coarse"]["p50_ms"], 2),
              "sad_p50": round(last["sad_query"]["p50_ms"] / first["sad_query"]["p50_ms"], 2)}
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        "place_quick.json" if args.quick else "place.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "sizes": sizes, "places_per_module": ppm,
                               "module_params": {"n_neurons": params.n_neurons, "epochs": params.epochs,
                                                 "jitter_px": params.jitter_px, "query": params.query},
                               "growth_last_over_first": growth, "rows": rows}, indent=2))
    print(json.dumps(growth))
    print(f"written {out}")


if __name__ == "__main__":
    main()
