"""Every pipeline config shipped in configs/ validates as it stands."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import Graph
from pipeline.graph import read_yaml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
PIPELINES = [c for c in CONFIGS if isinstance(read_yaml(c), dict) and "nodes" in read_yaml(c)]


def test_configs_are_found():
    assert len(PIPELINES) >= 10


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_config_validates(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # configs that write out/ do so in a scratch folder
    graph = Graph.from_yaml(path)
    assert graph.sources and graph.sinks
    assert all(graph.schemas.get((e.src, e.src_port)) is not None for e in graph.edges())
