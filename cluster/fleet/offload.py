"""The cluster side of `offload`: serves one pipeline stage to robots over CURVE ZeroMQ.

The stage is an operator built from the registry. With `ray=True` it runs inside a Ray
actor (the cluster's executor), otherwise in this process; requests are answered in
arrival order with the request id, so the robot can drop answers that came too late.
"""

from __future__ import annotations

import threading
from pathlib import Path

import zmq

from edge import keys as K
from edge import wire
from pipeline.errors import LinkError
from pipeline.operator import emitted, make


class _Stage:
    def __init__(self, op: str, params: dict | None):
        self.op = make(op, params)
        self.op.setup()

    def run(self, batch):
        out = list(emitted(self.op, self.op.process("in", batch)))
        return out[0][1] if out else None


def serve_offload(bind: str, keys: str, op: str, params: dict | None = None, stop: threading.Event | None = None,
                  identity: str = "manager", ray: bool = False, ready: threading.Event | None = None) -> dict:
    """Answer offload requests until `stop` is set; returns counts."""
    stop = stop or threading.Event()
    if ray:
        import ray as _ray

        stage = _ray.remote(_Stage).remote(op, params)

        def run(batch):
            return _ray.get(stage.run.remote(batch))
    else:
        local = _Stage(op, params)
        run = local.run
    counts = {"served": 0, "malformed": 0}
    ctx = zmq.Context()
    gate = K.KeyGate(ctx, K.authorized(keys))
    sock = K.server_socket(ctx, zmq.ROUTER, Path(keys) / f"{identity}.key_secret")
    try:
        sock.bind(bind)
        if ready is not None:
            ready.set()
        while not stop.is_set():
            if not sock.poll(50):
                continue
            parts = sock.recv_multipart(copy=False)
            try:
                kind, head, frames = wire.parse(parts[1:])
                if kind != b"req" or len(frames) != 2:
                    raise LinkError("not an offload request")
                out = run(wire.frames_batch(*frames))
            except LinkError:
                counts["malformed"] += 1
                continue
            if out is not None:
                wire.send(sock, b"rep", {"id": head.get("id")}, out, route=[parts[0]], flags=zmq.NOBLOCK)
                counts["served"] += 1
    finally:
        sock.close(linger=0)
        gate.stop()
        ctx.term()
    return {**counts, "refused_keys": gate.refused}
