"""Partitions on two Ray nodes (a real two-node cluster on localhost): one shared-memory board
per node, windows carried between the boards by the TCP bridge; the same spikes bit for bit."""

from __future__ import annotations

import numpy as np

from cluster.brainsim.engine import Simulation
from cluster.brainsim.spec import NetworkSpec, Population, Projection


def net() -> NetworkSpec:
    """Brunel AI at a small size, plus spike sources: every way a spike is made crosses nodes."""
    spec = NetworkSpec(model="brunel2000", scale=0.04, seed=5, options={"state": "AI", "indegree_e": 100}).expanded()
    cue = Population(name="cue", size=4, model="spike_source", spike_times_ms=[3.0, 3.0, 7.5, 20.0],
                     spike_neurons=[3, 1, 0, 2])
    return spec.model_copy(update={"populations": [*spec.populations, cue], "projections": [
        *spec.projections, Projection(pre="cue", post="I", rule="fixed_indegree", indegree=2, weight=30.0)]})


def test_two_nodes_give_the_spikes_of_one_partition_bit_for_bit(multinode):
    spec = net()
    one = Simulation(spec).build()
    want = list(one.windows(0.1))
    sim = Simulation(spec, actors=2, backend="ray").build()
    try:
        got = list(sim.chunks(0.1, 11))
        info = sim.info()
        nodes = set(sim.nodes)
    finally:
        sim.close()
    assert info["nodes"] == 2 and nodes == {multinode.head_id, multinode.worker_id}
    assert len(sim._paths) == 2  # one board per node
    for i in (0, 1):
        a, b = np.concatenate([c[i] for c in want]), np.concatenate([c[i] for c in got])
        np.testing.assert_array_equal(a, b)
    assert len(np.concatenate([c[0] for c in want])) > 200
