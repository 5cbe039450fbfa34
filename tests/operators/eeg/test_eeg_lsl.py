"""LSL inlet against a real outlet on loopback: data, clock offsets, stream loss -> safe stop."""

import json

import numpy as np
import pytest

from operators.eeg.sources import LslSource
from operators.eeg.synth import LslPlayer, SynthSpec, synth_eeg
from pipeline import run
from pipeline import schemas as sch
from pipeline.errors import ReflexarcError
from pipeline.graph import Graph
from pipeline.testing import CollectSink

pytest.importorskip("pylsl")
CH = list(SynthSpec().channels)


def _lsl_graph(name, sink, **params):
    g = Graph("lsl")
    params = {"resolve_timeout_s": 5.0, **params}
    g.add("src", "lsl_source", stream_name=name, channels=CH, rate_hz=250.0, **params)
    if isinstance(sink, CollectSink):
        g.add("out", sink, inputs={"in": "src.out"})
    else:
        g.add("filter", "eeg_filter", inputs={"in": "src.out"})
        g.add("decoder", "ssvep_decoder", inputs={"in": "filter.out"}, window_s=1.0, hop_s=0.25,
              idle_threshold=0.0)
        g.add("chair", "wheelchair_sink", inputs={"in": "decoder.out"}, dwell=1, **sink)
    return g


def test_lsl_inlet_receives_what_the_outlet_sends():
    data = np.random.default_rng(0).normal(0, 10, (250, len(CH))).astype(np.float32)
    g = _lsl_graph("rx-test-data", CollectSink(), duration_s=1.0, vanish_s=3.0)
    player = LslPlayer(data, 250.0, CH, name="rx-test-data", chunk=25, speed=2.0).start()
    try:
        result = run(g)
    finally:
        player.stop()
    batches = result.results["out"]["batches"]
    got = np.column_stack([np.concatenate([sch.column(b, c) for b in batches]) for c in CH])
    np.testing.assert_array_equal(got, data)
    t = np.concatenate([sch.column(b, "t") for b in batches])
    assert np.all(np.diff(t) > 0)


def test_lsl_source_follows_the_clock_offset():
    data = np.zeros((500, len(CH)), np.float32)
    src = LslSource(LslSource.Params(stream_name="rx-test-clock", channels=CH, rate_hz=250.0,
                                     stall_s=0.2, vanish_s=0.8, on_vanish="end", clock_every_s=0.1))
    player = LslPlayer(data, 250.0, CH, name="rx-test-clock", chunk=10, linger_s=0.5).start()
    try:
        src.setup()
        n = sum(b.num_rows for b in src.generate())
    finally:
        src.close()
        player.stop()
    assert n == 500
    stats = src.result()
    assert stats["offset_updates"] >= 2 and abs(stats["clock_offset_s"]) < 0.1  # same host
    assert stats["vanished"]


class _Ticks:
    """A clock that moves 0.1 s each time it is read: the source reads it once per pull, so
    idle time counts pulls that brought nothing, however long the machine took for them."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 0.1
        return self.now


def test_lsl_source_counts_one_stall_before_the_stream_goes():
    import pylsl

    data = np.arange(500 * len(CH), dtype=np.float32).reshape(500, len(CH))
    # stall after two empty pulls; loss only when the outlet is really gone (LostError)
    src = LslSource(LslSource.Params(stream_name="rx-test-stall", channels=CH, rate_hz=250.0,
                                     stall_s=0.15, vanish_s=1000.0, on_vanish="end"))
    src.clock = _Ticks()
    info = pylsl.StreamInfo("rx-test-stall", "EEG", len(CH), 250.0, pylsl.cf_float32, f"rx-test-stall-{id(src)}")
    outlet = pylsl.StreamOutlet(info)
    try:
        src.setup()  # the inlet's data connection is open when this returns
        outlet.push_chunk(data)  # the whole stream waits in the inlet before the first pull
        batches = src.generate()
        got = []
        while sum(len(b) for b in got) < len(data):
            got.append(samples_matrix(next(batches)))
        del outlet  # the stream goes
        got += [samples_matrix(b) for b in batches]
    finally:
        src.close()
    np.testing.assert_array_equal(np.concatenate(got), data)
    stats = src.result()
    assert stats["stalls"] == 1 and stats["vanished"], stats


def samples_matrix(batch):
    return np.column_stack([sch.column(batch, c) for c in CH])


def test_wrong_channel_count_is_a_clear_error():
    data = np.zeros((50, 3), np.float32)
    g = _lsl_graph("rx-test-3ch", CollectSink(), duration_s=0.2)
    player = LslPlayer(data, 250.0, ["a", "b", "c"], name="rx-test-3ch", wait_consumer_s=2.0).start()
    try:
        with pytest.raises(ReflexarcError, match="has 3 channels, the config lists 9"):
            run(g)
    finally:
        player.stop()


def test_no_stream_is_a_clear_error():
    with pytest.raises(ReflexarcError, match="no LSL stream with name='rx-test-nobody'"):
        run(_lsl_graph("rx-test-nobody", CollectSink(), resolve_timeout_s=0.5, duration_s=0.2))


def test_vanished_stream_stops_the_wheelchair(tmp_path):
    rec = synth_eeg(SynthSpec(n_trials=2, seed=5, idle_s=0.5, trial_s=4.0))
    log = tmp_path / "chair.jsonl"
    g = _lsl_graph("rx-test-vanish", {"log_path": str(log)}, vanish_s=1.0, stall_s=0.3)
    player = LslPlayer(rec.data, 250.0, CH, name="rx-test-vanish", chunk=10, speed=4.0,
                       stop_after=1250).start()
    try:
        with pytest.raises(ReflexarcError, match="vanished"):
            run(g)
    finally:
        player.stop()
    issued = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(c["reason"] == "confirmed" for c in issued), "the chair never moved, so the test proves nothing"
    # whatever the decoder had confirmed before (a move, or a stop), the vanished stream ends
    # the log with the runtime's safety stop
    last = issued[-1]
    assert last["command"] == "stop" and last["reason"].startswith("safety: "), last


def test_vanished_stream_can_end_the_run_with_a_stop():
    rec = synth_eeg(SynthSpec(n_trials=2, seed=5, idle_s=0.5, trial_s=4.0))
    g = _lsl_graph("rx-test-end", {}, vanish_s=1.0, stall_s=0.3, on_vanish="end")
    player = LslPlayer(rec.data, 250.0, CH, name="rx-test-end", chunk=10, speed=4.0,
                       stop_after=1250).start()
    try:
        result = run(g)
    finally:
        player.stop()
    chair = result.results["chair"]
    assert chair["current"] == "stop" and chair["commands"] >= 2
