"""`executor: ray`: one actor per node or fused group, driven wave by wave by actor calls.

The driver reads the sources and, for every source batch, submits one `step` call per
downstream actor, passing object references along so that batches flow from actor to
actor through the object store without touching the driver.

- Backpressure: at most `capacity` waves are in flight per actor; a `block` edge holds
  the sources back, a `drop-oldest` edge discards the oldest waiting wave and counts it.
- Crash recovery: Ray restarts a dead actor (on any node that can hold its placement,
  also when a whole node is lost). The driver holds each actor's last checkpoint as a
  value of its own (not a reference into the dead node's object store), restores it,
  re-sends every wave since, and actors drop waves they have already seen by sequence
  number, so sinks see every item exactly once. A stage whose inputs were lost with a
  node is rolled back to its checkpoint the same way. Checkpoints carry the node
  counters, so the final table counts every item once, across restarts.
"""

from __future__ import annotations

import time
from collections import deque

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
)

from pipeline.errors import OperatorError, ReflexarcError
from pipeline.executors.actors import _EMPTY, Deployment, RayExecutor, cause
from pipeline.executors.base import register
from pipeline.feed import Feed

_LOST = (RayActorError, ObjectLostError)


def _lost(exc: BaseException) -> bool:
    """Whether a failed call stands for a dead actor or an object lost with a node."""
    return isinstance(exc, _LOST) or isinstance(cause(exc), _LOST)


