"""The `brainsim` pipeline source: a simulated network streaming its spikes into a graph.

Pacing is the source's (`pacing: realtime` follows biological time, `max` goes as fast as
the simulation runs), so a simulated brain can drive a downstream controller in closed loop.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cluster.brainsim.spec import NetworkSpec
from pipeline import schemas as sch
from pipeline.operator import Source, SourceParams, register


class BrainsimParams(SourceParams):
    network: NetworkSpec = Field(default_factory=lambda: NetworkSpec(model="brunel2000", scale=0.1))
    duration_s: float = Field(1.0, gt=0, description="biological time to simulate")
    actors: int = Field(1, ge=1, description="partitions (Ray actors when > 1)")
    backend: Literal["auto", "inline", "threads", "ray"] = Field(
        "auto", description="auto: ray when actors > 1; threads: partitions as threads of this process")
    address: str | None = Field(None, description="Ray cluster to join (backend ray); default a local one")
    batch_ms: float = Field(10.0, gt=0, description="biological time per emitted batch")
    population: str | None = Field(None, description="stream only this population (local indices)")


@register
class Brainsim(Source):
    """Simulates a spiking network and emits its spikes (global neuron index, or one population's)."""

    name = "brainsim"
    outputs = {"out": "spikes"}
    Params = BrainsimParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self._layout = None

    def _range(self):
        from cluster.brainsim.partition import compile_network

        if self._layout is None:
            self._layout = compile_network(self.params.network)
        layout = self._layout
        if self.params.population is None:
            return "network", 0, layout.n
        if self.params.population not in layout.names:
            raise ValueError(f"population '{self.params.population}' is not one of {', '.join(layout.names)}")
        return (self.params.population, *layout.population_of(self.params.population))

    def schemas(self, inputs):
        name, lo, hi = self._range()
        return {"out": sch.spikes_schema(name, hi - lo)}

    def generate(self):
        from cluster.brainsim.engine import Simulation

        p = self.params
        name, lo, hi = self._range()
        schema = sch.spikes_schema(name, hi - lo)
        backend = p.backend if p.backend != "auto" else ("ray" if p.actors > 1 else "inline")
        sim = Simulation(p.network, actors=p.actors, backend=backend, address=p.address)
        try:
            for batch in sim.batches(p.duration_s, p.batch_ms):
                t = sch.column(batch, "t")
                neuron = sch.column(batch, "neuron")
                if p.population is not None:
                    sel = (neuron >= lo) & (neuron < hi)
                    t, neuron = t[sel], neuron[sel] - lo
                yield sch.spikes_batch(t, neuron, schema)
        finally:
            sim.close()
