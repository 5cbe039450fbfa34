"""zmq_out -> zmq_in over CURVE on loopback: lossless, encrypted, and closed to strangers."""

from __future__ import annotations

import threading
import time

import zmq

from edge import keys as K
from edge import wire
from pipeline.graph import Graph
from pipeline.run import run


def _rx_graph(keys, port, idle_s=3.0, start_s=10.0):
    g = Graph("rx")
    g.add("link", "zmq_in", endpoint=f"tcp://127.0.0.1:{port}", bind=True, keys=str(keys), identity="rx",
          kind="samples", channels=2, rate_hz=1000.0, idle_timeout_s=idle_s,
          start_timeout_s=start_s)
    g.add("sink", "count_sink", inputs={"in": "link.out"})
    return g


def _tx_graph(keys, endpoint, identity="tx", duration_s=0.2):
    g = Graph("tx")
    g.add("sensor", "synthetic", kind="samples", channels=2, rate_hz=1000.0, batch_items=20, duration_s=duration_s)
    g.add("link", "zmq_out", inputs={"in": "sensor.out"}, endpoint=endpoint, keys=str(keys), identity=identity,
          peer="rx", send_timeout_ms=300)
    g.add("local", "count_sink", inputs={"in": "sensor.out"})
    return g


def _run_pair(keys, endpoint, port, identity="tx", idle_s=3.0):
    box = {}
    rx_graph = _rx_graph(keys, port, idle_s, start_s=idle_s * 2)
    tx_graph = _tx_graph(keys, endpoint, identity)  # built (plug-ins loaded) before the clock starts
    rx = threading.Thread(target=lambda: box.update(rx=run(rx_graph)))
    rx.start()
    time.sleep(0.3)
    try:
        box["tx"] = run(tx_graph)
    finally:
        rx.join(timeout=20)
    assert not rx.is_alive()
    return box["tx"], box["rx"]


def test_batches_cross_the_link_unchanged_and_encrypted(keys, proxy_factory, port):
    port = port()
    proxy = proxy_factory(port)
    tx, rx = _run_pair(keys, f"tcp://127.0.0.1:{proxy.port}", port)
    sent, got = tx.results["local"], rx.results["sink"]
    assert tx.results["link"] == {"sent": 10, "dropped": 0, "refused": 0}
    assert (got["batches"], got["items"], got["t_sum"]) == (sent["batches"], sent["items"], sent["t_sum"])
    # the Arrow IPC payload names its fields and kind in plain text; none of it is on the wire
    assert len(proxy.seen) > 10 * 20 * 2 * 4
    for marker in (b"reflexarc", b"ch0", b"rate_hz", b"samples"):
        assert marker not in bytes(proxy.seen)


def test_unknown_key_is_refused(keys, port):
    port = port()
    tx, rx = _run_pair(keys, f"tcp://127.0.0.1:{port}", port, identity="stranger", idle_s=1.5)
    assert rx.results["sink"]["batches"] == 0
    # the receiver's key gate refused the one handshake (libzmq does not retry a refused one),
    # and the sender saw its handshake refused and counted each of its 10 batches as dropped
    assert rx.results["link"]["refused_keys"] == 1 and rx.results["link"]["received"] == 0
    assert tx.results["link"] == {"sent": 0, "dropped": 10, "refused": 1}


def test_gate_counts_refused_keys_and_admits_known_ones(keys, port):
    ctx = zmq.Context()
    gate = K.KeyGate(ctx, K.authorized(keys))
    port = port()
    server = K.server_socket(ctx, zmq.ROUTER, keys / "rx.key_secret")
    clients = []
    try:
        server.bind(f"tcp://127.0.0.1:{port}")
        for name in ("stranger", "r1"):
            c = K.client_socket(ctx, zmq.DEALER, keys / f"{name}.key_secret", keys / "rx.key")
            c.connect(f"tcp://127.0.0.1:{port}")
            wire.send(c, b"hi", {"from": name})
            clients.append(c)
        assert server.poll(3000)
        parts = server.recv_multipart(copy=False)
        assert wire.parse(parts[1:])[1] == {"from": "r1"}
        assert parts[1].get("User-Id") == K.load_public(keys / "r1.key").decode()
        assert not server.poll(500)  # the stranger's message never arrives
        assert gate.refused >= 1
    finally:
        for c in clients:
            c.close(linger=0)
        server.close(linger=0)
        gate.stop()
        ctx.term()


def test_client_pins_the_server_key(keys, port):
    """A server with another key pair (an impostor manager) gets nothing from a robot."""
    ctx = zmq.Context()
    port = port()
    impostor = K.server_socket(ctx, zmq.ROUTER, keys / "rx.key_secret")  # not the manager's key
    robot = K.client_socket(ctx, zmq.DEALER, keys / "r1.key_secret", keys / "manager.key")
    try:
        impostor.bind(f"tcp://127.0.0.1:{port}")
        robot.connect(f"tcp://127.0.0.1:{port}")
        robot.send_multipart([b"hello", b"{}"], flags=zmq.NOBLOCK) if robot.poll(0, zmq.POLLOUT) else None
        assert not impostor.poll(800)
    finally:
        robot.close(linger=0)
        impostor.close(linger=0)
        ctx.term()
