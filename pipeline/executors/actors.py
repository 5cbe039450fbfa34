"""What the three Ray executors share: the stage actor, placement, and the run skeleton.

Each non-source node (or fused group) is one `StageActor` hosting a `Stage`, so results
match the local executor exactly. Sources run in the driver, which owns pacing and ingest
time. A node's `place:` becomes the actor's Ray options (custom resources, a label
selector, or hard affinity to one node); a placement no live node can meet is refused
before anything starts, and one that cannot be scheduled in `placement_timeout_s` ends
the run with an error naming the stage and what it waits for.
"""

from __future__ import annotations

import copy
import os
import shutil
import threading
import time
import uuid

import pyarrow as pa
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from pipeline import shmchan
from pipeline.errors import ClusterError, ConfigError, LinkError, OperatorError, ReflexarcError
from pipeline.executors.base import Executor, Outcome
from pipeline.executors.session import alive_nodes, ray_session
from pipeline.feed import Feed
from pipeline.graph import Graph, Node, Placement
from pipeline.stage import Stage

_EMPTY: list = []
_CPU = pa.default_cpu_memory_manager()
PLACEMENT_TIMEOUT_S = 60.0
LOST_NODE_WAIT_S = 10.0  # how long a vanished peer waits for Ray to declare its node dead


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
        self.channels: tuple[list, list] = ([], [])
        self.listening: dict = {}

    def incarnation(self) -> tuple[str, str]:
        """This incarnation's token and the Ray node it runs on."""
        return self.token, ray.get_runtime_context().get_node_id()

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

    # -- ray-shm ---------------------------------------------------------------------
    def prepare(self, links: list[tuple[str, str, int]], run_dir: str) -> dict[str, dict]:
        """Make the reading end of each incoming link: a ring on this node, or a listening socket.

        `links` are (name, kind, ring bytes) with kind "ring" or "socket"; returns the spec
        each writer opens.
        """
        from pipeline import netchan

        self.run_dir = run_dir
        specs = {}
        for name, kind, size in links:
            if kind == "ring":
                os.makedirs(run_dir, exist_ok=True)
                specs[name] = shmchan.create(f"{run_dir}/{name}", size)
            else:
                listener, spec = netchan.listen(name)
                self.listening[name] = listener
                specs[name] = spec
        return specs

    def attach(self, ins: list[dict], outs: list[tuple[dict, frozenset, int]], timeout_s: float = 60.0) -> None:
        """Open (and fault in) this actor's channels before the stream starts.

        Writers connect first and readers accept after, so that two actors attaching to
        each other at once never wait on one another.
        """
        from pipeline import netchan

        writers = [(netchan.open_channel(spec, "w", cap), keys) for spec, keys, cap in outs]
        readers = [netchan.open_channel(spec, "r", listener=self.listening.pop(spec.get("name"), None),
                                        timeout_s=timeout_s) for spec in ins]
        self.channels = (readers, writers)

    def serve(self):
        """Shared-memory / socket entry (`ray-shm`): read waves, step, write on.

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
                    return {ch.name: ch.queue_max for ch, _ in writers}
        except shmchan.Aborted:
            return None
        finally:
            for ch in readers + [ch for ch, _ in writers]:
                ch.close()

    # -- ray -------------------------------------------------------------------------
    def checkpoint(self):
        return self.last_wave, self.stage.state(with_metrics=True)

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
        if getattr(self, "run_dir", None):  # the rings this actor made on its node
            shutil.rmtree(self.run_dir, ignore_errors=True)
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
    """Non-source nodes grouped into actors: per node, by `fuse:` keys, or linear chains.

    `fuse: chains` never joins nodes placed differently (`fuse:` keys that do are refused
    when the graph is validated).
    """
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
                if up in owner and len(consumers[up]) == 1 and graph.nodes[up].place == node.place:
                    key = owner[up]
        key = key or n
        owner[n] = key
        groups.setdefault(key, []).append(n)
    return list(groups.values())


def _pruned(graph: Graph, ids: list[str]) -> Graph:
    """A copy of the graph carrying only this group's operators (others as wiring only)."""
    g = copy.copy(graph)
    keep = set(ids)
    g.nodes = {n: node if n in keep else Node(n, None, node.inputs) for n, node in graph.nodes.items()}
    g.config = {}
    return g


