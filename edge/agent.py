"""The edge agent: runs a robot's pipeline locally and keeps a CURVE link to its manager.

Two threads. The loop thread pushes the pipeline wave by wave (the local executor's
`Feed` and `Stage`), beats the watchdog, and between two waves applies what the manager
asked for: a new model version (`op.swap_model(path, version)` on every node that takes
a model; a node checks the model before it switches, and when it refuses, the old one
stays and the reason goes to the manager), a candidate run in shadow for a canary
(`edge.shadow`), a new config, or a stop. The link thread (`Link`) owns the DEALER
socket: hello and heartbeats, telemetry from the spool (go-back-N with cumulative acks,
so after any outage everything arrives once and in order), and commands in, each checked
before use; received model files go to a content-hash store (`edge.model_store`). The loop
never waits on the link: with the manager gone the robot keeps sensing and acting, and
telemetry piles up in the spool (bounded RAM, then disk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import zmq

from edge import keys as K
from edge import wire
from edge.model_store import ModelStore
from edge.shadow import Shadow
from edge.spool import Spool
from edge.watchdog import Watchdog
from pipeline import schemas as sch
from pipeline.errors import ConfigError, LinkError, ModelError
from pipeline.executors.local import WaveHooks
from pipeline.operator import Operator, Source

log = logging.getLogger(__name__)
INITIAL = "initial"  # the model version a config names itself; rolling back to it swaps to path ""

TELEMETRY_FIELDS = {
    "step": "int64", "loop_hz": "float64", "latency_ms": "float64", "drops": "int64",
    "budget_misses": "int64", "safe_states": "int64", "fallbacks": "int64", "buffered": "int64",
}
TELEMETRY_SCHEMA = sch.commands_schema(TELEMETRY_FIELDS, {"t": "us (wall clock)", "loop_hz": "Hz", "latency_ms": "ms"})


def telemetry_payload(t_us: int, **values) -> bytes:
    """One telemetry row as an Arrow IPC stream (schema + batch), the spool's unit."""
    return telemetry_payload_rows([{"t": t_us, **values}])


_TELEMETRY_SCHEMA_MSG = TELEMETRY_SCHEMA.serialize().to_pybytes()
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # an IPC stream's end marker


def telemetry_payload_rows(rows: list[dict]) -> bytes:
    """Telemetry rows (dicts with `t` in us and the TELEMETRY_FIELDS) as one Arrow IPC stream.

    The schema message is serialized once; each payload is that, the batch message and the
    end-of-stream marker (what `pa.ipc.new_stream` writes, at a third of its cost per call).
    """
    arrays = [pa.array([r["t"] for r in rows], pa.int64())]
    arrays += [pa.array([r.get(k, 0) for r in rows], type=f.type) for k, f in zip(TELEMETRY_FIELDS, list(TELEMETRY_SCHEMA)[1:])]
    batch = pa.RecordBatch.from_arrays(arrays, schema=TELEMETRY_SCHEMA)
    return _TELEMETRY_SCHEMA_MSG + batch.serialize().to_pybytes() + _EOS


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
    telemetry_rows: int = 1  # rows per telemetry message: batch them at high rates (the manager's cost is per message)
    heartbeat_s: float = 0.5
    link_timeout_s: float = 2.0
    deadline_ms: float = 250.0
    # telemetry in flight before an ack: small, so a slow manager's queue (= delivery delay)
    # stays short and a resend repeats little; the spool holds the rest
    window: int = 32
    # no ack progress this long (or 4 x the acks' smoothed round trip, if longer): go back N.
    # On a live TCP connection nothing is lost (a reconnect is settled by the welcome), so this
    # is a safety net; a short one floods a slow manager with copies (congestion collapse)
    resend_s: float = 5.0
    mem_bytes: int = 4 << 20
    work_dir: str | None = None  # spool and received models
    exit_when_done: bool = False
    linger_s: float = 3.0  # on exit, wait this long to deliver what is buffered
    refused_retry_s: float = 10.0  # a refused key: try again this often (the manager may authorize it)


