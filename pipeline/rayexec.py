"""The Ray executor: one actor per node (or fused group), driven wave by wave.

The driver reads the sources (it owns pacing and ingest time) and, for every source
batch, submits one `step` call per downstream actor, passing object references along so
that batches flow from actor to actor through the object store without touching the
driver. Each actor is a `Stage`, so results match the local executor exactly.

- Backpressure: at most `capacity` waves are in flight per actor; a `block` edge holds
  the sources back, a `drop-oldest` edge discards the oldest waiting wave and counts it.
- Crash recovery: actors are restarted by Ray; the driver keeps the inputs of every wave
  since an actor's last checkpoint, restores the checkpoint, re-sends those waves, and
  actors drop waves they have already seen by sequence number, so sinks see every item
  exactly once.
- `compiled=True` runs the same actors as a Ray Compiled Graph: the lowest per-hop
  latency, lossless `block` edges only, and a crash ends the run instead of recovering.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import uuid
from collections import deque

import pyarrow as pa
import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from pipeline import shmchan
from pipeline.errors import ConfigError, OperatorError, ReflexarcError
from pipeline.feed import Feed
from pipeline.graph import Graph, Node
from pipeline.shmchan import Aborted, Channel
from pipeline.stage import Stage

_EMPTY: list = []
_CPU = pa.default_cpu_memory_manager()


def _owned(batch):
    """A copy of `batch` in memory of its own (one memcpy of its buffers)."""
    if not isinstance(batch, pa.RecordBatch):
        return batch
    return batch.copy_to(_CPU)


@ray.remote(concurrency_groups={"report": 1})
class StageActor:
    """Hosts one Stage; `step` calls run one at a time, reports on a side thread."""

    def __init__(self, graph: Graph, ids: list[str]):
        self.stage = Stage(graph, ids)
        self.stage.setup()
        self.last_wave = -1
        self.token = uuid.uuid4().hex

    def incarnation(self) -> str:
        return self.token

    @ray.method(num_returns=2)
    def step(self, wave: int, finish: bool, *inputs):
        if wave <= self.last_wave:  # a re-sent wave this stage has already applied
            for m in self.stage.metrics.values():
                m.duplicates += 1
            return _EMPTY, wave
        items = [item for chunk in inputs for item in chunk]
        out = self.stage.finish(items) if finish else self.stage.step(items)
        self.last_wave = wave
        return out, wave

    def cstep(self, *inputs):
        """Compiled-graph entry: inputs are (finish, items) pairs from upstream; None warms up."""
        if inputs[0] is None:
            return None
        finish = inputs[0][0]
        # a batch read from a compiled-graph channel is a zero-copy view of its buffer, and
        # the upstream writer blocks until every such view is gone: operators that keep a
        # batch (sinks, windows) would deadlock the chain, so each batch is copied out once
        items = [(n, p, _owned(b), s, t) for _, chunk in inputs for (n, p, b, s, t) in chunk]
        return finish, (self.stage.finish(items) if finish else self.stage.step(items))

    def attach(self, ins: list[dict], outs: list[tuple[dict, frozenset, int]]) -> None:
        """Open (and fault in) this actor's shared-memory channels before the stream starts."""
        self.channels = ([Channel(spec, "r") for spec in ins], [(Channel(spec, "w", cap), keys) for spec, keys, cap in outs])

    def serve(self):
        """Shared-memory entry (`ray-shm`): read waves from the attached channels, step, write on.

        Runs until the finish wave has passed through, or until the run is aborted.
        """
        readers, writers = self.channels
        try:
            while True:
                items, finish, wave = [], False, -1
                for ch in readers:
                    wave, finish, got = ch.recv()
                    items += got
                out = self.stage.finish(items) if finish else self.stage.step(items)
                self.last_wave = wave
                for ch, keys in writers:
                    ch.send(wave, finish, out, keys)
                if finish:  # the deepest queue seen on each outgoing channel
                    return {ch.path: ch.queue_max for ch, _ in writers}
        except Aborted:
            return None
        finally:
            for ch in readers + [ch for ch, _ in writers]:
                ch.close()

    def checkpoint(self):
        return self.last_wave, self.stage.state()

    def restore(self, ckpt) -> str:
        if ckpt is not None:
            self.last_wave, state = ckpt
            self.stage.restore(state)
        return self.token

    def count_drops(self, node: str, batches: int, items: int) -> None:
        m = self.stage.metrics[node]
        m.drops_batches += batches
        m.drops_items += items

    @ray.method(concurrency_group="report")
    def snapshots(self):
        return self.stage.snapshots()

    def report(self):
        return self.stage.results(), self.stage.snapshots()

    def safe_state(self, reason: str) -> None:
        self.stage.safe_state(reason)

    def close(self) -> list[str]:
        return [str(e) for e in self.stage.close()]


