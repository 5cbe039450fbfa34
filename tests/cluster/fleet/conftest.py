"""Fixtures for fleet tests: keys, ports, a manager in a thread, agents, recording readers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster.fleet.manager import Manager, ManagerOptions
from edge.keys import init_fleet

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def keys(tmp_path):
    folder = tmp_path / "keys"
    init_fleet(folder, [f"r{i}" for i in range(1, 25)])
    return folder


@pytest.fixture()
def manager(tmp_path, keys):
    """A manager serving in a thread: yields (manager, endpoint)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    mgr = Manager(ManagerOptions(bind=endpoint, keys=str(keys), out=str(tmp_path / "fleet"), heartbeat_s=0.2,
                                 lost_after_s=1.0))
    stop = threading.Event()
    thread = threading.Thread(target=mgr.serve, args=(stop,), daemon=True)
    thread.start()
    assert mgr.ready.wait(10)
    try:
        yield mgr, endpoint
    finally:
        stop.set()
        thread.join(timeout=10)


def wait_for(cond, timeout_s=15.0, what="condition"):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def seqs(folder: Path, stream: str) -> list[int]:
    """The sequence numbers recorded for `stream`, in file order, across segments."""
    from pipeline.recording import StreamFile, _group_files

    out = []
    for name in _group_files(folder).get(stream, []):
        for _, meta in StreamFile(folder / name).batches(with_meta=True):
            out.append(int(meta[b"seq"]))
    return out


def spawn(*args, log: Path | None = None) -> subprocess.Popen:
    """`python -m ARGS` from the repo root (fast start: no CLI plug-ins)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def kill(proc: subprocess.Popen, sig=None) -> None:
    if proc.poll() is None:
        if sig is None:
            proc.kill()
        else:
            proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture()
def helpers():
    return type("H", (), {"wait_for": staticmethod(wait_for), "seqs": staticmethod(seqs),
                          "spawn": staticmethod(spawn), "kill": staticmethod(kill),
                          "free_port": staticmethod(free_port)})
