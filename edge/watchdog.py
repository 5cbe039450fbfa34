"""The watchdog that puts a robot's actuators into their safe state, and a stand-in actuator.

The agent's loop calls `beat()` after every wave. A separate thread trips the watchdog
when no beat came within the deadline (a hung or slow stage); the loop itself trips it
when a stage fails or a stop command arrives. Tripping calls `safe_state(reason)` on
every actuator sink (`op.actuator` is True) once per episode; the next beat re-arms it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from pydantic import Field

from pipeline.operator import Operator, Params, register


class Watchdog:
    """Trips actuators into their safe state when the loop misses its deadline."""

    def __init__(self, actuators: list[Operator], deadline_ms: float):
        self.actuators = list(actuators)
        self.deadline_s = deadline_ms / 1000.0
        self.trips = 0
        self.reasons: list[str] = []
        self._last = time.monotonic()
        self._armed = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self) -> None:
        """The loop finished a wave in time: re-arm."""
        self._last = time.monotonic()
        self._armed = True

    def trip(self, reason: str) -> None:
        """Put every actuator into its safe state (once until the next beat)."""
        with self._lock:
            if not self._armed:
                return
            self._armed = False
            self.trips += 1
            self.reasons = (self.reasons + [reason])[-8:]
            for op in self.actuators:
                try:
                    op.safe_state(reason)
                except Exception:  # a failing actuator must not stop the others going safe
                    pass

    def idle(self) -> None:
        """The loop is waiting on purpose (no pipeline, between deploys): no deadline."""
        self._armed = False
        self._last = float("inf")

    def _watch(self) -> None:
        period = max(self.deadline_s / 4, 0.002)
        while not self._stop.wait(period):
            late = time.monotonic() - self._last
            if self._armed and late > self.deadline_s:
                self.trip(f"loop missed its {self.deadline_s * 1000:.0f} ms deadline ({late * 1000:.0f} ms)")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)


class ActuatorLogParams(Params):
    path: str | None = Field(None, description="write commands and safe-state entries here as JSON at the end")


@register
class ActuatorLog(Operator):
    """A stand-in actuator: counts commands, logs each entry into its safe state."""

    name = "actuator_log"
    inputs = {"in": "any"}
    actuator = True
    Params = ActuatorLogParams

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.commands = 0
        self.safe: list[str] = []
        self.in_safe_state = False

    def process(self, port, batch):
        self.commands += 1
        self.in_safe_state = False

    def safe_state(self, reason: str) -> None:
        self.in_safe_state = True
        self.safe.append(reason)

    def result(self):
        return {"commands": self.commands, "safe_states": len(self.safe), "reasons": self.safe[-8:],
                "in_safe_state": self.in_safe_state}

    def close(self):
        if self.params.path:
            Path(self.params.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.params.path).write_text(json.dumps(self.result(), indent=2))