def shm_semaphores() -> set[str]:
    """The POSIX named semaphores in /dev/shm (empty where there is none)."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("sem.")}
    except OSError:
        return set()


def remove_leaked_semaphores(before: set[str], wait_s: float = 5.0) -> None:
    """Unlink the named semaphores a Ray session's compiled graphs left behind.

    The raylet's channels for compiled graphs create `sem.hdr<pid>-...` / `sem.obj<pid>-...`
    pairs in /dev/shm (16 pairs for a small chain) and nothing unlinks them, not even
    `ray.shutdown()`. Called after a session this run started has shut down: the names
    that appeared since `before` and whose process has exited (up to `wait_s` is given
    for it to go) are removed; a live process's names are left alone.
    """
    fresh: dict[str, list[str]] = {}
    for name in shm_semaphores() - before:
        pid = name[len("sem.hdr"):].split("-", 1)[0]
        if pid.isdigit():
            fresh.setdefault(pid, []).append(name)
    deadline = time.monotonic() + wait_s
    while any(os.path.exists(f"/proc/{pid}") for pid in fresh) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, names in fresh.items():
        if os.path.exists(f"/proc/{pid}"):
            continue
        for name in names:
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass


def plan_groups(graph: Graph, fuse: str | None) -> list[list[str]]:
    """Non-source nodes grouped into actors: per node, by `fuse:` keys, or linear chains."""
    members = [n for n in graph.order if not graph.nodes[n].is_source]
    groups: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    consumers = graph.consumers_of_nodes()
    for n in members:
        node = graph.nodes[n]
        key = node.fuse
        if key is None and fuse == "chains":
            ups = {e.src for e in node.inputs.values()}
            if len(ups) == 1:
                (up,) = ups
                if up in owner and len(consumers[up]) == 1:
                    key = owner[up]
        key = key or n
        owner[n] = key
        groups.setdefault(key, []).append(n)
    return list(groups.values())


def _pruned(graph: Graph, ids: list[str]) -> Graph:
    """A copy of the graph carrying only this group's operators (others as wiring only)."""
    g = copy.copy(graph)
    keep = set(ids)
    g.nodes = {
        n: node if n in keep else Node(n, None, node.inputs) for n, node in graph.nodes.items()
    }
    g.config = {}
    return g


def _cause(exc: BaseException) -> BaseException:
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None:
            return cause
    return exc


def _reraise(exc: BaseException, where: str, died: str):
    """Raise what a failed remote call stands for: our own error as it is, else one naming `where`."""
    cause = _cause(exc)
    if isinstance(cause, ReflexarcError):
        raise cause from None
    if isinstance(cause, RayActorError):
        raise OperatorError(where, f"{died}: {cause}") from None
    raise OperatorError(where, str(cause)) from None


