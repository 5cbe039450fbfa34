"""Run a network over K partitions: in this process in turn, as K threads, or as K Ray actors.

Every window of `min_delay` steps, each partition advances on its own; then every
partition needs every spike of that window. No spike can arrive sooner than one
min-delay after it was emitted, so nothing is lost by exchanging once per window.

- `inline`: the partitions run in turn here; the runner merges their spikes, sorted by
  (step, global neuron), and hands them to every partition for the next window.
- `threads` and `ray`: the partitions exchange windows among themselves through a
  shared-memory board (`exchange.py`; a TCP bridge between nodes), never through the
  driver. The driver asks each partition for a chunk of windows at a time (one call per
  `batch_ms`, two chunks in flight) and merges what they emitted for its consumer.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from cluster.brainsim import exchange as x
from cluster.brainsim.partition import Partition, compile_network, split
from cluster.brainsim.spec import NetworkSpec
from pipeline import schemas as sch
from pipeline.errors import ReflexarcError


def merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Spikes of all partitions in one (step, global neuron) order, whatever the partitioning."""
    steps = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    neurons = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    if len(steps) > 1:
        order = np.lexsort((neurons, steps))
        steps, neurons = steps[order], neurons[order]
    return steps, neurons


def to_batch(steps: np.ndarray, neurons: np.ndarray, dt_us: int, schema: pa.Schema) -> pa.RecordBatch:
    return sch.spikes_batch(steps * dt_us, neurons.astype(np.uint32), schema)


def from_batch(batch: pa.RecordBatch, dt_us: int) -> tuple[np.ndarray, np.ndarray]:
    return sch.column(batch, "t") // dt_us, sch.column(batch, "neuron").astype(np.int64)


