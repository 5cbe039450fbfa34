"""The fleet manager: one CURVE ROUTER socket that every robot and the admin CLI talk to.

It admits only the public keys in `KEYS/authorized/` (the key's file name is the robot's
name, so a message that claims another name is refused and counted), records each
robot's telemetry in order into a reflexarc recording, acknowledges it cumulatively,
keeps the fleet table, and holds the desired state of each robot (config version, model
version): a robot that (re)connects is brought up to it. Rollouts send a candidate model
to a fraction of the fleet; promote sends it to all, rollback returns the canaries to
their previous version. A canary rollout runs the candidate in shadow on its robots (the
live model still drives the actuators), collects agreement, latency and errors from their
heartbeats, and promotes or rolls back by itself (`canary_verdict`).

Nothing a peer sends can stop the loop: every message is checked field by field (types,
sizes, row counts, schema) before use, and a bad one is counted by kind (`counters.bad`)
and logged with the peer's name. Models live in a content-hash store (`edge.model_store`)
under OUT/models, never outside it.
"""

from __future__ import annotations

import hashlib
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
from edge.agent import INITIAL, TELEMETRY_SCHEMA, config_version
from edge.model_store import ModelStore
from pipeline.errors import LinkError, ModelError
from pipeline.metrics import Latencies

