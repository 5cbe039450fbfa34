"""The SSVEP loop gives the same commands under the local and the Ray executors."""

from pathlib import Path

import pytest

from operators.eeg.synth import SynthSpec, synth_eeg, write_edf
from pipeline import run
from pipeline.graph import Graph

ray = pytest.importorskip("ray")
CONFIG = Path(__file__).parents[3] / "configs" / "ssvep_wheelchair.yaml"


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_local_and_ray_issue_the_same_commands(tmp_path, ray_cluster):
    path = write_edf(synth_eeg(SynthSpec(n_trials=3, seed=15, idle_s=2.0)), tmp_path / "r.edf")
    g = Graph.from_yaml(CONFIG, overrides=[f"src.params.path={path}", "src.params.pacing=max",
                                           "src.params.batch_s=0.5"])
    local, remote = run(g), run(g, executor="ray")

    def key(res):
        return [(c["t_us"], c["command"], c["reason"]) for c in res.results["wheelchair"]["issued"]]

    assert key(local) and key(local) == key(remote)
    assert local.results["decoder"] == remote.results["decoder"]
