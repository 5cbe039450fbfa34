"""Event kernels and operators match their NumPy twins exactly, under any batch cutting."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.events import ops
from pipeline import schemas as sch
from pipeline.errors import DataError, SchemaError

_spec = importlib.util.spec_from_file_location("naive_events", Path(__file__).with_name("naive_events.py"))
naive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(naive)

W, H = 12, 9
SCHEMA = sch.events_schema(W, H)


def stream(seed=0, n=3000, span_us=200_000, hot=(3, 4)):
    """Random events plus a hot pixel and a few bursts, sorted, with repeated timestamps."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span_us, n))
    x = rng.integers(0, W, n)
    y = rng.integers(0, H, n)
    x[::7], y[::7] = hot
    p = rng.random(n) < 0.5
    return t.astype(np.int64), x.astype(np.uint16), y.astype(np.uint16), p


def cut(cols, cuts):
    """The stream as batches split at the given indices."""
    bounds = [0, *sorted(set(cuts)), len(cols[0])]
    return [sch.events_batch(*(c[a:b] for c in cols), SCHEMA) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def run_op(op, batches):
    op.schemas({"in": SCHEMA})
    op.setup()
    out = []
    for b in batches:
        out += ops_emitted(op.process("in", b))
    out += ops_emitted(op.finish())
    return out


def ops_emitted(r):
    if r is None:
        return []
    if hasattr(r, "num_rows"):
        return [r]
    return [b for _, b in r]


def events_of(batches):
    return tuple(np.concatenate([sch.column(b, k) for b in batches]) for k in "txyp")


def frames_of(batches):
    return (np.concatenate([sch.column(b, "t") for b in batches]),
            np.concatenate([sch.frames_view(b) for b in batches]))


FILTERS = {
    "background_filter": (dict(time_us=3000), lambda t, x, y, p: naive.background(t, x, y, W, H, 3000)),
    "refractory_filter": (dict(refractory_us=2000), lambda t, x, y, p: naive.refractory(t, x, y, 2000)),
    "hot_pixel_filter": (dict(window_us=20_000, max_rate_hz=300.0), lambda t, x, y, p: naive.hot_pixel(t, x, y, 20_000, 6)),
    "rate_limit": (dict(max_rate_hz=12_000.0, window_us=1000), lambda t, x, y, p: naive.rate_limit(t, 1000, 12)),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filter_matches_reference(name):
    params, ref = FILTERS[name]
    cols = stream(1)
    out = events_of(run_op(ops.__dict__[_cls(name)](ops.__dict__[_cls(name)].Params(**params)), cut(cols, [500, 501, 2200])))
    keep = ref(*cols)
    assert 0 < keep.sum() < len(keep)  # the filter does something on this stream
    for a, b in zip(out, (c[keep] for c in cols), strict=True):
        np.testing.assert_array_equal(a, b)


def _cls(name):
    """The class name of the operator registered as `name` in operators.events.ops."""
    return next(k for k, v in vars(ops).items() if isinstance(v, type) and getattr(v, "name", None) == name
                and v.__module__ == ops.__name__)


def test_hot_pixel_is_found():
    cols = stream(2)
    op = ops.HotPixelFilter(ops.HotPixelFilter.Params(window_us=20_000, max_rate_hz=300.0))
    t, x, y, p = events_of(run_op(op, cut(cols, [])))
    assert ((x == 3) & (y == 4)).sum() < 0.1 * ((cols[1] == 3) & (cols[2] == 4)).sum()


ACCUMULATORS = {
    "to_frames": (dict(window_us=7000), lambda t, x, y, p: naive.frames(t, x, y, p, W, H, 7000)),
    "to_voxel_grid": (dict(window_us=7000, bins=4), lambda t, x, y, p: naive.voxel(t, x, y, p, W, H, 7000, 4)),
    "to_time_surface": (dict(window_us=7000, tau_us=5000.0), lambda t, x, y, p: naive.time_surface(t, x, y, p, W, H, 7000, 5000.0)),
}


@pytest.mark.parametrize("name", sorted(ACCUMULATORS))
def test_accumulator_matches_reference(name):
    params, ref = ACCUMULATORS[name]
    cols = stream(3, n=800, span_us=60_000)
    # a gap of empty windows in the middle
    cols[0][400:] += 30_000
    cls = ops.__dict__[_cls(name)]
    t, f = frames_of(run_op(cls(cls.Params(**params)), cut(cols, [10, 11, 399, 400])))
    rt, rf = ref(*cols)
    np.testing.assert_array_equal(t, rt)
    np.testing.assert_array_equal(f, rf)
    assert f.dtype == np.float32


@pytest.mark.parametrize(("bins", "window_us"), [(1, 7000), (2, 7000), (7, 3), (5, 10_000_019)])
def test_voxel_grid_bins_split_like_the_twin(bins, window_us):
    """The voxel kernel finds each lower bin's events by binary search over the same
    expression the adding loop uses: one bin (no upper neighbour), windows of 3 us (every
    event its own bin run), and a window so long that the last position rounds near B - 1."""
    cols = stream(11, n=900, span_us=60_000)
    cols[0][450:] += 40_000  # empty windows between
    t, f = frames_of(run_op(ops.ToVoxelGrid(ops.ToVoxelGrid.Params(window_us=window_us, bins=bins)),
                            cut(cols, [1, 300, 301, 700])))
    rt, rf = naive.voxel(*cols, W, H, window_us, bins)
    np.testing.assert_array_equal(t, rt)
    np.testing.assert_array_equal(f, rf)


def test_frames_count_past_small_counts_exactly():
    """to_frames counts in uint8 and carries wraps into a spill map: 2 x 65,536 + 7 events at
    one pixel and polarity (past uint16 too), in windows that close mid-batch and in the last
    one (finish), stay exact."""
    n = 2 * 65_536 + 7
    t = np.sort(np.concatenate([np.full(n, 10), np.full(n - 100, 7_500), np.arange(200) * 80]))
    rng = np.random.default_rng(5)
    x = np.where(np.arange(len(t)) % 3 == 0, rng.integers(0, W, len(t)), 2).astype(np.uint16)
    y = np.where(np.arange(len(t)) % 3 == 0, rng.integers(0, H, len(t)), 5).astype(np.uint16)
    p = np.where(np.arange(len(t)) % 3 == 0, rng.random(len(t)) < 0.5, True)
    cols = (t.astype(np.int64), x, y, p)
    rt, rf = naive.frames(*cols, W, H, 7000)
    assert rf.max() > 65_536  # the wrap path runs
    for cuts in ([], [70_000, 200_000], [131_080]):
        ft, f = frames_of(run_op(ops.ToFrames(ops.ToFrames.Params(window_us=7000)), cut(cols, cuts)))
        np.testing.assert_array_equal(ft, rt)
        np.testing.assert_array_equal(f, rf)


@pytest.mark.parametrize("name", sorted(FILTERS) + sorted(ACCUMULATORS) + ["slice_time", "slice_count", "roi_crop",
                                                                          "downsample", "polarity"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 600), max_size=8))
def test_any_batch_cutting_gives_identical_output(name, cuts):
    cols = stream(4, n=600, span_us=50_000)
    params = {**FILTERS, **ACCUMULATORS}.get(name, ({}, None))[0]
    params = {"slice_time": dict(window_us=3000), "slice_count": dict(events=37),
              "roi_crop": dict(x=2, y=1, width=6, height=5), "downsample": dict(factor=3)}.get(name, params)
    cls = ops.__dict__[_cls(name)]
    whole = run_op(cls(cls.Params(**params)), cut(cols, []))
    pieces = run_op(cls(cls.Params(**params)), cut(cols, cuts))
    if name in ACCUMULATORS:
        for a, b in zip(frames_of(whole), frames_of(pieces), strict=True):
            np.testing.assert_array_equal(a, b)
    else:
        for a, b in zip(events_of(whole), events_of(pieces), strict=True):
            np.testing.assert_array_equal(a, b)
    if name in ("slice_time", "slice_count"):  # slicing defines the batches themselves
        assert [b.num_rows for b in whole] == [b.num_rows for b in pieces]


def test_slices_are_windows_and_counts():
    cols = stream(5, n=500, span_us=40_000)
    by_time = run_op(ops.SliceTime(ops.SliceTime.Params(window_us=5000)), cut(cols, [100, 333]))
    for b in by_time:
        t = sch.column(b, "t")
        assert t[0] // 5000 == t[-1] // 5000
    assert len(by_time) == len({int(t) // 5000 for t in cols[0]})
    by_count = run_op(ops.SliceCount(ops.SliceCount.Params(events=64)), cut(cols, [100, 333]))
    assert [b.num_rows for b in by_count] == [64] * 7 + [500 - 448]


def test_roi_downsample_polarity():
    cols = stream(6, n=400)
    roi = events_of(run_op(ops.RoiCrop(ops.RoiCrop.Params(x=2, y=1, width=6, height=5)), cut(cols, [50])))
    inside = (cols[1] >= 2) & (cols[1] < 8) & (cols[2] >= 1) & (cols[2] < 6)
    np.testing.assert_array_equal(roi[1], cols[1][inside] - 2)
    np.testing.assert_array_equal(roi[2], cols[2][inside] - 1)
    op = ops.Downsample(ops.Downsample.Params(factor=4))
    assert sch.fact(op.schemas({"in": SCHEMA})["out"], "width") == 3
    ds = events_of(run_op(op, cut(cols, [])))
    np.testing.assert_array_equal(ds[1], cols[1] // 4)
    split = ops.Polarity(ops.Polarity.Params(mode="split"))
    assert set(split.outputs) == {"on", "off"}
    out = split.process("in", cut(cols, [])[0])
    on = dict(out)["on"]
    assert on.num_rows == cols[3].sum() and sch.column(on, "p").all()
    merged = ops.Polarity(ops.Polarity.Params(mode="merge")).process("in", cut(cols, [])[0])
    assert sch.column(merged, "p").all()


def test_roi_that_does_not_fit_is_a_schema_error():
    with pytest.raises(SchemaError, match="does not fit"):
        ops.RoiCrop(ops.RoiCrop.Params(x=10, width=5, height=2)).schemas({"in": SCHEMA})


def test_bad_events_are_refused_before_a_kernel_sees_them():
    op = ops.ToFrames(ops.ToFrames.Params(window_us=1000))
    op.schemas({"in": SCHEMA})
    outside = sch.events_batch([1, 2], [1, W], [1, 1], [True, True], SCHEMA)
    with pytest.raises(DataError, match="outside the 12x9 sensor"):
        op.process("in", outside)
    backwards = sch.events_batch([5, 2], [1, 1], [1, 1], [True, True], SCHEMA)
    with pytest.raises(DataError, match="backwards"):
        ops.BackgroundFilter(ops.BackgroundFilter.Params()).process("in", backwards)


@pytest.mark.parametrize("case", ["x", "y", "within", "after_last", "fine"])
def test_all_valid_finds_each_kind_of_bad_event(case):
    from operators.events import kernels as K

    t = np.arange(100, 140, dtype=np.int64)
    x = np.full(40, W - 1, np.uint16)
    y = np.full(40, H - 1, np.uint16)
    t_last = 100
    if case == "x":
        x[17] = W
    elif case == "y":
        y[39] = H
    elif case == "within":
        t[23] = t[22] - 1
    elif case == "after_last":
        t_last = 101
    assert K.all_valid(t, x, y, W, H, np.int64(t_last)) == (case == "fine")
    assert (K.check_sorted_inside(t, x, y, W, H, np.int64(t_last)) == -1) == (case == "fine")


def test_operators_round_trip_state():
    cols = stream(7, n=500)
    batches = cut(cols, [250])
    a = ops.ToFrames(ops.ToFrames.Params(window_us=4000))
    a.schemas({"in": SCHEMA})
    first = ops_emitted(a.process("in", batches[0]))
    b = ops.ToFrames(ops.ToFrames.Params(window_us=4000))
    b.schemas({"in": SCHEMA})
    b.restore(a.state())
    rest = ops_emitted(b.process("in", batches[1])) + ops_emitted(b.finish())
    whole = run_op(ops.ToFrames(ops.ToFrames.Params(window_us=4000)), cut(cols, []))
    for x, y in zip(frames_of(first + rest), frames_of(whole), strict=True):
        np.testing.assert_array_equal(x, y)
