"""Executors: same outputs under local and Ray, backpressure, drops, crash recovery."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import Graph, OperatorError, run
from pipeline import schemas as sch
from pipeline.testing import CollectSink, ListSource, event_batches, tables_equal


def _batches(n_batches=12, rows=50, seed=0):
    return event_batches(n_batches, rows, seed=seed)


def _chain(batches, *, crash=None, sink_delay_ms=0.0, policy="block", capacity=8, fan_out=True):
    g = Graph("chain")
    g.add("src", ListSource.of(batches))
    g.add("a", "identity", inputs={"in": "src.out"})
    upstream = "a.out"
    if crash is not None:
        g.add("boom", "crash_once", inputs={"in": upstream}, **crash)
        upstream = "boom.out"
    g.add("b", "delay" if sink_delay_ms else "identity", inputs={"in": {"from": upstream, "policy": policy, "capacity": capacity}},
          **({"per_batch_ms": sink_delay_ms} if sink_delay_ms else {}))
    g.add("out", CollectSink(), inputs={"in": "b.out"})
    if fan_out:
        g.add("count", "count_sink", inputs={"in": "a.out"})
    return g


def test_same_outputs_under_every_executor(ray_session):
    batches = _batches()
    outs = {}
    for executor in ("local", "ray", "ray-shm"):
        result = run(_chain(batches), executor)
        outs[executor] = result.results["out"]["batches"]
        assert result.results["count"]["items"] == sum(b.num_rows for b in batches)
    assert tables_equal(outs["local"], batches)
    for executor in ("ray", "ray-shm"):
        assert len(outs[executor]) == len(outs["local"])
        for a, b in zip(outs[executor], outs["local"]):
            assert a.equals(b)


def test_compiled_mode_gives_the_same_outputs_and_warms_up_outside_stream_time(ray_session):
    batches = _batches()
    result = run(_chain(batches, fan_out=False), "ray-compiled")
    out = result.results["out"]["batches"]
    assert len(out) == len(batches)
    for a, b in zip(out, batches):
        assert a.equals(b)
    assert result.node("out")["batches_in"] == len(batches)
    # the first execution (channel set-up) is counted as compile time, not streaming time
    assert result.recovery["compile_s"] > 0
    assert result.recovery["streaming_s"] < result.wall_s


def test_batches_are_copied_out_of_channel_buffers_whole():
    import pyarrow as pa

    from pipeline.executors.actors import _owned

    plain = pa.record_batch({"t": pa.array([1, 2, 3], pa.int64()), "x": pa.array([4, 5, 6], pa.int16())},
                            metadata={"sensor": "dvs"})
    coded = pa.record_batch({"k": pa.array(["a", "b", "a"]).dictionary_encode()})
    for batch in (plain, coded):
        copy = _owned(batch)
        assert copy.equals(batch) and copy.schema.equals(batch.schema, check_metadata=True)
        assert copy.column(0).buffers()[1].address != batch.column(0).buffers()[1].address


def test_compiled_mode_refuses_fan_out_with_a_clear_error(ray_session):
    from pipeline import ConfigError

    with pytest.raises(ConfigError, match="linear chains"):
        run(_chain(_batches(2)), "ray-compiled")


def test_shm_mode_feeds_several_sources_and_keeps_backpressure(ray_session):
    first, second = _batches(10, 40, seed=1), _batches(7, 25, seed=2)
    g = Graph("two")
    g.add("s1", ListSource.of(first))
    g.add("s2", ListSource.of(second))
    g.add("a", "delay", per_batch_ms=2, inputs={"in": {"from": "s1.out", "capacity": 2}})
    g.add("o1", CollectSink(), inputs={"in": "a.out"})
    g.add("o2", CollectSink(), inputs={"in": "s2.out"})
    result = run(g, "ray-shm")
    assert tables_equal(result.results["o1"]["batches"], first)
    assert tables_equal(result.results["o2"]["batches"], second)
    assert 1 <= result.node("a")["queue_max"] <= 2  # never more waves waiting than the edge allows


def test_shm_mode_refuses_lossy_edges_and_names_them(ray_session):
    from pipeline import ConfigError

    with pytest.raises(ConfigError, match=r"b\.in asks for policy drop-oldest"):
        run(_chain(_batches(2), policy="drop-oldest"), "ray-shm")


def test_shm_mode_ends_with_a_clear_error_when_an_actor_dies(ray_session, tmp_path):
    import os

    before = {d for d in os.listdir("/dev/shm") if d.startswith("reflexarc-shm-")}
    crash = {"at_batch": 4, "marker": str(tmp_path / "died"), "mode": "exit"}
    with pytest.raises(OperatorError) as info:
        run(_chain(_batches(20, 30), crash=crash), "ray-shm")
    assert "node 'boom' failed" in str(info.value) and "does not recover" in str(info.value)
    assert (tmp_path / "died").exists()
    # the channels' files are gone, and the session still runs the next graph
    assert {d for d in os.listdir("/dev/shm") if d.startswith("reflexarc-shm-")} <= before
    assert tables_equal(run(_chain(_batches(3), fan_out=False), "ray-shm").results["out"]["batches"], _batches(3))


def test_fused_chains_give_the_same_outputs(ray_session):
    batches = _batches(6)
    result = run(_chain(batches), "ray", fuse="chains")
    assert result.recovery["actors"] < 5
    assert tables_equal(result.results["out"]["batches"], batches)


def test_block_policy_is_lossless_and_bounds_in_flight_batches(ray_session):
    batches = _batches(30, 20)
    result = run(_chain(batches, sink_delay_ms=5, capacity=2), "ray")
    assert tables_equal(result.results["out"]["batches"], batches)
    assert 1 <= result.node("b")["queue_max"] <= 2
    assert result.node("b")["drops_batches"] == 0


def test_drop_oldest_counts_every_drop_under_ray(ray_session):
    batches = _batches(40, 20)
    result = run(_chain(batches, sink_delay_ms=20, policy="drop-oldest", capacity=1), "ray")
    got = len(result.results["out"]["batches"])
    dropped = result.node("b")["drops_batches"]
    assert dropped > 0
    assert got + dropped == 40


def test_drop_oldest_in_a_realtime_local_loop():
    g = Graph("live")
    g.add("src", "synthetic", rate_hz=100_000, batch_items=100, duration_s=0.2, pacing="realtime")
    g.add("slow", "delay", per_batch_ms=5, inputs={"in": {"from": "src.out", "policy": "drop-oldest", "capacity": 1}})
    g.add("out", "count_sink", inputs={"in": "slow.out"})
    result = run(g)
    src = result.node("src")
    assert src["drops_batches"] > 0
    assert result.results["out"]["batches"] + src["drops_batches"] == 200


def test_actor_crash_loses_nothing_and_duplicates_nothing(ray_session, tmp_path):
    batches = _batches(20, 30)
    crash = {"at_batch": 7, "marker": str(tmp_path / "crashed"), "mode": "exit"}
    result = run(_chain(batches, crash=crash), "ray", checkpoint_every=3)
    assert (tmp_path / "crashed").exists()
    assert result.recovery["actor_restarts"] == 1
    got = result.results["out"]["batches"]
    assert tables_equal(got, batches)  # every item exactly once, in order
    assert [b.num_rows for b in got] == [30] * 20


def test_operator_error_names_the_node_under_both_executors(ray_session, tmp_path):
    for executor in ("local", "ray", "ray-shm"):
        crash = {"at_batch": 2, "marker": str(tmp_path / f"m-{executor}"), "mode": "raise"}
        with pytest.raises(OperatorError) as info:
            run(_chain(_batches(6), crash=crash), executor)
        assert "node 'boom' failed" in str(info.value)
        assert "injected failure" in str(info.value)


def test_latency_budget_misses_are_counted_and_trigger_safe_state():
    g = Graph("budget")
    g.add("src", "synthetic", rate_hz=10_000, batch_items=100, duration_s=0.01)
    g.add("slow", "delay", per_batch_ms=3, inputs={"in": "src.out"})
    g.add("out", "count_sink", inputs={"in": "slow.out"}, latency_budget_ms=1, on_budget_miss="safe_state")
    m = run(g).node("out")
    assert m["budget_misses"] == 1
    assert m["safe_states"] == 1
    assert m["e2e_latency"]["p50_ms"] >= 3


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_count_sink_result_does_not_depend_on_batching(cuts):
    whole = _batches(1, 120)[0]
    pieces, start = [], 0
    for c in cuts:
        if start >= 120:
            break
        pieces.append(whole.slice(start, c))
        start += c
    if start < 120:
        pieces.append(whole.slice(start))
    g = Graph("cut")
    g.add("src", ListSource.of(pieces))
    g.add("s", "count_sink", inputs={"in": "src.out"})
    res = run(g).results["s"]
    assert res["items"] == 120
    assert res["t_sum"] == int(sch.column(whole, "t").sum())


def test_a_lone_item_for_a_node_that_feeds_no_other_goes_straight_to_it():
    # Stage.step hands a one-item wave for a sink (or, under Ray, a lone node) straight
    # to the node; it must give what the topological walk gives
    from pipeline.stage import Stage

    batches = _batches(3, 10)
    g = _chain(batches, fan_out=False)
    g.check()
    direct, walked = Stage(g, ["a"]), Stage(g, ["a"])
    assert direct._direct == {("src", "out"): ("a", "in")}
    assert Stage(g, ["a", "b"])._direct == {("a", "out"): ("b", "in")}  # a feeds b: walked
    for seq, b in enumerate(batches):
        item = ("src", "out", b, seq, 0)
        got, want = direct.step([item]), walked._run([item], flush=False)
        assert [i[:2] + i[3:4] for i in got] == [i[:2] + i[3:4] for i in want] == [("a", "out", seq)]
        assert got[0][2] is want[0][2] is b
    for key in ("batches_in", "items_in", "batches_out", "items_out"):
        assert direct.snapshots()[0][key] == walked.snapshots()[0][key]


def test_a_lone_max_paced_source_numbers_every_form_it_yields():
    # the lone-source loop handles (port, batch) pairs itself and the rest through `emitted`
    from pipeline.feed import Feed
    from pipeline.operator import Source

    batches = _batches(4, 5)

    class Mixed(Source):
        name = "mixed_forms"
        outputs = {"out": "any"}

        def schemas(self, inputs):
            return {"out": batches[0].schema}

        def generate(self):
            yield batches[0]
            yield ("out", batches[1])
            yield [("out", batches[2]), ("out", batches[3])]

    g = Graph("mixed")
    g.add("src", Mixed())
    g.add("n", "count_sink", inputs={"in": "src.out"})
    g.check()
    feed = Feed(g)
    waves = list(feed)
    assert [items[0][3] for _, items in waves] == [0, 1, 2, 3]
    assert all(items[0][2] is b for (_, items), b in zip(waves, batches))
    assert feed.metrics["src"].batches_out == 4 and feed.metrics["src"].items_out == 20
    assert feed.seq == {("src", "out"): 4}
