"""The fleet manager: one CURVE ROUTER socket that every robot and the admin CLI talk to.

It admits only the public keys in `KEYS/authorized/` (the key's file name is the robot's
name, so a message that claims another name is refused and counted), records each
robot's telemetry in order into a reflexarc recording, acknowledges it cumulatively,
keeps the fleet table, and holds the desired state of each robot (config version, model
version): a robot that (re)connects is brought up to it. Rollouts send a candidate model
to a fraction of the fleet; promote sends it to all, rollback returns the canaries to
their previous version.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import zmq

from cluster.fleet.recording import FleetRecording
from edge import keys as K
from edge import wire
from edge.agent import TELEMETRY_SCHEMA, config_version
from pipeline.errors import LinkError
from pipeline.metrics import Latencies

log = logging.getLogger(__name__)


@dataclass
class ManagerOptions:
    bind: str = "tcp://127.0.0.1:5600"
    keys: str = "keys"
    out: str = "out/fleet"
    heartbeat_s: float = 0.5
    lost_after_s: float = 2.0
    manifest_every_s: float = 2.0


@dataclass
class AgentRecord:
    """What the manager knows about one robot."""

    name: str
    route: bytes | None = None
    tags: list[str] = field(default_factory=list)
    pid: int | None = None
    version: str = "none"
    model_version: str = "initial"
    status: str = "unknown"
    stats: dict = field(default_factory=dict)
    last_seen: float = 0.0
    link: str = "never"
    registrations: int = 0
    restarts: int = 0
    expected: int = 0
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    skipped: int = 0
    rejected: int = 0
    last_nack: float = 0.0
    registered_ns: int = 0
    delays: Latencies = field(default_factory=Latencies)

    def row(self, now: float) -> dict:
        s = self.stats
        return {"name": self.name, "tags": self.tags, "version": self.version, "model": self.model_version,
                "status": self.status, "loop_hz": round(s.get("loop_hz", 0.0), 1),
                "latency_ms": round(s.get("latency_ms", 0.0), 3), "drops": s.get("drops", 0),
                "safe_states": s.get("safe_states", 0), "buffered": s.get("buffered", 0),
                "link": self.link, "last_seen_s": round(now - self.last_seen, 2) if self.last_seen else None,
                "received": self.received, "duplicates": self.duplicates, "rejected": self.rejected,
                "restarts": self.restarts, "delay_p99_ms": self.delays.percentiles()["p99_ms"]}


class Manager:
    """`Manager(opts).serve(stop)` runs until `stop` is set."""

    def __init__(self, opts: ManagerOptions):
        self.o = opts
        self.out = Path(opts.out)
        self.known = K.authorized(opts.keys)  # z85 public key -> name
        self.agents: dict[str, AgentRecord] = {}
        self.routes: dict[bytes, str] = {}
        self.counters = {"bad_signature": 0, "bad_schema": 0, "malformed": 0, "refused_keys": 0}
        self.events: list[tuple[float, str]] = []
        self.desired: dict[str, dict] = {}  # name -> {"config": (version, dict), "model": version}
        self.models: dict[str, tuple[str, bytes]] = {}  # version -> (file name, bytes)
        self.rollout: dict | None = None
        self.recording: FleetRecording | None = None
        self.ready = threading.Event()
        self.cpu_s = 0.0
        self.delay_ms = array("f")  # every delivery delay, fleet-wide (capped), for p99 reports

    # -- the loop ------------------------------------------------------------------
    def serve(self, stop: threading.Event | None = None) -> dict:
        stop = stop or threading.Event()
        self.recording = FleetRecording(self.out / "telemetry")
        self._load_models()
        ctx = zmq.Context()
        gate = K.KeyGate(ctx, self.known)
        sock = K.server_socket(ctx, zmq.ROUTER, Path(self.o.keys) / "manager.key_secret")
        sock.router_mandatory = False
        sock.sndhwm = sock.rcvhwm = 100_000
        try:
            sock.bind(self.o.bind)
            self.ready.set()
            cpu0 = time.process_time()
            next_hb = next_manifest = time.monotonic()
            while not stop.is_set():
                acks: dict[str, AgentRecord] = {}
                if sock.poll(20):
                    for _ in range(2000):
                        try:
                            parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(sock, parts, acks)
                for rec in acks.values():
                    self._send(sock, rec, b"ack", {"seq": rec.expected - 1})
                now = time.monotonic()
                self.counters["refused_keys"] = gate.refused
                if now >= next_hb:
                    next_hb = now + self.o.heartbeat_s
                    self._heartbeat(sock, now)
                if now >= next_manifest:
                    next_manifest = now + self.o.manifest_every_s
                    self.recording.write_manifest()
                    self._write_status(now)
            self.cpu_s = time.process_time() - cpu0
        finally:
            sock.close(linger=0)
            gate.stop()
            ctx.term()
            self.recording.close()
            self._write_status(time.monotonic())
        return self.report()

    def _send(self, sock, rec: AgentRecord, kind: bytes, head: dict, extra=None) -> None:
        if rec.route is None:
            return
        try:
            wire.send(sock, kind, head, extra=extra, route=[rec.route], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _heartbeat(self, sock, now: float) -> None:
        for rec in self.agents.values():
            if rec.link == "up" and now - rec.last_seen > self.o.lost_after_s:
                rec.link = "lost"
                self._event(f"{rec.name} lost (silent {now - rec.last_seen:.1f} s)")
            if rec.link == "up":
                self._send(sock, rec, b"hb", {"t": time.time()})

    def _event(self, text: str) -> None:
        log.info(text)
        self.events = (self.events + [(time.time(), text)])[-200:]

    # -- messages ------------------------------------------------------------------
    def _handle(self, sock, parts, acks) -> None:
        route = bytes(parts[0].buffer)
        try:
            user = parts[1].get("User-Id")
        except (zmq.ZMQError, AttributeError):
            user = None
        name = self.known.get(user.encode()) if user else None
        try:
            kind, head, frames = wire.parse(parts[1:])
        except LinkError:
            self.counters["malformed"] += 1
            return
        if name is None:
            self.counters["bad_signature"] += 1
            return
        if name == "admin" and kind == b"admin":
            reply = self._admin(sock, head, frames)
            wire.send(sock, b"reply", reply, route=[route], flags=zmq.NOBLOCK)
            return
        now = time.monotonic()
        if kind == b"hello":
            if head.get("name") != name:
                self.counters["bad_signature"] += 1  # signed by one robot's key, claiming another's name
                self._event(f"refused hello: key of '{name}' claimed name '{head.get('name')}'")
                return
            self._hello(sock, route, name, head, now)
            return
        rec = self.agents.get(name)
        if rec is None or rec.route != route:
            wire.send(sock, b"who", {}, route=[route], flags=zmq.NOBLOCK)
            return
        rec.last_seen = now
        if rec.link != "up":
            rec.link = "up"
            self._event(f"{name} back")
        if kind == b"tel":
            self._telemetry(sock, rec, head, frames, acks, now)
        elif kind == b"hb":
            rec.stats = head
            rec.status = head.get("status", rec.status)
            rec.version = head.get("version", rec.version)
            rec.model_version = head.get("model_version", rec.model_version)
        else:
            self.counters["malformed"] += 1

    def _hello(self, sock, route, name, head, now) -> None:
        rec = self.agents.get(name)
        if rec is None:
            rec = self.agents[name] = AgentRecord(name, registered_ns=time.time_ns())
            rec.expected = self.recording.last_seq(f"{name}.telemetry") + 1
            self._event(f"{name} registered")
        elif rec.pid is not None and head.get("pid") != rec.pid:
            rec.restarts += 1
            self._event(f"{name} restarted (pid {rec.pid} -> {head.get('pid')})")
        first = int(head.get("first", 0))
        if first > rec.expected:
            rec.skipped += first - rec.expected  # the robot no longer holds them: loss, counted
            rec.expected = first
        if rec.route is not None and rec.route != route:
            self.routes.pop(rec.route, None)
        rec.route, rec.pid, rec.tags = route, head.get("pid"), list(head.get("tags", []))
        rec.version = head.get("version", rec.version)
        rec.model_version = head.get("model_version", rec.model_version)
        rec.status = head.get("status", rec.status)
        rec.registrations += 1
        rec.last_seen, rec.link = now, "up"
        self.routes[route] = name
        self._send(sock, rec, b"welcome", {"acked": rec.expected - 1})
        self._converge(sock, rec)

    def _telemetry(self, sock, rec: AgentRecord, head, frames, acks, now) -> None:
        seq = head.get("seq")
        if not isinstance(seq, int) or len(frames) != 1:
            self.counters["malformed"] += 1
            return
        if seq < rec.expected:
            rec.duplicates += 1
            acks[rec.name] = rec
            return
        if seq > rec.expected:
            rec.out_of_order += 1
            if now - rec.last_nack > 0.2:
                rec.last_nack = now
                self._send(sock, rec, b"nack", {"expect": rec.expected})
            return
        rec.expected += 1
        acks[rec.name] = rec
        try:
            batch = pa.ipc.open_stream(pa.py_buffer(frames[0].buffer)).read_next_batch()
        except (pa.ArrowException, StopIteration, ValueError):
            rec.rejected += 1
            self.counters["bad_schema"] += 1
            return
        if not batch.schema.equals(TELEMETRY_SCHEMA, check_metadata=False):
            rec.rejected += 1
            self.counters["bad_schema"] += 1
            return
        t_us = batch.column(0)[0].as_py()
        delay = max(time.time_ns() - t_us * 1000, 0)
        rec.delays.add(delay)
        # fleet-wide delays in steady state: messages created >= 1 s after the robot registered
        # (what a robot spooled while connecting or while the manager was away is not "delay")
        if t_us * 1000 >= rec.registered_ns + 1_000_000_000 and len(self.delay_ms) < 5_000_000:
            self.delay_ms.append(delay / 1e6)
        self.recording.write(f"{rec.name}.telemetry", batch, seq, t_us * 1000)
        rec.received += 1

    # -- desired state, deploys and rollouts ---------------------------------------
    def _converge(self, sock, rec: AgentRecord, force: bool = False) -> None:
        """Send a robot what differs from its desired state (everything, when `force`)."""
        want = self.desired.get(rec.name, {})
        if "config" in want and (force or want["config"][0] != rec.version):
            self._send(sock, rec, b"deploy", {"config": want["config"][1], "version": want["config"][0]})
        if "model" in want and (force or want["model"] != rec.model_version):
            self._send_model(sock, rec, want["model"])

    def _send_model(self, sock, rec: AgentRecord, version: str) -> None:
        if version in self.models:
            file, data = self.models[version]
            self._send(sock, rec, b"model", {"version": version, "file": file}, extra=[data])
        else:
            self._send(sock, rec, b"model", {"version": version})  # one the robot already holds

    def select(self, target: str | None) -> list[AgentRecord]:
        """Robots by name, by `tag:T`, or all (`None` / `all`), sorted by name."""
        recs = sorted(self.agents.values(), key=lambda r: r.name)
        if target in (None, "", "all"):
            return recs
        if target.startswith("tag:"):
            return [r for r in recs if target[4:] in r.tags]
        names = set(target.split(","))
        return [r for r in recs if r.name in names]

    def _load_models(self) -> None:
        for path in sorted((self.out / "models").glob("*/*")):
            self.models[path.parent.name] = (path.name, path.read_bytes())

    def _admin(self, sock, head: dict, frames: list) -> dict:
        op = head.get("op")
        now = time.monotonic()
        if op == "status":
            return self.report(now)
        targets = self.select(head.get("target"))
        if op == "deploy":
            config = head["config"]
            version = config_version(config)
            for rec in targets:
                self.desired.setdefault(rec.name, {})["config"] = (version, config)
                self._converge(sock, rec, force=True)
            self._event(f"deploy {version} to {len(targets)} robot(s)")
            return {"ok": True, "version": version, "agents": [r.name for r in targets]}
        if op == "rollout":
            version, file = head["version"], head["file"]
            data = bytes(frames[0].buffer) if frames else b""
            folder = self.out / "models" / version
            folder.mkdir(parents=True, exist_ok=True)
            (folder / file).write_bytes(data)
            self.models[version] = (file, data)
            k = max(1, math.ceil(float(head.get("fraction", 0.1)) * len(targets))) if targets else 0
            canary = targets[:k]
            self.rollout = {"candidate": version, "target": head.get("target"),
                            "previous": {r.name: r.model_version for r in canary},
                            "canary": [r.name for r in canary]}
            for rec in canary:
                self.desired.setdefault(rec.name, {})["model"] = version
                self._send_model(sock, rec, version)
            self._event(f"rollout {version} to {len(canary)}/{len(targets)} robot(s)")
            return {"ok": True, **self.rollout}
        if op in ("promote", "rollback"):
            if self.rollout is None:
                return {"ok": False, "error": "no rollout in progress"}
            ro = self.rollout
            if op == "promote":
                chosen = self.select(ro.get("target"))
                for rec in chosen:
                    self.desired.setdefault(rec.name, {})["model"] = ro["candidate"]
                    self._send_model(sock, rec, ro["candidate"])
            else:
                chosen = [self.agents[n] for n in ro["canary"] if n in self.agents]
                for rec in chosen:
                    self.desired.setdefault(rec.name, {})["model"] = ro["previous"][rec.name]
                    self._send_model(sock, rec, ro["previous"][rec.name])
            self._event(f"{op} {ro['candidate']} on {len(chosen)} robot(s)")
            self.rollout = None
            return {"ok": True, "op": op, "candidate": ro["candidate"], "agents": [r.name for r in chosen]}
        if op == "stop":
            for rec in targets:
                self._send(sock, rec, b"stop", {"reason": head.get("reason", "operator stop")})
            return {"ok": True, "agents": [r.name for r in targets]}
        return {"ok": False, "error": f"unknown admin op '{op}'"}

    # -- reports -------------------------------------------------------------------
    def report(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        delays = {}
        if len(self.delay_ms):
            import numpy as np

            d = np.frombuffer(self.delay_ms, dtype=np.float32)
            delays = {"n": int(d.size), "p50_ms": round(float(np.percentile(d, 50)), 3),
                      "p99_ms": round(float(np.percentile(d, 99)), 3), "max_ms": round(float(d.max()), 3)}
        return {"agents": [r.row(now) for r in sorted(self.agents.values(), key=lambda r: r.name)],
                "counters": dict(self.counters), "rollout": self.rollout, "delivery": delays,
                "cpu_s": round(time.process_time(), 3),
                "events": [e[1] for e in self.events[-20:]]}

    def _write_status(self, now: float) -> None:
        try:
            tmp = self.out / "status.json.tmp"
            tmp.write_text(json.dumps(self.report(now), indent=2))
            tmp.replace(self.out / "status.json")
        except OSError:
            pass
