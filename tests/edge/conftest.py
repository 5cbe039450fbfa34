"""Fixtures for edge tests: a keys folder, free loopback ports, a byte-capturing TCP proxy."""

from __future__ import annotations

import select
import socket
import threading

import pytest

from edge.keys import init_fleet, make_pair


@pytest.fixture()
def keys(tmp_path):
    folder = tmp_path / "keys"
    init_fleet(folder, ["r1", "r2", "tx"])
    make_pair(folder, "rx")
    make_pair(folder, "stranger")  # a valid key pair nobody authorized
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """Forwards 127.0.0.1:listen -> 127.0.0.1:target and keeps every byte it saw."""

    def __init__(self, target: int):
        self.target = target
        self.port = free_port()
        self.seen = bytearray()
        self._stop = threading.Event()
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._srv.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        pairs = []
        try:
            while not self._stop.is_set():
                try:
                    a, _ = self._srv.accept()
                    b = socket.create_connection(("127.0.0.1", self.target), timeout=1)
                    pairs.append((a, b))
                except (TimeoutError, OSError):
                    pass
                socks = [s for p in pairs for s in p]
                if not socks:
                    continue
                ready, _, _ = select.select(socks, [], [], 0.05)
                for s in ready:
                    a, b = next(p for p in pairs if s in p)
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        continue
                    self.seen += data
                    (b if s is a else a).sendall(data)
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self._srv.close()


@pytest.fixture()
def port():
    """A function giving a free loopback TCP port."""
    return free_port


@pytest.fixture()
def proxy_factory():
    made = []

    def make(target):
        p = Proxy(target)
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            p.close()