def _concat(held: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([h[0] for h in held]), np.concatenate([h[1] for h in held])


MASK = np.int64(0xFFFFFFFF)


class PartitionLost(ReflexarcError):
    """A partition's process died during a run."""


def from_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Board keys (`step << 32 | neuron`) as (step, global neuron) arrays."""
    return keys >> 32, keys & MASK


class Simulation:
    """A network split over `actors` partitions.

    `backend='inline'` runs them here in turn, `'threads'` as threads of this process and
    `'ray'` as Ray actors (one CPU each, placed by Ray on any node of the cluster that
    `address` names or that is already initialised; a local one otherwise). Threads and
    actors exchange spikes through shared memory (and TCP between nodes), spinning
    `spin_us` before they sleep; a partition that waits longer than `timeout_s` for a peer
    gives up with an error that names it.
    """

    BACKENDS = ("inline", "threads", "ray")

    def __init__(self, spec: NetworkSpec, actors: int = 1, backend: str = "inline", address: str | None = None,
                 spin_us: float = 200.0, timeout_s: float = 120.0):
        if actors < 1:
            raise ValueError(f"actors={actors} must be at least 1")
        if backend not in self.BACKENDS:
            raise ValueError(f"backend '{backend}' is not one of {', '.join(self.BACKENDS)}")
        self.layout = compile_network(spec)
        self.actors, self.backend, self.address = actors, backend, address
        self.spin_us, self.timeout_s = spin_us, timeout_s
        self.dt_us = int(round(self.layout.dt_ms * 1000))
        self.window = self.layout.window
        self.schema = sch.spikes_schema("network", self.layout.n)
        self.parts: list = []
        self.nodes: list[str] = []
        self.stats: dict = {"windows": 0, "exchange_s": 0.0, "spikes_exchanged": 0, "bytes_exchanged": 0}
        self.build_s = 0.0
        self._board: x.Board | None = None
        self._pools: list[ThreadPoolExecutor] = []
        self._tag = x.new_tag()
        self._paths: list[str] = []

    # -- set up ---------------------------------------------------------------------
    def build(self) -> Simulation:
        t0 = time.perf_counter()
        ranges = split(self.layout.n, self.actors)
        if self.backend in ("inline", "threads"):
            self.parts = [Partition(self.layout, lo, hi) for lo, hi in ranges]
            if self.backend == "threads":
                self._board = x.Board(self._board_layout(ranges))
                for i, part in enumerate(self.parts):  # load the board kernel now, not in the first window
                    part.run_on_board(0, self._board, i)
                self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"brainsim-{i}")
                               for i in range(self.actors)]
        else:
            self._build_ray(ranges)
        self.build_s = time.perf_counter() - t0
        return self

    def _board_layout(self, ranges) -> x.BoardLayout:
        lay = self.layout
        n_src = [int(((lay.src_neurons >= lo) & (lay.src_neurons < hi)).sum()) for lo, hi in ranges]
        return x.BoardLayout.of([x.capacity(self.window, lo, hi, m) for (lo, hi), m in zip(ranges, n_src,
                                                                                          strict=True)])

    def _build_ray(self, ranges) -> None:
        import ray

        from cluster.brainsim.actor import PartitionActor
        from pipeline.executors.session import connect

        # the one helper every Ray user here calls: joins `address` (or RAY_ADDRESS) without
        # num_cpus, or starts a local session; `close` leaves what it did not start
        self._session = connect(self.address)

        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < self.actors:  # the partitions wait on each other: all must run at once
            raise ValueError(f"actors={self.actors} needs {self.actors} CPUs at once; the Ray cluster has {cpus:g}")

        layout_ref = ray.put(self.layout)
        self.parts = [PartitionActor.remote(layout_ref, lo, hi, i) for i, (lo, hi) in enumerate(ranges)]
        where = ray.get([p.where.remote() for p in self.parts])
        self.nodes = [w["node"] for w in where]
        order = list(dict.fromkeys(self.nodes))  # nodes in order of their first partition
        groups = [[i for i, n in enumerate(self.nodes) if n == node] for node in order]
        board = self._board_layout(ranges)
        addresses, calls = {}, []
        for g, members in enumerate(groups):
            path = x.shm_path(f"{self._tag}-{g}")
            self._paths.append(path)
            bridge = {"groups": groups, "group": g} if len(groups) > 1 else None
            calls.append(self.parts[members[0]].attach.remote(path, board, bridge))
            calls += [self.parts[i].attach.remote(path, board, None) for i in members[1:]]
        got = ray.get(calls)
        if len(groups) > 1:  # each node's bridge listens for every other node's windows
            firsts = [members[0] for members in groups]
            it = iter(got)
            for g, members in enumerate(groups):
                addresses[g] = next(it)  # {peer group: spec of the channel g reads that peer from}
                for _ in members[1:]:
                    next(it)
            ray.get([self.parts[i].connect.remote(addresses) for i in firsts])

    def info(self) -> dict:
        """Neurons, synapses and synapse memory over all partitions."""
        if self.backend != "ray":
            infos = [{"synapses": p.synapses, "synapse_bytes": p.synapse_bytes()} for p in self.parts]
        else:
            import ray

            infos = ray.get([p.info.remote() for p in self.parts])
        syn = sum(i["synapses"] for i in infos)
        nbytes = sum(i["synapse_bytes"] for i in infos)
        return {"neurons": self.layout.n, "synapses": syn, "synapse_bytes": nbytes,
                "bytes_per_synapse": nbytes / syn if syn else 0.0, "actors": self.actors,
                "backend": self.backend, "nodes": len(set(self.nodes)) if self.nodes else 1,
                "window_ms": self.window * self.layout.dt_ms, "build_s": self.build_s}

    # -- run ------------------------------------------------------------------------
    def windows(self, duration_s: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each window's spikes, as (step, global neuron) arrays in that order."""
        return self.chunks(duration_s, 1)

    def chunks(self, duration_s: float, per_chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Advance `per_chunk` windows at a time for `duration_s` of biological time.

        Yields the spikes of each chunk as (step, global neuron) arrays sorted that way.
        One partition without spike sources runs a whole chunk inside one Numba call, and
        so does each thread or actor of the board backends.
        """
        if not self.parts:
            self.build()
        n_windows = int(np.ceil(duration_s * 1e3 / (self.window * self.layout.dt_ms) - 1e-9))
        if self.backend != "inline":
            yield from self._board_chunks(n_windows, per_chunk)
            return
        pending = (np.empty(0, np.int64), np.empty(0, np.int64))
        fused = len(self.parts) == 1 and not len(self.layout.src_steps)
        done = 0
        while done < n_windows:
            todo = min(per_chunk, n_windows - done)
            if fused:
                part = self.parts[0]
                steps, neurons = part.run_windows(todo, *pending)
                last = steps > part.step - self.window
                pending = (steps[last], neurons[last])
                self.stats["windows"] += todo
                self.stats["spikes_exchanged"] += len(steps)
                done += todo
                yield steps, neurons
                continue
            held = []
            for _ in range(todo):
                outs = [p.step_window(*pending) for p in self.parts]
                t0 = time.perf_counter()
                pending = merge(outs)
                self.stats["exchange_s"] += time.perf_counter() - t0
                self.stats["windows"] += 1
                self.stats["spikes_exchanged"] += len(pending[0])
                held.append(pending)
            done += todo
            yield _concat(held) if len(held) > 1 else held[0]

    def _submit(self, n: int) -> list:
        if self.backend == "threads":
            return [pool.submit(part.run_on_board, n, self._board, i, self.spin_us, self.timeout_s)
                    for i, (pool, part) in enumerate(zip(self._pools, self.parts, strict=True))]
        return [p.run.remote(n, self.spin_us, self.timeout_s) for p in self.parts]

    def _collect(self, calls: list) -> list[np.ndarray]:
        if self.backend == "threads":
            return [c.result() for c in calls]
        import ray

        try:
            return ray.get(calls)
        except ray.exceptions.RayActorError:
            self.abort()
            dead = []
            for i, c in enumerate(calls):
                try:
                    ray.get(c, timeout=self.timeout_s)
                except ray.exceptions.RayActorError:
                    dead.append(i)
                except Exception:  # noqa: BLE001 - the survivors were aborted
                    pass
            ranges = split(self.layout.n, self.actors)
            who = ", ".join(f"{i} (neurons {ranges[i][0]}-{ranges[i][1] - 1})" for i in dead)
            raise PartitionLost(f"brainsim partition {who} died; the run was aborted") from None

    # a board call that returns sooner than this is followed by a longer one: each call costs
    # a Ray task round trip and re-synchronises the partitions (~1-1.5 ms on 2 cores), which
    # is 100 windows of CUBA; the caller still gets its `per_chunk` windows at a time
    CALL_S = 0.05

    def _board_chunks(self, n_windows: int, per_chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        flight: deque = deque()
        done = submitted = 0
        per_call = per_chunk
        base = self.stats["windows"]  # windows run before this call: the partitions' global window number
        try:
            while done < n_windows:
                while submitted < n_windows and len(flight) < 2:  # the next call queues behind this one
                    todo = min(per_call, n_windows - submitted)
                    flight.append((todo, time.perf_counter(), self._submit(todo)))
                    submitted += todo
                todo, t0, calls = flight.popleft()
                outs = self._collect(calls)
                took = time.perf_counter() - t0
                if took < self.CALL_S and per_call < (1 << 20):  # grow in whole chunks, at most 8x a time
                    per_call = per_chunk * max(1, min(8 * (per_call // per_chunk),
                                                      int(per_call * self.CALL_S / max(took, 1e-6)) // per_chunk))
                keys = np.concatenate(outs) if len(outs) > 1 else outs[0]
                if len(outs) > 1:
                    keys.sort()
                self.stats["windows"] += todo
                self.stats["spikes_exchanged"] += len(keys)
                self.stats["bytes_exchanged"] += 8 * len(keys)
                # the call's windows in the caller's chunks: stamps of window w are w*W+1 .. (w+1)*W
                first = done
                done += todo
                for a in range(first, done, per_chunk):
                    b = min(a + per_chunk, done)
                    lo_key = ((base + a) * self.window + 1) << 32
                    hi_key = ((base + b) * self.window + 1) << 32
                    yield from_keys(keys[np.searchsorted(keys, lo_key):np.searchsorted(keys, hi_key)])
        finally:
            if flight:  # the consumer stopped early or a partition failed: let the rest go
                self.abort()
                for _todo, _t0, calls in flight:
                    try:
                        self._collect(calls)
                    except Exception:  # noqa: BLE001 - they were aborted on purpose
                        pass

    def batches(self, duration_s: float, batch_ms: float = 10.0) -> Iterator[pa.RecordBatch]:
        """The spikes of `duration_s` as Arrow batches of about `batch_ms` each (t in µs, global neuron)."""
        per = max(1, int(round(batch_ms / (self.window * self.layout.dt_ms))))
        for steps, neurons in self.chunks(duration_s, per):
            yield to_batch(steps, neurons, self.dt_us, self.schema)

    def busy_s(self) -> list[float]:
        """CPU seconds each thread or Ray actor spent in its runs (spinning included); empty for inline."""
        return [b["busy_s"] for b in self.partition_times()]

    def partition_times(self) -> list[dict]:
        """Per partition: `busy_s` (CPU in runs) and `wait_s` (waiting for other partitions' windows)."""
        if self.backend == "threads":
            return [{"busy_s": float("nan"), "wait_s": p.wait_s} for p in self.parts]
        if self.backend != "ray":
            return []
        import ray

        return ray.get([p.busy.remote() for p in self.parts])

    def abort(self) -> None:
        """Stop partitions that wait for a peer (one died, or the consumer gave up)."""
        if self._board is not None:
            self._board.abort()
        if self.backend == "ray":

            for p in self.parts:
                try:
                    p.abort.remote()
                except Exception:  # noqa: BLE001 - a dead actor needs no abort
                    pass

    def close(self) -> None:
        if self.backend == "ray" and self.parts:
            import ray

            try:
                ray.get([p.close.remote(True) for p in self.parts], timeout=30)
            except Exception:  # noqa: BLE001 - a dead actor has nothing to close; its board is unlinked below
                pass
            for p in self.parts:
                ray.kill(p)
            for path in self._paths:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        for pool in self._pools:
            pool.shutdown(wait=True)
        from pipeline.executors.session import disconnect

        disconnect(getattr(self, "_session", None))
        self._session = None
        if self._board is not None:
            self._board.close()
            self._board = None
        self._pools, self.parts = [], []