class Agent:
    """One robot: `Agent(opts).run(stop)` blocks until `stop` is set (or the pipeline ends)."""

    def __init__(self, opts: AgentOptions):
        if not wire.valid_name(opts.name):
            raise ConfigError(f"robot name {opts.name!r}: use [A-Za-z0-9._-], 1-64 characters, not dots alone")
        self.o = opts
        self.work = Path(opts.work_dir or f".reflexarc/agent-{opts.name}")
        self.stop = threading.Event()
        self.commands: queue.Queue = queue.Queue()
        self.stats = {"step": 0, "loop_hz": 0.0, "latency_ms": 0.0, "drops": 0, "budget_misses": 0,
                      "safe_states": 0, "fallbacks": 0}
        self.version = "none"
        self.model_version = INITIAL
        self.model_hash: str | None = None
        self.model_error: str | None = None  # why the last model was refused (the old one stayed)
        self.config_error: str | None = None  # why the last config could not start
        self.canary_error: tuple[str, str] | None = None  # (version, why) of a shadow that could not start
        self.pending_model: dict | None = None  # a live model that came while no pipeline ran
        self.shadows: dict[str, Shadow] = {}  # node -> the candidate model it runs in shadow
        self.models = ModelStore(self.work / "models")
        self.model_path = ""
        self.status = "starting"
        self.link = {"state": "down", "connects": 0, "sent": 0, "resent": 0, "acked": -1, "received": 0,
                     "bad": {}, "refused": 0, "internal_errors": 0}
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
            self._model(body, ops)
        return None

    def _model(self, m: dict, ops) -> None:
        """Swap to a model (`live`), start or end a shadow run of one (`shadow`, `end-shadow`)."""
        if m["mode"] == "end-shadow" or (m["mode"] == "live" and self.shadows):
            self._end_shadows()
        if m["mode"] == "end-shadow":
            return
        if ops is None:
            if m["mode"] == "live":
                self.pending_model = m  # taken when the next pipeline starts
            else:
                self.canary_error = (m["version"], "no pipeline is running to shadow")
            return
        takers = [op for op in ops if type(op).swap_model is not Operator.swap_model]
        if not takers:
            self._model_failed(m["version"], m["mode"], f"model {m['version']}: no node of the running pipeline "
                                                        "takes a model (none implements swap_model)")
            return
        if m["mode"] == "shadow":
            self.canary_error = None
            sources = [op.node for op in takers if isinstance(op, Source)]
            if sources:
                self._model_failed(m["version"], "shadow", f"model {m['version']}: node '{sources[0]}' is a source: "
                                   "its model cannot run in shadow on live data; roll it out live (--fraction)")
                return
            try:
                for op in takers:
                    self.shadows[op.node] = Shadow(op, m["path"], m["version"])
            except Exception as exc:
                self._end_shadows()
                self._model_failed(m["version"], "shadow", _why(m["version"], op, exc))
            return
        swapped = []
        try:
            for op in takers:
                if op.swap_model(m["path"], m["version"]):
                    swapped.append(op)
        except Exception as exc:  # the op kept its old model; so must the others
            for done in swapped:
                try:
                    done.swap_model(self.model_path, self.model_version)
                except Exception:
                    pass
            self._model_failed(m["version"], "live", _why(m["version"], op, exc))
            return
        if not swapped:
            self._model_failed(m["version"], "live", f"model {m['version']}: no node took it")
            return
        self.model_version, self.model_hash, self.model_path = m["version"], m["sha256"], m["path"]
        self.model_error = None
        log.info("agent %s: model %s (%s) live on %s", self.o.name, m["version"], (m["sha256"] or "")[:12],
                 ", ".join(op.node for op in swapped))

    def _end_shadows(self) -> None:
        for sh in self.shadows.values():
            sh.remove()
        self.shadows = {}

    def _run_pipeline(self, config):
        from pipeline.executors.local import LocalExecutor
        from pipeline.graph import Graph

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
            self._config_failed(config, exc)
            return None
        self.version, self.config_error = config_version(data), None
        waves = _AgentWaves(self)
        self.status = "running"
        try:
            LocalExecutor().run(graph, hooks=waves)  # the local executor's loop, with the agent between waves
            self.status = "done" if waves.switch_to is None and not self.stop.is_set() else self.status
        except Exception as exc:
            self.errors.append(str(exc))
            self.status = "failed"
        return waves.switch_to

    def _config_failed(self, config, exc) -> None:
        where = f"config '{config}'" if isinstance(config, str | Path) else f"config '{_name_of(config)}'"
        self.config_error = f"{where} rejected: {exc}"[:2000]
        self.errors.append(self.config_error)
        self.status = "config-error"
        log.error("agent %s: %s", self.o.name, self.config_error)

    def _started(self, ops) -> None:
        """A pipeline is up: take the model that came while none ran, or the one live before."""
        m, self.pending_model = self.pending_model, None
        if m is None and self.model_version != INITIAL:
            m = {"version": self.model_version, "sha256": self.model_hash, "path": self.model_path, "mode": "live"}
        if m is not None:
            self._model(m, ops)

    def _count(self, feed, stage) -> None:
        snaps = [m.snapshot() for m in feed.metrics.values()] + stage.snapshots()
        self.stats["drops"] = sum(s["drops_batches"] for s in snaps)
        self.stats["budget_misses"] = sum(s["budget_misses"] for s in snaps)
        self.stats["fallbacks"] = sum(getattr(op, "fallbacks", 0) for op in stage.ops.values())

    # -- the link thread -------------------------------------------------------------
    def _hello(self) -> dict:
        return {"name": self.o.name, "tags": self.o.tags, "version": self.version,
                "model_version": self.model_version, "model_hash": self.model_hash, "pid": os.getpid(),
                "status": self.status, "first": self.spool.acked + 1}

    def _beat(self) -> dict:
        shadows = [s.report() for s in self.shadows.values()]
        canary = None
        if shadows:
            canary = {"version": shadows[0]["version"], **{k: sum(s[k] for s in shadows)
                                                           for k in ("calls", "compared", "agree", "errors")},
                      "error": next((s["error"] for s in shadows if s["error"]), None),
                      **{k: max((s[k] or 0.0) for s in shadows)
                         for k in ("live_p50_ms", "shadow_p50_ms", "live_p99_ms", "shadow_p99_ms")}}
        elif self.canary_error is not None:
            canary = {"version": self.canary_error[0], "error": self.canary_error[1]}
        return {**self._hello(), **{k: v for k, v in self.stats.items() if k in wire.ROBOT},
                "buffered": len(self.spool), "spilled": self.spool.spilled,
                "safe_states": self.stats["safe_states"] + (self.watchdog.trips if self.watchdog else 0),
                "model_error": self.model_error, "config_error": self.config_error, "canary": canary}

    def _sample(self) -> dict:
        return {**self.stats, "buffered": len(self.spool)}

    def _link(self) -> None:
        ctx = zmq.Context()
        link = Link(self.o, ctx, self.spool, hello=self._hello, beat=self._beat, sample=self._sample,
                    on_command=self._command)
        self.link = link.stats
        try:
            while True:
                now = time.monotonic()
                if self._done and link.done_at is None:
                    link.finish(now)  # tell the manager how the loop ended, deliver what is spooled
                if link.finished(now):
                    break
                link.tick(now)
                link.receive()
                link.sock.poll(5)
        finally:
            link.close()
            ctx.term()

    def _command(self, kind: bytes, head: dict, frames: list) -> None:
        """A checked command from the manager (link thread): queue it for the loop thread."""
        if kind == b"stop":
            self.commands.put(("stop", head.get("reason", "manager")))
        elif kind == b"deploy":
            self.commands.put(("deploy", head["config"]))
        elif kind == b"model":
            version, mode = head["version"], head.get("mode", "live")
            if mode == "end-shadow" or version == INITIAL:
                self.commands.put(("model", {"version": version, "mode": mode, "path": "", "sha256": None}))
                return
            try:
                if frames:
                    sha, path = self.models.put(version, head.get("file", "model.bin"), bytes(frames[0].buffer))
                    if head.get("sha256") not in (None, sha):
                        raise ModelError(f"model {version}: content hash {sha[:12]} is not the announced "
                                         f"{head['sha256'][:12]} (corrupted in transit?)")
                else:
                    got = self.models.get(version)
                    if got is None:
                        raise ModelError(f"model {version} is not held here and the manager sent no file")
                    sha, _, path = got
            except (ModelError, OSError) as exc:
                self._model_failed(version, mode, str(exc))
                return
            self.commands.put(("model", {"version": version, "mode": mode, "path": str(path), "sha256": sha}))

    def _model_failed(self, version: str, mode: str, reason: str) -> None:
        log.warning("agent %s: %s", self.o.name, reason)
        if mode == "shadow":
            self.canary_error = (version, reason)
        else:
            self.model_error = reason


