"""The calcium operators in graphs: sources, bad input, motion, deconvolution, trigger."""

import numpy as np
import pytest

import pipeline
from operators.calcium import MovieParams, generate, write_hdf5, write_tiff
from pipeline import schemas as sch
from pipeline.errors import ConfigError, OperatorError
from pipeline.graph import Graph
from pipeline.testing import CollectSink, ListSource

SMALL = dict(height=48, width=48, n_neurons=8, n_frames=120, radius_px=3.0, n_ensembles=1,
             ensemble_size=4, epoch_s=2.0, motion_px=1.0, seed=3)


@pytest.fixture(scope="module")
def movie():
    return generate(MovieParams(**SMALL))


def _frames(batches):
    t = np.concatenate([sch.column(b, "t") for b in batches])
    return t, np.concatenate([sch.frames_view(b) for b in batches])


def _run_source(op, **params):
    g = Graph("t")
    g.add("src", op, **params)
    g.add("out", CollectSink(), inputs={"in": "src.out"})
    return _frames(pipeline.run(g).results["out"]["batches"])


@pytest.mark.parametrize("bigtiff", [False, True])
def test_tiff_source_streams_the_movie(tmp_path, movie, bigtiff):
    path = write_tiff(tmp_path / "m.tif", movie, bigtiff=bigtiff)
    t, frames = _run_source("calcium_tiff", path=str(path), rate_hz=30.0, batch_frames=7, shape=(48, 48), dtype="float32")
    np.testing.assert_array_equal(frames, movie.frames)
    np.testing.assert_array_equal(t, movie.t_us)


def test_hdf5_source_streams_the_movie_with_timestamps(tmp_path, movie):
    path = write_hdf5(tmp_path / "m.h5", movie)
    t, frames = _run_source("calcium_hdf5", path=str(path), batch_frames=16)
    np.testing.assert_array_equal(frames, movie.frames)
    np.testing.assert_array_equal(t, movie.t_us)


def test_synthetic_source_matches_generator(movie):
    t, frames = _run_source("calcium_synthetic", batch_frames=50, **SMALL)
    np.testing.assert_array_equal(frames, movie.frames)


@pytest.mark.parametrize("field,value,words", [("shape", (64, 64), "expects shape"), ("dtype", "uint16", "expects uint16")])
def test_tiff_of_the_wrong_layout_is_a_config_error(tmp_path, movie, field, value, words):
    path = write_tiff(tmp_path / "m.tif", movie)
    g = Graph("t")
    with pytest.raises(ConfigError, match=words):
        g.add("src", "calcium_tiff", path=str(path), **{field: value})
        g.add("out", CollectSink(), inputs={"in": "src.out"})
        g.check()


def _motion(frames, t, **params):
    schema = sch.frames_schema(frames.shape[1:])
    src = ListSource.of([sch.frames_batch(t[i : i + 10], frames[i : i + 10], schema) for i in range(0, len(t), 10)])
    g = Graph("t")
    g.add("src", src)
    g.add("mc", "calcium_motion", inputs={"in": "src.out"}, template_frames=10, **params)
    g.add("out", CollectSink(), inputs={"in": "mc.out"})
    g.add("sh", CollectSink(), inputs={"in": "mc.shifts"})
    r = pipeline.run(g)
    tt, fr = _frames(r.results["out"]["batches"])
    shifts = np.concatenate([np.column_stack([sch.column(b, c) for c in ("dy", "dx", "flag")]) for b in r.results["sh"]["batches"]])
    return tt, fr, shifts


def test_motion_correction_recovers_the_true_shifts(movie):
    _, _, shifts = _motion(movie.frames, movie.t_us)
    err = shifts[:, :2] - movie.shifts
    err -= np.median(err, axis=0)
    assert np.sqrt((err**2).sum(1).mean()) < 0.25
    assert (shifts[:, 2] == 0).all()


