"""Recording and replay in Python: round trips, rotation, compression, crash safety, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pipeline import ConfigError, DataError, Graph, run
from pipeline import schemas as sch
from pipeline.operator import Source
from pipeline.recording import MANIFEST, Recording, StreamFile, inspect_recording, scan_stream
from pipeline.testing import CollectSink, ListParams, ListSource, tables_equal


def _record_synthetic(folder, duration_s=0.05, **options):
    g = Graph("rec")
    g.add("cam", "synthetic", duration_s=duration_s, rate_hz=100_000, batch_items=500)
    g.add("eeg", "synthetic", kind="samples", rate_hz=1000, batch_items=7, duration_s=duration_s, channels=3)
    g.add("c1", "count_sink", inputs={"in": "cam.out"})
    g.add("c2", "count_sink", inputs={"in": "eeg.out"})
    g.tap(["cam.out", "eeg.out"], folder, **options)
    return run(g)


def _replayed(folder, **params):
    g = Graph("play")
    g.add("rep", "replay", dir=str(folder), **params)
    ports = list(g.nodes["rep"].op.outputs)
    for port in ports:
        g.add(f"out_{port}", CollectSink(), inputs={"in": f"rep.{port}"})
    res = run(g)
    return {p: res.results[f"out_{p}"]["batches"] for p in ports}


def _live(duration_s=0.05):
    g = Graph("live")
    g.add("cam", "synthetic", duration_s=duration_s, rate_hz=100_000, batch_items=500)
    g.add("out", CollectSink(), inputs={"in": "cam.out"})
    return run(g).results["out"]["batches"]


def test_record_then_replay_gives_the_same_batches(tmp_path):
    res = _record_synthetic(tmp_path / "r")
    assert res.results["__record__"]["streams"]["cam.out"]["rows"] == 5000
    played = _replayed(tmp_path / "r")
    live = _live()
    assert [b.num_rows for b in played["cam__out"]] == [b.num_rows for b in live]
    assert tables_equal(played["cam__out"], live)
    assert sum(b.num_rows for b in played["eeg__out"]) == 50


@pytest.mark.parametrize("options", [{"background": False}, {"flush_ms": 200.0, "queue_batches": 1000}])
def test_manifest_times_and_counts_match_the_files(tmp_path, options):
    # the writer thread notes time ranges once per wake-up: with a 200 ms tick every batch of
    # both streams is taken in one or a few wake-ups, and the manifest must still say what
    # the files hold (as the synchronous tap, which notes them per batch, does)
    _record_synthetic(tmp_path / "r", duration_s=0.2, **options)
    m = json.loads((tmp_path / "r" / MANIFEST).read_text())
    for stream, expected_end in (("cam.out", 199_990), ("eeg.out", 199_000)):
        meta = m["streams"][stream]
        scanned = scan_stream(tmp_path / "r", meta["files"])
        keys = ("batches", "rows", "t_start_us", "t_end_us", "first_seq", "last_seq", "seq_gaps")
        assert {k: meta[k] for k in keys} == {k: scanned[k] for k in keys}
        assert (meta["t_start_us"], meta["t_end_us"]) == (0, expected_end)


def test_manifest_holds_schemas_counts_times_and_version(tmp_path):
    _record_synthetic(tmp_path / "r")
    m = json.loads((tmp_path / "r" / MANIFEST).read_text())
    assert m["status"] == "complete" and m["format_version"] == 1 and m["reflexarc_version"] == "0.1.0"
    cam = m["streams"]["cam.out"]
    assert cam["kind"] == "events" and cam["rows"] == 5000 and cam["batches"] == 10
    assert cam["t_start_us"] == 0 and cam["t_end_us"] == 49990 and cam["seq_gaps"] == 0
    rec = Recording(tmp_path / "r")
    assert sch.fact(rec.schema("cam.out"), "width") == 640
    report = inspect_recording(tmp_path / "r")
    assert report["damage"] == [] and report["streams"]["eeg.out"]["rows"] == 50
    assert report["streams"]["cam.out"]["rate_hz"] == pytest.approx(100_000, rel=0.01)


def test_config_record_key_taps_streams(tmp_path):
    cfg = {"name": "c", "nodes": {"cam": {"op": "synthetic", "params": {"duration_s": 0.01}},
                                  "n": {"op": "count_sink", "inputs": {"in": "cam.out"}}},
           "record": {"dir": str(tmp_path / "r"), "streams": "all", "compression": "zstd"}}
    run(Graph.from_dict(cfg))
    m = json.loads((tmp_path / "r" / MANIFEST).read_text())
    assert list(m["streams"]) == ["cam.out"] and m["config"]["nodes"]["cam"]["op"] == "synthetic"
    assert m["options"]["compression"] == "zstd"
    assert Recording(tmp_path / "r").table("cam.out").num_rows == 10_000


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compressed_recordings_replay_identically(tmp_path, compression):
    _record_synthetic(tmp_path / "r", compression=compression)
    assert tables_equal(_replayed(tmp_path / "r", streams=["cam.out"])["cam__out"], _live())


def test_rotation_by_size_and_by_sensor_time(tmp_path):
    _record_synthetic(tmp_path / "s", rotate_mb=0.01)
    files = Recording(tmp_path / "s").files["cam.out"]
    assert len(files) > 3 and files[0] == "cam.out.arrow" and files[1] == "cam.out.0001.arrow"
    assert tables_equal(list(Recording(tmp_path / "s").batches("cam.out")), _live())
    _record_synthetic(tmp_path / "d", rotate_s=0.02)
    assert len(Recording(tmp_path / "d").files["cam.out"]) == 3  # 0-20, 20-40, 40-50 ms


def test_replay_merges_streams_by_time_and_selects(tmp_path):
    _record_synthetic(tmp_path / "r")
    g = Graph("p")
    g.add("rep", "replay", dir=str(tmp_path / "r"))
    order = []

    class Order(CollectSink):
        def process(self, port, batch):
            order.append(int(batch.column(0)[0].as_py()))

    g.add("a", Order(), inputs={"in": "rep.cam__out"})
    g.add("b", Order(), inputs={"in": "rep.eeg__out"})
    run(g)
    assert order == sorted(order) and len(order) == 10 + 8
    only = _replayed(tmp_path / "r", streams={"out": "eeg.out"})
    assert list(only) == ["out"]


def test_replay_start_offset_and_loop(tmp_path):
    _record_synthetic(tmp_path / "r")
    later = _replayed(tmp_path / "r", streams=["cam.out"], start_s=0.0123)["cam__out"]
    t = pa.Table.from_batches(later).column("t").to_numpy()
    assert t[0] == 12300 and t[-1] == 49990 and len(t) == 5000 - 1230

    g = Graph("loop")
    g.add("rep", "replay", dir=str(tmp_path / "r"), streams=["cam.out"], loop=True)
    g.add("n", "count_sink", inputs={"in": "rep.cam__out"})
    import threading

    stop = threading.Event()
    seen = []

    def monitor(snaps):
        seen.append(snaps)
        if any(s["node"] == "n" and s["items_in"] > 15_000 for s in snaps):
            stop.set()

    res = run(g, monitor=monitor, stop=stop) if _run_takes_stop() else None
    if res is not None:
        assert res.results["n"]["items"] > 15_000
        assert res.results["n"]["t_last"] > 3 * 49_990  # looped time keeps growing


def _run_takes_stop():
    import inspect

    return "stop" in inspect.signature(run).parameters


def test_realtime_pacing_follows_sensor_time(tmp_path):
    _record_synthetic(tmp_path / "r", duration_s=0.2)
    g = Graph("rt")
    g.add("rep", "replay", dir=str(tmp_path / "r"), streams=["cam.out"], pacing="realtime", speed=2.0)
    g.add("n", "count_sink", inputs={"in": "rep.cam__out"})
    t0 = time.perf_counter()
    run(g)
    assert time.perf_counter() - t0 >= 0.09  # 0.2 s of sensor time at 2x: never faster than 0.1 s


def test_a_recording_of_frames_and_empty_streams_round_trips(tmp_path):
    schema = sch.frames_schema((2, 3), "float32")
    batches = [sch.frames_batch([i * 10, i * 10 + 5], np.full((2, 2, 3), i, np.float32), schema) for i in range(4)]
    g = Graph("f")
    g.add("src", ListSource.of(batches))
    g.add("n", "count_sink", inputs={"in": "src.out"})
    g.tap(["src.out"], tmp_path / "r")
    run(g)
    assert tables_equal(list(Recording(tmp_path / "r").batches("src.out")), batches)


# --- crash safety --------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    import pipeline.builtins, pipeline.operator, pipeline.recording  # the runtime's operators and record
    pipeline.operator._plugins_loaded = True  # builtins suffice: skip importing every operator family
    from pipeline import Graph, run
    g = Graph("crash")
    g.add("cam", "synthetic", duration_s=60.0, rate_hz=100_000, batch_items=1000, pacing="realtime")
    g.add("n", "count_sink", inputs={"in": "cam.out"})
    g.tap(["cam.out"], sys.argv[1], background=sys.argv[2] == "bg")
    run(g)
""")


