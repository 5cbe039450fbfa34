"""The local executor: one process, deterministic, topological push of each wave.

`LocalRun` is the engine (a graph's `Feed` and one `Stage` holding every non-source
node); `LocalExecutor` drives it to the end of the sources. Callers that act between
waves (the edge agent: model swaps, config switches, a watchdog) pass `hooks`.
"""

from __future__ import annotations

import threading
import time

from pipeline.executors.base import Executor, Outcome
from pipeline.feed import Feed
from pipeline.graph import Graph
from pipeline.stage import Stage


class WaveHooks:
    """Called by the local executor around waves; every method is optional to override.

    All run on the thread that runs the operators, so what they do between two waves
    (swap a model, change a parameter) never meets a half-processed batch.
    """

    def started(self, run: LocalRun) -> None:
        """After every operator's `setup`, before the first wave."""

    def between(self, run: LocalRun) -> bool:
        """Before each wave; True ends the stream there, without flushing operators."""
        return False

    def after(self, run: LocalRun, wave_s: float) -> None:
        """After each wave, with the seconds it took."""

    def ended(self, run: LocalRun, error: BaseException | None) -> None:
        """Once, after the last wave or the error that stopped the run, before `close`."""

    def closed(self, run: LocalRun, errors: list) -> list:
        """What operators' `close` raised; return those the run should still fail with."""
        return errors


class LocalRun:
    """A graph's sources and operators in this process, stepped one wave at a time."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.feed = Feed(graph)
        self.stage = Stage(graph, [n for n in graph.order if not graph.nodes[n].is_source])

    @property
    def ops(self) -> dict:
        """The non-source operators by node id."""
        return self.stage.ops

    def setup(self) -> None:
        self.stage.setup()
        self.feed.setup()

    def close(self) -> list:
        return self.feed.close() + self.stage.close()

    def results(self) -> dict:
        return {**self.feed.results(), **self.stage.results()}

    def snapshots(self) -> list[dict]:
        by_node = {s["node"]: s for s in [m.snapshot() for m in self.feed.metrics.values()] + self.stage.snapshots()}
        return [by_node[n] for n in self.graph.order if n in by_node]


class LocalExecutor(Executor):
    """`executor: local`: the whole graph in the calling thread; `place:` keys are ignored."""

    name = "local"
    # the Ray executors' options mean nothing here: accepted and unused, so one config runs everywhere
    options = frozenset({"hooks", "address", "fuse", "placement_timeout_s", "num_cpus", "checkpoint_every",
                         "max_restarts", "ring_mb"})

    def run(self, graph: Graph, *, monitor=None, stop: threading.Event | None = None, hooks: WaveHooks | None = None,
            **ray_options) -> Outcome:
        self.check_options(ray_options)
        run = LocalRun(graph)
        waves = hooks  # None: the plain loop, with no hook calls and no timing per wave
        hooks = hooks or WaveHooks()
        next_report = time.perf_counter() + 0.25
        error: BaseException | None = None
        try:
            run.setup()
            hooks.started(run)
            ended_early = False
            step = run.stage.step
            for _, items in run.feed:
                if waves is None:
                    step(items)
                else:
                    if waves.between(run):
                        ended_early = True
                        break
                    t0 = time.perf_counter()
                    step(items)
                    waves.after(run, time.perf_counter() - t0)
                if stop is not None and stop.is_set():
                    break
                if monitor is not None and time.perf_counter() >= next_report:
                    monitor(run.snapshots())
                    next_report = time.perf_counter() + 0.25
            if not ended_early:
                run.stage.finish([])
        except BaseException as exc:
            error = exc
            run.stage.safe_state("the pipeline stopped on an error")
            raise
        finally:
            try:
                hooks.ended(run, error)
            finally:
                errors = hooks.closed(run, run.close())
        if errors:
            raise errors[0]
        return Outcome(run.results(), run.snapshots())
