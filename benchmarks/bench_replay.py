"""Replay speed and recording overhead, side by side with their peers.

1. Replay at `max` of a large events recording (quick: ~200 MB, full: >= 2 GB, made by the
   `synthetic` source through the `record` tap) into a `count_sink`, against reading the
   same IPC files with pyarrow alone and the same events from AEDAT4 (written by faery,
   read by `aedat`). Every reader does the same work per batch as `count_sink`: count rows
   and sum `t`. The page cache is warmed first, so this compares software, not disks.
2. Recorder tap overhead: a live pipeline (synthetic -> identity -> count_sink) with and
   without a `record` tap on the camera stream.

Targets (issue 5): replay within 1.2x of raw pyarrow; a tap costs <= 5%.

    .venv/bin/python benchmarks/bench_replay.py --quick     # ~1 min
    .venv/bin/python benchmarks/bench_replay.py             # >= 2 GB, a few minutes

Writes benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import Graph, run
from pipeline.recording import Recording, export_aedat4

RESULTS = Path(__file__).parent / "results" / "replay.json"
RATE_HZ = 50e6  # sensor time is irrelevant at pacing max; this only sets timestamps


def _record(folder: Path, events: int, batch_items: int) -> dict:
    g = Graph("bench_record")
    g.add("cam", "synthetic", rate_hz=RATE_HZ, duration_s=events / RATE_HZ, batch_items=batch_items)
    g.add("n", "count_sink", inputs={"in": "cam.out"})
    g.tap(["cam.out"], folder)
    t0 = time.perf_counter()
    run(g)
    wall = time.perf_counter() - t0
    files = [folder / f for f in Recording(folder).files["cam.out"]]
    return {"bytes": sum(f.stat().st_size for f in files), "events": events, "record_s": wall, "files": files}


def _warm(files) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def _timed(fn):
    """(wall s, CPU s of this process, fn's result): CPU time stays honest on a loaded machine."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def _replay(folder: Path) -> int:
    g = Graph("bench_replay")
    g.add("rep", "replay", dir=str(folder), streams={"out": "cam.out"})
    g.add("n", "count_sink", inputs={"in": "rep.out"})
    return run(g).results["n"]["t_sum"]


def _raw_ipc(files) -> int:
    items = t_sum = 0
    for f in files:
        for batch in pa.ipc.open_stream(pa.memory_map(str(f))):
            items += batch.num_rows
            t_sum += int(batch.column(0).to_numpy().sum())
    return t_sum


def _aedat(path: Path) -> int:
    import aedat

    items = t_sum = 0
    for packet in aedat.Decoder(str(path)):
        ev = packet.get("events")
        if ev is not None:
            items += len(ev)
            t_sum += int(ev["t"].astype(np.int64).sum())
    return t_sum


def _live(tap_dir: Path | None, events: int, batch_items: int, work_op: str) -> tuple[float, float]:
    g = Graph("bench_live")
    g.add("cam", "synthetic", rate_hz=RATE_HZ, duration_s=events / RATE_HZ, batch_items=batch_items)
    g.add("mid", work_op, inputs={"in": "cam.out"})
    g.add("n", "count_sink", inputs={"in": "mid.out"})
    if tap_dir is not None:
        shutil.rmtree(tap_dir, ignore_errors=True)
        g.tap(["cam.out"], tap_dir)
    wall, cpu, _ = _timed(lambda: run(g))
    return wall, cpu


def bench_replay(work: Path, events: int, batch_items: int, repeats: int, with_aedat: bool) -> dict:
    folder = work / f"rec_{batch_items}"
    rec = _record(folder, events, batch_items)
    _warm(rec["files"])
    out = {"events": events, "batch_items": batch_items, "recording_bytes": rec["bytes"],
           "recording_MB": round(rec["bytes"] / 1e6, 1)}
    times = {"replay": [], "raw_pyarrow_ipc": []}
    cpus = {"replay": [], "raw_pyarrow_ipc": []}
    sums = set()
    aedat_path = None
    if with_aedat:
        aedat_path = work / f"events_{batch_items}.aedat4"
        t0 = time.perf_counter()
        export_aedat4(folder, aedat_path)
        out["aedat4_write_s"] = round(time.perf_counter() - t0, 2)
        out["aedat4_bytes"] = aedat_path.stat().st_size
        times["aedat"], cpus["aedat"] = [], []
        _warm([aedat_path])
    readers = {"replay": lambda: _replay(folder), "raw_pyarrow_ipc": lambda: _raw_ipc(rec["files"]),
               "aedat": lambda: _aedat(aedat_path)}
    for _ in range(repeats):  # interleaved, best of `repeats`
        for name in times:
            wall, cpu, t_sum = _timed(readers[name])
            times[name].append(wall)
            cpus[name].append(cpu)
            sums.add(t_sum)
    assert len(sums) == 1, "readers disagree on the events they read"
    for name, walls in times.items():
        best = min(walls)
        out[name] = {"best_s": round(best, 4), "all_s": [round(w, 4) for w in walls],
                     "best_cpu_s": round(min(cpus[name]), 4),
                     "MB_per_s": round(rec["bytes"] / best / 1e6, 1), "Mev_per_s": round(events / best / 1e6, 2)}
    out["replay_vs_raw_pyarrow_cpu"] = round(out["replay"]["best_cpu_s"] / out["raw_pyarrow_ipc"]["best_cpu_s"], 3)
    out["replay_vs_raw_pyarrow"] = round(out["replay"]["best_s"] / out["raw_pyarrow_ipc"]["best_s"], 3)
    if "aedat" in out:
        out["replay_vs_aedat"] = round(out["replay"]["best_s"] / out["aedat"]["best_s"], 3)
    shutil.rmtree(folder, ignore_errors=True)
    if aedat_path is not None:
        aedat_path.unlink(missing_ok=True)
    return out


def bench_tap(where: Path, events: int, batch_items: int, repeats: int, work_op: str) -> dict:
    plain, tapped = [], []
    _live(None, events // 10, batch_items, work_op)  # warm-up (Numba compiles here)
    for _ in range(repeats):  # interleaved, best of `repeats`
        plain.append(_live(None, events, batch_items, work_op))
        tapped.append(_live(where / "tap", events, batch_items, work_op))
    shutil.rmtree(where / "tap", ignore_errors=True)
    pw, tw = min(w for w, _ in plain), min(w for w, _ in tapped)
    cpu_plain, cpu_tap = min(c for _, c in plain), min(c for _, c in tapped)
    return {"events": events, "batch_items": batch_items, "tap_into": str(where), "pipeline": f"synthetic -> {work_op} -> count_sink",
            "without_tap": {"best_s": round(pw, 4), "cpu_s": round(cpu_plain, 4), "Mev_per_s": round(events / pw / 1e6, 2)},
            "with_tap": {"best_s": round(tw, 4), "cpu_s": round(cpu_tap, 4), "Mev_per_s": round(events / tw / 1e6, 2)},
            "overhead_pct": round(100 * (tw / pw - 1), 2),
            "cpu_overhead_pct": round(100 * (cpu_tap / cpu_plain - 1), 2)}


def _disk_speed(work: Path, mb: int = 256) -> float:
    """Sequential write speed of the work folder's disk (buffered, like the recorder)."""
    block = b"\0" * (1 << 20)
    path = work / "disk_speed.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(mb):
            fh.write(block)
    wall = time.perf_counter() - t0
    path.unlink()
    return round(mb * 1.048576 / wall, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~200 MB instead of >= 2 GB")
    ap.add_argument("--workdir", default=None, help="where the recordings go (default: a temp folder)")
    ap.add_argument("--no-aedat", action="store_true", help="skip the AEDAT4 peer (writing it is slow)")
    args = ap.parse_args()
    # synthetic events take ~12.1 bytes each in IPC (int64 t, 2x uint16, bit-packed p)
    events = 16_500_000 if args.quick else 170_000_000
    repeats = 3 if args.quick else 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_replay_"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "replay", "quick": args.quick, "machine": platform.platform(),
              "python": platform.python_version(), "pyarrow": pa.__version__,
              "peers": ["raw pyarrow IPC stream reading (memory-mapped)", "aedat (AEDAT4 written by faery)"],
              "targets": {"replay_vs_raw_pyarrow": "<= 1.2", "tap_overhead_pct": "<= 5"}}
    try:
        report["replay"] = [bench_replay(work, events, 65536, repeats, not args.no_aedat)]
        if args.quick:  # small batches show the runtime's per-batch cost
            report["replay"].append(bench_replay(work, events // 4, 4096, repeats, False))
        # into RAM (tmpfs): the recorder's own cost; into the work folder: what the disk adds
        shm = Path("/dev/shm")
        targets = ([shm] if shm.is_dir() else []) + [work]
        report["disk_write_MB_per_s"] = _disk_speed(work)
        work_ops = ["identity"]
        try:
            from pipeline.operator import lookup

            lookup("background_filter")
            work_ops.append("background_filter")  # a real event kernel (operators.events, Numba)
        except Exception:
            pass
        report["tap"] = [bench_tap(where, events // (4 if args.quick else 20), items, 5, op)
                         for op in work_ops for where in targets for items in (65536, 4096)]
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    for r in report["replay"]:
        line = (f"replay {r['recording_MB']} MB ({r['batch_items']}-event batches): "
                f"{r['replay']['MB_per_s']} MB/s, {r['replay']['Mev_per_s']} Mev/s; raw pyarrow "
                f"{r['raw_pyarrow_ipc']['MB_per_s']} MB/s -> ratio {r['replay_vs_raw_pyarrow']} "
                f"(CPU time ratio {r['replay_vs_raw_pyarrow_cpu']})")
        if "aedat" in r:
            line += f"; aedat {r['aedat']['Mev_per_s']} Mev/s -> ratio {r['replay_vs_aedat']}"
        print(line)
    for t in report["tap"]:
        print(f"tap overhead, {t['pipeline']}, into {t['tap_into']} ({t['batch_items']}-event batches): "
              f"{t['overhead_pct']}% wall, {t['cpu_overhead_pct']}% CPU "
              f"({t['without_tap']['Mev_per_s']} -> {t['with_tap']['Mev_per_s']} Mev/s)")
    print(f"disk write speed of the work folder: {report['disk_write_MB_per_s']} MB/s")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
