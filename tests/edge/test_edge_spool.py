"""The telemetry spool keeps order, bounds its memory by spilling to disk, and forgets on ack."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.spool import Spool


def test_spills_past_memory_limit_and_reads_back_in_order(tmp_path):
    spool = Spool(tmp_path / "spill.bin", mem_bytes=1000)
    payloads = [bytes([i % 251]) * (50 + i) for i in range(100)]
    try:
        for p in payloads:
            spool.push(p)
        assert spool.mem_bytes <= 1000
        assert spool.spilled > 80
        assert (tmp_path / "spill.bin").stat().st_size > 0
        assert [d for _, d in spool.since(0, 1000)] == payloads
        spool.ack(49)
        assert [s for s, _ in spool.since(0, 5)] == [50, 51, 52, 53, 54]
        assert [d for _, d in spool.since(60, 3)] == payloads[60:63]
        spool.ack(99)
        assert len(spool) == 0 and (tmp_path / "spill.bin").stat().st_size == 0
    finally:
        spool.close()
    assert not (tmp_path / "spill.bin").exists()


def test_rebase_continues_a_restarted_robots_numbering(tmp_path):
    spool = Spool(tmp_path / "s.bin")
    for i in range(3):
        spool.push(b"x%d" % i)
    spool.rebase(40)
    assert [(s, d) for s, d in spool.since(0, 10)] == [(40, b"x0"), (41, b"x1"), (42, b"x2")]
    assert spool.push(b"x3") == 43
    spool.close()


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=60), mem=st.integers(0, 2000),
       acks=st.lists(st.integers(0, 70), max_size=5))
def test_any_ack_pattern_keeps_exactly_the_unacked_tail(tmp_path_factory, sizes, mem, acks):
    spool = Spool(tmp_path_factory.mktemp("sp") / "s.bin", mem_bytes=mem)
    data = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    try:
        for d in data:
            spool.push(d)
        for a in acks:
            spool.ack(min(a, len(data) - 1))
        first = spool.acked + 1
        assert [s for s, _ in spool.since(0, 10**6)] == list(range(first, len(data)))
        assert [d for _, d in spool.since(first, 10**6)] == data[first:]
        assert spool.mem_bytes <= max(mem, 0)
    finally:
        spool.close()


def test_unacked_messages_survive_a_clean_restart(tmp_path):
    spool = Spool(tmp_path / "s.bin", mem_bytes=100)
    for i in range(20):
        spool.push(b"m%02d" % i * 10)
    spool.ack(4)
    spool.close()
    again = Spool(tmp_path / "s.bin", mem_bytes=100)
    try:
        assert [s for s, _ in again.since(0, 100)] == list(range(5, 20))
        assert [d for _, d in again.since(5, 100)] == [b"m%02d" % i * 10 for i in range(5, 20)]
        assert again.acked == 4 and again.push(b"next") == 20
    finally:
        again.ack(20)
        again.close()
    assert not (tmp_path / "s.pending").exists()
