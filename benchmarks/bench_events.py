"""Event kernels and AEDAT4 ingest, side by side with tonic, faery and the bare aedat decoder.

    .venv/bin/python benchmarks/bench_events.py [--quick] [--events N] [--rounds R] [--out PATH]

On the same synthetic events at 640x480 (moving edges plus background noise, 10 M ev/s of
sensor time), each of our streaming operators (Arrow in, Arrow out, state carried across
65,536-event batches, one core) against tonic's transform of the same meaning and faery's
where it has one. tonic's per-event Python transforms (Denoise, RefractoryPeriod) run on a
subset so the run stays short. AEDAT4 ingest: `aedat4_source` against iterating
`aedat.Decoder` alone (and faery's reader) on the same LZ4 file. Pipeline: decode ->
background filter -> frames through the local executor, on the LZ4 file and on an
uncompressed one.

The machine this runs on may be shared: every figure is CPU seconds of this process
(`time.process_time`) as well as wall seconds, each side is timed in every round with the
peer interleaved, and a row's ratio is the median over rounds of the per-round ratio (the
best-of-rounds rates are given too). The load average is recorded. JSON goes to
benchmarks/results/events.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operators.events import kernels as K  # noqa: E402
from operators.events import ops  # noqa: E402
from operators.events.sources import Aedat4Source  # noqa: E402
from operators.events.synthetic import _structured, write_aedat4  # noqa: E402
from pipeline import schemas as sch  # noqa: E402

W, H = 640, 480
RATE = 10_000_000  # events per second of sensor time
BATCH = 65_536
# the targets: ours / peer (CPU time) at least this much; ingest overhead at most 10%
TARGETS = {"to_frames": 20.0, "to_voxel_grid": 20.0, "background_filter": 100.0}
CHAIN_TARGET_MEPS = 30.0
INGEST_TARGET_PCT = 10.0
# Rows where tonic's transform is defined differently from ours: timed and labelled, never
# passed off as the same work (check_answers counts how their decisions differ).
DIFFERENT_WORK = {
    "background_filter": "different work: tonic's Denoise looks at 4 neighbours with a strict '<' and starts "
                         "every pixel at filter_time; ours at 8 (Delbruck 2008)",
    "refractory_filter": "different work: tonic times the period from a pixel's last event, kept or not; "
                         "ours from its last kept event",
}
CHECK_EVENTS = 300_000
CHECK_WINDOW_US = 5_000  # 6 whole windows in the checked events


def make_events(n: int, seed: int = 0) -> dict:
    """Moving edges (80%, spatially correlated) plus uniform background activity (20%)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, int(n / RATE * 1e6) + 1, n)).astype(np.int64)
    edge = rng.random(n) < 0.8
    y = rng.integers(0, H, n)
    speed = 400.0  # px/s
    bar = rng.integers(0, 8, n)
    x_edge = (bar * 80 + speed * t / 1e6 + rng.normal(0, 1.0, n)) % W
    x = np.where(edge, x_edge, rng.integers(0, W, n)).astype(np.int64)
    return {"t": t, "x": np.clip(x, 0, W - 1).astype(np.uint16), "y": y.astype(np.uint16), "p": rng.random(n) < 0.5}


def batches(ev: dict, schema) -> list:
    return [sch.events_batch(*(ev[k][i : i + BATCH] for k in "txyp"), schema) for i in range(0, len(ev["t"]), BATCH)]


