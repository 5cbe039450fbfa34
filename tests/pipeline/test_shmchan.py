"""Shared-memory channels (`ray-shm`): what goes in comes out, whole, across processes."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pyarrow as pa
import pytest

from pipeline import shmchan


def _events(n: int, start: int = 0, width: int = 64) -> pa.RecordBatch:
    t = np.arange(start, start + n, dtype=np.int64)
    return pa.record_batch(
        {"t": t, "x": (t % width).astype(np.uint16), "y": (t % 7).astype(np.uint16), "p": (t % 2).astype(np.int8)},
        metadata={"width": str(width)},
    )


def _waves():
    """Small and ring-sized batches, a schema change, dictionaries, nulls, a non-Arrow value."""
    out = []
    for i in range(40):
        items = [("cam", "out", _events(50 + 37 * i, start=1000 * i, width=64 if i < 20 else 128), i, 10 + i)]
        if i % 9 == 0:
            items.append(("cam", "big", _events(30_000, start=i), i, 10 + i))  # larger than half the ring: spilled
        if i % 5 == 0:
            labels = pa.array(["left", "right", None, "left"][: 1 + i % 4]).dictionary_encode()
            items.append(("lbl", "out", pa.record_batch({"k": labels}), i, 10 + i))
        if i % 11 == 0:
            items.append(("ctl", "out", {"note": f"wave {i}"}, i, 10 + i))
        out.append((i, i == 39, items))
    return out


def _echo(a: dict, b: dict, n: int) -> None:
    inbound, outbound = shmchan.Channel(a, "r"), shmchan.Channel(b, "w", capacity=3)
    for _ in range(n):
        wave, finish, items = inbound.recv()
        outbound.send(wave, finish, items)


def test_waves_cross_two_processes_whole_through_wraps_and_spills(tmp_path):
    a = shmchan.create(str(tmp_path / "a"), 1 << 17)
    b = shmchan.create(str(tmp_path / "b"), 1 << 17)
    waves = _waves()
    child = mp.get_context("fork").Process(target=_echo, args=(a, b, len(waves)))
    child.start()
    out, back = shmchan.Channel(a, "w", capacity=3), shmchan.Channel(b, "r")
    got = []
    sender = threading.Thread(target=lambda: [out.send(*w) for w in waves])
    sender.start()
    for _ in waves:
        got.append(back.recv())
    sender.join(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert out.spills > 0 and out.pos > 2 * out.size  # it wrapped (twice) and it spilled
    for (wave, finish, items), (w2, f2, items2) in zip(waves, got):
        assert (wave, finish) == (w2, f2)
        assert len(items) == len(items2)
        for (n, p, b1, s, t), (n2, p2, b2, s2, t2) in zip(items, items2):
            assert (n, p, s, t) == (n2, p2, s2, t2)
            if isinstance(b1, pa.RecordBatch):
                assert b2.equals(b1) and b2.schema.equals(b1.schema, check_metadata=True)
            else:
                assert b2 == b1
    assert not list(tmp_path.glob("*.spill*"))  # the reader removes each spill file


def test_received_batches_own_their_memory(tmp_path):
    spec = shmchan.create(str(tmp_path / "c"), 1 << 16)
    w, r = shmchan.Channel(spec, "w", capacity=2), shmchan.Channel(spec, "r")
    kept = []
    for i in range(30):  # the ring is reused many times over while the batches are kept
        w.send(i, False, [("cam", "out", _events(500, start=i * 500), i, 0)])
        kept.append(r.recv()[2][0][2])
    for i, batch in enumerate(kept):
        assert batch.equals(_events(500, start=i * 500))


def test_writer_blocks_at_capacity_and_reports_while_it_waits(tmp_path):
    spec = shmchan.create(str(tmp_path / "d"), 1 << 20)
    w, r = shmchan.Channel(spec, "w", capacity=2), shmchan.Channel(spec, "r")
    batch = _events(100)
    w.send(0, False, [("cam", "out", batch, 0, 0)])
    w.send(1, False, [("cam", "out", batch, 1, 0)])

    class Waited(Exception):
        pass

    def idle():
        raise Waited

    with pytest.raises(Waited):
        w.send(2, False, [("cam", "out", batch, 2, 0)], idle=idle)
    assert r.recv()[0] == 0
    w.send(2, False, [("cam", "out", batch, 2, 0)], idle=idle)  # one slot is free again
    assert [r.recv()[0], r.recv()[0]] == [1, 2]
    assert w.queue_max == 2


def test_abort_wakes_a_waiting_reader(tmp_path):
    spec = shmchan.create(str(tmp_path / "e"), 1 << 16)
    reader = shmchan.Channel(spec, "r")
    failure = []

    def wait():
        try:
            reader.recv()
        except shmchan.Aborted as exc:
            failure.append(exc)

    waiting = threading.Thread(target=wait)
    waiting.start()
    other = shmchan.Channel(spec, "w")
    other.abort()
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    assert failure and "aborted" in str(failure[0])
