"""Shadow runs for canary rollouts: a candidate model next to the live one, on the same inputs.

`Shadow(op, path, version)` builds a twin of a running operator (same class, params and node
name), sets it up, restores the live operator's state into it, and has it take the candidate model (`swap_model`, which loads and checks
it). It then wraps the live operator's `process` for as long as the canary lasts: every batch
goes to the live operator first, whose outputs go on downstream as before, then to the twin,
whose outputs are only compared with the live ones and dropped. No actuator ever sees what
the candidate decided.

Agreement: for outputs with a `label` column (classifier decisions, e.g. `snn`), the live and
the shadow decisions are paired in order (each model decides once per gesture) and agree when
their labels are equal; for other outputs, a wave's batches agree when their numeric columns
are close (5 % or 1e-3). Latency: each call of either model is timed. Errors: an exception in
the twin is counted, and the first one kept as the reason.
"""

from __future__ import annotations

import copy
import time
from collections import deque

import numpy as np

from pipeline.errors import ModelError
from pipeline.metrics import Latencies
from pipeline.operator import Operator, emitted


class Shadow:
    """A candidate model shadowing the live one on one operator (see the module docstring)."""

    def __init__(self, op: Operator, path: str, version: str):
        twin = type(op)(op.params, node=op.node)
        twin.setup()
        try:
            # the twin starts where the live operator stands (explicit state), so both are in the
            # same phase of the stream: a decision the live one made just before is not made twice
            twin.restore(copy.deepcopy(op.state()))
            if not twin.swap_model(path, version):
                raise ModelError(f"node '{op.node}' ({op.name}) takes no model")
        except Exception:
            twin.close()
            raise
        self.op, self.twin, self.version = op, twin, version
        self.live_ms, self.shadow_ms = Latencies(), Latencies()
        self.compared = self.agree = self.errors = self.calls = 0
        self.error: str | None = None
        self._live_labels: deque = deque()
        self._shadow_labels: deque = deque()
        self._live = op.process  # the bound method; the wrapper below shadows it on the instance
        op.process = self._process

    def _process(self, port, batch, *header):
        t0 = time.perf_counter_ns()
        live = self._live(port, batch, *header)
        t1 = time.perf_counter_ns()
        live = list(emitted(self.op, live))
        self.live_ms.add(t1 - t0)
        self.calls += 1
        if self.error is None or self.errors < 100:
            try:
                t0 = time.perf_counter_ns()
                out = list(emitted(self.twin, self.twin.process(port, batch, *header)))
                self.shadow_ms.add(time.perf_counter_ns() - t0)
                self._compare(live, out)
            except Exception as exc:  # the candidate's failure is a verdict, never the loop's
                self.errors += 1
                self.error = self.error or f"node '{self.op.node}': {type(exc).__name__}: {exc}"
        return live

    def _compare(self, live: list, out: list) -> None:
        if any(b.schema.get_field_index("label") >= 0 for _, b in live + out):
            for side, batches in ((self._live_labels, live), (self._shadow_labels, out)):
                for _, b in batches:
                    if b.schema.get_field_index("label") >= 0:
                        side.extend(b.column("label").to_pylist())
            while self._live_labels and self._shadow_labels:
                self.compared += 1
                self.agree += int(self._live_labels.popleft() == self._shadow_labels.popleft())
            return
        if not live and not out:
            return
        self.compared += 1
        if len(live) != len(out):
            return
        for (pa_, a), (pb, b) in zip(live, out):
            if pa_ != pb or a.num_rows != b.num_rows or a.schema.names != b.schema.names:
                return
            for name in a.schema.names:
                x, y = a.column(name), b.column(name)
                if x.type.id != y.type.id or not (x.type.equals(y.type)):
                    return
                try:
                    xa, ya = np.asarray(x.to_numpy(zero_copy_only=False)), np.asarray(y.to_numpy(zero_copy_only=False))
                except Exception:
                    if x != y:
                        return
                    continue
                if xa.dtype.kind in "fiub" and not np.allclose(xa, ya, rtol=0.05, atol=1e-3, equal_nan=True):
                    return
        self.agree += 1

    def report(self) -> dict:
        live, shadow = self.live_ms.percentiles(), self.shadow_ms.percentiles()
        return {"version": self.version, "node": self.op.node, "calls": self.calls, "compared": self.compared,
                "agree": self.agree, "errors": self.errors, "error": self.error,
                "live_p99_ms": live["p99_ms"], "shadow_p99_ms": shadow["p99_ms"],
                "live_p50_ms": live["p50_ms"], "shadow_p50_ms": shadow["p50_ms"]}

    def remove(self) -> None:
        """Stop shadowing: the live operator's own `process` again, the twin closed."""
        if self.op.__dict__.get("process") == self._process:
            del self.op.process
        try:
            self.twin.close()
        except Exception:
            pass
