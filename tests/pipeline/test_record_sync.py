"""A background tap's small batches written on the pipeline's thread (`sync_below_kb`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from pipeline import Graph, run
from pipeline import schemas as sch
from pipeline.recording import MANIFEST, Record, Recording, StreamFile, inspect_recording
from pipeline.testing import ListSource, tables_equal


def _batch(k0, rows):
    t = np.arange(k0, k0 + rows)
    return sch.events_batch(t, np.zeros(rows, np.uint16), np.zeros(rows, np.uint16), np.ones(rows, bool),
                            sch.events_schema(8, 8))


class _PausingSource(ListSource):
    """Pauses after every tenth batch, so the writer sometimes catches up and sometimes not."""

    name = "pausing_source"

    def generate(self):
        for i, batch in enumerate(self.params.batches):
            yield batch
            if i % 10 == 9:
                time.sleep(0.003)


def test_small_and_large_batches_keep_their_order_under_a_slow_writer(tmp_path, monkeypatch):
    # 10-row batches (~150 B) go the synchronous way when nothing is queued, 2000-row ones
    # (~24 KB) to the writer, which is slowed down so it often holds a batch it has taken but
    # not yet written while the pipeline has a small one to write
    sizes = [10, 10, 2000, 10, 2000, 2000, 10, 10, 10, 2000] * 30
    batches, t = [], 0
    for rows in sizes:
        batches.append(_batch(t, rows))
        t += rows
    who = {"sync": 0, "writer": 0}
    append = Record._append

    def slow_append(self, track, batch, header):
        if threading.current_thread() is self._thread:
            who["writer"] += 1
            time.sleep(0.0001)
        else:
            who["sync"] += 1
        append(self, track, batch, header)

    monkeypatch.setattr(Record, "_append", slow_append)
    g = Graph("mixed")
    g.add("src", _PausingSource.of(batches))
    g.add("n", "count_sink", inputs={"in": "src.out"})
    g.tap(["src.out"], tmp_path / "r", sync_below_kb=4, flush_ms=0.1)
    run(g)
    assert who["sync"] >= 5 and who["writer"] >= 120, who  # both ways were taken, many times
    assert who["sync"] + who["writer"] == len(batches)
    f = StreamFile(tmp_path / "r" / "src.out.arrow")
    seqs = [int(meta[b"seq"]) for _, meta in f.batches(with_meta=True)]
    assert seqs == list(range(len(batches)))
    assert tables_equal(list(Recording(tmp_path / "r").batches("src.out")), batches)
    m = json.loads((tmp_path / "r" / MANIFEST).read_text())["streams"]["src.out"]
    assert (m["batches"], m["rows"], m["seq_gaps"], m["t_start_us"], m["t_end_us"]) == (
        len(batches), t, 0, 0, t - 1)


def test_a_synchronous_write_that_fails_stops_the_pipeline_as_the_writer_would(tmp_path):
    a = sch.events_batch([0, 1], [0, 1], [0, 1], [True, False], sch.events_schema(8, 8))
    b = sch.spikes_batch([2, 3], [0, 1], sch.spikes_schema("p", 4))
    g = Graph("bad")
    g.add("src", ListSource.of([a, b, a]))
    g.add("n", "count_sink", inputs={"in": "src.out"})
    g.tap(["src.out"], tmp_path / "r", sync_below_kb=64)
    with pytest.raises(Exception, match=r"'__record__' failed.*stream 'src.out' changed schema mid-recording"):
        run(g)
    assert Recording(tmp_path / "r").table("src.out").num_rows == 2  # what came before is kept


CHILD = textwrap.dedent("""
    import sys
    import pipeline.builtins, pipeline.operator
    pipeline.operator._plugins_loaded = True
    from pipeline import Graph, run
    g = Graph("crash")
    g.add("cam", "synthetic", duration_s=60.0, rate_hz=100_000, batch_items=1000, pacing="realtime")
    g.add("n", "count_sink", inputs={"in": "cam.out"})
    g.tap(["cam.out"], sys.argv[1], sync_below_kb=64)
    run(g)
""")


def test_a_sigkilled_recorder_writing_synchronously_leaves_a_readable_recording(tmp_path):
    folder = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)])
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
    report = inspect_recording(folder)
    assert report["repaired"] and report["status"] == "recovered"
    rows = report["streams"]["cam.out"]["rows"]
    assert rows > 10_000 and rows % 1000 == 0
    t = Recording(folder).table("cam.out").column("t").to_numpy()
    np.testing.assert_array_equal(t, np.arange(rows) * 10)
