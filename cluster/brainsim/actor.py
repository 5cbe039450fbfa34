"""A partition as a Ray actor: it builds its own synapses, maps its node's board and runs
whole chunks of windows per call; the spikes of each window go through the board, not Ray.

Runs are one at a time (the default concurrency group); `abort` has a group of its own so
the driver can stop a partition that waits on a dead peer.
"""

from __future__ import annotations

import os
import time

import numpy as np
import ray

from cluster.brainsim import exchange as x
from cluster.brainsim.partition import Layout, Partition


@ray.remote(num_cpus=1, concurrency_groups={"control": 1})
class PartitionActor:
    def __init__(self, layout: Layout, lo: int, hi: int, me: int):
        t0 = time.perf_counter()
        self.part = Partition(layout, lo, hi)
        self.build_s = time.perf_counter() - t0
        self.me = me
        self.board: x.Board | None = None
        self.bridge: x.Bridge | None = None
        self.busy_s = 0.0

    def where(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def info(self) -> dict:
        return {"lo": self.part.lo, "hi": self.part.hi, "synapses": self.part.synapses,
                "synapse_bytes": self.part.synapse_bytes(), "build_s": self.build_s}

    def attach(self, path: str, layout: x.BoardLayout, bridge: dict | None = None):
        """Map the node's board; the node's first partition also runs its bridge (if any) and
        returns the address its peers connect to."""
        self.board = x.Board(layout, path)
        self.part.run_on_board(0, self.board, self.me)  # load the board kernel now, not in the first window
        if bridge is not None:
            self.bridge = x.Bridge(self.board, **bridge)
            return self.bridge.listen(ray.util.get_node_ip_address())
        return None

    def connect(self, peers: dict) -> None:
        self.bridge.connect(peers)

    def run(self, n_windows: int, spin_us: float, timeout_s: float) -> np.ndarray:
        c0 = time.thread_time()
        try:
            return self.part.run_on_board(n_windows, self.board, self.me, spin_us, timeout_s)
        finally:
            self.busy_s += time.thread_time() - c0

    def busy(self) -> dict:
        return {"busy_s": self.busy_s, "wait_s": self.part.wait_s}

    @ray.method(concurrency_group="control")
    def abort(self) -> None:
        if self.board is not None and self.board.words is not None:
            self.board.abort()

    def close(self, unlink: bool) -> None:
        if self.bridge is not None:
            self.bridge.close()
        if self.board is not None:
            self.board.close(unlink=unlink)