def cause(exc: BaseException) -> BaseException:
    if isinstance(exc, RayTaskError):
        inner = getattr(exc, "cause", None)
        if inner is not None:
            return inner
    return exc


def reraise(exc: BaseException, where: str, died: str):
    """Raise what a failed remote call stands for: our own error as it is, else one naming `where`."""
    inner = cause(exc)
    if isinstance(inner, ReflexarcError):
        raise inner from None
    if isinstance(inner, RayActorError):
        raise OperatorError(where, f"{died}: {inner}") from None
    raise OperatorError(where, str(inner)) from None


# -- placement -------------------------------------------------------------------------
def meets(place: Placement, node: dict) -> list[str]:
    """What `node` (from `alive_nodes`) lacks to hold `place`; empty when it can."""
    missing = []
    if place.node and node["id"].lower() != place.node:
        missing.append(f"is not node {place.node[:12]}")
    for name, amount in place.resources:
        have = node["resources"].get(name, 0)
        if have < amount:
            missing.append(f"resource {name} ({have:g} of {amount:g})" if have else f"resource {name}")
    for key, value in place.labels:
        have = node["labels"].get(key)
        if have != value:
            missing.append(f"label {key}={value}" + (f" (has {key}={have})" if have is not None else ""))
    return missing


def check_placements(graph: Graph, groups: list[list[str]], driver_node: str | None = None) -> list[str]:
    """Every stage's placement against the live nodes; a ClusterError names node and lack.

    Returns, per group, a line saying which nodes can hold it. Sources run in the
    driver: a placed source must be met by the driver's own node.
    """
    nodes = alive_nodes()
    problems, lines = [], []

    def where_not(place: Placement) -> str:
        return "; ".join(f"node {n['id'][:12]} ({n['ip']}) lacks {', '.join(meets(place, n))}" for n in nodes)

    for s in graph.sources:
        if s.place is None:
            continue
        here = next((n for n in nodes if n["id"] == driver_node), None)
        if here is not None and meets(s.place, here):
            problems.append(f"source '{s.id}' asks for {s.place.describe()}, but sources run in the driver, on node "
                            f"{here['id'][:12]} ({here['ip']}), which lacks {', '.join(meets(s.place, here))}: "
                            "start `reflexarc run` on the node that has it (with --address to join the cluster)")
    for ids in groups:
        place = graph.nodes[ids[0]].place
        if place is None:
            continue
        fit = [n for n in nodes if not meets(place, n)]
        stage = ",".join(ids)
        if not fit:
            problems.append(f"stage '{stage}' asks for {place.describe()}; no live node can hold it: {where_not(place)}")
        else:
            lines.append(f"stage '{stage}' ({place.describe()}) fits node(s) {', '.join(n['id'][:12] for n in fit)}")
    if problems:
        raise ClusterError("placement cannot be met: " + " | ".join(problems))
    return lines


