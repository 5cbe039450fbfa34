"""`executor: ray-shm`: the stage actors linked by shared-memory rings, or sockets across nodes.

Every edge between two stages on the same Ray node (decided by node id, not address:
a test cluster on one machine shares one IP and one /dev/shm) is a ring of
`pipeline.shmchan`; an edge between stages on different nodes is a socket channel of
`pipeline.netchan` (Arrow IPC over TCP, the same capacity and backpressure rules). The
reading side makes its end (the ring file on its own node, or a listening socket), the
writing side opens it. Unplaced stages run on the driver's node. Edges stay lossless
(`drop-oldest` is refused), and a dead actor or a lost node ends the run with one error
and leaves no ring files behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid

import ray
from ray.exceptions import RayActorError, RayTaskError

from pipeline.errors import ConfigError
from pipeline.executors.actors import Deployment, RayExecutor, reraise
from pipeline.executors.base import register
from pipeline.feed import Feed
from pipeline.netchan import open_channel

_DIED = "the actor died; the 'ray-shm' executor does not recover from crashes (use 'ray' for that)"


def shm_dir(need: int) -> str:
    """/dev/shm when it has room for the rings (four times over), else the temp folder."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > 4 * need:
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir()


@register
class RayShmExecutor(RayExecutor):
    """`executor: ray-shm`: rings on a node, sockets between nodes; the lowest latency."""

    name = "ray-shm"
    options = RayExecutor.options | {"ring_mb"}
    pin_unplaced = True

    def run(self, graph, *, ring_mb: int = 16, **kw):
        self.ring = ring_mb << 20
        self.ring_dir: str | None = None  # this run's folder of rings on the driver's machine
        self.kinds: dict[str, str] = {}
        return super().run(graph, **kw)

    def stream(self, dep: Deployment, feed: Feed, stop) -> None:
        graph, groups = dep.graph, dep.groups
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
                if (graph.nodes[e.src].is_source if up == "src" else dep.group_of.get(e.src) == up)
            )

        links = [("src", gj) for gj in dep.order if any(isinstance(u, tuple) for u in dep.ups[gj])]
        links += [(u, gj) for gj in dep.order for u in dep.ups[gj] if isinstance(u, int)]
        node_of = {"src": dep.driver_node, **dict(enumerate(dep.nodes))}
        run_name = f"reflexarc-shm-{uuid.uuid4().hex[:12]}"
        base = shm_dir(self.ring * len(links))
        self.ring_dir = os.path.join(base, run_name)
        names = {link: f"{link[0]}-{link[1]}" for link in links}
        self.kinds = {names[link]: ("ring" if node_of[link[0]] == node_of[link[1]] else "socket") for link in links}
        specs: dict = {}
        writers: list = []
        refs: dict = {}

        def settle(ref) -> None:
            gi = refs.pop(ref)
            try:
                queues = ray.get(ref)
            except (RayTaskError, RayActorError) as exc:
                reraise(exc, ",".join(groups[gi]), _DIED)
            for (up, gj), spec in specs.items():
                if up == gi and queues:
                    dep.queue_max[gj] = max(dep.queue_max[gj], queues.get(spec["name"], 0))

        def check() -> None:
            """Raise the failure of any actor that stopped serving; refresh the live view."""
            done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0, fetch_local=False)
            for ref in done:
                settle(ref)
            dep.poll_monitor()

        try:
            attaching = time.perf_counter()
            # the reading side of every link makes its end: a ring on its node, or a socket
            per_reader: dict[int, list] = {}
            for link in links:
                per_reader.setdefault(link[1], []).append((names[link], self.kinds[names[link]], self.ring))
            made = ray.get([dep.actors[gj].prepare.remote(ls, self.ring_dir)
                            for gj, ls in per_reader.items()])
            by_name = {name: spec for part in made for name, spec in part.items()}
            specs.update({link: by_name[names[link]] for link in links})
            ins: dict[int, list] = {gi: [] for gi in range(len(groups))}
            outs: dict[int, list] = {gi: [] for gi in range(len(groups))}
            for (up, gj), spec in specs.items():
                ins[gj].append(spec)
                if up != "src":
                    outs[up].append((spec, keys_into(gj, up), dep.capacity[gj]))
            writers += [
                (open_channel(spec, "w", dep.capacity[gj], timeout_s=dep.placement_timeout_s), keys_into(gj, "src"), gj)
                for (up, gj), spec in specs.items()
                if up == "src"
            ]
            try:
                ray.get([dep.actors[gi].attach.remote(ins[gi], outs[gi], dep.placement_timeout_s)
                         for gi in range(len(groups))])
            except (RayTaskError, RayActorError) as exc:
                reraise(exc, "ray-shm", "an actor died while it opened its channels")
            dep.compile_s = time.perf_counter() - attaching  # set-up, not stream time
            refs.update({dep.actors[gi].serve.remote(): gi for gi in range(len(groups))})
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
                dep.queue_max[gj] = max(dep.queue_max[gj], ch.queue_max)
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5, fetch_local=False)
                for ref in done:
                    settle(ref)
                dep.poll_monitor()
        except BaseException:
            for spec in specs.values():  # wake and stop every actor still waiting on a ring here
                if spec.get("kind") == "ring" and os.path.exists(spec["path"]):
                    ch = open_channel(spec, "w")
                    ch.abort()
                    ch.close()
            raise
        finally:
            for ch, _, _ in writers:
                ch.close()

    def cleanup(self, dep: Deployment) -> None:
        if self.ring_dir:  # the actors remove theirs; this catches what a killed one left here
            shutil.rmtree(self.ring_dir, ignore_errors=True)

    def facts(self, dep: Deployment) -> dict:
        return {"channels": dict(self.kinds)}