def test_nan_frame_is_flagged_and_counted_or_an_error(movie):
    frames = movie.frames.copy()
    frames[50, 3, 3] = np.nan
    t, out, shifts = _motion(frames, movie.t_us)
    assert len(t) == len(movie.t_us) and np.isfinite(out).all()
    assert np.flatnonzero(shifts[:, 2]).tolist() == [50] and shifts[50, 2] == 2
    with pytest.raises(OperatorError, match="non-finite"):
        _motion(frames, movie.t_us, on_nan="error")


def test_dropped_frame_is_filled_and_flagged_or_an_error(movie):
    keep = np.ones(len(movie.t_us), bool)
    keep[[40, 41, 90]] = False
    t, out, shifts = _motion(movie.frames[keep], movie.t_us[keep], rate_hz=30.0)
    np.testing.assert_allclose(t, movie.t_us, atol=1)  # the timeline is whole again
    assert np.flatnonzero(shifts[:, 2] == 1).tolist() == [40, 41, 90]
    with pytest.raises(OperatorError, match="2 frame\\(s\\) missing"):
        _motion(movie.frames[keep], movie.t_us[keep], on_gap="error", rate_hz=30.0)


def test_masks_outside_the_field_of_view_are_config_errors(tmp_path):
    g = Graph("t")
    g.add("src", "calcium_synthetic", **SMALL)
    with pytest.raises(ConfigError, match="outside the 48x48 field of view"):
        g.add("tr", "calcium_traces", inputs={"in": "src.out"}, rois=[[10, 10, 3], [46, 20, 4]])
        g.check()
    np.save(tmp_path / "m.npy", np.ones((2, 64, 64), bool))
    g = Graph("t")
    g.add("src", "calcium_synthetic", **SMALL)
    with pytest.raises(ConfigError, match="masks outside the field of view"):
        g.add("tr", "calcium_traces", inputs={"in": "src.out"}, masks=str(tmp_path / "m.npy"))
        g.check()


def _samples_source(t, y, step):
    schema = sch.samples_schema([f"roi{i}" for i in range(y.shape[1])], 30.0)
    return ListSource.of([sch.samples_batch(t[a : a + step], y[a : a + step], schema) for a in range(0, len(t), step)])


@pytest.mark.parametrize("tau_rise_ms", [0.0, 60.0])
def test_deconv_operator_is_chunking_invariant_and_finds_spikes(tau_rise_ms):
    from operators.calcium.synth import ar_coefficients, calcium

    rng = np.random.default_rng(7)
    s = rng.poisson(0.02, size=(900, 5)).astype(float)
    g1, g2 = ar_coefficients(500.0, tau_rise_ms, 30.0)
    y = calcium(s, g1, g2) + 0.05 * rng.standard_normal(s.shape)
    t = (np.arange(900) * 1e6 / 30).astype(np.int64)
    outs = []
    for step in (1, 13, 900):
        g = Graph("t")
        g.add("src", _samples_source(t, y, step))
        g.add("dc", "calcium_deconv", inputs={"in": "src.out"}, tau_rise_ms=tau_rise_ms)
        g.add("act", CollectSink(), inputs={"in": "dc.activity"})
        g.add("sp", CollectSink(), inputs={"in": "dc.spikes"})
        r = pipeline.run(g)
        act = np.concatenate([np.column_stack([sch.column(b, f"roi{i}") for i in range(5)]) for b in r.results["act"]["batches"]])
        ta = np.concatenate([sch.column(b, "t") for b in r.results["act"]["batches"]])
        outs.append(act)
    np.testing.assert_array_equal(ta, t)  # every frame once, in order, aligned
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-6)
    corr = np.mean([np.corrcoef(outs[0][:, i], s[:, i])[0, 1] for i in range(5)])
    assert corr > 0.8


