"""Place-recognition scaling: places grow with modules; training time on 1 vs 2 Ray workers;
query latency p50/p99 and queries/s. Peer: the SAD baseline's query latency on the same places.

    .venv/bin/python benchmarks/bench_place.py [--quick] [--sizes 200 400]
    -> benchmarks/results/place.json (place_quick.json with --quick)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from operators.control.place import Ensemble, ModuleParams, sad_scores, synthetic


def _latency(fn, frames, reps):
    lat = []
    for i in range(reps):
        f = frames[i % len(frames)][None]
        t = time.perf_counter()
        fn(f)
        lat.append(time.perf_counter() - t)
    lat = np.array(lat) * 1e3
    return {"p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "queries_per_s": round(1e3 / float(lat.mean()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*", help="place counts (default 500 1000 2500 5000; quick 50 100)")
    args = ap.parse_args()
    sizes = args.sizes or ([50, 100] if args.quick else [500, 1000, 2500, 5000])
    params = ModuleParams(epochs=2 if args.quick else 6)
    reps = 20 if args.quick else 100
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    Ensemble.fit(synthetic(4)["reference"], workers=0, places_per_module=4, params=params)  # Numba warm-up
    rows = []
    for n in sizes:
        d = synthetic(n)
        row = {"places": n, "modules": -(-n // 25)}
        for workers in (1, 2):
            t = time.perf_counter()
            ens = Ensemble.fit(d["reference"], d["calibration"], d["calibration_places"], 25, params, workers)
            row[f"train_s_{workers}w"] = round(time.perf_counter() - t, 2)
            row[f"query_{workers}w"] = _latency(ens.scores, d["query"], reps)
            ens.close()
        row["sad_query"] = _latency(lambda f, r=d["reference"]: sad_scores(r, f), d["query"], reps)
        row["train_speedup_2w"] = round(row["train_s_1w"] / row["train_s_2w"], 2)
        rows.append(row)
        print(json.dumps(row))
    ray.shutdown()
    out = Path(__file__).parent / "results" / ("place_quick.json" if args.quick else "place.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "sizes": sizes, "rows": rows}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
