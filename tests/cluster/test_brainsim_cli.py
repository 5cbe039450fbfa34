"""What a user runs: the CLI writes a readable recording and a report; the source runs in a graph."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.brainsim.engine import Simulation
from cluster.brainsim.simulate import load_config
from cluster.brainsim.spec import NetworkSpec
from pipeline import run
from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.graph import Graph
from pipeline.recording import Recording
from pipeline.schemas import column, fact


def test_cli_writes_recording_report_and_plots(tmp_path):
    out = tmp_path / "run"
    code = main(["brainsim", "configs/brunel.yaml", "--scale", "0.04", "--duration", "100ms", "--out", str(out)])
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["duration_s"] == pytest.approx(0.1) and rep["real_time_factor"] > 0
    assert (out / "raster.png").stat().st_size > 1000 and (out / "rates.png").stat().st_size > 1000
    rec = Recording(out)
    assert sorted(rec.streams) == ["brainsim.E", "brainsim.I"]
    table = rec.table("brainsim.E")
    assert fact(rec.schema("brainsim.E"), "size") == 400
    assert table.num_rows == rep["populations"]["E"]["spikes"] + int(
        (table.column("t").to_numpy() < rep["transient_ms"] * 1e3).sum())
    assert table.column("neuron").to_numpy().max() < 400


def test_cli_rejects_a_bad_duration(capsys):
    assert main(["brainsim", "configs/cuba.yaml", "--duration", "ten seconds"]) == 2
    assert "--duration" in capsys.readouterr().err


def test_configs_load():
    for name, model in (("brunel", "brunel2000"), ("cuba", "vogels_abbott_cuba")):
        spec, params = load_config(f"configs/{name}.yaml")
        assert spec.model == model and params["duration_s"] > 0
    with pytest.raises(ConfigError):
        load_config("configs/does-not-exist.yaml")


def test_source_streams_the_same_spikes_into_a_graph():
    net = {"model": "brunel2000", "scale": 0.04, "options": {"state": "AI", "indegree_e": 100}}
    g = Graph("closed-loop")
    g.add("brain", "brainsim", network=net, duration_s=0.05, population="I")
    g.add("count", "count_sink", inputs={"in": "brain.out"})
    result = run(g)
    sim = Simulation(NetworkSpec(**net))
    want = np.concatenate([column(b, "neuron") for b in sim.batches(0.05)])
    lo, hi = sim.layout.population_of("I")
    assert result.results["count"]["items"] == int(((want >= lo) & (want < hi)).sum()) > 0


def test_graph_yaml_with_brainsim_runs():
    g = Graph.from_yaml("configs/cuba.yaml", overrides=["brain.duration_s=0.05"])
    result = run(g)
    spec, _ = load_config("configs/cuba.yaml")
    want = sum(b.num_rows for b in Simulation(spec).batches(0.05))
    assert want > 100  # CUBA's first 50 ms are active: the count means something
    assert result.results["count"]["items"] == want and result.results["count"]["batches"] >= 1


def test_set_overrides_keys_under_the_brainsim_params(tmp_path):
    spec, params = load_config("configs/brunel.yaml", ["network.scale=0.04", "brain.params.duration_s=0.2",
                                                       "network.options.state=SR", "actors=2"])
    assert spec.scale == 0.04 and spec.options == {"state": "SR"} and params["duration_s"] == 0.2
    assert params["actors"] == 2
    with pytest.raises(ConfigError, match="network.scal"):
        load_config("configs/brunel.yaml", ["network.scal=0.1"])
    with pytest.raises(ConfigError, match="network.scale"):
        load_config("configs/brunel.yaml", ["network.scale=-1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("configs/brunel.yaml", ["network.scale"])


def test_cli_set_and_its_aliases_give_the_same_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["brainsim", "configs/brunel.yaml", "--set", "network.scale=0.04", "--set", "network.seed=3",
                 "--duration", "60ms", "--out", str(a)]) == 0
    printed = capsys.readouterr().out
    assert "the first 30 ms (warm-up transient) are dropped" in " ".join(printed.split())
    assert main(["brainsim", "configs/brunel.yaml", "--scale", "0.04", "--seed", "3", "--duration", "60ms",
                 "--out", str(b)]) == 0
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert ra["seed"] == rb["seed"] == 3 and ra["neurons"] == rb["neurons"] == 500
    assert ra["populations"] == rb["populations"] and ra["transient_ms"] == 30.0
    assert main(["brainsim", "configs/brunel.yaml", "--set", "network.sede=3", "--duration", "10ms",
                 "--out", str(a)]) == 2
    assert "network.sede" in capsys.readouterr().err
