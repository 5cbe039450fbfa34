"""Real recordings from real cameras (tests/data/real/events, see its README): a DAVIS346 AEDAT4
file written by iniVation's DV and a Prophesee Gen3 EVT 2.0 file, against the reference digests
and, field by field, against faery's decoder and iniVation's dv-processing reader."""

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from operators.events.inspect import inspect_file
from operators.events.sources import (
    FRAME_TIMES,
    IMU_CHANNELS,
    Aedat4Source,
    EventFileSource,
    prophesee_geometry,
    raw_header,
)
from pipeline import schemas as sch
from pipeline.errors import DataError

REAL = Path(__file__).parents[2] / "data" / "real" / "events"
DAVIS = REAL / "davis346.aedat4"
EVT2 = REAL / "evt2.raw"

# SHA3-224 of each decoded field in file order, as faery's own tests compute them
DIGESTS = {
    DAVIS: {"t": "f1e093cad5afb6ecb971dfa2ef7646ab4ae0f467f73a48804e40bb68",
            "x": "1d8ea97b0febadfde24dd0b9e608682fc6934fc88656823b15f0e7a7",
            "y": "18f89da35f8f10b24c3407b03aa7f82bdd7c8e6ab5369e2c30f8bad0",
            "on": "6f99cf01187da8a05e1a032f3782de51b87e51bdc31356669bdd7cb9"},
    EVT2: {"t": "9855ba39c1baea316ae623b72466e420df60a7510248391856eb4eaf",
           "x": "93fc6cff19b483fd48ca53345c6c1cf05123681d7b7272a1717e9303",
           "y": "07cfaef58e5fa71ce9910ed5b88fb7e9fcf71e4a8654cc2c4666f1ae",
           "on": "d2b5e9c4047f4c431937b24cd46c8b504e055372b0ded1df77f0ffa1"},
}
FRAME_DIGEST = "6dbd0c0ea251788515bce54edf50b9f29d1995a0330a8b623504379b"


def run_source(src) -> dict[str, list]:
    src.schemas({})
    src.setup()
    out: dict[str, list] = {}
    for item in src.generate():
        port, batch = item if isinstance(item, tuple) else ("out", item)
        out.setdefault(port, []).append(batch)
    return out


@pytest.fixture(scope="module")
def davis():
    src = Aedat4Source(Aedat4Source.Params(path=str(DAVIS)))
    return src.schemas({}), run_source(src)


def digests(batches) -> dict[str, str]:
    col = {k: np.concatenate([sch.column(b, k) for b in batches]) for k in "txyp"}
    fields = {"t": col["t"].astype("<u8"), "x": col["x"].astype("<u2"), "y": col["y"].astype("<u2"),
              "on": col["p"].astype(np.uint8)}
    return {k: hashlib.sha3_224(v.tobytes()).hexdigest() for k, v in fields.items()}


def test_davis346_events_decode_to_the_reference_digests(davis):
    schemas, out = davis
    assert (sch.fact(schemas["out"], "width"), sch.fact(schemas["out"], "height")) == (346, 260)
    assert sum(b.num_rows for b in out["out"]) == 78_830
    assert digests(out["out"]) == DIGESTS[DAVIS]


def test_prophesee_gen3_decodes_to_the_reference_digests_on_its_640x480_sensor():
    src = EventFileSource(EventFileSource.Params(path=str(EVT2)))
    schema = src.schemas({})["out"]
    # no geometry line: the header's plugin (hal_plugin_gen3_fx3) says Gen3 VGA, not faery's 1280x720
    assert (sch.fact(schema, "width"), sch.fact(schema, "height")) == (640, 480)
    out = run_source(src)["out"]
    assert sum(b.num_rows for b in out) == 521_252
    assert digests(out) == DIGESTS[EVT2]
    info = inspect_file(EVT2)
    assert info["sensor"] == [640, 480] and info["streams"][0]["width"] == 640
    assert info["sensor_from"] == "plugin hal_plugin_gen3_fx3" and info["events"] == 521_252 and "errors" not in info
    # parameters still override the header
    src = EventFileSource(EventFileSource.Params(path=str(EVT2), width=1000, height=700))
    assert sch.fact(src.schemas({})["out"], "width") == 1000


def test_an_event_outside_the_sensor_names_the_file_the_event_and_its_coordinates(tmp_path):
    """The real recording read as if from a 320x240 sensor (the parameters override the header)."""
    out = run_source(EventFileSource(EventFileSource.Params(path=str(EVT2))))["out"]
    x, y = (np.concatenate([sch.column(b, k) for b in out]) for k in "xy")
    first = int(np.flatnonzero((x >= 320) | (y >= 240))[0])
    src = EventFileSource(EventFileSource.Params(path=str(EVT2), width=320, height=240))
    with pytest.raises(DataError, match=rf"'{EVT2}' packet \d+: coordinates outside the 320x240 sensor: "
                                        rf"event {first} at x={x[first]}, y={y[first]}"):
        run_source(src)
    # a geometry line in the header wins over the plugin
    path = tmp_path / "hd.raw"
    path.write_bytes(b"% geometry 1280x720\n" + EVT2.read_bytes()[:4096])
    src = EventFileSource(EventFileSource.Params(path=str(path)))
    assert (sch.fact(src.schemas({})["out"], "width"), sch.fact(src.schemas({})["out"], "height")) == (1280, 720)


