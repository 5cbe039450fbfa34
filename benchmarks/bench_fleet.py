"""Fleet manager under load: N robots x R Hz telemetry over CURVE, vs a bare ZeroMQ collector.

Measures the manager process's CPU (share of one core), message loss (sent by robots vs
recorded once, must be 0), duplicates recorded (must be 0) and the delivery delay
(telemetry creation on the robot -> recorded by the manager, p50/p99). The peer, in the
same run, is the least a collector can do: plain PUSH -> PULL with no encryption, no
acknowledgements and no recording, at the same message rate; the ratio shows what
security, ordering, exactly-once recording and the fleet table cost.

Robots run as agents (each with its own key, socket and threads) hosted `--per-proc` to
a worker process, so 100 robots fit a small machine.

    python benchmarks/bench_fleet.py            # 100 robots x 100 Hz x 20 s
    python benchmarks/bench_fleet.py --quick    # 20 robots x 50 Hz x 5 s
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- worker: a process hosting many robots ----------------------------------------------
def worker(args) -> None:
    from edge.agent import Agent, AgentOptions

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agents = [Agent(AgentOptions(name=n, manager=args.manager, keys=args.keys, telemetry_hz=args.hz,
                                 work_dir=str(Path(args.work) / n), linger_s=args.drain_s))
              for n in args.names.split(",")]
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    stop.wait(args.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=args.drain_s + 30)
    print(json.dumps({a.o.name: {"made": a.spool.next_seq, "acked": a.link["acked"]} for a in agents}))


def bare_worker(args) -> None:
    """Peer: PUSH the same telemetry payloads, no CURVE, no acks."""
    import zmq

    from edge.agent import telemetry_payload

    ctx = zmq.Context()
    socks = []
    for _ in range(args.count):
        s = ctx.socket(zmq.PUSH)
        s.connect(args.manager)
        socks.append(s)
    period, n, t0 = 1.0 / args.hz, 0, time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        for s in socks:
            s.send(telemetry_payload(time.time_ns() // 1000, step=n))
        n += 1
        time.sleep(max(0.0, t0 + n * period - time.monotonic()))
    for s in socks:
        s.close(linger=2000)
    ctx.term()
    print(json.dumps({"sent": n * len(socks)}))


def bare_collector(args) -> None:
    import numpy as np
    import pyarrow as pa
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind(args.manager)
    got, delays = 0, []
    idle_until = time.monotonic() + 60
    while time.monotonic() < idle_until:
        if not s.poll(200):
            if got:
                idle_until = min(idle_until, time.monotonic() + 2)
            continue
        msg = s.recv(copy=False)
        batch = pa.ipc.open_stream(pa.py_buffer(msg.buffer)).read_next_batch()
        delays.append(time.time_ns() / 1e6 - batch.column(0)[0].as_py() / 1e3)
        got += 1
        idle_until = time.monotonic() + 2
    d = np.asarray(delays)
    print(json.dumps({"received": got, "p50_ms": float(np.percentile(d, 50)), "p99_ms": float(np.percentile(d, 99)),
                      "cpu_s": time.process_time()}))


# --- driver -------------------------------------------------------------------------------
def _spawn(*argv, **kw):
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, text=True, **kw)


def run_fleet(n: int, hz: float, seconds: float, per_proc: int, work: Path, drain_s: float) -> dict:
    from cluster.fleet.admin import request
    from edge.keys import init_fleet
    from pipeline.errors import LinkError
    from pipeline.recording import StreamFile, _group_files

    names = [f"robot-{i:03d}" for i in range(n)]
    keys = work / "keys"
    init_fleet(keys, names)
    endpoint = f"tcp://127.0.0.1:{_port()}"
    mgr = subprocess.Popen([sys.executable, "-m", "cluster.fleet", "serve", "--keys", str(keys), "--bind", endpoint,
                            "--out", str(work / "fleet")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        for _ in range(100):
            try:
                request(endpoint, str(keys), "status", timeout_s=1.0)
                break
            except LinkError:
                time.sleep(0.2)
        groups = [names[i:i + per_proc] for i in range(0, n, per_proc)]
        cpu0, wall0 = _cpu_s(mgr.pid), time.monotonic()
        for g in groups:
            workers.append(_spawn(__file__, "--worker", "--names", ",".join(g), "--manager", endpoint, "--keys",
                                  str(keys), "--hz", str(hz), "--seconds", str(seconds), "--work", str(work / "agents"),
                                  "--drain-s", str(drain_s)))
        made = {}
        for w in workers:
            out, _ = w.communicate(timeout=seconds + drain_s + 300)
            made.update(json.loads(out.strip().splitlines()[-1]))
        cpu1, wall1 = _cpu_s(mgr.pid), time.monotonic()
        report = request(endpoint, str(keys), "status", timeout_s=10.0)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        mgr.send_signal(signal.SIGTERM)
        mgr.wait(timeout=30)
    folder = work / "fleet" / "telemetry"
    files = _group_files(folder)
    sent = recorded = dups = undelivered = lost = 0
    for name in names:
        seqs = [int(m[b"seq"]) for f in files.get(f"{name}.telemetry", [])
                for _, m in StreamFile(folder / f).batches(with_meta=True)]
        m = made[name]
        kept = set(range(m["acked"] + 1, m["made"]))  # unacknowledged at stop: kept in the robot's spool
        sent += m["made"]
        undelivered += len(kept - set(seqs))
        lost += m["made"] - len(set(seqs) | kept)
        recorded += len(set(seqs))
        dups += len(seqs) - len(set(seqs))
    # undelivered: still unacknowledged when the robots stopped after `drain_s`; they keep it in
    # their spool (`.pending`) for the next start. lost: neither recorded nor kept. Must be 0.
    return {"robots": n, "hz": hz, "seconds": seconds, "drain_s": drain_s, "sent": sent, "recorded": recorded,
            "undelivered_kept_by_robots": undelivered, "lost": lost,
            "duplicates_recorded": dups, "duplicates_dropped": sum(a["duplicates"] for a in report["agents"]),
            "manager_cpu_core_share": round((cpu1 - cpu0) / (wall1 - wall0), 3),
            "msgs_per_s": round(recorded / (wall1 - wall0), 1), "delivery": report["delivery"]}


def run_bare(n: int, hz: float, seconds: float, per_proc: int) -> dict:
    endpoint = f"tcp://127.0.0.1:{_port()}"
    col = _spawn(__file__, "--bare-collector", "--manager", endpoint)
    time.sleep(1.0)
    wall0 = time.monotonic()
    workers = [_spawn(__file__, "--bare-worker", "--count", str(min(per_proc, n - i)), "--manager", endpoint,
                      "--hz", str(hz), "--seconds", str(seconds)) for i in range(0, n, per_proc)]
    sent = sum(json.loads(w.communicate(timeout=seconds + 120)[0].strip().splitlines()[-1])["sent"] for w in workers)
    out = json.loads(col.communicate(timeout=120)[0].strip().splitlines()[-1])
    wall = time.monotonic() - wall0
    return {"sent": sent, "received": out["received"], "lost": sent - out["received"],
            "collector_cpu_core_share": round(out["cpu_s"] / wall, 3),
            "delivery": {"p50_ms": round(out["p50_ms"], 3), "p99_ms": round(out["p99_ms"], 3)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--robots", type=int, default=100)
    ap.add_argument("--hz", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--per-proc", type=int, default=25)
    ap.add_argument("--drain-s", type=float, default=60.0, help="after the run, robots get this long to deliver")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fleet.json"))
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--bare-worker", action="store_true")
    ap.add_argument("--bare-collector", action="store_true")
    ap.add_argument("--names", default="")
    ap.add_argument("--manager", default="")
    ap.add_argument("--keys", default="")
    ap.add_argument("--work", default="")
    ap.add_argument("--count", type=int, default=1)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.bare_worker:
        return bare_worker(args)
    if args.bare_collector:
        return bare_collector(args)
    if args.quick:
        args.robots, args.hz, args.seconds, args.per_proc, args.drain_s = 20, 50.0, 5.0, 10, 20.0
    with tempfile.TemporaryDirectory() as tmp:
        fleet = run_fleet(args.robots, args.hz, args.seconds, args.per_proc, Path(tmp), args.drain_s)
    bare = run_bare(args.robots, args.hz, args.seconds, args.per_proc)
    result = {
        "benchmark": "fleet", "quick": args.quick, "machine_cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0], "reflexarc_fleet": fleet, "peer_bare_zmq_push_pull": bare,
        "ratio_cpu_fleet_over_bare": round(fleet["manager_cpu_core_share"] / max(bare["collector_cpu_core_share"], 1e-6), 2),
        "ratio_p99_fleet_over_bare": round((fleet["delivery"].get("p99_ms") or 0) / max(bare["delivery"]["p99_ms"], 1e-6), 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
