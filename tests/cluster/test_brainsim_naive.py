"""The fast engine against a slow, obviously correct twin on a tiny network.

The twin steps every neuron in plain Python with the same propagators and delivers each
spike straight into a dict of future arrivals; it shares only the synapse table and the
initial potentials with the engine.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from cluster.brainsim.engine import Simulation
from cluster.brainsim.spec import NetworkSpec, Population, Projection


def tiny(first_delay_ms: float = 0.3) -> NetworkSpec:
    return NetworkSpec(seed=7, dt_ms=0.1, populations=[
        Population(name="E", size=24, model="lif_cuba", v_rest_mv=-49.0, v_init_mv=(-60.0, -50.0)),
        Population(name="D", size=10, model="lif_delta", v_rest_mv=0.0, v_reset_mv=0.0, v_thresh_mv=15.0,
                   t_ref_ms=1.0),
    ], projections=[
        Projection(pre="E", post="E", p=0.2, weight=2.0, delay_ms=first_delay_ms),
        Projection(pre="E", post="E", p=0.1, weight=-6.0, delay_ms=0.5),
        Projection(pre="E", post="D", rule="fixed_indegree", indegree=6, weight=4.0, delay_ms=1.0),
    ])


def naive(spec: NetworkSpec, sim: Simulation, v0: np.ndarray, n_steps: int) -> list[tuple[int, int]]:
    part = sim.parts[0]
    pops = spec.populations
    dt = spec.dt_ms
    v = v0.copy()
    ge, gi = np.zeros_like(v), np.zeros_like(v)
    refr = np.zeros(len(v), int)
    arrivals: dict = defaultdict(lambda: np.zeros((2, len(v))))
    spikes = []  # a stored delay is steps beyond the shortest (part.d_base)
    for t in range(n_steps):
        inp = arrivals.pop(t + 1, np.zeros((2, len(v))))
        fired = []
        for i in range(len(v)):
            p = pops[0] if i < pops[0].size else pops[1]
            p22 = math.exp(-dt / p.tau_m_ms)
            if p.model == "lif_cuba":
                p21 = [tau / (tau - p.tau_m_ms) * (math.exp(-dt / tau) - p22) for tau in (p.tau_syn_e_ms,
                                                                                          p.tau_syn_i_ms)]
                if refr[i] > 0:
                    refr[i] -= 1
                else:
                    v[i] = p.v_rest_mv + (v[i] - p.v_rest_mv) * p22 + ge[i] * p21[0] + gi[i] * p21[1]
                ge[i] = ge[i] * math.exp(-dt / p.tau_syn_e_ms) + inp[0, i]
                gi[i] = gi[i] * math.exp(-dt / p.tau_syn_i_ms) + inp[1, i]
            else:
                if refr[i] > 0:
                    refr[i] -= 1
                else:
                    v[i] = p.v_rest_mv + (v[i] - p.v_rest_mv) * p22 + inp[0, i] + inp[1, i]
            if refr[i] == 0 and v[i] >= p.v_thresh_mv:
                v[i] = p.v_reset_mv
                refr[i] = round(p.t_ref_ms / dt)
                fired.append(i)
        for j in fired:
            spikes.append((t + 1, j))
            for s in range(part.indptr[j], part.indptr[j + 1]):
                code = int(part.dch[s])
                arrive = t + 1 + part.d_base + (code & 0x7F)
                if arrive == t + 1:  # a zero delay: into the synaptic state, before the next step
                    (gi if code >> 7 else ge)[part.tgt[s]] += float(part.w[s])
                else:
                    arrivals[arrive][code >> 7, part.tgt[s]] += float(part.w[s])
    return spikes


@pytest.mark.parametrize("first_delay_ms", [0.3, 0.0], ids=["delays", "zero-delay"])
def test_engine_matches_the_naive_twin(first_delay_ms):
    spec = tiny(first_delay_ms)
    sim = Simulation(spec).build()
    v0 = sim.parts[0].v.copy()
    fast = [(int(s), int(n)) for c in sim.chunks(0.1, 4) for s, n in zip(*c, strict=True)]
    slow = naive(spec, Simulation(spec).build(), v0, 1000)
    assert len(slow) > 20
    assert fast == slow


def test_external_drive_draws_the_counts_of_the_plain_poisson_inversion():
    # the table search in _external against poisson_draw (exp and running products per draw),
    # on the same random streams: identical counts, tails included
    from cluster.brainsim import kernels as k

    for lam in (0.02, 0.8, 2.0, 7.5, 40.0):
        rng = np.array([k.stream_seed(9, 1, i) for i in range(20_000)], np.uint64)
        fast = np.zeros(len(rng))
        k._external(rng.copy(), fast, 0, len(rng), lam, 1.0)
        slow = np.array([k.poisson_draw(rng, i, lam) for i in range(len(rng))], float)
        np.testing.assert_array_equal(fast, slow)
        assert abs(slow.mean() - lam) < 5 * math.sqrt(lam / len(rng)), lam