def test_prophesee_geometry_from_every_kind_of_header(tmp_path):
    assert prophesee_geometry({"geometry": "1280x720", "plugin_name": "hal_plugin_gen3_fx3"}) == ((1280, 720), "header geometry")
    assert prophesee_geometry({"format": "EVT3;height=320;width=320"})[0] == (320, 320)
    assert prophesee_geometry({"plugin_name": "hal_plugin_gen41_evk3"})[0] == (1280, 720)
    assert prophesee_geometry({"plugin_name": "hal_plugin_imx636_evk4"})[0] == (1280, 720)
    assert prophesee_geometry({"plugin_name": "hal_plugin_atis_fx3"})[0] == (480, 360)
    assert prophesee_geometry({"sensor_generation": "4.1"})[0] == (1280, 720)
    assert prophesee_geometry({"evt": "2.0"}) is None
    assert raw_header(EVT2)["plugin_name"] == "hal_plugin_gen3_fx3"


def _faery_packets():
    import faery

    kinds: dict[str, list] = {"frame": [], "imus": [], "triggers": []}
    for track, packet in faery.aedat.Decoder(str(DAVIS)):
        if track.data_type in kinds:
            kinds[track.data_type].append(packet)
    return kinds


def _dv_all(reader, method):
    out = []
    while (item := getattr(reader, method)()) is not None:
        out.extend(item) if method != "getNextFrame" else out.append(item)
    return out


def test_davis346_frames_imu_triggers_equal_faery_and_dv_processing_field_by_field(davis):
    import dv_processing as dv

    _, out = davis
    frames = pa.Table.from_batches(out["frames"])
    pixels = np.concatenate([sch.frames_view(b) for b in out["frames"]])
    imu = pa.Table.from_batches(out["imu"])
    trig = pa.Table.from_batches(out["triggers"])
    ref = _faery_packets()

    # frames: 59 of 260x346, times in order, every time field and pixel as faery decodes them
    assert pixels.shape == (59, 260, 346) and pixels.dtype == np.uint8
    assert hashlib.sha3_224(pixels.tobytes()).hexdigest() == FRAME_DIGEST
    assert np.all(np.diff(frames["t"].to_numpy()) > 0)
    names = {"t": "t", "begin_t": "start_t", "end_t": "end_t", "exposure_begin_t": "exposure_start_t",
             "exposure_end_t": "exposure_end_t"}
    for ours, theirs in names.items():
        assert frames[ours].to_pylist() == [getattr(f, theirs) for f in ref["frame"]], ours
    assert all(np.array_equal(p, f.pixels) for p, f in zip(pixels, ref["frame"]))
    # IMU: every field of faery's structured array, every sample
    fi = np.concatenate(ref["imus"])
    assert imu.num_rows == len(fi) == 2363
    assert np.array_equal(imu["t"].to_numpy(), fi["t"].astype(np.int64))
    for c in IMU_CHANNELS:
        assert np.array_equal(imu[c].to_numpy(), fi[c]), c
    ft = np.concatenate(ref["triggers"])
    assert trig.num_rows == len(ft) == 236
    assert np.array_equal(trig["t"].to_numpy(), ft["t"].astype(np.int64))
    assert np.array_equal(trig["source"].to_numpy(), ft["source"])

    # iniVation's own reader: a Frame's timestamp is the exposure start, its exposure the exposure time
    rec = dv.io.MonoCameraRecording(str(DAVIS))
    dframes = _dv_all(rec, "getNextFrame")
    assert len(dframes) == 59
    assert [f.timestamp for f in dframes] == frames["exposure_begin_t"].to_pylist()
    exposure = (frames["exposure_end_t"].to_numpy() - frames["exposure_begin_t"].to_numpy()).tolist()
    assert [f.exposure.microseconds + 1_000_000 * f.exposure.seconds for f in dframes] == exposure
    assert all(np.array_equal(f.image, p) for f, p in zip(dframes, pixels))
    dimu = _dv_all(rec, "getNextImuBatch")
    assert [s.timestamp for s in dimu] == imu["t"].to_pylist()
    dv_names = {"accelerometer_x": "accelerometerX", "accelerometer_y": "accelerometerY", "accelerometer_z": "accelerometerZ",
                "gyroscope_x": "gyroscopeX", "gyroscope_y": "gyroscopeY", "gyroscope_z": "gyroscopeZ",
                "temperature": "temperature", "magnetometer_x": "magnetometerX", "magnetometer_y": "magnetometerY",
                "magnetometer_z": "magnetometerZ"}
    assert set(dv_names) == set(IMU_CHANNELS)
    for ours, theirs in dv_names.items():
        assert np.array_equal(imu[ours].to_numpy(), np.array([getattr(s, theirs) for s in dimu], np.float32)), ours
    dtrig = _dv_all(rec, "getNextTriggerBatch")
    assert [s.timestamp for s in dtrig] == trig["t"].to_pylist()
    assert [int(s.type) for s in dtrig] == trig["source"].to_pylist()
    assert set(FRAME_TIMES) < set(frames.column_names)
