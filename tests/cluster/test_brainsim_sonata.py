"""SONATA networks: NEST's 300-point-neuron example read and run, the alpha-current LIF, bad input.

The reference rates are NEST 3.10's on the same network (built from the arrays we read, by
benchmarks/bench_brainsim.py: `sonata_vs_nest`), 1.5 s at dt 0.01 ms, after 100 ms.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cluster.brainsim import sonata
from cluster.brainsim.engine import Simulation
from cluster.brainsim.simulate import load_config, simulate
from cluster.brainsim.spec import NetworkSpec, Population, Projection
from pipeline.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "sonata" / "300_pointneurons"
SIM_CONFIG = EXAMPLE / "simulation_config.json"
# NEST 3.10, iaf_psc_alpha, the same arrays (benchmarks/results/brainsim.json: sonata.per_node_type)
NEST_HZ = {"internal-Scnn1a": 11.554, "internal-Rorb": 23.170, "internal-Nr5a1": 64.679, "internal-PV1": 39.0,
           "internal-PV2": 115.929, "external-100": 14.121}


def test_the_example_reads_as_nest_builds_it():
    circuit = sonata.read(SIM_CONFIG)
    spec = circuit.spec
    assert spec.dt_ms == 0.01 and circuit.duration_s == 1.5
    sizes = {p.name: p.size for p in spec.populations}
    assert sizes == {"internal-Scnn1a": 80, "internal-Rorb": 80, "internal-Nr5a1": 80, "internal-PV1": 30,
                     "internal-PV2": 30, "external-100": 100}
    pv1 = next(p for p in spec.populations if p.name == "internal-PV1")
    # 472912177_point.json, with NEST's defaults for the rest (tau_syn 2 ms, V_m -70 mV)
    assert (pv1.model, pv1.c_m_pf, pv1.tau_m_ms, pv1.v_rest_mv, pv1.v_thresh_mv, pv1.v_reset_mv, pv1.t_ref_ms) == \
        ("lif_alpha", 180.0, 22.2, -82.0, -35.0, -50.0, 3.0)
    assert pv1.tau_syn_e_ms == 2.0 and pv1.v_init_mv == (-70.0, -70.0)
    ext = next(p for p in spec.populations if p.name == "external-100")
    assert ext.model == "spike_source" and len(ext.spike_times_ms) == 4334
    edges = sum(len(pr.sources) for pr in spec.projections)
    assert edges == 27588 + 20844
    delays = {(pr.pre.split("-")[0], pr.post.split("-")[0]): set(pr.delays_ms) for pr in spec.projections}
    assert delays[("internal", "internal")] == {2.0}  # the edge types' delay column
    assert delays[("external", "internal")] == {1.0}  # no delay given: NEST's default
    inh = [pr for pr in spec.projections if pr.receptor == "inh"]
    assert inh and all(pr.pre in ("internal-PV1", "internal-PV2") and max(pr.weights) < 0 for pr in inh)


def test_the_example_runs_at_nests_rates():
    rep = simulate(NetworkSpec(sonata=str(SIM_CONFIG)), 1.5)
    assert rep["neurons"] == 400 and rep["synapses"] == 48432 and rep["dt_ms"] == 0.01
    for name, nest_hz in NEST_HZ.items():
        assert rep["populations"][name]["rate_hz"] == pytest.approx(nest_hz, rel=0.05), name


def test_partitions_stay_bit_identical_with_alpha_neurons_and_explicit_edges():
    spec = NetworkSpec(sonata=str(SIM_CONFIG))
    one = list(Simulation(spec).windows(0.1))
    sim = Simulation(spec, actors=3, backend="threads").build()
    three = list(sim.chunks(0.1, 13))
    sim.close()
    for i in (0, 1):
        a, b = np.concatenate([c[i] for c in one]), np.concatenate([c[i] for c in three])
        np.testing.assert_array_equal(a, b)
    assert len(np.concatenate([c[0] for c in one])) > 500


def test_cli_and_a_yaml_network_key_read_sonata(tmp_path):
    out = tmp_path / "run"
    assert main(["brainsim", str(SIM_CONFIG), "--duration", "200ms", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["duration_s"] == pytest.approx(0.2) and rep["populations"]["internal-Nr5a1"]["spikes"] > 0
    spec, params = load_config(SIM_CONFIG)
    assert params["duration_s"] == 1.5 and spec.sonata == str(SIM_CONFIG)
    shutil.copytree(EXAMPLE, tmp_path / "net")
    (tmp_path / "brain.yaml").write_text("nodes:\n  brain:\n    op: brainsim\n    params:\n"
                                         "      duration_s: 0.05\n      network: {sonata: net/simulation_config.json}\n"
                                         "  count: {op: count_sink, inputs: {in: brain.out}}\n")
    spec, params = load_config(tmp_path / "brain.yaml")
    assert Path(spec.sonata) == (tmp_path / "net" / "simulation_config.json").resolve()
    assert spec.expanded().dt_ms == 0.01 and params["duration_s"] == 0.05


def test_an_alpha_psc_moves_v_as_the_closed_form_says():
    # one input spike of w pA at t0 into a neuron at rest: I(t) = w e/tau_s t exp(-t/tau_s) and
    # v(t) - E_L = w e a / C (exp(-a t)(t/c - 1/c^2) + exp(-b t)/c^2), a = 1/tau_s, b = 1/tau_m, c = b - a
    w, c_m, tau_m, tau_s, dt = 500.0, 250.0, 10.0, 2.0, 0.1
    spec = NetworkSpec(dt_ms=dt, populations=[
        Population(name="in", size=1, model="spike_source", spike_times_ms=[1.0], spike_neurons=[0]),
        Population(name="n", size=1, model="lif_alpha", c_m_pf=c_m, tau_m_ms=tau_m, tau_syn_e_ms=tau_s,
                   v_rest_mv=-70.0, v_thresh_mv=0.0, v_reset_mv=-70.0),
    ], projections=[Projection(pre="in", post="n", rule="one_to_one", weight=w, delay_ms=1.0)])
    part = Simulation(spec).build().parts[0]
    assert part.window == 10  # the only delay, 1 ms
    pending = (np.empty(0, np.int64), np.empty(0, np.int64))
    a, b = 1.0 / tau_s, 1.0 / tau_m
    c = b - a
    moved = 0
    for k_win in range(100):
        pending = part.step_window(*pending)
        # the spike (step 10) arrives at step 20, adds to dI there and moves v from step 21 on
        t = (10 * (k_win + 1) - 20) * dt
        want = 0.0 if t <= 0 else w * math.e * a / c_m * (math.exp(-a * t) * (t / c - 1 / c**2)
                                                          + math.exp(-b * t) / c**2)
        assert part.v[1] + 70.0 == pytest.approx(want, rel=1e-9, abs=1e-12), t
        moved += want > 0.5
    assert moved > 20  # v stayed over 0.5 mV above rest for tens of ms: the comparison means something


def _copy(tmp_path) -> Path:
    dst = tmp_path / "net"
    shutil.copytree(EXAMPLE, dst)
    return dst


def test_an_edge_index_out_of_range_names_the_file_and_field(tmp_path):
    net = _copy(tmp_path)
    f = net / "network" / "internal_internal_edges.h5"
    with h5py.File(f, "r+") as h5:
        h5["edges/internal_to_internal/source_node_id"][7] = 300
    with pytest.raises(sonata.SonataError, match=r"internal_internal_edges.h5: edges/internal_to_internal/"
                                                 r"source_node_id: node id 300 \(edge 7\)"):
        sonata.read(net / "simulation_config.json")


def test_a_missing_population_names_the_file_and_field(tmp_path):
    net = _copy(tmp_path)
    f = net / "network" / "external_internal_edges.h5"
    with h5py.File(f, "r+") as h5:
        h5["edges/external_to_internal/source_node_id"].attrs["node_population"] = "thalamus"
    with pytest.raises(sonata.SonataError, match="external_internal_edges.h5: edges/external_to_internal/"
                                                 "source_node_id: node population 'thalamus'"):
        sonata.read(net / "simulation_config.json")


def test_an_unknown_model_names_the_file_and_field(tmp_path):
    net = _copy(tmp_path)
    types = net / "network" / "internal_node_types.csv"
    types.write_text(types.read_text().replace("nest:iaf_psc_alpha", "nest:hh_psc_alpha", 1))
    with pytest.raises(sonata.SonataError, match="internal_node_types.csv: model_template: 'nest:hh_psc_alpha'"):
        sonata.read(net / "simulation_config.json")
    types.write_text(types.read_text().replace("point_process", "biophysical", 1))
    with pytest.raises(sonata.SonataError, match="model_type: 'biophysical'"):
        sonata.read(net / "simulation_config.json")


def test_a_broken_file_is_named(tmp_path):
    net = _copy(tmp_path)
    (net / "network" / "internal_nodes.h5").write_bytes(b"not hdf5")
    with pytest.raises(sonata.SonataError, match="internal_nodes.h5: nodes_file: cannot open as HDF5"):
        sonata.read(net / "simulation_config.json")
    (net / "circuit_config.json").write_text("{ nope")
    with pytest.raises(sonata.SonataError, match="circuit_config.json: json: malformed at line 1"):
        sonata.read(net / "simulation_config.json")
    assert main(["brainsim", str(net / "simulation_config.json"), "--duration", "10ms",
                 "--out", str(tmp_path / "o")]) == 2