def actor_options(place: Placement | None, max_restarts: int, pin_to: str | None) -> dict:
    """Ray actor options for one stage: its placement, or (when `pin_to`) the driver's node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    opts: dict = {"max_restarts": max_restarts, "max_task_retries": 0, "num_cpus": 0}
    if place is not None:
        if place.resources:
            opts["resources"] = dict(place.resources)
        if place.labels:
            opts["label_selector"] = dict(place.labels)
        if place.node:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(place.node, soft=False)
    elif pin_to is not None:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(pin_to, soft=False)
    return opts


class Deployment:
    """The stages of one run as Ray actors: groups, their wiring, placement and reports."""

    def __init__(self, graph: Graph, groups: list[list[str]], monitor=None, max_restarts: int = 0,
                 placement_timeout_s: float = PLACEMENT_TIMEOUT_S):
        self.graph = graph
        self.groups = groups
        self.monitor = monitor
        self.max_restarts = max_restarts
        self.placement_timeout_s = placement_timeout_s
        self.group_of = {n: gi for gi, ids in enumerate(groups) for n in ids}
        rank = {n: i for i, n in enumerate(graph.order)}
        self.order = sorted(range(len(groups)), key=lambda gi: rank[groups[gi][0]])
        # upstream of each group: other groups, or ("src", id) for a source feeding it
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
        self.actors: list = []
        self.tokens: list[str] = []
        self.nodes: list[str] = []  # the Ray node id each group's actor runs on
        self.driver_node: str | None = None
        self.queue_max = {gi: 0 for gi in range(len(groups))}
        self.compile_s = 0.0
        self.feed: Feed | None = None
        self.mon_ref = None
        self.next_mon = time.perf_counter() + 0.5

    def _check_acyclic(self) -> None:
        seen: set[int] = set()
        for gi in self.order:
            for u in self.ups[gi]:
                if isinstance(u, int) and u not in seen:
                    raise ConfigError(
                        f"fusing {self.groups[gi]} with {self.groups[u]} makes the actor graph cyclic; change the 'fuse' keys"
                    )
            seen.add(gi)

    def place_of(self, gi: int) -> Placement | None:
        return self.graph.nodes[self.groups[gi][0]].place

    def start(self, pin_unplaced: bool = False) -> None:
        """Start every group's actor where its placement asks (unplaced ones on the driver's
        node when `pin_unplaced`), and wait until all run or the placement timeout passes."""
        self.driver_node = ray.get_runtime_context().get_node_id()
        check_placements(self.graph, self.groups, self.driver_node)
        def pin(ids: list[str]) -> str | None:
            beside = any(self.graph.nodes[n].op.beside_driver for n in ids)
            return self.driver_node if pin_unplaced or beside else None

        self.actors = [
            StageActor.options(**actor_options(self.place_of(gi), self.max_restarts, pin(ids))).remote(_pruned(self.graph, ids), ids)
            for gi, ids in enumerate(self.groups)
        ]
        refs = [a.incarnation.remote() for a in self.actors]
        try:
            ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.placement_timeout_s)
            if waiting:
                stuck = [gi for gi, r in enumerate(refs) if r in set(waiting)]
                what = "; ".join(f"'{','.join(self.groups[gi])}' ({(p.describe() if (p := self.place_of(gi)) else 'anywhere')})"
                                 for gi in stuck)
                raise ClusterError(f"not placed within {self.placement_timeout_s:g} s (ray.placement_timeout_s): {what}; "
                                   "the nodes that could hold them are busy or gone (each placed stage holds the "
                                   "resources it names for the whole run)")
            got = ray.get(refs)
        except RayTaskError as exc:
            raise cause(exc) from None
        except RayActorError as exc:
            inner = getattr(exc, "cause", None) or exc
            raise OperatorError(",".join(self.groups[0]), f"actor failed to start: {inner}") from None
        self.tokens = [t for t, _ in got]
        self.nodes = [n for _, n in got]

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

    def merge(self, snaps: list[dict]) -> list[dict]:
        """Node snapshots in graph order, each with the queue it reached and its Ray node."""
        by_node = {s["node"]: s for s in snaps}
        for gi, ids in enumerate(self.groups):
            if ids[0] in by_node:
                by_node[ids[0]]["queue_max"] = max(by_node[ids[0]]["queue_max"], self.queue_max[gi])
            for n in ids:
                if n in by_node and gi < len(self.nodes):
                    by_node[n]["ray_node"] = self.nodes[gi]
        if self.feed is not None:
            for m in self.feed.metrics.values():
                by_node[m.node] = {**m.snapshot(), "ray_node": self.driver_node}
        return [by_node[n] for n in self.graph.order if n in by_node]

    def lost_nodes(self) -> list[str]:
        """The Ray nodes this run's actors ran on that are no longer alive."""
        alive = {n["id"] for n in alive_nodes()}
        return sorted({n for n in self.nodes if n not in alive})

    def lost_error(self, executor: str, wait_s: float = 0.0) -> ClusterError | None:
        """One error naming each lost node and the stages on it, or None if none was lost.

        A peer that vanished (a dead actor, a reset socket) is often the first sign of a
        lost node; Ray declares the node dead a little later, so `wait_s` is given for it.
        """
        deadline = time.monotonic() + wait_s
        lost = self.lost_nodes()
        while not lost and time.monotonic() < deadline:
            time.sleep(0.25)
            lost = self.lost_nodes()
        if not lost:
            return None
        parts = [f"Ray node {n} (stages {', '.join(x for gi, node in enumerate(self.nodes) if node == n for x in self.groups[gi])})"
                 for n in lost]
        return ClusterError(f"lost {'; '.join(parts)} mid-run; the '{executor}' executor does not recover from a lost "
                            "node (use 'ray', which restarts stages on a node that can hold them)")


