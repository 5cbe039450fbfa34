"""The shipped config builds, and the eval runner scores a small movie end to end."""

from pathlib import Path

import yaml

from pipeline.graph import Graph

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "calcium_connectome.yaml"


def test_shipped_config_builds_with_its_eval_runner():
    g = Graph.from_yaml(CONFIG)
    assert {n.op.name for n in g.nodes.values()} >= {"calcium_synthetic", "calcium_motion", "calcium_deconv", "calcium_connectome", "calcium_trigger"}
    assert g.config["eval"]["runner"] == "operators.calcium.evaluate:run"
    assert g.nodes["stim"].op.actuator


def test_eval_runner_scores_a_small_movie(tmp_path):
    from operators.calcium.evaluate import run

    config = yaml.safe_load(CONFIG.read_text())
    nodes = config["nodes"]
    nodes["movie"]["params"].update(height=64, width=64, n_neurons=12, n_frames=600, n_ensembles=2, ensemble_size=4, epoch_s=5.0, radius_px=3.5)
    nodes["traces"]["params"].update(n_rois=12, warmup_frames=300, radius_px=3.5)
    nodes["connectome"]["params"].update(rank=2, min_windows=6, refit_every=5)
    config["eval"].update(trace_neurons=20, trace_frames=1000)
    report = run(CONFIG, config, tmp_path, quick=False)
    assert report["traces"]["corr"] >= 0.8  # the OASIS setting at sigma 0.3
    assert report["motion"]["residual_rms_px"] < 0.5 < report["motion"]["raw_rms_px"]
    assert report["rois"]["matched"] >= 10
    assert report["spikes"]["corr"] > 0.8
    assert report["ensembles"]["per_epoch"] and report["ensembles"]["ari_mean"] > 0.8
    for png in ("mean_image_rois.png", "traces_spikes.png", "community_time_courses.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert (tmp_path / "report.json").exists()
