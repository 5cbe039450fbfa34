"""`executor: ray-compiled`: the stage actors as a Ray Compiled Graph (linear chains only).

Lossless `block` edges only; a crash or a lost node ends the run with one error instead
of recovering (use `ray` for that).
"""

from __future__ import annotations

import time
from collections import deque

import ray
from ray.exceptions import RayActorError, RayTaskError

from pipeline.errors import ConfigError
from pipeline.executors.actors import Deployment, RayExecutor, reraise
from pipeline.executors.base import register
from pipeline.feed import Feed


@register
class RayCompiledExecutor(RayExecutor):
    """`executor: ray-compiled`: a compiled graph of the stage actors; linear chains."""

    name = "ray-compiled"

    def stream(self, dep: Deployment, feed: Feed, stop) -> None:
        from ray.dag import InputNode, MultiOutputNode

        fan_out = any(sum(u in dep.ups[g] for g in dep.order) > 1 for u in range(len(dep.groups)))
        if fan_out or len(dep.graph.sources) > 1:
            # Ray 2.60 compiled graphs deadlock or crash here on fan-out with executions in flight
            raise ConfigError(
                "the 'ray-compiled' executor runs linear chains (one source, no fan-out); use 'ray' for this graph"
            )
        nodes: dict[int, object] = {}
        with InputNode() as inp:
            for gi in dep.order:
                args = [inp if isinstance(u, tuple) else nodes[u] for u in dep.ups[gi]]
                # dedupe the input node: one source edge set is one argument
                seen, uniq = set(), []
                for a, u in zip(args, dep.ups[gi]):
                    key = "src" if isinstance(u, tuple) else u
                    if key not in seen:
                        seen.add(key)
                        uniq.append(a)
                nodes[gi] = dep.actors[gi].cstep.bind(*uniq)
            downstream = {u for gi in dep.order for u in dep.ups[gi] if isinstance(u, int)}
            leaves = [nodes[gi] for gi in dep.order if gi not in downstream]
            out = leaves[0] if len(leaves) == 1 else MultiOutputNode(leaves)
        cap = max(1, min(dep.capacity.values()) if dep.capacity else 8)
        pending: deque = deque()

        def drain_one():
            try:
                ray.get(pending.popleft(), timeout=300)
            except (RayTaskError, RayActorError) as exc:
                reraise(exc, "compiled graph", "an actor died; the compiled mode does not recover")

        compiling = time.perf_counter()
        self.dag = out.experimental_compile(_submit_timeout=300, _max_inflight_executions=cap, _buffer_size_bytes=8 << 20)
        pending.append(self.dag.execute(None))
        drain_one()  # the first execution sets up every actor's channels: seconds, not stream time
        dep.compile_s = time.perf_counter() - compiling

        for _, items in feed:
            pending.append(self.dag.execute((False, items)))
            while len(pending) >= cap:
                drain_one()
            if stop is not None and stop.is_set():
                break
        pending.append(self.dag.execute((True, [])))
        while pending:
            drain_one()

    def teardown(self, dep: Deployment) -> None:
        dag, self.dag = getattr(self, "dag", None), None
        if dag is not None:
            dag.teardown()  # actors serve ordinary calls again only after this
