"""Offload: run one stage of a robot's graph on the cluster, within a latency budget.

`offload` sends each batch to an offload server (CURVE DEALER -> ROUTER) and waits at
most `budget_ms` for the answer; when it is late (or the link is down) the robot runs
its local version of the stage (`fallback`) on the same batch and counts it. A late
answer that turns up afterwards is recognised by its request id and discarded.

    nodes:
      detect:
        op: offload
        inputs: {in: camera.out}
        params: {endpoint: "tcp://cluster:5700", keys: keys, identity: robot-1, peer: manager,
                 budget_ms: 20, fallback: {op: identity}}
"""

from __future__ import annotations

import time
from pathlib import Path

import zmq
from pydantic import Field

from edge import keys as K
from edge import wire
from pipeline.errors import LinkError
from pipeline.operator import Operator, Params, emitted, make, register


class OffloadParams(Params):
    endpoint: str = Field(..., description="the offload server, tcp://HOST:PORT")
    keys: str = Field(..., description="keys folder")
    identity: str = Field(..., description="this robot's key name")
    peer: str = Field("manager", description="the server's key name")
    budget_ms: float = Field(20.0, gt=0, description="wait this long for the cluster's answer")
    fallback: dict = Field(default_factory=lambda: {"op": "identity"},
                           description="the local version of the stage: {op: NAME, params: {...}}")
    connect_timeout_s: float = Field(2.0, ge=0, description="at setup, wait this long for the CURVE handshake")


@register
class Offload(Operator):
    """A stage run remotely when the answer comes within budget, locally otherwise (counted)."""

    name = "offload"
    inputs = {"in": "any"}
    outputs = {"out": "any"}
    Params = OffloadParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.local = make(self.params.fallback["op"], self.params.fallback.get("params"), node=f"{self.node}.local")
        self.remote = self.fallbacks = self.late = 0
        self._ctx = self._sock = None
        self._id = 0

    def schemas(self, inputs):
        return {"out": self.local.schemas({"in": inputs["in"]})["out"]}

    def setup(self):
        self.local.setup()
        self._ctx = zmq.Context()
        folder = Path(self.params.keys)
        self._sock = K.client_socket(self._ctx, zmq.DEALER, folder / f"{self.params.identity}.key_secret",
                                     folder / f"{self.params.peer}.key")
        self._sock.immediate = True
        monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            self._sock.connect(self.params.endpoint)
            monitor.poll(int(self.params.connect_timeout_s * 1000))  # not up in time: start on the fallback
        finally:
            self._sock.disable_monitor()
            monitor.close(linger=0)

    def process(self, port, batch):
        self._id += 1
        end = time.monotonic() + self.params.budget_ms / 1000.0
        try:
            wire.send(self._sock, b"req", {"id": self._id}, batch, flags=zmq.NOBLOCK)
            while (left := end - time.monotonic()) > 0 and self._sock.poll(max(int(left * 1000), 1)):
                kind, head, frames = wire.parse(self._sock.recv_multipart(copy=False))
                if head.get("id") == self._id and kind == b"rep" and len(frames) == 2:
                    self.remote += 1
                    return wire.frames_batch(*frames)
                self.late += 1
        except (zmq.Again, LinkError):
            pass
        self.fallbacks += 1
        return [("out", b) for _, b in emitted(self.local, self.local.process("in", batch))]

    def close(self):
        self.local.close()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._ctx.term()
            self._sock = self._ctx = None

    def result(self):
        return {"remote": self.remote, "fallbacks": self.fallbacks, "late": self.late}
