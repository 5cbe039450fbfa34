"""The engine: partition-invariance (K = 1, 2, 4 bit-identical), connectivity rules, storage, Ray."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.brainsim.engine import Simulation
from cluster.brainsim.partition import Partition, compile_network
from cluster.brainsim.spec import Dist, External, NetworkSpec, Population, Projection


def mixed_network(seed: int = 3) -> NetworkSpec:
    """Every model and rule at once: CUBA, COBA and delta LIFs, Poisson and spike sources."""
    lif = dict(v_init_mv=(-60.0, -50.0), external=External(rate_hz=800.0, weight=2.0))
    return NetworkSpec(seed=seed, dt_ms=0.1, populations=[
        Population(name="cuba", size=120, model="lif_cuba", **lif),
        Population(name="coba", size=80, model="lif_coba", v_init_mv=(-60.0, -50.0),
                   g_e_init=Dist(dist="normal", mean=0.5, std=0.3), external=External(rate_hz=800.0, weight=0.3)),
        Population(name="delta", size=50, model="lif_delta", v_rest_mv=0.0, v_reset_mv=10.0, v_thresh_mv=20.0,
                   t_ref_ms=2.0, v_init_mv=(0.0, 20.0), external=External(rate_hz=20000.0, weight=0.2)),
        Population(name="noise", size=40, model="poisson", rate_hz=30.0),
        Population(name="stim", size=3, model="spike_source", spike_times_ms=[5.0, 10.0, 10.0, 42.3],
                   spike_neurons=[0, 1, 2, 0]),
    ], projections=[
        Projection(pre="cuba", post="cuba", p=0.1, weight=Dist(dist="normal", mean=1.5, std=0.5),
                   delay_ms=Dist(dist="uniform", low=0.5, high=3.0)),
        Projection(pre="coba", post="cuba", rule="fixed_indegree", indegree=10, weight=-4.0, delay_ms=0.8),
        Projection(pre="cuba", post="coba", p=0.05, weight=0.4, delay_ms=1.0),
        Projection(pre="coba", post="coba", p=0.1, weight=2.0, receptor="inh", delay_ms=0.5),
        Projection(pre="noise", post="delta", rule="fixed_indegree", indegree=5, weight=1.0, delay_ms=1.5),
        Projection(pre="delta", post="delta", rule="fixed_indegree", indegree=10, weight=-0.5, delay_ms=1.5,
                   autapses=False),
        Projection(pre="stim", post="delta", rule="one_to_one", weight=25.0, delay_ms=2.0),
    ])


def run(spec, actors, backend="inline", duration_s=0.2):
    sim = Simulation(spec, actors=actors, backend=backend).build()
    spikes = list(sim.windows(duration_s))
    info = sim.info()
    states = None
    if backend == "inline":
        states = np.concatenate([p.v for p in sim.parts])
    sim.close()
    steps = np.concatenate([s[0] for s in spikes])
    neurons = np.concatenate([s[1] for s in spikes])
    return steps, neurons, states, info


def test_partitionings_are_bit_identical():
    spec = mixed_network()
    s1, n1, v1, i1 = run(spec, 1)
    assert len(s1) > 200, "the network must be active for the comparison to mean anything"
    for k in (2, 4):
        sk, nk, vk, ik = run(spec, k)
        np.testing.assert_array_equal(sk, s1)
        np.testing.assert_array_equal(nk, n1)
        assert vk.tobytes() == v1.tobytes(), f"membrane potentials differ bitwise for K={k}"
        assert ik["synapses"] == i1["synapses"]


def test_seed_changes_the_run():
    s1, n1, _, _ = run(mixed_network(seed=3), 1, duration_s=0.05)
    s2, n2, _, _ = run(mixed_network(seed=4), 1, duration_s=0.05)
    assert len(s1) != len(s2) or not np.array_equal(n1, n2)


def test_spike_source_drives_its_target_after_the_delay():
    spec = NetworkSpec(dt_ms=0.1, populations=[
        Population(name="src", size=2, model="spike_source", spike_times_ms=[1.0, 3.0], spike_neurons=[1, 0]),
        Population(name="out", size=2, model="lif_delta", v_rest_mv=0.0, v_reset_mv=0.0, v_thresh_mv=10.0),
    ], projections=[Projection(pre="src", post="out", rule="one_to_one", weight=15.0, delay_ms=2.0)])
    steps, neurons, _, _ = run(spec, 1, duration_s=0.01)
    got = sorted(zip(steps.tolist(), neurons.tolist(), strict=True))
    # source neurons 1 and 0 fire at steps 10 and 30; their targets (2 + i) fire 20 steps later
    assert got == [(10, 1), (30, 0), (30, 3), (50, 2)]


def test_connection_rules_and_compact_storage():
    spec = NetworkSpec(seed=5, populations=[Population(name="a", size=400), Population(name="b", size=300)],
                       projections=[Projection(pre="a", post="b", rule="fixed_indegree", indegree=17),
                                    Projection(pre="b", post="a", p=0.05, delay_ms=Dist(dist="normal", mean=1.5,
                                                                                       std=0.5)),
                                    Projection(pre="a", post="a", rule="one_to_one", autapses=True)])
    layout = compile_network(spec)
    part = Partition(layout, 0, layout.n)
    rows = np.repeat(np.arange(layout.n), np.diff(part.indptr))
    post = part.tgt.astype(np.int64)
    a_to_b = (rows < 400) & (post >= 400)
    assert np.all(np.bincount(post[a_to_b] - 400, minlength=300) == 17)
    b_to_a = (rows >= 400) & (post < 400)
    expected = 400 * 300 * 0.05
    assert abs(b_to_a.sum() - expected) < 5 * np.sqrt(expected)
    one = (rows < 400) & (post < 400)
    np.testing.assert_array_equal(rows[one], post[one])
    delays = (part.dch[b_to_a] & 0x7F) + part.window  # stored as steps beyond the shortest delay
    assert part.window == 1 and delays.min() >= 1 and abs(delays.mean() - 15) < 1.0
    assert part.synapse_bytes() / part.synapses <= 12.0


def test_unknown_population_is_named():
    spec = NetworkSpec(populations=[Population(name="a", size=3)], projections=[Projection(pre="a", post="x")])
    with pytest.raises(ValueError, match="no population 'x'"):
        compile_network(spec)


def test_board_threads_are_bit_identical_to_one_partition():
    # the shared-memory board: every partition in its own thread, spikes merged per window
    # in (step, neuron) order inside each partition's Numba loop, chunks of 7 windows
    spec = mixed_network()
    s1, n1, v1, _ = run(spec, 1)
    for k in (2, 3):
        sim = Simulation(spec, actors=k, backend="threads").build()
        chunks = list(sim.chunks(0.2, 7))
        v = np.concatenate([p.v for p in sim.parts])
        waits = sim.partition_times()
        sim.close()
        np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), s1)
        np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), n1)
        assert v.tobytes() == v1.tobytes(), f"membrane potentials differ bitwise for K={k}"
        assert len(waits) == k and all(w["wait_s"] >= 0 for w in waits)


def test_a_partition_without_its_peer_gives_up_naming_it():
    from cluster.brainsim import exchange as x

    sim = Simulation(mixed_network(), actors=2, backend="threads").build()
    try:  # partition 1 never runs: partition 0 finishes window 0, then waits for 1's
        with pytest.raises(x.ExchangeStalled, match="waited for partition 1's window 0"):
            sim.parts[0].run_on_board(3, sim._board, 0, spin_us=10, timeout_s=0.05)
        sim._board.abort()  # an abort ends the wait at once, whatever the timeout
        with pytest.raises(x.ExchangeStalled):
            sim.parts[0].run_on_board(3, sim._board, 0, spin_us=10, timeout_s=60)
    finally:
        sim.close()


def test_ray_actors_match_inline(ray_session):
    import os

    spec = mixed_network()
    s1, n1, _, _ = run(spec, 1, duration_s=0.05)
    sim = Simulation(spec, actors=2, backend="ray").build()
    paths = list(sim._paths)
    assert all(os.path.exists(p) for p in paths) and len(paths) == 1  # one node: one board
    chunks = list(sim.chunks(0.05, 9))
    info, times = sim.info(), sim.partition_times()
    sim.close()
    assert info["backend"] == "ray" and info["actors"] == 2 and info["nodes"] == 1
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), s1)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), n1)
    assert all(t["busy_s"] > 0 for t in times)
    assert not any(os.path.exists(p) for p in paths), "the board file outlives the run"


def test_a_dead_actor_ends_the_run_with_an_error_naming_it(ray_session):
    import ray

    from cluster.brainsim.engine import PartitionLost

    sim = Simulation(NetworkSpec(model="brunel2000", scale=0.04, options={"indegree_e": 100}), actors=2,
                     backend="ray", timeout_s=30).build()
    try:
        gen = sim.chunks(5.0, 10)
        next(gen)
        ray.kill(sim.parts[1])
        with pytest.raises(PartitionLost, match="partition 1 .neurons 250-499. died"):
            for _ in gen:
                pass
    finally:
        sim.close()


def test_too_few_cpus_for_the_partitions_is_an_error_not_a_hang(ray_session):
    with pytest.raises(ValueError, match="actors=3 needs 3 CPUs"):
        Simulation(mixed_network(), actors=3, backend="ray").build()


def test_fused_single_partition_matches_window_exchange():
    spec = NetworkSpec(model="brunel2000", scale=0.04, options={"state": "AI", "indegree_e": 100})
    one = Simulation(spec).build()
    assert len(one.layout.src_steps) == 0
    fused = list(one.chunks(0.05, 7))  # one Numba call per 7 windows
    two = Simulation(spec, actors=2).build()
    stepped = list(two.windows(0.05))
    s1, n1 = (np.concatenate([c[i] for c in fused]) for i in (0, 1))
    s2, n2 = (np.concatenate([c[i] for c in stepped]) for i in (0, 1))
    assert len(s1) > 50
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(n1, n2)
    assert one.parts[0].v.tobytes() == np.concatenate([p.v for p in two.parts]).tobytes()


def test_initial_values_follow_their_distributions():
    spec = NetworkSpec(seed=5, populations=[
        Population(name="P", size=20_000, model="lif_coba", v_init_mv=Dist(dist="normal", mean=-65.0, std=5.0),
                   g_e_init=(1.0, 3.0), g_i_init={"dist": "normal", "mean": 20.0, "std": 12.0}),
    ])
    part = Simulation(spec).build().parts[0]
    assert abs(part.v.mean() + 65.0) < 0.2 and abs(part.v.std() - 5.0) < 0.2
    assert 1.0 <= part.ge.min() and part.ge.max() < 3.0 and abs(part.ge.mean() - 2.0) < 0.05
    assert abs(part.gi.mean() - 20.0) < 0.5 and abs(part.gi.std() - 12.0) < 0.5
    assert 0.03 < (part.gi < 0).mean() < 0.07  # the normal tail below zero (4.8 % expected) is kept


def zero_delay_network() -> NetworkSpec:
    """`mixed_network` with zero-delay synapses onto the CUBA and COBA populations (Brian2's default)."""
    spec = mixed_network()
    projs = list(spec.projections)
    projs[1] = projs[1].model_copy(update={"delay_ms": 0.0})  # coba -> cuba, inhibitory
    projs[2] = projs[2].model_copy(update={"delay_ms": 0.0})  # cuba -> coba
    return spec.model_copy(update={"projections": projs})


def test_zero_delays_are_partition_invariant_on_every_path():
    # window of one step, zero delays into the synaptic state: inline 1/2/4 partitions, the
    # fused single-partition loop and the shared-memory board all give the same spikes and v
    spec = zero_delay_network()
    layout = compile_network(spec)
    assert (layout.min_delay_steps, layout.window) == (0, 1)
    s1, n1, v1, _ = run(spec, 1)
    assert len(s1) > 200
    base, _, _, _ = run(mixed_network(), 1)
    assert len(base) != len(s1) or not np.array_equal(base, s1), "zero delays must change the dynamics"
    for k in (2, 4):
        sk, nk, vk, _ = run(spec, k)
        np.testing.assert_array_equal(sk, s1)
        np.testing.assert_array_equal(nk, n1)
        assert vk.tobytes() == v1.tobytes()
    sim = Simulation(spec, actors=2, backend="threads").build()
    chunks = list(sim.chunks(0.2, 7))
    v = np.concatenate([p.v for p in sim.parts])
    sim.close()
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), s1)
    assert v.tobytes() == v1.tobytes()