class Link:
    """The robot's side of its manager link, one DEALER socket: hello and heartbeats, spooled
    telemetry (go-back-N with cumulative acks), checked commands in.

    Single-threaded and non-blocking: its owner calls `tick(now)` and `receive()` in a loop,
    so one thread can drive one link (the agent) or many (the fleet benchmark's robots).
    `sample()` gives one telemetry row's values; rows are batched `telemetry_rows` to a
    message. Every message from the manager is checked (`edge.wire.check`) before use; a bad
    one is counted by kind (`stats["bad"]`) and logged, at most a few times per kind. A key
    the manager refuses is logged once, with the manager's address (`stats["state"]` is
    `refused`).
    """

    KINDS = (b"welcome", b"ack", b"nack", b"who", b"hb", b"deploy", b"model", b"stop")

    def __init__(self, o: AgentOptions, ctx: zmq.Context, spool: Spool, hello, beat, sample, on_command):
        self.o, self.spool = o, spool
        self.hello, self.beat, self.sample, self.on_command = hello, beat, sample, on_command
        self.sock = K.client_socket(ctx, zmq.DEALER, Path(o.keys) / f"{o.name}.key_secret",
                                    Path(o.keys) / f"{o.manager_key}.key")
        self.sock.immediate = True  # queue nothing on a dead connection: the spool holds it
        self.sock.sndhwm = o.window * 2
        self.sock.reconnect_ivl, self.sock.reconnect_ivl_max = 100, 1000
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sock.connect(o.manager)
        self.stats = {"state": "down", "connects": 0, "sent": 0, "resent": 0, "acked": -1, "received": 0,
                      "bad": {}, "refused": 0, "internal_errors": 0}
        now = time.monotonic()
        self.heard = -1e9
        self.welcomed = False
        self.next_tel = self.next_hb = now
        self.send_from = 0
        self.sent_max = spool.acked
        self.last_progress = now
        self.resend_wait = o.resend_s
        # the resend timeout follows the acks' round trip (TCP's smoothed RTT, Karn's rule: no
        # sample from a resent message): a manager that is slow but alive is not flooded with copies
        self.srtt: float | None = None
        self.rto = o.resend_s
        self.sent_at: dict[int, float] = {}
        self.done_at: float | None = None
        self.rows: list[dict] = []
        self.refused_logged = False
        self.retry_at: float | None = None
        self.due = now  # the next time `tick` has something to do (for owners of many links)

    def finish(self, now: float) -> None:
        self.done_at = now
        self.next_hb = now
        if self.rows:
            self.spool.push(telemetry_payload_rows(self.rows))
            self.rows = []

    def finished(self, now: float) -> bool:
        return self.done_at is not None and (
            (not len(self.spool) and now > self.done_at + 0.05) or now - self.done_at > self.o.linger_s)

    def tick(self, now: float) -> None:
        o, spool = self.o, self.spool
        if self.done_at is None and now >= self.next_tel:
            self.rows.append({"t": time.time_ns() // 1000, **self.sample()})
            if len(self.rows) >= o.telemetry_rows:
                spool.push(telemetry_payload_rows(self.rows))
                self.rows = []
            self.next_tel = max(self.next_tel + 1.0 / o.telemetry_hz, now - 1.0)
        if now - self.heard >= o.link_timeout_s and self.stats["state"] == "up":
            self.stats["state"] = "down"
            self.welcomed = False
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self.sock.disconnect(o.manager)
            self.sock.connect(o.manager)
        if now >= self.next_hb:
            self.next_hb = now + o.heartbeat_s
            self._watch_monitor()
            try:
                if self.welcomed:
                    wire.send(self.sock, b"hb", self.beat(), flags=zmq.NOBLOCK)
                else:
                    wire.send(self.sock, b"hello", self.hello(), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        self.due = min(self.next_tel, self.next_hb, self.retry_at or self.next_hb)
        if not self.welcomed:
            return
        if len(spool) and self.send_from > spool.acked + 1:
            self.due = min(self.due, self.last_progress + self.resend_wait)
        if len(spool) and now - self.last_progress > self.resend_wait and self.send_from > spool.acked + 1:
            self.send_from = spool.acked + 1  # go back N: the manager may have lost them
            self.stats["resent"] += 1
            self.last_progress = now
            self.resend_wait = min(self.resend_wait * 2, 16 * self.rto)  # a slow manager is not flooded
            self.sent_at.clear()
        self.send_from = max(self.send_from, spool.acked + 1)
        room = o.window - (self.send_from - spool.acked - 1)
        if room <= 0:
            return
        for seq, payload in spool.since(self.send_from, room):
            try:
                wire.send(self.sock, b"tel", {"seq": seq}, extra=[payload], flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if seq == spool.acked + 1:
                # nothing was in flight: the resend clock starts now, not at the last ack (a robot
                # sending once a second had resent every message its ack took >1 s - idle - to come)
                self.last_progress = now
            if seq > self.sent_max:
                self.sent_at[seq] = now
            self.send_from = seq + 1
            self.sent_max = max(self.sent_max, seq)
            self.stats["sent"] += 1

    def _watch_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            try:
                event = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)["event"]
            except (zmq.ZMQError, ValueError, KeyError):
                return
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.stats["refused"] += 1
                self.stats["state"] = "refused"
                self.retry_at = time.monotonic() + self.o.refused_retry_s  # libzmq does not retry by itself
                if not self.refused_logged:
                    self.refused_logged = True
                    log.error("agent %s: the manager at %s refused this robot's key (%s): is %s.key in the "
                              "manager's authorized/ folder?", self.o.name, self.o.manager,
                              Path(self.o.keys) / f"{self.o.name}.key_secret", self.o.name)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.refused_logged = False

    def receive(self) -> None:
        while self.sock.poll(0):
            parts = self.sock.recv_multipart(copy=False)
            self.stats["received"] += 1
            try:
                kind, head, frames = wire.parse(parts)
                wire.check(kind, head, frames, wire.MANAGER, wire.MANAGER_REQUIRED, kinds=self.KINDS)
                self._on(kind, head, frames)
            except LinkError as exc:
                self._bad(parts, exc)
            except Exception as exc:  # a bug of ours: counted and logged, the link goes on
                self.stats["internal_errors"] += 1
                log.exception("agent %s: internal error on a message from the manager: %s", self.o.name, exc)

    def _bad(self, parts, exc) -> None:
        kind = bytes(parts[0].buffer[:16]).decode("ascii", "replace") if parts else "empty"
        kind = kind if kind.isidentifier() else "other"
        n = self.stats["bad"][kind] = self.stats["bad"].get(kind, 0) + 1
        if n <= 3 or n % 1000 == 0:
            log.warning("agent %s: bad '%s' message from the manager (%d so far): %s", self.o.name, kind, n, exc)

    def _on(self, kind: bytes, head: dict, frames: list) -> None:
        spool, now = self.spool, time.monotonic()
        self.heard = now
        if kind == b"welcome":
            acked = head["acked"]
            if not self.welcomed and spool.acked < 0 and acked >= 0 and self.stats["connects"] == 0:
                spool.rebase(acked + 1)  # a restarted robot continues its stream
            if acked >= spool.next_seq:
                raise LinkError(f"welcome acknowledges {acked}, beyond the last message made ({spool.next_seq - 1})")
            if not self.welcomed:  # a second welcome (to a hello sent twice while waiting) is no new connect
                self.stats["connects"] += 1
            self.welcomed = True
            self.stats["state"] = "up"
            spool.ack(acked)
            self.stats["acked"] = spool.acked
            self.send_from = spool.acked + 1
            self.sent_max = max(self.sent_max, spool.acked)
            self.last_progress, self.resend_wait = now, self.rto
            self.sent_at.clear()
        elif kind == b"ack":
            seq = head["seq"]
            if seq > self.sent_max:
                raise LinkError(f"ack of {seq}, never sent (sent up to {self.sent_max})")
            if seq > spool.acked:
                sent = self.sent_at.get(seq)
                if sent is not None:
                    rtt = now - sent
                    self.srtt = rtt if self.srtt is None else 0.875 * self.srtt + 0.125 * rtt
                    self.rto = min(max(self.o.resend_s, 4 * self.srtt), 16 * self.o.resend_s)
                for k in [k for k in self.sent_at if k <= seq]:
                    del self.sent_at[k]
                self.last_progress, self.resend_wait = now, self.rto
            spool.ack(seq)
            self.stats["acked"] = spool.acked
        elif kind == b"nack":
            self.send_from = min(max(head["expect"], spool.acked + 1), spool.next_seq)
            self.last_progress = now
        elif kind == b"who":
            self.welcomed = False
            self.next_hb = now
        elif kind in (b"deploy", b"model", b"stop"):
            self.on_command(kind, head, frames)

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


def _why(version: str, op, exc: Exception) -> str:
    """Why `op` refused model `version`: a ModelError already says where; anything else is named."""
    return str(exc) if isinstance(exc, ModelError) else f"model {version}: node '{op.node}': {type(exc).__name__}: {exc}"


def _name_of(data) -> str:
    return str(data.get("name", "pipeline"))[:64] if isinstance(data, dict) else type(data).__name__


def config_version(data: dict) -> str:
    """`NAME@digest` of a pipeline config, the version the fleet table shows."""
    digest = hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{data.get('name', 'pipeline') if isinstance(data, dict) else 'pipeline'}@{digest}"


class _AgentWaves(WaveHooks):
    """What the agent does between waves of the local executor: applies the manager's
    commands (model swaps, a new config, a stop), beats the watchdog, keeps loop stats."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.switch_to = None
        self.ops: list = []
        self.last = time.perf_counter()

    def started(self, run) -> None:
        a = self.agent
        self.ops = [s.op for s in run.feed.sources] + list(run.ops.values())
        a.watchdog = Watchdog([op for op in self.ops if op.actuator], a.o.deadline_ms)
        a._started(self.ops)
        a.watchdog.start()
        self.last = time.perf_counter()

    def between(self, run) -> bool:
        a = self.agent
        while not a.commands.empty():
            self.switch_to = a._apply(*a.commands.get_nowait(), self.ops) or self.switch_to
        return a.stop.is_set() or self.switch_to is not None

    def after(self, run, wave_s: float) -> None:
        a = self.agent
        now = time.perf_counter()
        a.watchdog.beat()
        s = a.stats
        s["step"] += 1
        s["latency_ms"] = wave_s * 1e3
        s["loop_hz"] = 0.9 * s["loop_hz"] + 0.1 / max(now - self.last, 1e-6)
        self.last = now
        if s["step"] % 16 == 0:
            a._count(run.feed, run.stage)

    def ended(self, run, error) -> None:
        a = self.agent
        if error is not None and a.watchdog is not None:
            a.watchdog.trip(f"stage failed: {error}")
        a._count(run.feed, run.stage)
        a.results = run.stage.results()
        a._end_shadows()
        if a.watchdog is not None:
            a.watchdog.stop()
            a.stats["safe_states"] += a.watchdog.trips

    def closed(self, run, errors: list) -> list:
        self.agent.errors.extend(str(e) for e in errors)  # reported to the manager, not a failed run
        return []