def test_trigger_is_rate_limited_and_muted_by_safe_state():
    from operators.calcium.trigger import StimTrigger

    t = (np.arange(100) * 1e6 / 30).astype(np.int64)
    x = np.zeros((100, 1))
    x[[10, 12, 14, 60], 0] = 1.0  # four crossings; 12 and 14 fall in the refractory time
    g = Graph("t")
    g.add("src", _samples_source(t, x, 10))
    g.add("stim", StimTrigger(StimTrigger.Params(channel="roi0", threshold=0.5, refractory_ms=500)), inputs={"in": "src.out"})
    res = pipeline.run(g).results["stim"]
    assert res["stimuli"] == 2 and res["suppressed"] == 2 and res["t_us"] == [int(t[10]), int(t[60])]
    op = StimTrigger(StimTrigger.Params(channel="roi0"))
    op.setup()
    op.safe_state("test")
    op.process("in", sch.samples_batch(t, x, sch.samples_schema(["roi0"], 30.0)))
    assert op.result()["stimuli"] == 0 and op.result()["muted"] == "test"


def test_trigger_names_a_missing_channel():
    g = Graph("t")
    g.add("src", _samples_source(np.arange(3), np.zeros((3, 1)), 3))
    with pytest.raises(ConfigError, match="channel 'comp7' is not in the input"):
        g.add("stim", "calcium_trigger", inputs={"in": "src.out"}, channel="comp7")
        g.check()


@pytest.mark.parametrize("layout", ["labels", "stack", "circles"])
def test_traces_from_given_masks_are_mask_means_minus_neuropil(tmp_path, movie, layout):
    from operators.calcium.rois import annuli

    masks = movie.masks
    if layout == "labels":
        lab = np.zeros(masks.shape[1:], np.int32)
        for i, m in enumerate(masks):
            lab[m] = i + 1
        np.save(tmp_path / "m.npy", lab)
        params = {"masks": str(tmp_path / "m.npy")}
    elif layout == "stack":
        np.save(tmp_path / "m.npy", masks)
        params = {"masks": str(tmp_path / "m.npy")}
    else:
        params = {"rois": [[10.0, 12.0, 3.0], [30.0, 30.0, 4.0]]}
    g = Graph("t")
    g.add("src", "calcium_synthetic", batch_frames=25, **SMALL)
    g.add("tr", "calcium_traces", inputs={"in": "src.out"}, neuropil=0.7, **params)
    g.add("out", CollectSink(), inputs={"in": "tr.out"})
    res = pipeline.run(g).results["out"]["batches"]
    n = len(res[0].schema) - 1
    got = np.concatenate([np.column_stack([sch.column(b, f"roi{i}") for i in range(n)]) for b in res])
    if layout == "circles":
        yy, xx = np.mgrid[0:48, 0:48]
        masks = np.array([(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r for cy, cx, r in params["rois"]])
    rings = annuli([np.flatnonzero(m) for m in masks], masks.shape[1:])
    flat = movie.frames.reshape(len(movie.frames), -1)
    want = np.column_stack([flat[:, m.reshape(-1)].mean(1) - 0.7 * flat[:, r].mean(1) for m, r in zip(masks, rings, strict=True)])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_wide_samples_helpers_round_trip_and_match_the_generic_builder():
    import pyarrow as pa

    from operators.calcium import samples

    rng = np.random.default_rng(12)
    data = rng.random((7, 40)).astype(np.float32)
    t = np.arange(7) * 1000
    schema = sch.samples_schema([f"roi{i}" for i in range(40)], 30.0)
    b = samples.batch(t, data, schema)
    assert b.equals(sch.samples_batch(t, data, schema)) and b.schema.equals(schema, check_metadata=True)
    np.testing.assert_array_equal(samples.matrix(b), data)
    np.testing.assert_array_equal(samples.matrix(b.slice(2, 3)), data[2:5])  # offsets respected
    mixed = pa.RecordBatch.from_arrays([pa.array(t[:2]), pa.array([1.0, 2.0]), pa.array([3, 4], pa.float32())], names=["t", "x", "y"])
    np.testing.assert_array_equal(samples.matrix(mixed), [[1, 3], [2, 4]])