log = logging.getLogger(__name__)
ROBOT_KINDS = (b"hello", b"hb", b"tel")
ADMIN_HEADER = 2 << 20  # an admin deploy carries its config in the header
MAX_TELEMETRY = 1 << 20  # bytes of one telemetry message
MAX_ROWS = 10_000  # rows of one telemetry message
MAX_MODEL = 256 << 20  # bytes of one model file
STAT_FIELDS = ("step", "loop_hz", "latency_ms", "drops", "budget_misses", "safe_states", "fallbacks", "buffered",
               "spilled")


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
    model_version: str = INITIAL
    model_hash: str | None = None
    model_error: str | None = None
    config_error: str | None = None
    canary: dict | None = None
    status: str = "unknown"
    stats: dict = field(default_factory=dict)
    last_seen: float = 0.0
    link: str = "never"
    registrations: int = 0
    restarts: int = 0
    expected: int = 0
    received: int = 0
    samples: int = 0
    bad: int = 0
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
                "model_hash": self.model_hash, "model_error": self.model_error, "config_error": self.config_error,
                "canary": self.canary, "status": self.status, "samples": self.samples, "bad": self.bad, "loop_hz": round(s.get("loop_hz", 0.0), 1),
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
        self.counters = {"messages": 0, "bad": {}, "bad_by_peer": {}, "bad_signature": 0, "bad_schema": 0, "refused_keys": 0,
                         "internal_errors": 0}
        self._bad_logged: dict[tuple, int] = {}
        self.events: list[tuple[float, str]] = []
        self.desired: dict[str, dict] = {}  # name -> {"config": (version, dict), "model": version}
        self.store = ModelStore(self.out / "models")
        self.rollout: dict | None = None
        self.history: list[dict] = []  # finished rollouts: candidate, verdict, why, canary reports
        self.recording: FleetRecording | None = None
        self.ready = threading.Event()
        self.cpu_s = 0.0
        self.delay_ms = array("f")  # every delivery delay, fleet-wide (capped), for p99 reports
        self.age_ms = array("f")  # the same messages' oldest row's age (a batched message waits to fill)
        self.delay_at = array("f")  # when each of them was recorded (s since the manager started)
        self.t0 = time.monotonic()

    # -- the loop ------------------------------------------------------------------
    def serve(self, stop: threading.Event | None = None) -> dict:
        stop = stop or threading.Event()
        self.recording = FleetRecording(self.out / "telemetry")
        ctx = zmq.Context()
        gate = K.KeyGate(ctx, self.known)
        sock = K.server_socket(ctx, zmq.ROUTER, Path(self.o.keys) / "manager.key_secret")
        sock.router_mandatory = False
        sock.sndhwm = sock.rcvhwm = 100_000
        try:
            try:
                sock.bind(self.o.bind)
            except zmq.ZMQError as exc:
                raise LinkError(f"the fleet manager cannot bind {self.o.bind}: {exc}") from None
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
                    if self.rollout is not None and self.rollout.get("mode") == "shadow":
                        self._judge(sock)
                if now >= next_manifest:
                    # the manifest and status.json are rewritten whole (~85 ms at 1,000 robots, the loop
                    # stopped meanwhile): at most every 10 ms per robot, so their share stays small
                    next_manifest = now + max(self.o.manifest_every_s, 0.01 * len(self.agents))
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
        """One message from anyone: checked field by field before use; nothing in it can stop the loop."""
        self.counters["messages"] += 1
        try:
            self._dispatch(sock, parts, acks)
        except Exception as exc:  # a bug of ours, not the peer's: count it loudly, keep serving
            self.counters["internal_errors"] += 1
            log.exception("manager: internal error on a message: %s", exc)

    def _dispatch(self, sock, parts, acks) -> None:
        if len(parts) < 3:
            self._bad("malformed", None, "fewer than 2 frames")
            return
        route = bytes(parts[0].buffer)
        try:
            user = parts[1].get("User-Id")
        except (zmq.ZMQError, AttributeError):
            user = None
        name = self.known.get(user.encode()) if user else None
        if name is None:
            self.counters["bad_signature"] += 1
            return
        try:
            kind, head, frames = wire.parse(parts[1:], max_header=ADMIN_HEADER if name == "admin" else wire.MAX_HEADER)
        except LinkError as exc:
            self._bad("malformed", name, str(exc))
            return
        if name == "admin":
            self._admin_message(sock, route, kind, head, frames)
            return
        try:
            wire.check(kind, head, frames, wire.ROBOT, wire.ROBOT_REQUIRED, kinds=ROBOT_KINDS)
        except LinkError as exc:
            self._bad(kind.decode("ascii", "replace")[:16] if kind in ROBOT_KINDS else "unknown_kind", name, str(exc))
            return
        now = time.monotonic()
        if kind == b"hello":
            if head["name"] != name:
                self.counters["bad_signature"] += 1  # signed by one robot's key, claiming another's name
                self._event(f"refused hello: key of '{name}' claimed name '{head['name']}'")
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
        else:
            if head["name"] != name:
                self._bad("hb", name, f"heartbeat names '{head['name']}'")
                return
            self._beat(sock, rec, head)

    def _bad(self, kind: str, peer: str | None, reason: str) -> None:
        """Count a bad message by kind (and by robot) and log it, a few times per peer and kind."""
        bad = self.counters["bad"]
        bad[kind] = bad.get(kind, 0) + 1
        rec = self.agents.get(peer) if peer else None
        if rec is not None:
            rec.bad += 1
        by_peer = self.counters["bad_by_peer"]
        if peer in by_peer or len(by_peer) < 10_000:
            by_peer[peer or "?"] = by_peer.get(peer or "?", 0) + 1
        key = (peer, kind)
        n = self._bad_logged[key] = self._bad_logged.get(key, 0) + 1
        if n <= 3 or n % 1000 == 0:
            log.warning("manager: bad '%s' message from '%s' (%d so far): %s", kind, peer or "?", n, reason)

    def _hello(self, sock, route, name, head, now) -> None:
        rec = self.agents.get(name)
        if rec is None:
            rec = self.agents[name] = AgentRecord(name, registered_ns=time.time_ns())
            rec.expected = self.recording.last_seq(f"{name}.telemetry") + 1
            self._event(f"{name} registered")
        elif rec.pid is not None and head.get("pid") != rec.pid:
            rec.restarts += 1
            self._event(f"{name} restarted (pid {rec.pid} -> {head.get('pid')})")
        first = head.get("first", 0)
        if first > rec.expected:
            rec.skipped += first - rec.expected  # the robot no longer holds them: loss, counted
            rec.expected = first
        if rec.route is not None and rec.route != route:
            self.routes.pop(rec.route, None)
        rec.route, rec.pid, rec.tags = route, head.get("pid"), list(head.get("tags", []))
        self._robot_state(rec, head)
        rec.registrations += 1
        rec.last_seen, rec.link = now, "up"
        self.routes[route] = name
        self._send(sock, rec, b"welcome", {"acked": rec.expected - 1})
        self._converge(sock, rec)

    def _robot_state(self, rec: AgentRecord, head: dict) -> None:
        rec.version = head.get("version", rec.version)
        rec.model_version = head.get("model_version", rec.model_version)
        rec.model_hash = head.get("model_hash", rec.model_hash)
        rec.status = head.get("status", rec.status)
        for field_ in ("model_error", "config_error"):
            if field_ in head and head[field_] != getattr(rec, field_):
                setattr(rec, field_, head[field_])
                if head[field_]:
                    self._event(f"{rec.name}: {head[field_]}")

    def _beat(self, sock, rec: AgentRecord, head: dict) -> None:
        rec.stats = {k: head[k] for k in STAT_FIELDS if k in head}
        self._robot_state(rec, head)
        canary = head.get("canary")
        rec.canary = canary
        ro = self.rollout
        if ro is not None and ro.get("mode") == "shadow" and rec.name in ro["canary"] and canary \
                and canary.get("version") == ro["candidate"]:
            self._judge(sock)

    def _telemetry(self, sock, rec: AgentRecord, head, frames, acks, now) -> None:
        seq = head["seq"]
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
        batch, why = _telemetry_batch(frames[0])
        rec.expected += 1  # a bad payload is consumed too: resending the same bytes cannot fix it
        acks[rec.name] = rec
        if batch is None:
            rec.rejected += 1
            self.counters["bad_schema"] += 1
            self._bad("tel", rec.name, why)
            return
        t = batch.column(0)
        t_first, t_last = t[0].as_py(), t[len(t) - 1].as_py()
        now_ns = time.time_ns()
        delay = max(now_ns - t_last * 1000, 0)  # the message was made when its newest row was
        rec.delays.add(delay)
        # fleet-wide delays in steady state: messages created >= 1 s after the robot registered
        # (what a robot spooled while connecting or while the manager was away is not "delay")
        if t_first * 1000 >= rec.registered_ns + 1_000_000_000 and len(self.delay_ms) < 5_000_000:
            self.delay_ms.append(delay / 1e6)
            self.age_ms.append(max(now_ns - t_first * 1000, 0) / 1e6)
            self.delay_at.append(now - self.t0)
        self.recording.write(f"{rec.name}.telemetry", batch, seq, t_first * 1000)
        rec.received += 1
        rec.samples += batch.num_rows

    # -- desired state, deploys and rollouts ---------------------------------------
    def _converge(self, sock, rec: AgentRecord, force: bool = False) -> None:
        """Send a robot what differs from its desired state (everything, when `force`)."""
        want = self.desired.get(rec.name, {})
        if "config" in want and (force or want["config"][0] != rec.version):
            self._send(sock, rec, b"deploy", {"config": want["config"][1], "version": want["config"][0]})
        if "model" in want and (force or want["model"] != rec.model_version):
            self._send_model(sock, rec, want["model"])
        ro = self.rollout
        if ro is not None and ro.get("mode") == "shadow" and rec.name in ro["canary"] and not force:
            self._send_model(sock, rec, ro["candidate"], mode="shadow")

    def _send_model(self, sock, rec: AgentRecord, version: str, mode: str = "live") -> None:
        got = self.store.read(version) if version != INITIAL else None
        if got is not None:
            sha, file, data = got
            self._send(sock, rec, b"model", {"version": version, "file": file, "sha256": sha, "mode": mode},
                       extra=[data])
        else:
            self._send(sock, rec, b"model", {"version": version, "mode": mode})  # the config's own model

    def select(self, target: str | None) -> list[AgentRecord]:
        """Robots by name, by `tag:T`, or all (`None` / `all`), sorted by name."""
        recs = sorted(self.agents.values(), key=lambda r: r.name)
        if target in (None, "", "all"):
            return recs
        if target.startswith("tag:"):
            return [r for r in recs if target[4:] in r.tags]
        names = set(target.split(","))
        return [r for r in recs if r.name in names]

    def _admin_message(self, sock, route, kind, head, frames) -> None:
        if kind != b"admin":
            self._bad("admin", "admin", f"unexpected kind {kind[:16]!r}")
            return
        try:
            reply = self._admin(sock, _admin_request(head, frames), frames)
        except LinkError as exc:
            self._bad("admin", "admin", str(exc))
            reply = {"ok": False, "error": str(exc)}
        wire.send(sock, b"reply", reply, route=[route], flags=zmq.NOBLOCK)

    def _admin(self, sock, head: dict, frames: list) -> dict:
        op = head["op"]
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
            return self._rollout(sock, head, bytes(frames[0].buffer), targets, now)
        if op in ("promote", "rollback"):
            if self.rollout is None:
                return {"ok": False, "error": "no rollout in progress"}
            return self._finish_rollout(sock, op, "by the operator")
        if op == "stop":
            for rec in targets:
                self._send(sock, rec, b"stop", {"reason": head.get("reason", "operator stop")})
            return {"ok": True, "agents": [r.name for r in targets]}
        return {"ok": False, "error": f"unknown admin op '{op}'"}

    def _rollout(self, sock, head: dict, data: bytes, targets: list[AgentRecord], now: float) -> dict:
        version = head["version"]
        if self.rollout is not None:
            return {"ok": False, "error": f"rollout of {self.rollout['candidate']} in progress: promote or roll back first"}
        if version == INITIAL:
            return {"ok": False, "error": f"'{INITIAL}' names each config's own model; choose another version"}
        known = self.store.get(version)
        sha = hashlib.sha256(data).hexdigest()
        if known is not None and known[0] != sha:
            return {"ok": False, "error": f"version {version} already names other content ({known[0][:12]})"}
        try:
            sha, _ = self.store.put(version, head["file"], data)
        except ModelError as exc:
            return {"ok": False, "error": str(exc)}
        canary = head.get("canary")
        if canary is not None and canary.get("robots"):
            chosen = [r for r in targets if r.name in set(canary["robots"])]
            missing = sorted(set(canary["robots"]) - {r.name for r in chosen})
            if missing:
                return {"ok": False, "error": f"canary robots not connected or not in the target: {', '.join(missing)}"}
        else:
            fraction = canary["fraction"] if canary is not None else head.get("fraction", 0.1)
            k = max(1, math.ceil(fraction * len(targets))) if targets else 0
            chosen = targets[:k]
        if not chosen:
            return {"ok": False, "error": "no robot to roll out to"}
        mode = "shadow" if canary is not None else "live"
        self.rollout = {"candidate": version, "sha256": sha, "target": head.get("target"), "mode": mode,
                        "previous": {r.name: r.model_version for r in chosen}, "canary": [r.name for r in chosen]}
        if canary is not None:
            self.rollout.update(threshold=canary["threshold"], window=canary["window"],
                                latency_factor=canary["latency_factor"], deadline=now + canary["timeout_s"],
                                timeout_s=canary["timeout_s"])
        for rec in chosen:
            rec.canary = None
            if mode == "live":
                self.desired.setdefault(rec.name, {})["model"] = version
            self._send_model(sock, rec, version, mode=mode)
        self._event(f"rollout {version} ({sha[:12]}) {'in shadow ' if mode == 'shadow' else ''}"
                    f"to {len(chosen)}/{len(targets)} robot(s)")
        return {"ok": True, **{k: v for k, v in self.rollout.items() if k != "deadline"}}

    def _judge(self, sock) -> None:
        """A canary's verdict from its robots' shadow reports: promote, roll back, or wait."""
        ro = self.rollout
        reports = {n: self.agents[n].canary for n in ro["canary"] if n in self.agents}
        verdict, why = canary_verdict(reports, ro["candidate"], ro["threshold"], ro["window"], ro["latency_factor"])
        if verdict is None and time.monotonic() > ro["deadline"]:
            verdict, why = "rollback", f"no verdict within {ro['timeout_s']:.0f} s"
        if verdict is not None:
            self._finish_rollout(sock, verdict, why)

    def _finish_rollout(self, sock, op: str, why: str) -> dict:
        ro, self.rollout = self.rollout, None
        if op == "promote":
            chosen = self.select(ro.get("target"))
            for rec in chosen:
                self.desired.setdefault(rec.name, {})["model"] = ro["candidate"]
                self._send_model(sock, rec, ro["candidate"])
        else:
            chosen = [self.agents[n] for n in ro["canary"] if n in self.agents]
            for rec in chosen:
                if ro["mode"] == "shadow":
                    self._send(sock, rec, b"model", {"version": ro["candidate"], "mode": "end-shadow"})
                else:
                    self.desired.setdefault(rec.name, {})["model"] = ro["previous"][rec.name]
                    self._send_model(sock, rec, ro["previous"][rec.name])
        self.history = (self.history + [{"candidate": ro["candidate"], "verdict": op, "why": why,
                                         "canary": {n: self.agents[n].canary for n in ro["canary"]
                                                    if n in self.agents}}])[-20:]
        self._event(f"{op} {ro['candidate']} on {len(chosen)} robot(s): {why}")
        return {"ok": True, "op": op, "candidate": ro["candidate"], "why": why, "agents": [r.name for r in chosen]}

    # -- reports -------------------------------------------------------------------
    def report(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        delays = {}
        if len(self.delay_ms):
            import numpy as np

            d = np.frombuffer(self.delay_ms, dtype=np.float32)
            delays = {"n": int(d.size), "p50_ms": round(float(np.percentile(d, 50)), 3),
                      "p99_ms": round(float(np.percentile(d, 99)), 3), "max_ms": round(float(d.max()), 3)}
            a = np.frombuffer(self.age_ms, dtype=np.float32)
            delays["oldest_row_p99_ms"] = round(float(np.percentile(a, 99)), 3)
            at = np.frombuffer(self.delay_at, dtype=np.float32)
            edges = np.linspace(at.min(), at.max() + 1e-3, 11)  # p99 per tenth of the run: a transient or a steady tail?
            delays["p99_ms_by_tenth"] = [round(float(np.percentile(d[(at >= lo) & (at < hi)], 99)), 1)
                                         if ((at >= lo) & (at < hi)).any() else None
                                         for lo, hi in zip(edges[:-1], edges[1:])]
        ro = None if self.rollout is None else {k: v for k, v in self.rollout.items() if k != "deadline"}
        return {"agents": [r.row(now) for r in sorted(self.agents.values(), key=lambda r: r.name)],
                "counters": {**self.counters, "bad": dict(self.counters["bad"]),
                             "bad_by_peer": dict(self.counters["bad_by_peer"])}, "rollout": ro,
                "rollouts": self.history[-5:], "delivery": delays, "cpu_s": round(time.process_time(), 3),
                "events": [e[1] for e in self.events[-20:]]}

    def _write_status(self, now: float) -> None:
        try:
            tmp = self.out / "status.json.tmp"
            tmp.write_text(json.dumps(self.report(now)))  # compact: the C encoder (indent is pure Python)
            tmp.replace(self.out / "status.json")
        except OSError:
            pass


# --- checks and verdicts (pure functions) ---------------------------------------------


def _telemetry_batch(frame) -> tuple[pa.RecordBatch | None, str]:
    """The telemetry batch in one frame, fully validated, or (None, why)."""
    if wire.size(frame) > MAX_TELEMETRY:
        return None, f"telemetry message of {wire.size(frame)} bytes (at most {MAX_TELEMETRY})"
    try:
        batch = pa.ipc.open_stream(pa.py_buffer(frame.buffer)).read_next_batch()
        if not batch.schema.equals(TELEMETRY_SCHEMA, check_metadata=False):
            return None, f"telemetry schema {batch.schema.names} is not the agent's"
        batch.validate(full=True)  # offsets and lengths, before anything reads a value
    except (pa.ArrowException, StopIteration, ValueError, OSError) as exc:
        return None, f"telemetry payload unreadable: {type(exc).__name__}: {str(exc)[:200]}"
    if not 1 <= batch.num_rows <= MAX_ROWS:
        return None, f"telemetry message with {batch.num_rows} rows (expected 1-{MAX_ROWS})"
    if batch.column(0).null_count:
        return None, "telemetry rows without a time"
    return batch, ""


def _admin_request(head: dict, frames: list) -> dict:
    """An admin request with every field checked; LinkError names the first bad one."""
    op = head.get("op")
    ops = ("status", "deploy", "rollout", "promote", "rollback", "stop")
    if op not in ops:
        raise LinkError(f"admin 'op' must be one of {', '.join(ops)}, got {str(op)[:40]!r}")
    target = head.get("target")
    if target is not None and not (isinstance(target, str) and len(target) <= 65536):
        raise LinkError("admin 'target' must be NAME[,NAME], tag:TAG or all")
    if op == "stop" and not isinstance(head.get("reason", ""), str):
        raise LinkError("admin 'reason' must be text")
    if op == "deploy" and not isinstance(head.get("config"), dict):
        raise LinkError("admin deploy needs 'config', a pipeline config as a JSON object")
    if op == "rollout":
        for key in ("version", "file"):
            if not wire.valid_name(head.get(key)):
                raise LinkError(f"rollout '{key}' {str(head.get(key))[:70]!r}: use [A-Za-z0-9._-], 1-64 characters, "
                                "not dots alone")
        if len(frames) != 1 or not 0 < wire.size(frames[0]) <= MAX_MODEL:
            raise LinkError(f"rollout needs the model file as one frame of 1 byte to {MAX_MODEL >> 20} MB")
        fraction = head.get("fraction", 0.1)
        if not (isinstance(fraction, int | float) and not isinstance(fraction, bool) and 0 < fraction <= 1):
            raise LinkError(f"rollout 'fraction' must be in (0, 1], got {str(fraction)[:40]!r}")
        canary = head.get("canary")
        if canary is not None:
            head = {**head, "canary": _canary_spec(canary)}
    elif frames:
        raise LinkError(f"admin {op} carries no data frames, got {len(frames)}")
    return head


def _canary_spec(c) -> dict:
    if not isinstance(c, dict):
        raise LinkError("rollout 'canary' must be an object")
    out = {"robots": c.get("robots"), "fraction": c.get("fraction"), "threshold": c.get("threshold", 0.95),
           "window": c.get("window", 20), "timeout_s": c.get("timeout_s", 600.0),
           "latency_factor": c.get("latency_factor", 3.0)}
    checks = {"robots": lambda v: v is None or (isinstance(v, list) and 0 < len(v) <= 10_000
                                               and all(wire.valid_name(x) for x in v)),
              "fraction": lambda v: v is None or (_real(v) and 0 < v <= 1),
              "threshold": lambda v: _real(v) and 0 <= v <= 1,
              "window": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000,
              "timeout_s": lambda v: _real(v) and 0 < v <= 7 * 86400,
              "latency_factor": lambda v: _real(v) and 1 <= v <= 1000}
    for key, ok in checks.items():
        if not ok(out[key]):
            raise LinkError(f"canary '{key}' has a bad value {str(out[key])[:60]!r}")
    if (out["robots"] is None) == (out["fraction"] is None):
        raise LinkError("canary needs either 'robots' or 'fraction'")
    return out


def _real(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def canary_verdict(reports: dict, candidate: str, threshold: float, window: int,
                   latency_factor: float) -> tuple[str | None, str]:
    """("promote" | "rollback" | None, why) from each canary robot's shadow report.

    Roll back at once on any error (the candidate would not load, or raised), when one robot's
    agreement over its first `window` decisions is below `threshold`, or when its shadow's median
    latency exceeds `latency_factor` x the live model's (+ 1 ms; a median, because the p99 of a
    few dozen calls on a busy robot is one scheduling hiccup); promote once every robot
    compared `window` decisions and all agreed enough; otherwise wait.
    """
    ready = 0
    for name, r in sorted(reports.items()):
        if not r or r.get("version") != candidate:
            continue
        if r.get("error") or r.get("errors"):
            return "rollback", f"{name}: {r.get('error') or str(r.get('errors')) + ' errors'}"
        compared, agree = r.get("compared", 0), r.get("agree", 0)
        if compared >= window:
            ready += 1
            if agree / compared < threshold:
                return "rollback", (f"{name}: agreement {agree}/{compared} = {agree / compared:.2f} "
                                    f"below {threshold:.2f}")
            live, shadow = r.get("live_p50_ms") or 0.0, r.get("shadow_p50_ms") or 0.0
            if shadow > latency_factor * live + 1.0:
                return "rollback", f"{name}: shadow p50 {shadow:.2f} ms vs live {live:.2f} ms (x{latency_factor:g})"
    if reports and ready == len(reports):
        total = sum(r["agree"] for r in reports.values()), sum(r["compared"] for r in reports.values())
        return "promote", f"agreement {total[0]}/{total[1]} at or above {threshold:.2f} on {ready} robot(s)"
    return None, "waiting"