def tonic_array(ev: dict, n: int | None = None) -> np.ndarray:
    n = len(ev["t"]) if n is None else n
    arr = np.empty(n, dtype=[("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
    for k in "xytp":
        arr[k] = ev[k][:n]
    return arr


def clock(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def op_runner(op, bs, schema):
    """(call, setup): the call pushes every batch through the fresh copy of `op` that setup made."""
    held = {}

    def setup():
        o = type(op)(op.params)
        o.schemas({"in": schema})
        o.setup()
        held["op"] = o

    def run():
        o = held["op"]
        for b in bs:
            o.process("in", b)
        o.finish()
    return run, setup


def kernel_runner(kernel, bs, window_us, fresh):
    """(call, setup): the accumulator's kernel alone over the batches' columns, taken out beforehand:
    what the operator adds around it (Arrow views, polarity, checks, emitting) is the difference."""
    from operators.events.columns import polarity, txy

    cols = [(*txy(b), polarity(b)) for b in bs]
    held = {}

    def setup():
        held["acc"] = fresh()

    def run():
        cur, acc = np.int64(-1), held["acc"]
        for t, x, y, p in cols:
            _, _, cur, *acc = kernel(t, x, y, p, np.int64(window_us), np.int64(cur), *acc)
    return run, setup


def _run_op(op, bs, schema) -> list:
    op.schemas({"in": schema})
    op.setup()
    outs = [op.process("in", b) for b in bs]
    return [o for o in [*outs, op.finish()] if o is not None]


def _frames(outs) -> np.ndarray:
    return np.concatenate([sch.frames_view(b) for b in outs])


def check_answers(ev: dict, T) -> dict:
    """Ours and tonic on the same events, before anything is timed: the same frames, voxel grid
    and time surface, or SystemExit naming what differs; for the filters whose definitions
    differ, how many events each keeps."""
    n = CHECK_EVENTS
    sub = {k: v[:n] for k, v in ev.items()}
    schema = sch.events_schema(W, H)
    bs = batches(sub, schema)
    sensor, win = (W, H, 2), CHECK_WINDOW_US
    problems = []

    def compare(name, ours, peer, atol):
        k = min(len(ours), len(peer))  # tonic drops the last, incomplete window; ours emits it at finish
        if k == 0 or ours[:k].shape != peer[:k].shape:
            problems.append(f"{name}: shapes {ours.shape} (ours) and {peer.shape} (tonic)")
            return
        diff = float(np.abs(ours[:k] - peer[:k]).max())
        if diff > atol:
            problems.append(f"{name}: largest difference {diff:g} over {k} windows (allowed {atol:g})")

    frames = _frames(_run_op(ops.ToFrames(ops.ToFrames.Params(window_us=win)), bs, schema))
    compare("to_frames", frames, T.ToFrame(sensor_size=sensor, time_window=win)(tonic_array(sub)).astype(np.float32), 0)
    # tonic spreads the stream over [0, B] (Zhu et al. use [0, B-1]) and drops what falls past
    # bin B-1: ours with B+1 bins over a window ending at the last event is that, plus one bin
    t_last = int(sub["t"][-1])
    vox = _frames(_run_op(ops.ToVoxelGrid(ops.ToVoxelGrid.Params(window_us=t_last, bins=6)), bs, schema))
    compare("to_voxel_grid", vox[:1, :5], T.ToVoxelGrid(sensor_size=sensor, n_time_bins=5)(tonic_array(sub))[None, :, 0], 1e-5)
    surf = _frames(_run_op(ops.ToTimeSurface(ops.ToTimeSurface.Params(window_us=win, tau_us=20_000.0)), bs, schema))
    compare("to_time_surface", surf, T.ToTimesurface(sensor_size=sensor, dt=win, tau=20_000.0)(tonic_array(sub)), 1e-5)
    if problems:
        raise SystemExit("bench_events: ours and tonic do not compute the same thing, so nothing was timed:\n  "
                         + "\n  ".join(problems))
    kept = {}
    for name, op, peer in (
        ("background_filter", ops.BackgroundFilter(ops.BackgroundFilter.Params(time_us=5000)), T.Denoise(filter_time=5000)),
        ("refractory_filter", ops.RefractoryFilter(ops.RefractoryFilter.Params(refractory_us=1000)),
         T.RefractoryPeriod(delta=1000)),
    ):
        ours_kept = sum(b.num_rows for b in _run_op(op, bs, schema))
        kept[name] = {"events": n, "ours_kept": ours_kept, "tonic_kept": len(peer(tonic_array(sub)))}
    print(f"checked on {n:,} events: frames, voxel grid and time surface equal tonic's; kept by the filters "
          f"(different definitions): {kept}", flush=True)
    return kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 M events instead of 20 M")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row")
    ap.add_argument("--tonic-subset", type=int, default=None, help="events for tonic's per-event Python transforms")
    ap.add_argument("--out", default=None, help="default results/events.json (events_quick.json with --quick)")
    args = ap.parse_args()
    if args.out is None:  # a quick run never overwrites the full figures
        args.out = str(ROOT / "benchmarks" / "results" / ("events_quick.json" if args.quick else "events.json"))
    n = args.events or (2_000_000 if args.quick else 20_000_000)
    sub = args.tonic_subset or (100_000 if args.quick else 300_000)
    import faery
    import tonic.transforms as T

    load_start = os.getloadavg()
    print(f"generating {n:,} events at {W}x{H} ...  load average {load_start}", flush=True)
    ev = make_events(n)
    kept = check_answers(ev, T)
    schema = sch.events_schema(W, H)
    bs = batches(ev, schema)
    K.warm_up()
    win = 50_000
    sensor = (W, H, 2)
    records = _structured(ev)
    rows = []

    def measure(name, ours, ours_n, peers, note=""):
        """Time `ours` (call, setup) and each (label, call, events, setup) peer, interleaved, for args.rounds rounds."""
        sides = [("ours", ours[0], ours_n, ours[1])] + list(peers)
        cpu = {s[0]: [] for s in sides}
        wall = {s[0]: [] for s in sides}
        for _ in range(args.rounds):
            for label, fn, _n, setup in sides:
                if setup:
                    setup()
                c, w = clock(fn)
                cpu[label].append(c)
                wall[label].append(w)
        meps = {s[0]: s[2] / min(cpu[s[0]]) / 1e6 for s in sides}
        for label, fn, m, _ in peers or [("-", None, None, None)]:
            if fn is None:
                ratio = None
                peer_cpu = peer_wall = None
            else:
                # per-round ratio of rates, so a noisy round hits both sides of it
                ratio = round(statistics.median((ours_n / co) / (m / cp)
                                                for cp, co in zip(cpu[label], cpu["ours"], strict=True)), 2)
                peer_cpu = round(meps[label], 3)
                peer_wall = round(m / min(wall[label]) / 1e6, 3)
            target = TARGETS.get(name) if label.startswith("tonic") else None
            different = DIFFERENT_WORK.get(name) if label.startswith("tonic") else None
            r = {"kernel": name, "same_work": None if fn is None else different is None,
                 **({"different_work": different, "kept_on_check": kept.get(name)} if different else {}), "ours_meps_cpu": round(meps["ours"], 2),
                 "ours_meps_wall": round(ours_n / min(wall["ours"]) / 1e6, 2), "peer": label,
                 "peer_meps_cpu": peer_cpu, "peer_meps_wall": peer_wall, "ratio_cpu": ratio,
                 "target_ratio": target, "met": None if target is None or ratio is None else ratio >= target,
                 "note": note, "load": [round(v, 1) for v in os.getloadavg()]}
            rows.append(r)
            ratio_txt = f"{ratio:8.1f}x" if ratio is not None else "       -"
            peer_txt = f"{peer_cpu:10.3f}" if peer_cpu is not None else "         -"
            flag = "" if r["met"] is None else ("  target met" if r["met"] else f"  target {target:.0f}x NOT met")
            flag += " (different work)" if different else ""
            print(f"{name:20s} {meps['ours']:9.2f} M/cpu-s   {label:26s} {peer_txt} M/cpu-s {ratio_txt}{flag}  {note}",
                  flush=True)

    def tonic(transform, m):
        """A call of a tonic transform and its setup: a fresh array (ToVoxelGrid writes into `p`)."""
        held = {}

        def fresh():
            held["arr"] = tonic_array(ev, m)

        def run():
            transform(held["arr"])
        return run, fresh

    print(f"{'kernel':20s} {'ours':>16s}   {'peer':26s} {'peer':>18s} {'ratio':>9s}")
    run, fresh = tonic(T.ToFrame(sensor_size=sensor, time_window=win), n)
    kf = kernel_runner(K.frames, bs, win, lambda: (np.zeros((2, H, W), np.uint8), np.zeros((2, H, W), np.int64), False))
    measure("to_frames", op_runner(ops.ToFrames(ops.ToFrames.Params(window_us=win)), bs, schema), n,
            [("tonic ToFrame", run, n, fresh), ("kernel alone", kf[0], n, kf[1])], f"{win} us windows")
    # voxel grid: tonic's grid of 5 bins over the whole stream (ours: 6 bins over a window that
    # ends at the last event, whose first 5 are tonic's, as check_answers showed)
    run, fresh = tonic(T.ToVoxelGrid(sensor_size=sensor, n_time_bins=5), n)
    t_last = int(ev["t"][-1])
    kv = kernel_runner(K.voxel_grid, bs, t_last, lambda: (np.zeros((6, H, W), np.float64),))
    measure("to_voxel_grid", op_runner(ops.ToVoxelGrid(ops.ToVoxelGrid.Params(window_us=t_last, bins=6)), bs, schema),
            n, [("tonic ToVoxelGrid", run, n, fresh), ("kernel alone", kv[0], n, kv[1])],
            "tonic's 5 bins over the stream (ours 6 bins, the first 5 equal to tonic's)")
    run, fresh = tonic(T.ToTimesurface(sensor_size=sensor, dt=win, tau=20_000.0), n)

    def faery_render():
        stream = faery.events_stream_from_array(records, dimensions=(W, H)).regularize(frequency_hz=1e6 / win)
        for _ in stream.render(decay="exponential", tau="00:00:00.020000", colormap=faery.colormaps.starry_night):
            pass
    measure("to_time_surface", op_runner(ops.ToTimeSurface(ops.ToTimeSurface.Params(window_us=win, tau_us=20_000.0)),
                                         bs, schema), n,
            [("tonic ToTimesurface", run, n, fresh), ("faery render exponential", faery_render, n, None)],
            f"{win} us windows, tau 20 ms (faery renders RGBA frames)")
    run, fresh = tonic(T.Denoise(filter_time=5000), sub)
    measure("background_filter", op_runner(ops.BackgroundFilter(ops.BackgroundFilter.Params(time_us=5000)), bs, schema),
            n, [("tonic Denoise", run, sub, fresh)], f"tonic on {sub:,} events")
    run, fresh = tonic(T.RefractoryPeriod(delta=1000), sub)
    measure("refractory_filter", op_runner(ops.RefractoryFilter(ops.RefractoryFilter.Params(refractory_us=1000)),
                                           bs, schema), n, [("tonic RefractoryPeriod", run, sub, fresh)],
            f"tonic on {sub:,} events")

    def faery_hot():
        for _ in faery.events_stream_from_array(records, dimensions=(W, H)).filter_hot_pixels(3.0):
            pass
    measure("hot_pixel_filter", op_runner(ops.HotPixelFilter(ops.HotPixelFilter.Params()), bs, schema), n,
            [("faery filter_hot_pixels", faery_hot, n, None)], "faery: relative count 3.0 over the stream")

    def faery_crop():
        for _ in faery.events_stream_from_array(records, dimensions=(W, H)).crop(160, 480, 120, 360):
            pass
    measure("roi_crop", op_runner(ops.RoiCrop(ops.RoiCrop.Params(x=160, y=120, width=320, height=240)), bs, schema),
            n, [("faery crop", faery_crop, n, None)], "320x240 in the middle")
    measure("rate_limit", op_runner(ops.RateLimit(ops.RateLimit.Params(max_rate_hz=5e6)), bs, schema), n, [])
    measure("downsample", op_runner(ops.Downsample(ops.Downsample.Params(factor=4)), bs, schema), n, [])

    # AEDAT4 ingest: bare decoder vs our source vs faery's reader, same file
    import aedat

    from pipeline import run as run_graph
    from pipeline.graph import Graph

    ingest = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for comp in ("lz4", None):
            path = Path(tmp) / f"bench_{comp or 'raw'}.aedat4"
            write_aedat4(path, ev, W, H, compression=comp)
            files[comp or "uncompressed"] = path
        path = files["lz4"]
        size_mb = path.stat().st_size / 1e6

        def bare(path=path):
            total = 0
            for pk in aedat.Decoder(str(path)):
                if "events" in pk:
                    total += len(pk["events"])
            return total

        def ours(path=path):
            src = Aedat4Source(Aedat4Source.Params(path=str(path)))
            return sum(b.num_rows for _, b in src.generate())

        def faery_read(path=path):
            return sum(len(a) for a in faery.events_stream_from_file(str(path)))

        rounds = args.rounds + 2
        cpu = {"bare": [], "ours": [], "faery": []}
        for _ in range(rounds):
            for label, fn in (("bare", bare), ("ours", ours), ("faery", faery_read)):
                cpu[label].append(clock(fn)[0])
        overhead = statistics.median(100 * (o / b - 1) for o, b in zip(cpu["ours"], cpu["bare"], strict=True))
        ingest = {"file_mb": round(size_mb, 1), "rounds": rounds,
                  "bare_cpu_s": [round(v, 3) for v in cpu["bare"]], "ours_cpu_s": [round(v, 3) for v in cpu["ours"]],
                  "faery_cpu_s": [round(v, 3) for v in cpu["faery"]],
                  "overhead_pct_median": round(overhead, 1), "target_pct": INGEST_TARGET_PCT,
                  "met": overhead <= INGEST_TARGET_PCT, "load": [round(v, 1) for v in os.getloadavg()]}
        for label in ("bare", "faery"):
            r = statistics.median(b / o for o, b in zip(cpu["ours"], cpu[label], strict=True))
            rows.append({"kernel": "aedat4_source", "ours_meps_cpu": round(n / min(cpu["ours"]) / 1e6, 2),
                         "peer": "aedat.Decoder iteration" if label == "bare" else "faery events_stream_from_file",
                         "peer_meps_cpu": round(n / min(cpu[label]) / 1e6, 2), "ratio_cpu": round(r, 2),
                         "note": f"{size_mb:.0f} MB LZ4 file", "load": ingest["load"]})
        print(f"aedat4_source        {n / min(cpu['ours']) / 1e6:9.2f} M/cpu-s   bare decoder "
              f"{n / min(cpu['bare']) / 1e6:.2f}, faery {n / min(cpu['faery']) / 1e6:.2f} M/cpu-s; "
              f"overhead over the bare decoder {overhead:.1f}% (target <= {INGEST_TARGET_PCT:.0f}%)", flush=True)

        # decode -> background filter -> frames through the runtime's local executor
        chain = {}
        for label, path in files.items():
            g = Graph("bench_events")
            g.add("src", "aedat4_source", path=str(path))
            g.add("bg", "background_filter", inputs={"in": "src.out"}, time_us=5000)
            g.add("fr", "to_frames", inputs={"in": "bg.out"}, window_us=win)
            g.add("sink", "count_sink", inputs={"in": "fr.out"})
            dec = [clock(lambda path=path: bare(path))[0] for _ in range(2)]
            runs = [clock(lambda g=g: run_graph(g)) for _ in range(2)]
            best_cpu = min(c for c, _ in runs)
            chain[label] = {"meps_cpu": round(n / best_cpu / 1e6, 2),
                            "meps_wall": round(n / min(w for _, w in runs) / 1e6, 2),
                            "bare_decoder_meps_cpu": round(n / min(dec) / 1e6, 2),
                            "target_meps": CHAIN_TARGET_MEPS, "met": n / best_cpu / 1e6 >= CHAIN_TARGET_MEPS,
                            "load": [round(v, 1) for v in os.getloadavg()]}
            rows.append({"kernel": f"decode->bg->frames ({label})", "ours_meps_cpu": chain[label]["meps_cpu"],
                         "ours_meps_wall": chain[label]["meps_wall"], "peer": "-", "peer_meps_cpu": None,
                         "ratio_cpu": None, "note": f"local executor, one core; decoding alone "
                         f"{chain[label]['bare_decoder_meps_cpu']} M/cpu-s", "load": chain[label]["load"]})
            print(f"decode->bg->frames   {chain[label]['meps_cpu']:9.2f} M/cpu-s   ({label} file; the bare decoder "
                  f"alone: {chain[label]['bare_decoder_meps_cpu']} M/cpu-s; target {CHAIN_TARGET_MEPS:.0f})",
                  flush=True)

    out = {"events": n, "sensor": [W, H], "batch_events": BATCH, "rate_eps": RATE, "rounds": args.rounds,
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "clock": "process_time (CPU seconds of this process); wall given beside it",
           "load_start": [round(v, 1) for v in load_start], "load_end": [round(v, 1) for v in os.getloadavg()],
           "quick": args.quick, "checked": {"events": CHECK_EVENTS, "same": ["to_frames", "to_voxel_grid",
                                                                      "to_time_surface"], "kept": kept},
           "rows": rows, "aedat4_ingest": ingest, "chain": chain}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
