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


def test_connectome_recovers_planted_ensembles(tmp_path):
    x, ens, epoch = _planted()
    t = (np.arange(len(x)) * 1e6 / 30).astype(np.int64)
    schema = sch.samples_schema([f"roi{i}" for i in range(x.shape[1])], 30.0)
    src = ListSource.of([sch.samples_batch(t[a : a + 25], x[a : a + 25], schema) for a in range(0, len(t), 25)])
    report = tmp_path / "connectome.npz"
    g = Graph("t")
    g.add("src", src)
    g.add("conn", "calcium_connectome", inputs={"in": "src.out"}, rank=3, window_frames=60, step_frames=30,
          min_windows=10, refit_every=10, save_report=str(report))
    g.add("out", CollectSink(), inputs={"in": "conn.out"})
    res = pipeline.run(g).results["out"]["batches"]
    out = np.concatenate([np.column_stack([sch.column(b, f"comp{k}") for k in range(3)]) for b in res])
    assert out.shape == (len(t), 3)
    # What the stream carries: per frame, each component's ensemble mean of the operator's
    # causal 3-frame box average. Its first fit is at window 10 (frame 330), refits at 20 and
    # 30 (frames 630, 930). Once every ensemble has fired (after frame 600), each emitted
    # component must be one planted ensemble's time course, one to one.
    smooth = np.stack([x[max(0, i - 2) : i + 1].sum(0) / 3 for i in range(len(x))])
    truth = np.stack([smooth[:, ens == e].mean(1) for e in range(3)], axis=1)
    first_fit, refit = 330, 630
    assert not out[:first_fit].any()  # nothing is claimed before the first factorisation

    def assignment(a, b):
        corr = np.corrcoef(out[a:b].T, truth[a:b].T)[:3, 3:]
        return corr.argmax(1), corr.max(1)

    late, late_corr = assignment(refit, len(x))
    assert sorted(late) == [0, 1, 2], late  # three components, three distinct ensembles
    assert late_corr.min() > 0.99, late_corr
    # a component keeps its ensemble across refits (the trigger depends on it)
    early, early_corr = assignment(first_fit, refit)
    assert early_corr[:2].min() > 0.9 and list(early[:2]) == list(late[:2]), (early, late)
    # the members it reports are exactly the planted ensembles (neurons 18..23 belong to none)
    saved = np.load(report)
    members = [set(np.flatnonzero(m)) for m in saved["members"]]
    assert sorted(map(sorted, members)) == [list(range(6 * e, 6 * e + 6)) for e in range(3)]
    assert int(saved["fits"]) >= 3


def test_adjusted_rand_matches_sklearn():
    from sklearn import metrics  # the reference implementation (a dev extra)

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