class RayExecutor(Executor):
    """The run skeleton of the Ray executors; subclasses stream the waves (`stream`)."""

    options = frozenset({"fuse", "address", "placement_timeout_s", "num_cpus"})
    max_restarts = 0
    pin_unplaced = False

    def run(self, graph: Graph, *, monitor=None, stop: threading.Event | None = None, fuse: str | None = None,
            address: str | None = None, placement_timeout_s: float | None = None, num_cpus: int | None = None,
            **options) -> Outcome:
        self.check_options(options)  # what is left after the named ones is unknown, or a subclass's
        ray_cfg = graph.config.get("ray") or {}
        timeout = placement_timeout_s or ray_cfg.get("placement_timeout_s") or PLACEMENT_TIMEOUT_S
        semaphores = None
        try:
            # log_to_driver: what sinks print in their actors (commands, gestures) reaches the user
            with ray_session(address, config=graph.config, num_cpus=num_cpus, log_to_driver=True) as session:
                if session.local and self.name == "ray-compiled":
                    semaphores = shm_semaphores()
                return self._run(graph, monitor, stop, fuse, float(timeout))
        finally:
            # a session we started is down now, and what its compiled graphs left in /dev/shm
            # can go (a shared session's raylet still holds them)
            if semaphores is not None:
                remove_leaked_semaphores(semaphores)

    def _run(self, graph, monitor, stop, fuse, timeout) -> Outcome:
        groups = plan_groups(graph, fuse)
        dep = self.deployment(graph, groups, monitor, timeout)
        feed = Feed(graph)
        dep.feed = feed
        streaming = 0.0
        failures: list[str] = []
        try:
            dep.start(pin_unplaced=self.pin_unplaced)
            feed.setup()
            t0 = time.perf_counter()
            self.stream(dep, feed, stop)
            streaming = time.perf_counter() - t0 - dep.compile_s
            reports = ray.get([a.report.remote() for a in dep.actors], timeout=120)
        except BaseException as exc:
            for a in dep.actors:
                try:
                    a.safe_state.remote("the pipeline stopped on an error")
                except Exception:
                    pass
            vanished = isinstance(exc, LinkError | RayActorError) or (isinstance(exc, OperatorError) and "died" in str(exc))
            lost = None
            if dep.nodes and isinstance(exc, Exception):
                lost = dep.lost_error(self.name, LOST_NODE_WAIT_S if vanished else 0.0)
            if lost is not None:
                raise lost from None
            raise
        finally:
            self.teardown(dep)
            failures += [str(e) for e in feed.close()]
            for a in dep.actors:
                try:
                    failures += ray.get(a.close.remote(), timeout=30)
                except Exception:
                    pass
                ray.kill(a, no_restart=True)
            self.cleanup(dep)
        if failures:
            raise OperatorError("close", failures[0])
        results: dict = feed.results()
        snaps: list[dict] = []
        for res, snap in reports:
            results.update(res)
            snaps += snap
        recovery = {
            "actors": len(groups),
            "streaming_s": streaming,  # wall time with actors up (excludes their start and compiling)
            "compile_s": dep.compile_s,
            "ray_nodes": {",".join(ids): dep.nodes[gi] for gi, ids in enumerate(groups)},
            "driver_node": dep.driver_node,
            **self.facts(dep),
        }
        return Outcome(results, dep.merge(snaps), recovery)

    # -- what subclasses fill in -----------------------------------------------------
    def deployment(self, graph, groups, monitor, timeout) -> Deployment:
        return Deployment(graph, groups, monitor, self.max_restarts, timeout)

    def stream(self, dep: Deployment, feed: Feed, stop) -> None:
        raise NotImplementedError

    def teardown(self, dep: Deployment) -> None:
        """Before the actors are closed (a compiled graph must be torn down first)."""

    def cleanup(self, dep: Deployment) -> None:
        """After the actors are gone."""

    def facts(self, dep: Deployment) -> dict:
        return {}


__all__ = ["GetTimeoutError", "StageActor", "plan_groups", "remove_leaked_semaphores", "shm_semaphores"]
