"""Connectome and evaluation scores: planted ensembles come back; scores match references."""

import numpy as np
import pytest

import pipeline
from operators.calcium.evaluate import adjusted_rand, spike_f1
from pipeline import schemas as sch
from pipeline.graph import Graph
from pipeline.testing import CollectSink, ListSource


def _planted(n=24, t=1200, seed=0):
    """Activity where ensemble e (6 neurons) co-fires during epochs e, e+3, ..."""
    rng = np.random.default_rng(seed)
    x = (rng.random((t, n)) < 0.01).astype(float)
    ens = np.repeat(np.arange(4), 6)[:n]
    ens[18:] = -1
    epoch = 200
    for i in range(t):
        e = (i // epoch) % 3
        if rng.random() < 0.06:
            x[i, ens == e] += 1
    return x, ens, epoch


def test_connectome_recovers_planted_ensembles():
    x, ens, epoch = _planted()
    t = (np.arange(len(x)) * 1e6 / 30).astype(np.int64)
    schema = sch.samples_schema([f"roi{i}" for i in range(x.shape[1])], 30.0)
    src = ListSource.of([sch.samples_batch(t[a : a + 25], x[a : a + 25], schema) for a in range(0, len(t), 25)])
    g = Graph("t")
    g.add("src", src)
    g.add("conn", "calcium_connectome", inputs={"in": "src.out"}, rank=3, window_frames=60, step_frames=30, min_windows=10)
    g.add("out", CollectSink(), inputs={"in": "conn.out"})
    res = pipeline.run(g).results["out"]["batches"]
    out = np.concatenate([np.column_stack([sch.column(b, f"comp{k}") for k in range(3)]) for b in res])
    assert out.shape == (len(t), 3) and out[-200:].max() > 0
    # refit offline on the same windows (the operator's own functions) and check membership
    from operators.calcium.connectome import communities, factorise
    from operators.calcium.kernels import window_affinity

    wins = [window_affinity(np.ascontiguousarray(x[a : a + 60]), 1.0) for a in range(0, len(x) - 59, 30)]
    tensor = np.stack(wins, axis=2)
    a, c = factorise(tensor, 3)
    found = communities(tensor, a, c)
    for e in range(3):
        truth = ens == e
        best = max(adjusted_rand(truth, np.isin(np.arange(len(ens)), m)) for m in found)
        assert best >= 0.9


def test_adjusted_rand_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.integers(0, 3, 40), rng.integers(0, 4, 40)
        assert adjusted_rand(a, b) == pytest.approx(metrics.adjusted_rand_score(a, b))
    assert adjusted_rand([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0


def test_spike_f1_counts_matches_within_one_frame():
    truth = np.zeros((20, 1))
    truth[[3, 10, 15], 0] = 1
    inferred = np.zeros((20, 1))
    inferred[[4, 12, 15, 18], 0] = 0.7  # 4 and 15 match; 12 and 18 do not
    assert spike_f1(inferred, truth) == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))


def test_match_components_keeps_indices_across_refits():
    from operators.calcium.connectome import match_components

    prev = np.eye(6)[:, :3] + 0.01
    new = prev[:, [2, 0, 1]] * 2.0
    order = match_components(prev, new)
    np.testing.assert_allclose(new[:, order], prev * 2.0)
