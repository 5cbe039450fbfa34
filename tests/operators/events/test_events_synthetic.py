"""The synthetic event camera: ground truth, determinism, AEDAT4 output, the source operator."""

import numpy as np
import pytest

from operators.events.synthetic import GESTURES, gesture_events, gesture_recording, simulate, write_aedat4
from pipeline import run
from pipeline.errors import ConfigError
from pipeline.graph import Graph
from pipeline.schemas import column


def test_gesture_events_shape_and_order():
    ev = gesture_events("circle_cw", seed=3)
    assert ev["label"] == GESTURES.index("circle_cw")
    assert ev["t"].dtype == np.int64 and ev["x"].dtype == np.uint16 and ev["p"].dtype == np.bool_
    assert np.all(np.diff(ev["t"]) >= 0)
    assert 0 <= ev["t"][0] and ev["t"][-1] < 1_000_000
    assert ev["x"].max() < 64 and ev["y"].max() < 64
    assert len(ev["t"]) > 1000
    assert 0.3 < ev["p"].mean() < 0.7


def test_gestures_differ_and_are_deterministic():
    assert len(GESTURES) >= 6
    a = gesture_events(0, seed=1)
    b = gesture_events(0, seed=1)
    for k in "txyp":
        np.testing.assert_array_equal(a[k], b[k])
    left, right = gesture_events("swipe_left"), gesture_events("swipe_right")
    # a left swipe's events drift left over time, a right swipe's right
    def drift(ev):
        early = ev["x"][ev["t"] < 400_000].mean()
        late = ev["x"][ev["t"] > 600_000].mean()
        return late - early
    assert drift(left) < -5 < 5 < drift(right)


def test_speed_and_offset_change_the_clip():
    base = gesture_events(1)
    shifted = gesture_events(1, offset=(0.0, 0.2))
    fast = gesture_events(1, speed=2.0)
    assert shifted["y"].mean() > base["y"].mean() + 5
    assert np.ptp(fast["t"][len(fast["t"]) // 10 : -len(fast["t"]) // 10]) < np.ptp(base["t"][len(base["t"]) // 10 : -len(base["t"]) // 10])


def test_refractory_period_is_respected():
    ev = gesture_events(4, noise_hz=0.0, hot_pixels=0, refractory_us=2000)
    pix = ev["y"].astype(np.int64) * 64 + ev["x"]
    order = np.lexsort((ev["t"], pix))
    same = np.diff(pix[order]) == 0
    assert np.all(np.diff(ev["t"][order])[same] >= 2000)


def test_noise_and_hot_pixels_only():
    ev = gesture_events(0, noise_hz=5.0, hot_pixels=3, contrast=100.0)  # threshold too high to fire
    pix = ev["y"].astype(np.int64) * 64 + ev["x"]
    counts = np.bincount(pix, minlength=64 * 64)
    assert (counts > 100).sum() == 3  # three hot pixels at ~200 Hz
    assert 0.5 * 5 * 4096 < len(ev["t"]) - counts[counts > 100].sum() < 1.5 * 5 * 4096


def test_unknown_gesture_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown gesture"):
        gesture_events("wave_hello")
    with pytest.raises(ConfigError, match="unknown scene"):
        next(simulate("fireworks"))


def test_recording_round_trips_through_aedat4(tmp_path):
    import aedat

    path = tmp_path / "rec.aedat4"
    segs = gesture_recording(path, ["swipe_up", 5], width=48, height=32, seed=2, gap_s=0.2, duration_s=0.5)
    assert segs == [(0, 500_000, 2), (700_000, 1_200_000, 5)]
    dec = aedat.Decoder(str(path))
    assert dec.id_to_stream()[0] == {"type": "events", "width": 48, "height": 32}
    t = np.concatenate([pk["events"]["t"] for pk in dec if "events" in pk]).astype(np.int64)
    assert np.all(np.diff(t) >= 0) and t[-1] < 1_400_000
    # gestures are busier than the gaps
    in_gesture = ((t < 500_000) | ((t >= 700_000) & (t < 1_200_000))).sum()
    assert in_gesture > 10 * (len(t) - in_gesture)


def test_write_aedat4_refuses_unsorted(tmp_path):
    from pipeline.errors import DataError

    ev = {"t": np.array([5, 3]), "x": np.zeros(2), "y": np.zeros(2), "p": np.zeros(2, bool)}
    with pytest.raises(DataError, match="sorted"):
        write_aedat4(tmp_path / "x.aedat4", ev, 4, 4)


@pytest.mark.parametrize("scene", ["bars", "shapes", "texture", "gesture"])
def test_synthetic_camera_operator(scene):
    from pipeline.testing import CollectSink

    g = Graph("cam")
    g.add("cam", "synthetic_camera", scene=scene, width=32, height=24, duration_s=0.2, batch_us=20_000)
    g.add("sink", CollectSink(), inputs={"in": "cam.out"})
    batches = run(g).results["sink"]["batches"]
    assert len(batches) >= 5
    t = np.concatenate([column(b, "t") for b in batches])
    assert len(t) > 100 and np.all(np.diff(t) >= 0)
    for b in batches:  # each batch lies within one aligned 20 ms window
        bt = column(b, "t")
        assert bt[0] // 20_000 == bt[-1] // 20_000