@pytest.mark.parametrize("mode", ["bg", "sync"])
def test_sigkilled_recorder_leaves_a_readable_recording(tmp_path, mode):
    folder = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), mode])
    try:
        deadline = time.time() + 60
        f = folder / "cam.out.arrow"
        while time.time() < deadline and not (f.exists() and f.stat().st_size > 200_000):
            time.sleep(0.1)
        assert f.exists(), "the recorder never started writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((folder / MANIFEST).read_text())["status"] == "recording"
    report = inspect_recording(folder)
    assert report["repaired"] and report["status"] == "recovered"
    assert not report["ok"] and "never closed it" in report["problems"][0]  # inspect exits 1, saying why
    rows = report["streams"]["cam.out"]["rows"]
    assert rows > 10_000 and rows % 1000 == 0
    repaired = json.loads((folder / MANIFEST).read_text())
    assert repaired["status"] == "recovered" and repaired["streams"]["cam.out"]["rows"] == rows
    t = Recording(folder).table("cam.out").column("t").to_numpy()
    np.testing.assert_array_equal(t, np.arange(rows) * 10)  # the synthetic source's exact prefix
    played = _replayed(folder)["cam__out"]
    assert sum(b.num_rows for b in played) == rows


def test_a_batch_cut_in_half_is_reported_and_the_rest_is_read(tmp_path):
    _record_synthetic(tmp_path / "r")
    f = tmp_path / "r" / "cam.out.arrow"
    os.truncate(f, f.stat().st_size - 3000)  # chops into the last batch (and the end marker)
    report = inspect_recording(tmp_path / "r")
    cam = report["streams"]["cam.out"]
    assert cam["batches"] == 9 and cam["rows"] == 4500
    assert any("cut off" in d and "9 whole batches readable" in d for d in report["damage"])
    assert sum(b.num_rows for b in _replayed(tmp_path / "r")["cam__out"]) == 4500


