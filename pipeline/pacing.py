"""Source pacing: follow sensor timestamps (`realtime`, scaled by `speed`) or go flat out."""

from __future__ import annotations

import time


class Pacer:
    """Sleeps until a batch's sensor time is due; reports how late it is."""

    def __init__(self, mode: str = "max", speed: float = 1.0):
        self.mode = mode
        self.speed = speed
        self.t0_us: int | None = None
        self.wall0 = 0.0

    def due(self, t_us: int) -> float:
        """Wall-clock (perf_counter) time at which sensor time `t_us` is due."""
        if self.t0_us is None:
            self.t0_us = t_us
            self.wall0 = time.perf_counter()
        return self.wall0 + (t_us - self.t0_us) / 1e6 / self.speed

    def wait(self, t_us: int | None) -> float:
        """Block until `t_us` is due; return the lateness in seconds (0 when on time)."""
        if self.mode == "max" or t_us is None:
            return 0.0
        delay = self.due(t_us) - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
            return 0.0
        return -delay