def test_a_zero_delay_acts_one_step_sooner_than_one_step_of_delay():
    # a spike source at step 10 onto COBA neurons: with a zero delay the conductance holds the
    # weight after step 10 and v moves at step 11 (Brian2's on_pre); with dt of delay, a step later
    def first_move(delay_ms):
        spec = NetworkSpec(dt_ms=0.1, populations=[
            Population(name="src", size=1, model="spike_source", spike_times_ms=[1.0], spike_neurons=[0]),
            Population(name="out", size=1, model="lif_coba", v_init_mv=(-60.0, -60.0), v_rest_mv=-60.0),
        ], projections=[Projection(pre="src", post="out", rule="one_to_one", weight=0.5, delay_ms=delay_ms)])
        sim = Simulation(spec).build()
        part = sim.parts[0]
        v = []
        empty = np.empty(0, np.int64)
        pending = (empty, empty)
        for _ in range(14):
            pending = part.step_window(*pending)
            v.append(part.v[1])
        return next(i + 1 for i, x in enumerate(v) if x != -60.0)

    assert (first_move(0.0), first_move(0.1)) == (11, 12)


def test_zero_delays_onto_models_without_a_synaptic_state_are_refused():
    spec = NetworkSpec(populations=[Population(name="d", size=3, model="lif_delta")],
                       projections=[Projection(pre="d", post="d", weight=1.0, delay_ms=0.0)])
    with pytest.raises(ValueError, match=r"d->d: a zero delay .* 'd' is lif_delta"):
        compile_network(spec)


def test_board_calls_grow_but_chunks_keep_their_windows():
    # a board backend runs many chunks per call once calls are quick (a Ray round trip and a
    # re-synchronisation each), and splits them back: every chunk holds exactly its windows'
    # spikes, also when a second run continues the first
    spec = mixed_network()
    s1, n1, _, _ = run(spec, 1)
    sim = Simulation(spec, actors=2, backend="threads").build()
    sim.CALL_S = 10.0  # every call is "quick": each grows up to 8x the last
    w = sim.window
    chunks = list(sim.chunks(0.1, 7)) + list(sim.chunks(0.1, 7))
    sim.close()
    per_run = int(round(100 / (w * 0.1)))  # windows in 0.1 s
    spans = [(r * per_run + a, r * per_run + min(a + 7, per_run)) for r in (0, 1) for a in range(0, per_run, 7)]
    assert len(chunks) == len(spans) and len(spans) > 40
    for (steps, _), (a, b) in zip(chunks, spans, strict=True):
        assert len(steps) == 0 or (steps.min() > a * w and steps.max() <= b * w), (a, b)
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), s1)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), n1)