def test_a_missing_manifest_is_rebuilt_from_the_files(tmp_path):
    _record_synthetic(tmp_path / "r", rotate_mb=0.01)
    (tmp_path / "r" / MANIFEST).unlink()
    report = inspect_recording(tmp_path / "r")
    assert report["repaired"] and report["streams"]["cam.out"]["rows"] == 5000
    assert report["streams"]["eeg.out"]["kind"] == "samples"
    assert tables_equal(_replayed(tmp_path / "r")["cam__out"], _live())


def test_inspect_a_single_stream_file(tmp_path):
    _record_synthetic(tmp_path / "r")
    report = inspect_recording(tmp_path / "r" / "eeg.out.arrow")
    assert report["streams"]["eeg.out"]["rows"] == 50 and report["streams"]["eeg.out"]["kind"] == "samples"


# --- bad input -----------------------------------------------------------------------


def test_a_folder_that_is_not_a_recording(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="is not a reflexarc recording: it has no manifest.json"):
        inspect_recording(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        inspect_recording(tmp_path / "nope")


def test_a_file_that_is_not_arrow(tmp_path):
    (tmp_path / "x.arrow").write_bytes(b"not arrow at all" * 10)
    with pytest.raises(DataError, match="not an Arrow IPC stream file"):
        inspect_recording(tmp_path / "x.arrow")


def test_a_missing_stream_file_says_what_is_still_readable(tmp_path):
    _record_synthetic(tmp_path / "r")
    (tmp_path / "r" / "cam.out.arrow").unlink()
    report = inspect_recording(tmp_path / "r")
    assert any("missing cam.out.arrow" in d for d in report["damage"])
    assert report["streams"]["eeg.out"]["rows"] == 50 and report["streams"]["cam.out"]["rows"] == 0
    assert sum(b.num_rows for b in _replayed(tmp_path / "r", streams=["eeg.out"])["eeg__out"]) == 50


def test_a_manifest_from_a_newer_version_is_refused(tmp_path):
    _record_synthetic(tmp_path / "r")
    m = json.loads((tmp_path / "r" / MANIFEST).read_text())
    m["format_version"], m["reflexarc_version"] = 7, "9.0.0"
    (tmp_path / "r" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"written by reflexarc 9.0.0 \(recording format 7\).*upgrade.*cam.out"):
        inspect_recording(tmp_path / "r")


def test_recording_twice_into_one_folder_is_refused(tmp_path):
    _record_synthetic(tmp_path / "r")
    with pytest.raises(Exception, match="already holds a recording"):
        _record_synthetic(tmp_path / "r")
    _record_synthetic(tmp_path / "r", overwrite=True)


@pytest.mark.parametrize("background", [True, False])
def test_a_stream_that_changes_schema_mid_recording_fails_clearly(tmp_path, background):
    a = sch.events_batch([0, 1], [0, 1], [0, 1], [True, False], sch.events_schema(8, 8))
    b = sch.spikes_batch([2, 3], [0, 1], sch.spikes_schema("p", 4))
    g = Graph("bad")
    g.add("src", ListSource.of([a, b, a]))
    g.add("n", "count_sink", inputs={"in": "src.out"})
    g.tap(["src.out"], tmp_path / "r", background=background)
    with pytest.raises(Exception, match="stream 'src.out' changed schema mid-recording"):
        run(g)
    assert Recording(tmp_path / "r").table("src.out").num_rows == 2  # what came before is kept


# --- the writer thread ---------------------------------------------------------------

_GATE = threading.Event()
_FOLDER_GONE: list = []


class _GatedSource(Source):
    """Yields two batches, then holds the rest until the test opens the gate.

    (The feed reads one batch ahead, so the first reaches the graph while the second waits.)
    """

    name = "gated_source"
    outputs = {"out": "any"}
    Params = ListParams

    def schemas(self, inputs):
        return {"out": self.params.batches[0].schema}

    def generate(self):
        yield from self.params.batches[:2]
        _GATE.wait(60)
        yield from self.params.batches[2:]


class _FolderRemovingSource(ListSource):
    """Removes the recording folder after a few batches, as a yanked disk would."""

    name = "folder_removing_source"

    def generate(self):
        for i, batch in enumerate(self.params.batches):
            yield batch
            if i == 3:
                time.sleep(0.2)  # the writer has taken up and written the first batches
                for f in _FOLDER_GONE[0].iterdir():
                    f.unlink()
                _FOLDER_GONE[0].rmdir()


def _events(n_batches, rows=100):
    schema = sch.events_schema(8, 8)
    return [sch.events_batch(np.arange(k * rows, (k + 1) * rows), np.zeros(rows, np.uint16),
                             np.zeros(rows, np.uint16), np.ones(rows, bool), schema) for k in range(n_batches)]


def test_the_writer_thread_writes_a_batch_without_waiting_for_the_next(tmp_path):
    # crash safety of a slow stream: what the tap took is on disk before the stream goes on
    batches = _events(4)
    g = Graph("slow")
    g.add("src", _GatedSource(ListParams(batches=batches)))
    g.add("n", "count_sink", inputs={"in": "src.out"})
    g.tap(["src.out"], tmp_path / "r", flush_ms=20)
    _GATE.clear()
    runner = threading.Thread(target=run, args=(g,))
    runner.start()
    try:
        f = StreamFile(tmp_path / "r" / "src.out.arrow")
        seen = []
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            if f.path.exists() and f.path.stat().st_size:  # opened at setup; the schema comes with a batch
                seen = list(f.batches())
            time.sleep(0.01)
        assert seen and seen[0].num_rows == 100  # the first batch, while the source still holds the rest
    finally:
        _GATE.set()
        runner.join(60)
    assert Recording(tmp_path / "r").table("src.out").num_rows == 400


def test_a_full_queue_makes_the_pipeline_wait_and_loses_nothing(tmp_path):
    # a writer far slower to wake than the pipeline is fast: the pipeline waits (lossless)
    batches = _events(200, rows=10)
    g = Graph("burst")
    g.add("src", ListSource.of(batches))
    g.add("n", "count_sink", inputs={"in": "src.out"})
    g.tap(["src.out"], tmp_path / "r", queue_batches=2, flush_ms=1000)
    res = run(g)
    assert res.results["__record__"]["streams"]["src.out"] == {"batches": 200, "rows": 2000}
    assert tables_equal(list(Recording(tmp_path / "r").batches("src.out")), batches)
    m = json.loads((tmp_path / "r" / MANIFEST).read_text())["streams"]["src.out"]
    assert (m["first_seq"], m["last_seq"], m["seq_gaps"], m["t_start_us"], m["t_end_us"]) == (0, 199, 0, 0, 1999)


def test_a_writer_thread_failure_stops_the_pipeline_with_a_clear_error(tmp_path):
    folder = tmp_path / "r"
    _FOLDER_GONE[:] = [folder]
    g = Graph("yanked")
    g.add("src", _FolderRemovingSource(ListParams(batches=_events(50))))
    g.add("n", "count_sink", inputs={"in": "src.out"})
    g.tap(["src.out"], folder, rotate_mb=0.000001, flush_ms=1)  # every batch opens a new file
    # at the next batch the tap takes, or at close if the source has ended by then
    with pytest.raises(Exception, match=rf"'__record__' failed.*: cannot write '{folder}/src\.out\.\d{{4}}\.arrow'"):
        run(g)


def test_replaying_a_stream_the_recording_lacks(tmp_path):
    _record_synthetic(tmp_path / "r")
    g = Graph("p")
    with pytest.raises(ConfigError, match=r"rep: recording .* has no stream 'imu.out' \(streams: cam.out, eeg.out\)"):
        g.add("rep", "replay", dir=str(tmp_path / "r"), streams=["imu.out"])
        g.add("n", "count_sink", inputs={"in": "rep.imu__out"})
        g.check()


_CHURN = """
import resource, sys
import numpy as np
from pipeline.recording import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory(64)
kept = []
def churn(n):  # batch-sized arrays and a temporary each, the last 8 kept (a queue's worth)
    global kept
    for _ in range(n):
        a = np.ones(131072)
        b = a.astype(np.float32)
        kept.append(b)
        kept = kept[-8:]
churn(50)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(400)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"),
                    reason="glibc's mallopt only")
def test_keeping_freed_memory_stops_batches_that_wait_from_faulting_pages_back_in():
    # what a background tap's `malloc_keep_mb` is for, in a fresh process each way
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, timeout=120,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    kept, default = faults("keep"), faults("default")
    assert kept < 100 < default


def test_only_a_background_tap_sets_the_allocator_and_none_leaves_it(tmp_path, monkeypatch):
    from pipeline import recording

    calls = []
    monkeypatch.setattr(recording, "keep_freed_memory", lambda mb: calls.append(mb) or True)
    for k, options in enumerate([{}, {"malloc_keep_mb": 128}, {"malloc_keep_mb": None}, {"background": False}]):
        g = Graph("alloc")
        g.add("src", ListSource.of(_events(2)))
        g.add("n", "count_sink", inputs={"in": "src.out"})
        g.tap(["src.out"], tmp_path / f"r{k}", **options)
        run(g)
    assert calls == [64.0, 128]