class CallsDeployment(Deployment):
    """The wave loop over actor calls, with backpressure and recovery."""

    def __init__(self, *args, checkpoint_every: int = 16, **kw):
        super().__init__(*args, **kw)
        self.checkpoint_every = checkpoint_every
        self.restarts = 0
        self.recovered_waves = 0
        self.recovered: list[str] = []  # one line per recovered failure

    def run(self, feed: Feed, stop) -> None:
        self.open: deque[dict] = deque()  # waves with groups still to submit
        self.inflight: dict[int, deque] = {gi: deque() for gi in range(len(self.groups))}
        self.hist: dict[int, deque] = {gi: deque() for gi in range(len(self.groups))}
        self.waves: dict[int, dict] = {}  # wave -> {group: out_ref, ("src", id): ref}
        self.ckpt: dict[int, tuple] = {}  # group -> (wave, state): values held by the driver
        self.ckpts: dict[int, deque] = {gi: deque() for gi in range(len(self.groups))}  # not yet usable
        self.done_upto = {gi: -1 for gi in range(len(self.groups))}  # last wave each group completed
        self.downs = {gi: [d for d in range(len(self.groups)) if gi in self.ups[d]] for gi in range(len(self.groups))}
        self.ckpt_pending: dict[int, tuple] = {}
        self.since_ckpt = {gi: 0 for gi in range(len(self.groups))}
        self.empty_ref = ray.put(_EMPTY)
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
                except (RayTaskError, *_LOST) as exc:
                    if _lost(exc):
                        self.recover(exc)
                        return
                    inner = cause(exc)
                    if isinstance(inner, ReflexarcError):
                        raise inner from None
                    raise OperatorError(",".join(self.groups[gi]), str(inner)) from None
                q.popleft()
                self.done_upto[gi] = w
        if self.ckpt_pending or any(self.ckpts.values()):
            self.settle_checkpoints()
        self.poll_monitor()

    def settle_checkpoints(self) -> None:
        for gi, (w, ref) in list(self.ckpt_pending.items()):
            ready, _ = ray.wait([ref], timeout=0, fetch_local=False)
            if not ready:
                continue
            del self.ckpt_pending[gi]
            try:
                state = ray.get(ref)  # held here, so it outlives the node that made it
            except (RayTaskError, *_LOST):
                continue
            self.ckpts[gi].append((w, state))
        for gi, pending in self.ckpts.items():
            # a checkpoint is used only once every downstream stage has completed its wave:
            # until then an output made before it may still be needed (and lost with a node),
            # and a stage restored from it could not make that output again
            ready_upto = min((self.done_upto[d] for d in self.downs[gi]), default=None)
            while pending and (ready_upto is None or pending[0][0] <= ready_upto):
                self.ckpt[gi] = pending.popleft()
                hist = self.hist[gi]
                while hist and hist[0][0] <= self.ckpt[gi][0]:
                    hist.popleft()
        needed = [h[0][0] for h in self.hist.values() if h] + [wv["w"] for wv in self.open]
        needed += [q[0][0] for q in self.inflight.values() if q]
        if needed:
            low = min(needed)
            for w in [k for k in self.waves if k < low]:
                del self.waves[w]

    # -- crash recovery ------------------------------------------------------------
    def _incarnation(self, gi: int, actor, patience_s: float = 120.0) -> tuple[str, str]:
        """The actor's token and node, waiting out a restart that is still in progress."""
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

    def recover(self, first: BaseException) -> None:
        """Restart dead actors from their checkpoints and re-send what they lost."""
        everything = [s for q in self.inflight.values() for _, s in q]
        ray.wait(everything, num_returns=len(everything), timeout=120, fetch_local=False)
        failed: dict[int, list[int]] = {}
        lost_inputs: set[int] = set()
        for gi, q in self.inflight.items():
            for w, status in q:
                try:
                    ray.get(status, timeout=0)
                except (RayTaskError, GetTimeoutError, *_LOST) as exc:
                    failed.setdefault(gi, []).append(w)
                    if isinstance(cause(exc), ObjectLostError) or isinstance(exc, ObjectLostError):
                        lost_inputs.add(gi)
            q.clear()
        lost_nodes = self.lost_nodes()
        dead = []
        for gi, actor in enumerate(self.actors):
            token, node = self._incarnation(gi, actor)
            if token != self.tokens[gi]:
                dead.append(gi)
                self.tokens[gi] = token
                was = self.nodes[gi]
                self.nodes[gi] = node
                moved = f" on node {node[:12]} (was {was[:12]}{', lost' if was in lost_nodes else ''})" if node != was else ""
                self.recovered.append(f"stage '{','.join(self.groups[gi])}' restarted{moved} after: {_short(first)}")
        if not dead and not lost_inputs:
            raise OperatorError("ray", f"a call failed but every actor is alive: {_short(first)}")
        self.restarts += len(dead)
        # a stage whose inputs died with a node is rolled back to its checkpoint too: calls
        # after the failed one may have applied, and re-sending only the failed wave would
        # then be dropped as a duplicate
        for gi in sorted(set(dead) | lost_inputs):
            if gi not in dead:
                self.recovered.append(f"stage '{','.join(self.groups[gi])}' rolled back to its checkpoint: its inputs "
                                      "were lost with a node")
            self.ckpt_pending.pop(gi, None)
            self.ckpts[gi].clear()
            ckpt = self.ckpt.get(gi)
            if ckpt is None and gi not in dead:
                raise OperatorError(",".join(self.groups[gi]), "inputs lost with a node before its first checkpoint")
            ray.get(self.actors[gi].restore.remote(ckpt[1] if ckpt else None))
            self.done_upto[gi] = ckpt[0] if ckpt else -1
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


def _short(exc: BaseException) -> str:
    inner = cause(exc)
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}"[:200]


@register
class RayCallsExecutor(RayExecutor):
    """`executor: ray`: actor calls through the object store; recovers from crashes and lost nodes."""

    name = "ray"
    options = RayExecutor.options | {"checkpoint_every", "max_restarts"}

    def run(self, graph, *, checkpoint_every: int = 16, max_restarts: int = 3, **kw):
        self.checkpoint_every = checkpoint_every
        self.max_restarts = max_restarts
        return super().run(graph, **kw)

    def deployment(self, graph, groups, monitor, timeout):
        return CallsDeployment(graph, groups, monitor, self.max_restarts, timeout, checkpoint_every=self.checkpoint_every)

    def stream(self, dep: CallsDeployment, feed: Feed, stop) -> None:
        dep.run(feed, stop)

    def facts(self, dep: CallsDeployment) -> dict:
        return {"actor_restarts": dep.restarts, "waves_resent": dep.recovered_waves, "recovered": dep.recovered}
