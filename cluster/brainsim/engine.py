"""Run a network over K partitions, in this process or as K Ray actors.

Every window of `min_delay` steps, each partition advances on its own and returns the
spikes it emitted; the runner merges them, sorted by (step, global neuron), into one
Arrow batch and hands that batch to every partition at the start of the next window.
No spike can arrive sooner than one min-delay after it was emitted, so nothing is lost
by exchanging only once per window; the exchange count falls as delays grow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from cluster.brainsim.partition import Layout, Partition, compile_network, split
from cluster.brainsim.spec import NetworkSpec
from pipeline import schemas as sch


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


class PartitionActor:
    """A partition behind a Ray actor: spikes in and out as Arrow record batches."""

    def __init__(self, layout: Layout, lo: int, hi: int):
        t0 = time.perf_counter()
        self.part = Partition(layout, lo, hi)
        self.build_s = time.perf_counter() - t0
        self.dt_us = int(round(layout.dt_ms * 1000))
        self.schema = sch.spikes_schema("network", layout.n)
        self.busy_s = 0.0

    def info(self) -> dict:
        return {"lo": self.part.lo, "hi": self.part.hi, "synapses": self.part.synapses,
                "synapse_bytes": self.part.synapse_bytes(), "build_s": self.build_s}

    def step_window(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        t0 = time.perf_counter()
        steps, neurons = from_batch(batch, self.dt_us)
        out = to_batch(*self.part.step_window(steps, neurons), self.dt_us, self.schema)
        self.busy_s += time.perf_counter() - t0
        return out

    def busy(self) -> float:
        return self.busy_s


class Simulation:
    """A network split over `actors` partitions: `backend='inline'` runs them here in turn,
    `backend='ray'` gives each its own Ray actor (one CPU each)."""

    def __init__(self, spec: NetworkSpec, actors: int = 1, backend: str = "inline"):
        if actors < 1:
            raise ValueError(f"actors={actors} must be at least 1")
        if backend not in ("inline", "ray"):
            raise ValueError(f"backend '{backend}' is not inline or ray")
        self.layout = compile_network(spec)
        self.actors, self.backend = actors, backend
        self.dt_us = int(round(self.layout.dt_ms * 1000))
        self.window = self.layout.min_delay_steps
        self.schema = sch.spikes_schema("network", self.layout.n)
        self.parts: list = []
        self.stats: dict = {"windows": 0, "exchange_s": 0.0, "spikes_exchanged": 0, "bytes_exchanged": 0}
        self.build_s = 0.0

    # -- set up ---------------------------------------------------------------------
    def build(self) -> Simulation:
        t0 = time.perf_counter()
        ranges = split(self.layout.n, self.actors)
        if self.backend == "inline":
            self.parts = [Partition(self.layout, lo, hi) for lo, hi in ranges]
        else:
            import ray

            if not ray.is_initialized():
                ray.init(include_dashboard=False, log_to_driver=False)
            remote = ray.remote(num_cpus=1)(PartitionActor)
            layout_ref = ray.put(self.layout)
            self.parts = [remote.remote(layout_ref, lo, hi) for lo, hi in ranges]
            ray.get([p.info.remote() for p in self.parts])
        self.build_s = time.perf_counter() - t0
        return self

    def info(self) -> dict:
        """Neurons, synapses and synapse memory over all partitions."""
        if self.backend == "inline":
            infos = [{"synapses": p.synapses, "synapse_bytes": p.synapse_bytes()} for p in self.parts]
        else:
            import ray

            infos = ray.get([p.info.remote() for p in self.parts])
        syn = sum(i["synapses"] for i in infos)
        nbytes = sum(i["synapse_bytes"] for i in infos)
        return {"neurons": self.layout.n, "synapses": syn, "synapse_bytes": nbytes,
                "bytes_per_synapse": nbytes / syn if syn else 0.0, "actors": self.actors,
                "backend": self.backend, "window_ms": self.window * self.layout.dt_ms, "build_s": self.build_s}

    # -- run ------------------------------------------------------------------------
    def windows(self, duration_s: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each window's spikes, as (step, global neuron) arrays in that order."""
        return self.chunks(duration_s, 1)

    def chunks(self, duration_s: float, per_chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Advance `per_chunk` windows at a time for `duration_s` of biological time.

        Yields the spikes of each chunk as (step, global neuron) arrays sorted that way.
        One partition without spike sources runs a whole chunk inside one Numba call;
        otherwise the partitions exchange spikes once per window.
        """
        if not self.parts:
            self.build()
        n_windows = int(np.ceil(duration_s * 1e3 / (self.window * self.layout.dt_ms) - 1e-9))
        pending = (np.empty(0, np.int64), np.empty(0, np.int64))
        fused = self.backend == "inline" and len(self.parts) == 1 and not len(self.layout.src_steps)
        if self.backend == "ray":
            import ray

            pending_ref = ray.put(to_batch(*pending, self.dt_us, self.schema))
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
                if self.backend == "inline":
                    outs = [p.step_window(*pending) for p in self.parts]
                    t0 = time.perf_counter()
                    pending = merge(outs)
                else:
                    outs = ray.get([p.step_window.remote(pending_ref) for p in self.parts])
                    t0 = time.perf_counter()
                    pending = merge([from_batch(b, self.dt_us) for b in outs])
                    batch = to_batch(*pending, self.dt_us, self.schema)
                    pending_ref = ray.put(batch)
                    self.stats["bytes_exchanged"] += batch.nbytes
                self.stats["exchange_s"] += time.perf_counter() - t0
                self.stats["windows"] += 1
                self.stats["spikes_exchanged"] += len(pending[0])
                held.append(pending)
            done += todo
            yield _concat(held) if len(held) > 1 else held[0]

    def batches(self, duration_s: float, batch_ms: float = 10.0) -> Iterator[pa.RecordBatch]:
        """The spikes of `duration_s` as Arrow batches of about `batch_ms` each (t in µs, global neuron)."""
        per = max(1, int(round(batch_ms / (self.window * self.layout.dt_ms))))
        for steps, neurons in self.chunks(duration_s, per):
            yield to_batch(steps, neurons, self.dt_us, self.schema)

    def busy_s(self) -> list[float]:
        """Seconds each Ray actor spent computing (not waiting); empty for inline."""
        if self.backend != "ray":
            return []
        import ray

        return ray.get([p.busy.remote() for p in self.parts])

    def close(self) -> None:
        if self.backend == "ray":
            import ray

            for p in self.parts:
                ray.kill(p)
        self.parts = []
