"""Place-recognition scaling: places grow with modules (10 places each).

Per size: training time in-process (`--train-workers 0`) or on 1 and 2 Ray workers (wall,
and CPU seconds); query latency p50/p99, queries/s and CPU ms of one frame at a time,
in-process, for the full exact search (the stacked product over every place) and the
localised search (`tracking.search`: a window of 2 modules either side of the last
confident place, held through unsure answers until the calibrated lost-detector says
lost, then a full search), frames in route order; the peer is the SAD baseline over the same references,
all three timed interleaved in the same loop (per-query ratios, so machine load hits all
alike); and, apart, the latency of the windowed queries that stayed in their window. Also: the localised search's full-search and fallback rates, its top-1 agreement
with the full search, and Recall@1 of full and windowed search over the whole query
traversal in route order (SAD on a subsample), every frame of it timed (wall, CPU) for the
localised search, the same without the lost-detector (every unsure answer a full search)
and the full search, interleaved; kidnap detection: 60 stretches of 30
frames, each starting a quarter to three quarters of the route from the last, so every
stretch after the first is a kidnap, and
how many frames pass before a full search (counted where the robot was being tracked);
through Ray actors when trained there.

    .venv/bin/python benchmarks/bench_place.py [--quick] [--sizes 500 1000 2000 5000]
        [--train-workers 0 | 1 2] [--window-modules 2] [--lost-false-alarm 0.01] [--out FILE]
    -> benchmarks/results/place.json (place_quick.json with --quick)

Training uses short settings (2 epochs, no jitter) so that 5,000 places train in minutes
on a shared 2-core machine; accuracy figures come from `reflexarc eval`, not from here.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from operators.control.place import Ensemble, ModuleParams, metrics, sad_scores, synthetic, tracking
from operators.control.place.ensemble import topk


def _stats(wall, cpu) -> dict:
    wall, cpu = np.array(wall) * 1e3, np.array(cpu) * 1e3
    return {"p50_ms": round(float(np.percentile(wall, 50)), 3), "p99_ms": round(float(np.percentile(wall, 99)), 3),
            "queries_per_s": round(1e3 / float(wall.mean()), 1), "cpu_ms_mean": round(float(cpu.mean()), 3)}


def _interleaved(fns: dict, frames, reps) -> dict:
    """Time each query function on the same frame in turn, rep after rep (frames in route order)."""
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for i in range(reps):
        f = frames[i % len(frames)]
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
    return lambda f: topk(sad_scores(ref, f[None]), 5)


class _Tracker:
    """The localised search as the bench calls it: one frame in, the track carried along."""

    def __init__(self, ens, win, n):
        self.ens, self.win, self.n = ens, win, n
        self.track, self.best, self.full = tracking.Track(), [], []

        self.wall, self.cpu = [], []

    def __call__(self, f):
        t, c = time.perf_counter(), time.process_time()
        row, self.track, was_full = tracking.search(self.ens, f, self.track, self.win, self.n)
        self.wall.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c)
        self.best.append(int(row.argmax()))
        self.full.append(was_full)
        return row

    def window_only(self) -> dict:
        """Latency of the queries that stayed in their window (no full search)."""
        keep = ~np.array(self.full, bool)
        if not keep.any():
            return {}
        return {"queries": int(keep.sum()), **_stats(np.array(self.wall)[keep], np.array(self.cpu)[keep])}


def _kidnaps(ens, imgs, win, n, stretches=60, frames=30, within=10, seed=0) -> dict:
    """Frames from a kidnap (a jump a quarter to three quarters of the route away) to the next full search."""
    rng = np.random.default_rng(seed)
    track, delays, untracked, recovered = tracking.Track(), [], 0, 0
    a = 0
    for k in range(stretches):
        a = int((a + rng.integers(n // 4, 3 * n // 4)) % (n - frames))   # far from where the robot was
        tracked = track.place >= 0
        fulls, right = [], []
        for i in range(a, a + frames):
            row, track, was_full = tracking.search(ens, imgs[i], track, win, n)
            fulls.append(was_full)
            right.append(int(row.argmax()) == i)
        if k == 0:
            continue
        if not tracked:
            untracked += 1
            continue
        delays.append(next((j for j, f in enumerate(fulls) if f), frames))
        recovered += any(right[:within])
    d = np.array(delays)
    return {"kidnaps_while_tracking": len(d), "kidnaps_while_already_searching": untracked,
            f"detected_within_{within}_frames": round(float(np.mean(d < within)), 4) if len(d) else None,
            "detected_on_first_frame": round(float(np.mean(d == 0)), 4) if len(d) else None,
            "median_frames_to_full_search": float(np.median(d)) if len(d) else None,
            f"never_in_{frames}_frames": int(np.sum(d >= frames)),
            f"right_place_within_{within}_frames": round(recovered / len(d), 4) if len(d) else None}


def _full_top1(ens, imgs, chunk=250) -> np.ndarray:
    return np.concatenate([ens.scores(imgs[a:a + chunk]).argmax(axis=1) for a in range(0, len(imgs), chunk)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*", help="place counts (default 500 1000 2000 5000; quick 50 100)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--jitter", type=int, default=0)
    ap.add_argument("--train-workers", type=int, nargs="*", default=[1, 2],
                    help="Ray worker counts to train with (0: in-process only, no Ray rows)")
    ap.add_argument("--window-modules", type=int, default=2)
    ap.add_argument("--lost-false-alarm", type=float, default=0.01,
                    help="lost-detector false-alarm rate on tracked calibration frames (negative: no detector)")
    ap.add_argument("--reps", type=int, help="timed queries per size (default 400; quick 60)")
    ap.add_argument("--out", help="results file (default results/place.json, place_quick.json with --quick)")
    args = ap.parse_args()
    sizes = args.sizes or ([50, 100] if args.quick else [500, 1000, 2000, 5000])
    params = ModuleParams(epochs=args.epochs, jitter_px=args.jitter)
    ppm = 10
    reps = args.reps or (60 if args.quick else 400)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # one BLAS thread for ours and SAD alike; spinning threads distort a loaded machine
    use_ray = any(w > 0 for w in args.train_workers)
    if use_ray:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    Ensemble.fit(synthetic(4)["reference"], workers=0, places_per_module=4, params=params)  # Numba warm-up
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        d = synthetic(n)
        row = {"places": n, "modules": -(-n // ppm), "data_s": round(time.perf_counter() - t0, 1)}
        mods = None
        for workers in args.train_workers:
            t, c = time.perf_counter(), time.process_time()
            ens = Ensemble.fit(d["reference"], d["calibration"], d["calibration_places"], ppm, params, workers)
            row[f"train_s_{workers}w"] = round(time.perf_counter() - t, 2)
            row[f"load_train_{workers}w"] = [round(x, 1) for x in os.getloadavg()]
            if workers == 0:
                row["train_cpu_s_0w"] = round(time.process_time() - c, 1)
                mods = ens.modules()
                continue
            row[f"train_cpu_s_{workers}w"] = round(sum(ray.get([w.cpu_s.remote() for w in ens.workers])), 1)
            row[f"query_ray_{workers}w"] = _interleaved(
                {"ours": lambda f, e=ens: e.top(f[None], 5), "sad": _sad_top(d["reference"])},
                d["query"], reps // 4)["ours"]
            if mods is None:
                mods = ens.modules()
            ens.close()
        local = Ensemble.of(mods)
        local.scores(d["query"][:2])  # build the stacked index outside the timing
        t, c = time.perf_counter(), time.process_time()
        plain = tracking.Window(args.window_modules, ppm)
        fa = args.lost_false_alarm if args.lost_false_alarm >= 0 else None
        win = tracking.calibrated(local, d["calibration"], d["calibration_places"], plain, n, false_alarm=fa)
        row["window_calibration"] = {"wall_s": round(time.perf_counter() - t, 2), "cpu_s": round(time.process_time() - c, 2),
                                     "threshold_mv": round(win.threshold, 3), "sure": round(win.sure, 4),
                                     "window_places": min(n, (2 * args.window_modules + 1) * ppm),
                                     "lost_false_alarm": fa, "lost_at": round(win.lost_at, 3),
                                     "llr": [round(v, 3) for v in win.llr]}
        tracker = _Tracker(local, win, n)
        load0 = os.getloadavg()
        q = _interleaved({"full": lambda f, e=local: e.top(f[None], 5), "windowed": tracker,
                          "sad": _sad_top(d["reference"])}, d["query"], reps)
        row["query_full"], row["query_windowed"], row["sad_query"] = q["full"], q["windowed"], q["sad"]
        row["load_query"] = {"before": [round(x, 1) for x in load0], "after": [round(x, 1) for x in os.getloadavg()]}
        timed = np.arange(reps) % n
        full_best = _full_top1(local, d["query"][timed[:n]])
        row["query_window_only"] = tracker.window_only()
        row["timed_windowed"] = {"queries": reps, "full_search_rate": round(float(np.mean(tracker.full)), 4),
                                 "fallback_rate": round(tracker.track.fallbacks / reps, 4),
                                 "top1_agreement_with_full": round(float(np.mean(
                                     np.array(tracker.best[:len(full_best)]) == full_best)), 4)}
        # the whole query traversal in route order, every frame timed for the localised search
        # with and without the lost-detector and for the full search, interleaved
        walk, old = _Tracker(local, win, n), _Tracker(local, replace(win, llr=(), lost_at=np.inf), n)
        full_t = _Tracker(local, replace(win, modules=0), n)   # modules=0: every frame a full search
        load0 = os.getloadavg()
        for f in d["query"]:
            for tracker in (walk, old, full_t):
                tracker(f)
        truth = d["query_places"]
        full_all = np.array(full_t.best)
        sub = np.linspace(0, n - 1, min(n, 200)).astype(int)
        row["traversal"] = {"queries": n, "recall@1_full": round(float(np.mean(full_all == truth)), 4),
                            "recall@1_windowed": round(float(np.mean(np.array(walk.best) == truth)), 4),
                            "full_search_rate": round(float(np.mean(walk.full)), 4),
                            "fallback_rate": round(walk.track.fallbacks / n, 4),
                            "latency_windowed": _stats(walk.wall, walk.cpu),
                            "latency_full": _stats(full_t.wall, full_t.cpu),
                            "recall@1_windowed_no_detector": round(float(np.mean(np.array(old.best) == truth)), 4),
                            "full_search_rate_no_detector": round(float(np.mean(old.full)), 4),
                            "latency_windowed_no_detector": _stats(old.wall, old.cpu),
                            "cpu_ratio_windowed_to_full": round(float(np.sum(walk.cpu) / np.sum(full_t.cpu)), 3),
                            "load": {"before": [round(x, 1) for x in load0],
                                     "after": [round(x, 1) for x in os.getloadavg()]},
                            "far_window_pass": round(tracking.far_pass(local, d["query"][sub], truth[sub], win, n), 4),
                            "kidnap": _kidnaps(local, d["query"], win, n),
                            "recall@1_sad_subsample": round(metrics(sad_scores(d["reference"], d["query"][sub]),
                                                                    truth[sub])["recall@1"], 4),
                            "recall@1_full_subsample": round(float(np.mean(full_all[sub] == truth[sub])), 4)}
        if "train_s_1w" in row and "train_s_2w" in row:
            row["train_speedup_2w"] = round(row["train_s_1w"] / row["train_s_2w"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if use_ray:
        ray.shutdown()
    first, last = rows[0], rows[-1]

    def grow(key, stat):
        return round(last[key][stat] / first[key][stat], 2)

    growth = {"places": round(last["places"] / first["places"], 2),
              "full_p50": grow("query_full", "p50_ms"), "full_cpu": grow("query_full", "cpu_ms_mean"),
              "windowed_p50": grow("query_windowed", "p50_ms"), "windowed_cpu": grow("query_windowed", "cpu_ms_mean"),
              "window_only_p50": grow("query_window_only", "p50_ms"),
              "window_only_cpu": grow("query_window_only", "cpu_ms_mean"),
              "sad_p50": grow("sad_query", "p50_ms"), "sad_cpu": grow("sad_query", "cpu_ms_mean")}
    for k in ("latency_windowed", "latency_full", "latency_windowed_no_detector"):   # whole traversals
        for stat in ("p50_ms", "p99_ms", "cpu_ms_mean"):
            growth[f"traversal_{k}_{stat}"] = round(last["traversal"][k][stat] / first["traversal"][k][stat], 2)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        "place_quick.json" if args.quick else "place.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "sizes": sizes, "places_per_module": ppm, "reps": reps,
                               "window_modules": args.window_modules,
                               "module_params": {"n_neurons": params.n_neurons, "epochs": params.epochs,
                                                 "jitter_px": params.jitter_px, "query": params.query},
                               "growth_last_over_first": growth, "run_cpu_s": round(time.process_time(), 1),
                               "load_end": [round(x, 1) for x in os.getloadavg()], "rows": rows}, indent=2))
    print(json.dumps(growth))
    print(f"written {out}")


if __name__ == "__main__":
    main()
