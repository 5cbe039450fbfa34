"""Fleet manager under load: N robots x R Hz telemetry over CURVE, vs a bare ZeroMQ collector.

Two sizes in one run: 100 robots x 100 Hz, then 1,000 robots x 10 Hz, 60 s each. Robots batch
`--rows` samples per message (10: 1,000 messages/s for 10,000 samples/s at either size). It
measures the manager process's CPU (share of one core, over the steady-state window), sample
and message loss (made by robots vs recorded once, must be 0), duplicates recorded (must be 0),
duplicates dropped (resent copies the manager already had), and the delivery delay: from the
moment a message was made (its newest sample) to the moment the manager recorded it, p50/p99
(`oldest_row_p99_ms` adds the wait of the message's first sample for its batch to fill).

The robots are simulated in one process so that the manager keeps a core: each is the agent's
real link (`edge.agent.Link`: its own CURVE key and DEALER socket, a spool, go-back-N, acks),
without a pipeline; one thread drives them all. The manager is the real one, in its own
process (`python -m cluster.fleet serve`). The peer, in the same run, is the least a collector
can do: plain PUSH -> PULL at the same message rate with the same payloads, no encryption, no
acknowledgements, no recording; the ratio shows what security, ordering and exactly-once
recording cost.

    nice -n 10 python benchmarks/bench_fleet.py             # both sizes, 60 s each
    nice -n 10 python benchmarks/bench_fleet.py --quick     # 20 x 50 Hz, then 100 x 10 Hz, 5 s each
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


def _say(**kw) -> None:
    print(json.dumps(kw), flush=True)


# --- the simulated robots: many agent links driven by one thread --------------------------------
def sim(args) -> None:
    import zmq

    from edge.agent import AgentOptions, Link
    from edge.spool import Spool

    names = args.names.split(",")
    ctx = zmq.Context(io_threads=1)
    ctx.max_sockets = max(len(names) * 3 + 64, 1024)
    links, steps = [], {}
    for name in names:
        o = AgentOptions(name=name, manager=args.manager, keys=args.keys, telemetry_hz=args.hz,
                         telemetry_rows=args.rows, heartbeat_s=args.heartbeat_s, link_timeout_s=max(5.0, 3 * args.heartbeat_s),
                         linger_s=args.drain_s)
        spool = Spool(Path(args.work) / name / "spool.bin", 4 << 20)
        steps[name] = 0

        def hello(name=name, spool=spool):
            return {"name": name, "tags": ["bench"], "version": "none", "model_version": "initial",
                    "pid": os.getpid(), "status": "running", "first": spool.acked + 1}

        def sample(name=name):
            steps[name] += 1
            return {"step": steps[name], "loop_hz": args.hz, "latency_ms": 0.1}

        link = Link(o, ctx, spool, hello=hello, beat=hello, sample=sample, on_command=lambda *a: None)
        link.next_tel = float("inf")  # no telemetry until every robot is registered
        links.append(link)
    by_sock = {link.sock: link for link in links}
    poller = zmq.Poller()
    for link in links:
        poller.register(link.sock, zmq.POLLIN)

    def turn(now, timeout_ms=None):
        soonest = now + 0.01
        for link in links:
            if now >= link.due:
                link.tick(now)
            soonest = min(soonest, link.due)
        if timeout_ms is None:  # sleep until the next robot has something to do, or a message comes
            timeout_ms = max(0, int((soonest - time.monotonic()) * 1000))
        for sock, _ in poller.poll(timeout_ms):
            link = by_sock[sock]
            link.receive()
            link.tick(now)  # acks opened the window: send on at once

    end = time.monotonic() + 180
    while sum(link.stats["state"] == "up" for link in links) < len(links):
        if time.monotonic() > end:
            _say(error=f"only {sum(k.stats['state'] == 'up' for k in links)}/{len(links)} robots registered")
            return
        turn(time.monotonic(), 5)
    start = time.monotonic()
    for i, link in enumerate(links):  # robots do not tick in lockstep
        link.next_tel = link.due = start + (i / len(links)) / args.hz
    _say(phase="ready")
    cpu0 = time.process_time()
    while time.monotonic() < start + args.seconds:
        turn(time.monotonic())
    sim_cpu = time.process_time() - cpu0
    now = time.monotonic()
    _say(phase="done")
    for link in links:
        link.finish(now)
    while not all(link.finished(time.monotonic()) for link in links):
        turn(time.monotonic())
    out = {link.o.name: {"made": link.spool.next_seq, "acked": link.spool.acked, "samples": steps[link.o.name],
                         "resent": link.stats["resent"], "bad": sum(link.stats["bad"].values())} for link in links}
    for link in links:
        link.close()
    ctx.term()
    _say(phase="result", robots=out, sim_cpu_core_share=round(sim_cpu / args.seconds, 3))


# --- the peer: bare PUSH -> PULL ----------------------------------------------------------------
def bare_sim(args) -> None:
    import zmq

    from edge.agent import telemetry_payload_rows

    ctx = zmq.Context()
    socks = []
    for _ in range(args.count):
        s = ctx.socket(zmq.PUSH)
        s.connect(args.manager)
        socks.append(s)
    time.sleep(1.0)
    period, n, t0 = args.rows / args.hz, 0, time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        for s in socks:
            now_us = time.time_ns() // 1000
            rows = [{"t": now_us - int((args.rows - 1 - k) * 1e6 / args.hz), "step": n} for k in range(args.rows)]
            s.send(telemetry_payload_rows(rows))
        n += 1
        time.sleep(max(0.0, t0 + n * period - time.monotonic()))
    for s in socks:
        s.close(linger=5000)
    ctx.term()
    _say(sent=n * len(socks))


def bare_collector(args) -> None:
    import numpy as np
    import pyarrow as pa
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind(args.manager)
    got, delays = 0, []
    idle_until = time.monotonic() + 120
    cpu0 = None
    while time.monotonic() < idle_until:
        if not s.poll(200):
            continue
        msg = s.recv(copy=False)
        cpu0 = time.process_time() if cpu0 is None else cpu0
        batch = pa.ipc.open_stream(pa.py_buffer(msg.buffer)).read_next_batch()
        delays.append(time.time_ns() / 1e6 - batch.column(0)[batch.num_rows - 1].as_py() / 1e3)
        got += 1
        idle_until = time.monotonic() + 3
    d = np.asarray(delays)
    _say(received=got, p50_ms=float(np.percentile(d, 50)), p99_ms=float(np.percentile(d, 99)),
         cpu_s=time.process_time() - (cpu0 or 0.0))


# --- driver -------------------------------------------------------------------------------------
def _spawn(*argv):
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _line(proc, timeout_s: float) -> dict:
    import select

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                return json.loads(line)
    raise RuntimeError(f"no answer from pid {proc.pid} within {timeout_s:.0f} s (exit {proc.poll()})")


def run_fleet(n: int, hz: float, seconds: float, rows: int, heartbeat_s: float, work: Path, drain_s: float) -> dict:
    import numpy as np

    from cluster.fleet.admin import request
    from edge.keys import init_fleet
    from pipeline.errors import LinkError
    from pipeline.recording import StreamFile, _group_files

    names = [f"robot-{i:04d}" for i in range(n)]
    keys = work / "keys"
    init_fleet(keys, names)
    endpoint = f"tcp://127.0.0.1:{_port()}"
    mgr = subprocess.Popen([sys.executable, "-m", "cluster.fleet", "serve", "--keys", str(keys), "--bind", endpoint,
                            "--out", str(work / "fleet"), "--heartbeat-s", str(heartbeat_s),
                            "--lost-after-s", str(4 * heartbeat_s)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    robots = None
    try:
        for _ in range(100):
            try:
                request(endpoint, str(keys), "status", timeout_s=1.0)
                break
            except LinkError:
                time.sleep(0.2)
        robots = _spawn(__file__, "--sim", "--names", ",".join(names), "--manager", endpoint, "--keys", str(keys),
                        "--hz", str(hz), "--rows", str(rows), "--seconds", str(seconds), "--work", str(work / "robots"),
                        "--drain-s", str(drain_s), "--heartbeat-s", str(heartbeat_s))
        assert _line(robots, 300).get("phase") == "ready"
        cpu0, wall0, load0 = _cpu_s(mgr.pid), time.monotonic(), os.getloadavg()[0]
        assert _line(robots, seconds + 120).get("phase") == "done"
        cpu1, wall1, load1 = _cpu_s(mgr.pid), time.monotonic(), os.getloadavg()[0]
        result = _line(robots, drain_s + 300)
        report = request(endpoint, str(keys), "status", timeout_s=30.0)
    finally:
        if robots is not None and robots.poll() is None:
            robots.kill()
        mgr.send_signal(signal.SIGTERM)
        mgr.wait(timeout=60)
    made = result["robots"]
    folder = work / "fleet" / "telemetry"
    files = _group_files(folder)
    sent = recorded = dups = undelivered = lost = samples_made = samples_recorded = 0
    for name in names:
        seqs, n_rows = [], 0
        for f in files.get(f"{name}.telemetry", []):
            for batch, m in StreamFile(folder / f).batches(with_meta=True):
                seqs.append(int(m[b"seq"]))
                n_rows += batch.num_rows
        m = made[name]
        kept = set(range(m["acked"] + 1, m["made"]))  # unacknowledged at the end: still in the robot's spool
        sent += m["made"]
        undelivered += len(kept - set(seqs))
        lost += m["made"] - len(set(seqs) | kept)
        recorded += len(set(seqs))
        dups += len(seqs) - len(set(seqs))
        samples_made += m["samples"]
        samples_recorded += n_rows
    rows_by_name = {a["name"]: a for a in report["agents"]}
    return {"robots": n, "hz": hz, "rows_per_message": rows, "seconds": seconds, "heartbeat_s": heartbeat_s,
            "drain_s": drain_s, "messages_made": sent, "messages_recorded": recorded,
            "samples_made": samples_made, "samples_recorded": samples_recorded,
            "undelivered_kept_by_robots": undelivered, "lost": lost, "duplicates_recorded": dups,
            "duplicates_dropped": sum(a["duplicates"] for a in rows_by_name.values()),
            "resends": sum(m["resent"] for m in made.values()),
            "manager_cpu_core_share": round((cpu1 - cpu0) / (wall1 - wall0), 3),
            "manager_cpu_us_per_message": round((cpu1 - cpu0) / max(sent, 1) * 1e6, 1),
            "sim_cpu_core_share": result["sim_cpu_core_share"],
            "samples_per_s": round(samples_made / (wall1 - wall0), 1), "delivery": report["delivery"],
            "robots_p99_delay_ms_max": float(np.nanmax([a["delay_p99_ms"] or np.nan for a in rows_by_name.values()])),
            "bad_messages": report["counters"]["bad"], "internal_errors": report["counters"]["internal_errors"],
            "load_avg_1m": [round(load0, 2), round(load1, 2)]}


def run_bare(n: int, hz: float, seconds: float, rows: int) -> dict:
    endpoint = f"tcp://127.0.0.1:{_port()}"
    col = _spawn(__file__, "--bare-collector", "--manager", endpoint)
    time.sleep(1.0)
    wall0 = time.monotonic()
    robots = _spawn(__file__, "--bare-sim", "--count", str(n), "--manager", endpoint, "--hz", str(hz),
                    "--rows", str(rows), "--seconds", str(seconds))
    sent = _line(robots, seconds + 120)["sent"]
    out = _line(col, 180)
    wall = time.monotonic() - wall0
    return {"sent": sent, "received": out["received"], "lost": sent - out["received"],
            "collector_cpu_core_share": round(out["cpu_s"] / max(wall - 1.0, 1e-3), 3),
            "collector_cpu_us_per_message": round(out["cpu_s"] / max(out["received"], 1) * 1e6, 1),
            "delivery": {"p50_ms": round(out["p50_ms"], 3), "p99_ms": round(out["p99_ms"], 3)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="20 robots x 50 Hz, then 100 x 10 Hz, 5 s each")
    ap.add_argument("--sizes", default="100x100,1000x10", help="ROBOTSxHZ[,ROBOTSxHZ]")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rows", type=int, default=10, help="samples per telemetry message")
    ap.add_argument("--drain-s", type=float, default=60.0, help="after the run, robots get this long to deliver")
    ap.add_argument("--out", default=None)
    ap.add_argument("--sim", action="store_true")
    ap.add_argument("--bare-sim", action="store_true")
    ap.add_argument("--bare-collector", action="store_true")
    ap.add_argument("--names", default="")
    ap.add_argument("--manager", default="")
    ap.add_argument("--keys", default="")
    ap.add_argument("--work", default="")
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--heartbeat-s", type=float, default=0.5)
    ap.add_argument("--count", type=int, default=1)
    args = ap.parse_args()
    if args.sim:
        return sim(args)
    if args.bare_sim:
        return bare_sim(args)
    if args.bare_collector:
        return bare_collector(args)
    if args.quick:
        args.sizes, args.seconds, args.drain_s, args.rows = "20x50,100x10", 5.0, 20.0, 5
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("fleet_quick.json" if args.quick else "fleet.json"))
    runs = []
    for size in args.sizes.split(","):
        n, hz = size.split("x")
        n, hz = int(n), float(hz)
        rows = max(1, min(args.rows, int(hz)))  # at most a second of samples per message
        heartbeat_s = 0.5 if n <= 200 else 2.0  # 1,000 robots' heartbeats would outnumber their telemetry
        with tempfile.TemporaryDirectory() as tmp:
            fleet = run_fleet(n, hz, args.seconds, rows, heartbeat_s, Path(tmp), args.drain_s)
        bare = run_bare(n, hz, args.seconds, rows)
        runs.append({"reflexarc_fleet": fleet, "peer_bare_zmq_push_pull": bare,
                     "ratio_cpu_fleet_over_bare": round(fleet["manager_cpu_core_share"]
                                                        / max(bare["collector_cpu_core_share"], 1e-6), 2),
                     "ratio_p99_fleet_over_bare": round((fleet["delivery"].get("p99_ms") or 0)
                                                        / max(bare["delivery"]["p99_ms"], 1e-6), 2)})
        print(json.dumps(runs[-1], indent=2), flush=True)
    result = {"benchmark": "fleet", "quick": args.quick, "machine_cpus": os.cpu_count(),
              "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "command": " ".join(sys.argv), "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
