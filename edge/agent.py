"""The edge agent: runs a robot's pipeline locally and keeps a CURVE link to its manager.

Two threads. The loop thread pushes the pipeline wave by wave (the local executor's
`Feed` and `Stage`), beats the watchdog, and between two waves applies what the manager
asked for: a new model version (`op.swap_model(path, version)` on every operator that has
it), a new config, or a stop. The link thread owns the DEALER socket: hello and
heartbeats, telemetry from the spool (go-back-N with cumulative acks, so after any
outage everything arrives once and in order), and commands in. The loop never waits
on the link: with the manager gone the robot keeps sensing and acting, and telemetry
piles up in the spool (bounded RAM, then disk).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import zmq

from edge import keys as K
from edge import wire
from edge.spool import Spool
from edge.watchdog import Watchdog
from pipeline import schemas as sch
from pipeline.errors import LinkError

log = logging.getLogger(__name__)

TELEMETRY_FIELDS = {
    "step": "int64", "loop_hz": "float64", "latency_ms": "float64", "drops": "int64",
    "budget_misses": "int64", "safe_states": "int64", "fallbacks": "int64", "buffered": "int64",
}
TELEMETRY_SCHEMA = sch.commands_schema(TELEMETRY_FIELDS, {"t": "us (wall clock)", "loop_hz": "Hz", "latency_ms": "ms"})


def telemetry_payload(t_us: int, **values) -> bytes:
    """One telemetry row as an Arrow IPC stream (schema + batch), the spool's unit."""
    cols = {k: np.asarray([values.get(k, 0)], dtype=v) for k, v in TELEMETRY_FIELDS.items()}
    batch = sch.commands_batch(np.asarray([t_us], dtype=np.int64), TELEMETRY_SCHEMA, **cols)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, TELEMETRY_SCHEMA) as w:
        w.write_batch(batch)
    return sink.getvalue()


@dataclass
class AgentOptions:
    """How an agent finds and talks to its manager."""

    name: str
    manager: str  # tcp://HOST:PORT
    keys: str  # folder with NAME.key_secret and manager.key
    tags: list[str] = field(default_factory=list)
    config: str | dict | None = None  # the local pipeline (a YAML path or a dict)
    manager_key: str = "manager"
    telemetry_hz: float = 10.0
    heartbeat_s: float = 0.5
    link_timeout_s: float = 2.0
    deadline_ms: float = 250.0
    # telemetry in flight before an ack: small, so a slow manager's queue (= delivery delay)
    # stays short and a resend repeats little; the spool holds the rest
    window: int = 32
    resend_s: float = 1.0
    mem_bytes: int = 4 << 20
    work_dir: str | None = None  # spool and received models
    exit_when_done: bool = False
    linger_s: float = 3.0  # on exit, wait this long to deliver what is buffered