class _Driver:
    def __init__(self, graph: Graph, groups: list[list[str]], checkpoint_every: int, max_restarts: int, monitor):
        self.graph = graph
        self.groups = groups
        self.monitor = monitor
        self.checkpoint_every = checkpoint_every
        self.max_restarts = max_restarts
        self.group_of = {n: gi for gi, ids in enumerate(groups) for n in ids}
        rank = {n: i for i, n in enumerate(graph.order)}
        self.order = sorted(range(len(groups)), key=lambda gi: rank[groups[gi][0]])
        # upstream of each group: other groups, or None for a source feeding it
        self.ups: dict[int, list] = {}
        self.policy: dict[int, str] = {}
        self.capacity: dict[int, int] = {}
        for gi, ids in enumerate(groups):
            ups: list = []
            caps, policies = [], []
            for n in ids:
                for e in graph.nodes[n].inputs.values():
                    src_group = None if graph.nodes[e.src].is_source else self.group_of[e.src]
                    if src_group == gi:
                        continue
                    key = ("src", e.src) if src_group is None else src_group
                    if key not in ups:
                        ups.append(key)
                    caps.append(e.capacity)
                    policies.append(e.policy)
            self.ups[gi] = ups
            self.capacity[gi] = min(caps) if caps else 8
            self.policy[gi] = "drop-oldest" if policies and all(p == "drop-oldest" for p in policies) else "block"
        self._check_acyclic()
        self.reach: dict[str, list[int]] = {}
        for s in graph.sources:
            down = set(graph.downstream([s.id]))
            self.reach[s.id] = [gi for gi in self.order if set(groups[gi]) & down]
        self.actors = []
        self.tokens: list[str] = []
        self.restarts = 0
        self.recovered_waves = 0
        self.queue_max = {gi: 0 for gi in range(len(groups))}
        self.compile_s = 0.0

    def _check_acyclic(self) -> None:
        seen: set[int] = set()
        for gi in self.order:
            for u in self.ups[gi]:
                if isinstance(u, int) and u not in seen:
                    raise ConfigError(
                        f"fusing {self.groups[gi]} with {self.groups[u]} makes the actor graph cyclic; change the 'fuse' keys"
                    )
            seen.add(gi)

    def start(self, same_node: bool = False) -> None:
        opts = {"max_restarts": self.max_restarts, "max_task_retries": 0, "num_cpus": 0}
        if same_node:  # shared-memory channels: every actor on the driver's machine
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
        self.actors = [StageActor.options(**opts).remote(_pruned(self.graph, ids), ids) for ids in self.groups]
        try:
            self.tokens = ray.get([a.incarnation.remote() for a in self.actors], timeout=120)
        except RayTaskError as exc:
            raise _cause(exc) from None
        except RayActorError as exc:
            cause = getattr(exc, "cause", None) or exc
            raise OperatorError(",".join(self.groups[0]), f"actor failed to start: {cause}") from None

    # -- the wave loop -------------------------------------------------------------
    def run(self, feed: Feed, stop) -> None:
        self.open: deque[dict] = deque()  # waves with groups still to submit
        self.inflight: dict[int, deque] = {gi: deque() for gi in range(len(self.groups))}
        self.hist: dict[int, deque] = {gi: deque() for gi in range(len(self.groups))}
        self.waves: dict[int, dict] = {}  # wave -> {group: out_ref, ("src", id): ref}
        self.ckpt: dict[int, tuple] = {}
        self.ckpt_pending: dict[int, tuple] = {}
        self.since_ckpt = {gi: 0 for gi in range(len(self.groups))}
        self.empty_ref = ray.put(_EMPTY)
        self.mon_ref = None
        self.next_mon = time.perf_counter() + 0.5
        w = 0
        for src, items in feed:
            ref = ray.put(items)
            self.waves[w] = {("src", src): ref}
            self.open.append({"w": w, "todo": list(self.reach[src]), "finish": False})
            w += 1
            self.pump()
            while self.blocked():
                self.wait_one()
                self.pump()
            self.poll_monitor()
            if stop is not None and stop.is_set():
                break
        # the finish wave reaches every group
        self.waves[w] = {}
        self.open.append({"w": w, "todo": list(self.order), "finish": True})
        self.pump()
        while self.open or any(self.inflight.values()):
            self.wait_one()
            self.pump()

    def blocked(self) -> bool:
        waiting: dict[int, int] = {}
        for wave in self.open:
            for gi in wave["todo"]:
                waiting[gi] = waiting.get(gi, 0) + 1
        return any(
            self.policy[gi] == "block" and waiting.get(gi, 0) + len(self.inflight[gi]) > self.capacity[gi]
            for gi in waiting
        )

    def args_for(self, gi: int, w: int) -> list:
        refs = self.waves[w]
        return [refs.get(u, self.empty_ref) for u in self.ups[gi]]

    def pump(self) -> None:
        """Submit every call whose inputs exist and whose actor has room, in order."""
        busy: set[int] = set()  # groups with an earlier wave still waiting
        for wave in list(self.open):
            w = wave["w"]
            refs = self.waves[w]
            for gi in list(wave["todo"]):
                ready = all(u in refs or not self._participates(u, wave) for u in self.ups[gi])
                if gi in busy or not ready or len(self.inflight[gi]) >= self.capacity[gi]:
                    busy.add(gi)
                    continue
                self.submit(gi, w, wave["finish"])
                wave["todo"].remove(gi)
            if not wave["todo"]:
                self.open.remove(wave)
        self.drop_overflow()

    def _participates(self, u, wave) -> bool:
        """Whether upstream `u` produces anything in this wave (else it sends nothing)."""
        if isinstance(u, tuple):
            return u in self.waves[wave["w"]]
        return u in wave["todo"] or u in self.waves[wave["w"]]

    def submit(self, gi: int, w: int, finish: bool) -> None:
        args = self.args_for(gi, w)
        out, status = self.actors[gi].step.remote(w, finish, *args)
        self.waves[w][gi] = out
        self.inflight[gi].append((w, status))
        self.queue_max[gi] = max(self.queue_max[gi], len(self.inflight[gi]))
        self.hist[gi].append((w, finish))
        self.since_ckpt[gi] += 1
        if self.since_ckpt[gi] >= self.checkpoint_every and not finish:
            self.since_ckpt[gi] = 0
            self.ckpt_pending[gi] = (w, self.actors[gi].checkpoint.remote())

    def drop_overflow(self) -> None:
        """On drop-oldest groups, discard the oldest waiting waves beyond capacity."""
        for gi in self.order:
            if self.policy[gi] != "drop-oldest":
                continue
            waiting = [wv for wv in self.open if gi in wv["todo"] and not wv["finish"]]
            excess = len(waiting) - self.capacity[gi]
            for wave in waiting[: max(0, excess)]:
                wave["todo"].remove(gi)
                self.waves[wave["w"]][gi] = self.empty_ref
                node = self.groups[gi][0]
                self.actors[gi].count_drops.remote(node, 1, 0)
                if not wave["todo"]:
                    self.open.remove(wave)

    def wait_one(self) -> None:
        heads = [q[0][1] for q in self.inflight.values() if q]
        if not heads:
            return
        ready, _ = ray.wait(heads, num_returns=1, timeout=1.0, fetch_local=False)
        if not ready:
            return
        # one more non-blocking wait over everything in flight finds all that finished
        everything = [s for q in self.inflight.values() for _, s in q]
        done, _ = ray.wait(everything, num_returns=len(everything), timeout=0, fetch_local=False)
        done = set(done)
        for gi, q in self.inflight.items():
            while q and q[0][1] in done:
                w, status = q[0]
                try:
                    ray.get(status)
                except RayTaskError as exc:
                    cause = _cause(exc)
                    if isinstance(cause, RayActorError):
                        self.recover()
                        return
                    if isinstance(cause, ReflexarcError):
                        raise cause from None
                    raise OperatorError(",".join(self.groups[gi]), str(cause)) from None
                except RayActorError:
                    self.recover()
                    return
                q.popleft()
        if self.ckpt_pending:
            self.settle_checkpoints()
        self.poll_monitor()

    def settle_checkpoints(self) -> None:
        for gi, (w, ref) in list(self.ckpt_pending.items()):
            ready, _ = ray.wait([ref], timeout=0, fetch_local=False)
            if not ready:
                continue
            del self.ckpt_pending[gi]
            try:
                ray.get(ref)
            except (RayActorError, RayTaskError):
                continue
            self.ckpt[gi] = (w, ref)
            hist = self.hist[gi]
            while hist and hist[0][0] <= w:
                hist.popleft()
        needed = [h[0][0] for h in self.hist.values() if h] + [wv["w"] for wv in self.open]
        needed += [q[0][0] for q in self.inflight.values() if q]
        if needed:
            low = min(needed)
            for w in [k for k in self.waves if k < low]:
                del self.waves[w]

    # -- crash recovery ------------------------------------------------------------
    def _incarnation(self, gi: int, actor, patience_s: float = 120.0) -> str:
        """The actor's token, waiting out a restart that is still in progress."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return ray.get(actor.incarnation.remote(), timeout=max(1.0, deadline - time.monotonic()))
            except ActorUnavailableError as exc:  # restarting: ask again shortly
                if time.monotonic() >= deadline:
                    raise OperatorError(",".join(self.groups[gi]), f"actor could not be restarted: {exc}") from None
                time.sleep(0.2)
            except (RayActorError, GetTimeoutError) as exc:
                raise OperatorError(",".join(self.groups[gi]), f"actor could not be restarted: {exc}") from None

    def recover(self) -> None:
        """Restart dead actors from their checkpoints and re-send what they lost."""
        everything = [s for q in self.inflight.values() for _, s in q]
        ray.wait(everything, num_returns=len(everything), timeout=120, fetch_local=False)
        failed: dict[int, list[int]] = {}
        for gi, q in self.inflight.items():
            for w, status in q:
                try:
                    ray.get(status, timeout=0)
                except (RayActorError, RayTaskError, GetTimeoutError):
                    failed.setdefault(gi, []).append(w)
            q.clear()
        dead = []
        for gi, actor in enumerate(self.actors):
            token = self._incarnation(gi, actor)
            if token != self.tokens[gi]:
                dead.append(gi)
                self.tokens[gi] = token
        if not dead:
            raise OperatorError("ray", "a call failed but every actor is alive")
        self.restarts += len(dead)
        for gi in dead:
            self.ckpt_pending.pop(gi, None)
            ckpt = self.ckpt.get(gi)
            state = ray.get(ckpt[1]) if ckpt else None
            ray.get(self.actors[gi].restore.remote(state))
            failed[gi] = [w for w, _ in self.hist[gi]]
        # re-send in wave order, upstream before downstream
        redo = sorted({w for ws in failed.values() for w in ws})
        finish_waves = {w for h in self.hist.values() for w, f in h if f}
        for w in redo:
            for gi in self.order:
                if w in failed.get(gi, ()):
                    args = self.args_for(gi, w)
                    out, status = self.actors[gi].step.remote(w, w in finish_waves, *args)
                    self.waves[w][gi] = out
                    self.inflight[gi].append((w, status))
                    self.recovered_waves += 1

    # -- reports -------------------------------------------------------------------
    def poll_monitor(self) -> None:
        if self.monitor is None or time.perf_counter() < self.next_mon:
            return
        if self.mon_ref is None:
            self.mon_ref = [a.snapshots.remote() for a in self.actors]
        ready, _ = ray.wait(self.mon_ref, num_returns=len(self.mon_ref), timeout=0)
        if len(ready) == len(self.mon_ref):
            try:
                snaps = [s for part in ray.get(self.mon_ref) for s in part]
                self.monitor(self.merge(snaps))
            except (RayActorError, RayTaskError):
                pass
            self.mon_ref = None
            self.next_mon = time.perf_counter() + 0.5

    def merge(self, snaps: list[dict], feed: Feed | None = None) -> list[dict]:
        by_node = {s["node"]: s for s in snaps}
        for gi, ids in enumerate(self.groups):
            if ids[0] in by_node:
                by_node[ids[0]]["queue_max"] = max(by_node[ids[0]]["queue_max"], self.queue_max[gi])
        if feed is not None or getattr(self, "feed", None) is not None:
            for m in (feed or self.feed).metrics.values():
                by_node[m.node] = m.snapshot()
        return [by_node[n] for n in self.graph.order if n in by_node]


def run_ray(
    graph: Graph,
    *,
    transport: str = "calls",
    monitor=None,
    stop=None,
    fuse: str | None = None,
    checkpoint_every: int = 16,
    max_restarts: int = 3,
    num_cpus: int | None = None,
    ring_mb: int = 16,
) -> tuple[dict, list[dict], dict]:
    """Run `graph` on Ray (starting a local session if none is running).

    `transport` moves batches between actors: `calls` (actor calls through the object
    store: backpressure policies, crash recovery), `compiled` (a Ray Compiled Graph) or
    `shm` (shared-memory channels on one machine: the lowest latency).
    """
    own = not ray.is_initialized()
    if transport not in ("calls", "compiled", "shm"):
        raise ConfigError(f"unknown Ray transport '{transport}' (expected calls, compiled or shm)")
    # a session of our own is shut down at the end, and then what its compiled graphs left
    # in /dev/shm can go (a shared session's raylet still holds them)
    semaphores = shm_semaphores() if own and transport == "compiled" else None
    if own:
        ray.init(num_cpus=num_cpus or 2, include_dashboard=False, log_to_driver=True)
    groups = plan_groups(graph, fuse)
    driver = _Driver(graph, groups, checkpoint_every, max_restarts, monitor)
    feed = Feed(graph)
    driver.feed = feed
    dag = None
    try:
        driver.start(same_node=transport == "shm")
        feed.setup()
        streaming = time.perf_counter()
        if transport == "shm":
            _run_shm(driver, feed, stop, ring_mb)
        elif transport == "compiled":
            dag = _run_compiled(driver, feed, stop)
            dag.teardown()  # actors serve ordinary calls again only after this
            dag = None
        else:
            driver.run(feed, stop)
        streaming = time.perf_counter() - streaming - driver.compile_s
        reports = ray.get([a.report.remote() for a in driver.actors], timeout=120)
    except BaseException:
        for a in driver.actors:
            try:
                a.safe_state.remote("the pipeline stopped on an error")
            except Exception:
                pass
        raise
    finally:
        if dag is not None:
            dag.teardown()
        failures = [str(e) for e in feed.close()]
        for a in driver.actors:
            try:
                failures += ray.get(a.close.remote(), timeout=30)
            except Exception:
                pass
            ray.kill(a, no_restart=True)
        if own:
            ray.shutdown()
            if semaphores is not None:
                remove_leaked_semaphores(semaphores)
    if failures:
        raise OperatorError("close", failures[0])
    results: dict = feed.results()
    snaps: list[dict] = []
    for res, snap in reports:
        results.update(res)
        snaps += snap
    recovery = {
        "actor_restarts": driver.restarts,
        "waves_resent": driver.recovered_waves,
        "actors": len(groups),
        "streaming_s": streaming,  # wall time with actors up (excludes their start and compiling)
        "compile_s": driver.compile_s,
    }
    return results, driver.merge(snaps, feed), recovery


def _run_compiled(driver: _Driver, feed: Feed, stop):
    from ray.dag import InputNode, MultiOutputNode

    fan_out = any(sum(u in driver.ups[g] for g in driver.order) > 1 for u in range(len(driver.groups)))
    if fan_out or len(driver.graph.sources) > 1:
        # Ray 2.60 compiled graphs deadlock or crash here on fan-out with executions in flight
        raise ConfigError(
            "the 'ray-compiled' executor runs linear chains (one source, no fan-out); use 'ray' for this graph"
        )
    nodes: dict[int, object] = {}
    with InputNode() as inp:
        for gi in driver.order:
            args = [inp if isinstance(u, tuple) else nodes[u] for u in driver.ups[gi]]
            # dedupe the input node: one source edge set is one argument
            seen, uniq = set(), []
            for a, u in zip(args, driver.ups[gi]):
                key = "src" if isinstance(u, tuple) else u
                if key not in seen:
                    seen.add(key)
                    uniq.append(a)
            nodes[gi] = driver.actors[gi].cstep.bind(*uniq)
        downstream = {u for gi in driver.order for u in driver.ups[gi] if isinstance(u, int)}
        leaves = [nodes[gi] for gi in driver.order if gi not in downstream]
        out = leaves[0] if len(leaves) == 1 else MultiOutputNode(leaves)
    cap = max(1, min(driver.capacity.values()) if driver.capacity else 8)
    pending: deque = deque()

    def drain_one():
        try:
            ray.get(pending.popleft(), timeout=300)
        except (RayTaskError, RayActorError) as exc:
            _reraise(exc, "compiled graph", "an actor died; the compiled mode does not recover")

    compiling = time.perf_counter()
    dag = out.experimental_compile(_submit_timeout=300, _max_inflight_executions=cap, _buffer_size_bytes=8 << 20)
    pending.append(dag.execute(None))
    drain_one()  # the first execution sets up every actor's channels: seconds, not stream time
    driver.compile_s = time.perf_counter() - compiling

    for _, items in feed:
        pending.append(dag.execute((False, items)))
        while len(pending) >= cap:
            drain_one()
        if stop is not None and stop.is_set():
            break
    pending.append(dag.execute((True, [])))
    while pending:
        drain_one()
    return dag


def _shm_dir(need: int) -> str:
    """/dev/shm when it has room for the rings (four times over), else the temp folder."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > 4 * need:
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir()


def _run_shm(driver: _Driver, feed: Feed, stop, ring_mb: int) -> None:
    """Actors serve waves over shared-memory channels; the driver feeds the sources' channels."""
    graph, groups = driver.graph, driver.groups
    lossy = [f"{n}.{p}" for n in graph.order for p, e in graph.nodes[n].inputs.items() if e.policy == "drop-oldest"]
    if lossy:
        raise ConfigError(
            f"the 'ray-shm' executor keeps every edge lossless, but {', '.join(lossy)} asks for "
            "policy drop-oldest; use 'ray' for this graph"
        )

    def keys_into(gj: int, up) -> frozenset:
        """The (node, port) streams group `gj` reads from `up` (a group, or "src")."""
        return frozenset(
            (e.src, e.src_port)
            for n in groups[gj]
            for e in graph.nodes[n].inputs.values()
            if (graph.nodes[e.src].is_source if up == "src" else driver.group_of.get(e.src) == up)
        )

    ring = ring_mb << 20
    links = [("src", gj) for gj in driver.order if any(isinstance(u, tuple) for u in driver.ups[gj])]
    links += [(u, gj) for gj in driver.order for u in driver.ups[gj] if isinstance(u, int)]
    run_dir = tempfile.mkdtemp(prefix="reflexarc-shm-", dir=_shm_dir(ring * len(links)))
    specs: dict = {}
    writers: list = []
    refs: dict = {}

    def settle(ref) -> None:
        gi = refs.pop(ref)
        try:
            queues = ray.get(ref)
        except (RayTaskError, RayActorError) as exc:
            _reraise(exc, ",".join(groups[gi]), _DIED)
        for (up, gj), spec in specs.items():
            if up == gi and queues:
                driver.queue_max[gj] = max(driver.queue_max[gj], queues.get(spec["path"], 0))

    def check() -> None:
        """Raise the failure of any actor that stopped serving; refresh the live view."""
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0, fetch_local=False)
        for ref in done:
            settle(ref)
        driver.poll_monitor()

    try:
        specs.update({link: shmchan.create(f"{run_dir}/{link[0]}-{link[1]}", ring) for link in links})
        ins: dict[int, list] = {gi: [] for gi in range(len(groups))}
        outs: dict[int, list] = {gi: [] for gi in range(len(groups))}
        for (up, gj), spec in specs.items():
            ins[gj].append(spec)
            if up != "src":
                outs[up].append((spec, keys_into(gj, up), driver.capacity[gj]))
        attaching = time.perf_counter()
        writers += [
            (Channel(spec, "w", driver.capacity[gj]), keys_into(gj, "src"), gj)
            for (up, gj), spec in specs.items()
            if up == "src"
        ]
        try:
            ray.get([driver.actors[gi].attach.remote(ins[gi], outs[gi]) for gi in range(len(groups))])
        except (RayTaskError, RayActorError) as exc:
            _reraise(exc, "ray-shm", "an actor died while it opened its channels")
        driver.compile_s = time.perf_counter() - attaching  # set-up, not stream time
        refs.update({driver.actors[gi].serve.remote(): gi for gi in range(len(groups))})
        w = 0
        next_check = time.perf_counter() + 0.2
        for _, items in feed:
            for ch, keys, _ in writers:
                ch.send(w, False, items, keys, idle=check)
            w += 1
            if time.perf_counter() >= next_check:
                check()
                next_check = time.perf_counter() + 0.2
            if stop is not None and stop.is_set():
                break
        for ch, keys, _ in writers:
            ch.send(w, True, [], keys, idle=check)
        for ch, _, gj in writers:
            driver.queue_max[gj] = max(driver.queue_max[gj], ch.queue_max)
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5, fetch_local=False)
            for ref in done:
                settle(ref)
            driver.poll_monitor()
    except BaseException:
        for spec in specs.values():  # wake and stop every actor still waiting on a channel
            ch = Channel(spec, "w")
            ch.abort()
            ch.close()
        raise
    finally:
        for ch, _, _ in writers:
            ch.close()
        shutil.rmtree(run_dir, ignore_errors=True)


_DIED = "the actor died; the 'ray-shm' executor does not recover from crashes (use 'ray' for that)"