class Agent:
    """One robot: `Agent(opts).run(stop)` blocks until `stop` is set (or the pipeline ends)."""

    def __init__(self, opts: AgentOptions):
        self.o = opts
        self.work = Path(opts.work_dir or f".reflexarc/agent-{opts.name}")
        self.stop = threading.Event()
        self.commands: queue.Queue = queue.Queue()
        self.stats = {"step": 0, "loop_hz": 0.0, "latency_ms": 0.0, "drops": 0, "budget_misses": 0,
                      "safe_states": 0, "fallbacks": 0}
        self.version = "none"
        self.model_version = "initial"
        self.status = "starting"
        self.link = {"state": "down", "connects": 0, "sent": 0, "resent": 0, "acked": -1}
        self.spool = Spool(self.work / "spool.bin", opts.mem_bytes)
        self.watchdog: Watchdog | None = None
        self.results: dict = {}
        self.errors: list[str] = []
        self._done = False

    # -- the loop thread -------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> dict:
        if stop is not None:
            threading.Thread(target=lambda: (stop.wait(), self.stop.set()), daemon=True).start()
        link = threading.Thread(target=self._link, name=f"link-{self.o.name}", daemon=True)
        link.start()
        config = self.o.config
        try:
            while not self.stop.is_set():
                if config is not None:
                    config = self._run_pipeline(config)
                    if config is None and self.o.exit_when_done:
                        break
                    continue
                config = self._wait_for_command(0.05)
        finally:
            self.status = "stopped"
            self._done = True
            link.join(timeout=self.o.linger_s + 2)
            self.spool.close()
        return {"results": self.results, "stats": dict(self.stats), "errors": self.errors,
                "link": dict(self.link), "model_version": self.model_version}

    def _wait_for_command(self, timeout: float):
        try:
            kind, body = self.commands.get(timeout=timeout)
        except queue.Empty:
            return None
        return self._apply(kind, body, None)

    def _apply(self, kind: str, body, ops):
        """Apply a manager command between waves; a new config is returned to switch to."""
        if kind == "stop":
            if self.watchdog is not None:
                self.watchdog.trip(f"stop command: {body}")
            self.stop.set()
        elif kind == "deploy":
            return body
        elif kind == "model":
            version, path = body
            for op in ops or ():
                swap = getattr(op, "swap_model", None)
                if swap is not None:
                    swap(path, version)
            self.model_version = version
        return None

    def _run_pipeline(self, config):
        from pipeline.feed import Feed
        from pipeline.graph import Graph
        from pipeline.stage import Stage

        try:
            if isinstance(config, str | Path):
                import yaml

                data = yaml.safe_load(Path(config).read_text())
                graph = Graph.from_dict(data, source=str(config))
            else:
                data = config
                graph = Graph.from_dict(config)
            graph = graph.check().fresh()
        except Exception as exc:
            self.errors.append(f"config rejected: {exc}")
            self.status = "config-error"
            return None
        self.version = config_version(data)
        feed = Feed(graph)
        stage = Stage(graph, [n for n in graph.order if not graph.nodes[n].is_source])
        ops = list(stage.ops.values())
        self.watchdog = Watchdog([op for op in ops if op.actuator], self.o.deadline_ms)
        switch_to = None
        self.status = "running"
        last = time.perf_counter()
        try:
            stage.setup()
            feed.setup()
            self.watchdog.start()
            for _, items in feed:
                while not self.commands.empty():
                    switch_to = self._apply(*self.commands.get_nowait(), ops) or switch_to
                if self.stop.is_set() or switch_to is not None:
                    break
                t0 = time.perf_counter()
                stage.step(items)
                now = time.perf_counter()
                self.watchdog.beat()
                s = self.stats
                s["step"] += 1
                s["latency_ms"] = (now - t0) * 1e3
                s["loop_hz"] = 0.9 * s["loop_hz"] + 0.1 / max(now - last, 1e-6)
                last = now
                if s["step"] % 16 == 0:
                    self._count(feed, stage)
            else:
                stage.finish([])
            self._count(feed, stage)
            self.results = stage.results()
            self.status = "done" if switch_to is None and not self.stop.is_set() else self.status
        except Exception as exc:
            self.watchdog.trip(f"stage failed: {exc}")
            self.errors.append(str(exc))
            self.status = "failed"
            self.results = stage.results()
        finally:
            self.watchdog.stop()
            self.stats["safe_states"] += self.watchdog.trips
            for e in feed.close() + stage.close():
                self.errors.append(str(e))
        return switch_to

    def _count(self, feed, stage) -> None:
        snaps = [m.snapshot() for m in feed.metrics.values()] + stage.snapshots()
        self.stats["drops"] = sum(s["drops_batches"] for s in snaps)
        self.stats["budget_misses"] = sum(s["budget_misses"] for s in snaps)
        self.stats["fallbacks"] = sum(getattr(op, "fallbacks", 0) for op in stage.ops.values())

    # -- the link thread -------------------------------------------------------------
    def _hello(self) -> dict:
        return {"name": self.o.name, "tags": self.o.tags, "version": self.version,
                "model_version": self.model_version, "pid": os.getpid(), "status": self.status,
                "first": self.spool.acked + 1}

    def _beat(self) -> dict:
        return {**self._hello(), **self.stats, "buffered": len(self.spool), "spilled": self.spool.spilled,
                "safe_states": self.stats["safe_states"] + (self.watchdog.trips if self.watchdog else 0)}

    def _link(self) -> None:
        o = self.o
        ctx = zmq.Context()
        sock = K.client_socket(ctx, zmq.DEALER, Path(o.keys) / f"{o.name}.key_secret",
                               Path(o.keys) / f"{o.manager_key}.key")
        sock.immediate = True  # queue nothing on a dead connection: the spool holds it
        sock.sndhwm = o.window * 2
        sock.reconnect_ivl, sock.reconnect_ivl_max = 100, 1000
        sock.connect(o.manager)
        now = time.monotonic()
        heard = -1e9
        welcomed = False
        next_tel = next_hb = now
        send_from = 0
        last_progress = now
        resend_wait = o.resend_s
        done_at = None
        try:
            while True:
                now = time.monotonic()
                if self._done and done_at is None:
                    done_at = now
                    next_hb = now  # tell the manager how the loop ended
                if done_at is not None and ((not len(self.spool) and now > done_at + 0.05) or now - done_at > o.linger_s):
                    break
                if done_at is None and now >= next_tel:
                    s = self.stats
                    payload = telemetry_payload(time.time_ns() // 1000, **s, buffered=len(self.spool))
                    self.spool.push(payload)
                    next_tel = max(next_tel + 1.0 / o.telemetry_hz, now - 1.0)
                up = now - heard < o.link_timeout_s
                if not up and self.link["state"] == "up":
                    self.link["state"] = "down"
                    welcomed = False
                if now >= next_hb:
                    next_hb = now + o.heartbeat_s
                    kind = b"hb" if welcomed else b"hello"
                    try:
                        wire.send(sock, kind, self._beat() if welcomed else self._hello(), flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                if welcomed:
                    if len(self.spool) and now - last_progress > resend_wait and send_from > self.spool.acked + 1:
                        send_from = self.spool.acked + 1  # go back N: the manager may have lost them
                        self.link["resent"] += 1
                        last_progress = now
                        resend_wait = min(resend_wait * 2, 16 * o.resend_s)  # a slow manager is not flooded
                    send_from = max(send_from, self.spool.acked + 1)
                    room = o.window - (send_from - self.spool.acked - 1)
                    for seq, payload in self.spool.since(send_from, max(room, 0)):
                        try:
                            wire.send(sock, b"tel", {"seq": seq}, extra=[payload], flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        send_from = seq + 1
                        self.link["sent"] += 1
                while sock.poll(0):
                    parts = sock.recv_multipart(copy=False)
                    heard = time.monotonic()
                    try:
                        kind, head, frames = wire.parse(parts)
                    except LinkError as exc:
                        log.warning("agent %s: %s", o.name, exc)
                        continue
                    if kind == b"welcome":
                        acked = int(head.get("acked", -1))
                        if not welcomed and self.spool.acked < 0 and acked >= 0 and self.link["connects"] == 0:
                            self.spool.rebase(acked + 1)  # a restarted robot continues its stream
                        welcomed = True
                        self.link["state"] = "up"
                        self.link["connects"] += 1
                        self.spool.ack(acked)
                        send_from = self.spool.acked + 1
                        last_progress, resend_wait = heard, o.resend_s
                    elif kind == b"ack":
                        if head["seq"] > self.spool.acked:
                            last_progress, resend_wait = heard, o.resend_s
                        self.spool.ack(int(head["seq"]))
                        self.link["acked"] = self.spool.acked
                    elif kind == b"nack":
                        send_from = max(int(head["expect"]), self.spool.acked + 1)
                        last_progress = heard
                    elif kind == b"who":
                        welcomed = False
                        next_hb = heard
                    elif kind in (b"deploy", b"model", b"stop"):
                        self._command(kind, head, frames)
                sock.poll(5)
        finally:
            sock.close(linger=0)
            ctx.term()

    def _command(self, kind: bytes, head: dict, frames: list) -> None:
        if kind == b"stop":
            self.commands.put(("stop", head.get("reason", "manager")))
        elif kind == b"deploy":
            self.commands.put(("deploy", head["config"]))
        elif kind == b"model":
            version = head["version"]
            folder = self.work / "models" / version
            if frames:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / head["file"]).write_bytes(bytes(frames[0].buffer))
            path = folder / head.get("file", "")
            self.commands.put(("model", (version, str(path))))


def config_version(data: dict) -> str:
    """`NAME@digest` of a pipeline config, the version the fleet table shows."""
    digest = hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{data.get('name', 'pipeline') if isinstance(data, dict) else 'pipeline'}@{digest}"
