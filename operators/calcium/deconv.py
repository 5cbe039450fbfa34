"""Online spike inference: OASIS AR(1), and AR(2) by factoring out the rise root.

AR(1) is online OASIS with a minimum spike size (Friedrich, Zhou & Paninski 2017): the
pool state is carried between batches, and the spike of each frame is final `lag_frames`
frames later. AR(2), c_t = g1 c_{t-1} + g2 c_{t-2} + s_t, has roots d (decay) and r
(rise) with g1 = d + r, g2 = -d r; u_t = c_t - r c_{t-1} then follows the AR(1) model
u_t = d u_{t-1} + s_t, so the trace is filtered y_t - r y_{t-1} and solved as AR(1). The
noise level is estimated per trace on the first `noise_frames` frames (median absolute
AR residual), and the minimum spike size is `smin_sigma` times it.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from operators.calcium import samples
from operators.calcium.kernels import oasis_ar1_block, oasis_ar1_pending
from operators.calcium.synth import ar_coefficients, ar_roots
from pipeline import schemas as sch
from pipeline.errors import DataError
from pipeline.operator import Operator, Params, register


class OasisState:
    """The carried state of online OASIS for n traces (plain arrays)."""

    def __init__(self, n: int, pools: int):
        # room for 2 x pools per trace: the kernel drops old pools by moving `head`
        self.pv = np.zeros((n, 2 * pools))
        self.pw = np.zeros((n, 2 * pools))
        self.pt = np.zeros((n, 2 * pools), np.int64)
        self.pl = np.zeros((n, 2 * pools), np.int64)
        self.npool = np.zeros(n, np.int64)
        self.head = np.zeros(n, np.int64)

    def arrays(self):
        return self.pv, self.pw, self.pt, self.pl, self.npool, self.head


def noise_sigma(y: np.ndarray, g: float) -> np.ndarray:
    """Per-column noise std of (t, n) traces under an AR(1) model with coefficient g."""
    e = y[1:] - g * y[:-1]
    mad = np.median(np.abs(e - np.median(e, axis=0)), axis=0)
    return mad / 0.6745 / np.sqrt(1 + g * g)


def deconvolve(y: np.ndarray, g1: float, g2: float = 0.0, smin: np.ndarray | float = 0.0, lag: int = 2, pools: int = 64) -> np.ndarray:
    """Offline convenience: spikes (t, n) of traces (t, n), via the online kernel."""
    y = np.asarray(y, np.float64)
    if y.ndim == 1:
        return deconvolve(y[:, None], g1, g2, smin, lag, pools)[:, 0]
    d, r = ar_roots(g1, g2)
    if r:
        y = np.vstack([y[:1], y[1:] - r * y[:-1]])
    t, n = y.shape
    st = OasisState(n, pools)
    sm = np.broadcast_to(np.asarray(smin, np.float64), (n,)).copy()
    raw = np.zeros((t, n))
    oasis_ar1_block(np.ascontiguousarray(y), d, sm, lag, *st.arrays(), 0, raw)
    s = np.zeros((t, n))
    s[: t - lag] = raw[lag:]
    tail = np.zeros((lag, n))
    oasis_ar1_pending(d, lag, st.pv, st.pt, st.pl, st.npool, st.head, t - 1, tail)
    s[t - lag :] = tail
    return s


@register
class Deconvolve(Operator):
    """Online OASIS deconvolution of dF/F traces into spikes (and their amplitudes)."""

    name = "calcium_deconv"
    inputs = {"in": "samples"}
    outputs = {"spikes": "spikes", "activity": "samples"}

    class Params(Params):
        tau_decay_ms: float = Field(500.0, gt=0)
        tau_rise_ms: float = Field(0.0, ge=0, description="0 = AR(1); > 0 = AR(2)")
        rate_hz: float = Field(30.0, gt=0)
        smin_sigma: float = Field(1.5, ge=0, description="minimum spike size in noise stds")
        smin_abs: float = Field(0.0, ge=0, description="and at least this (dF/F units)")
        noise_frames: int = Field(100, ge=10, description="frames held back to estimate the noise")
        lag_frames: int = Field(4, ge=1, description="a frame's spike is final this many frames later")
        pools: int = Field(64, ge=4, description="pools kept per trace (older ones are final)")
        population: str = "rois"

    def schemas(self, inputs):
        s = inputs["in"]
        n = len(s) - 1
        return {"spikes": sch.spikes_schema(self.params.population, n), "activity": s}

    def setup(self):
        p = self.params
        g1, g2 = ar_coefficients(p.tau_decay_ms, p.tau_rise_ms, p.rate_hz)
        self.d, self.r = ar_roots(g1, g2)
        self.state_ = None
        self.held: list[tuple[np.ndarray, np.ndarray]] = []
        self.t_ring = np.zeros(p.lag_frames, np.int64)  # timestamps of the last lag frames
        self.frame = 0
        self.prev = None
        self.sigma = None
        self.smin = None
        self.n_spikes = 0
        self._schema = None

    def _filter(self, y):
        """y_t - r y_{t-1} for AR(2) (identity for AR(1)), carrying the last sample."""
        if not self.r:
            return y
        prev = y[:1] if self.prev is None else self.prev[None]
        out = y - self.r * np.vstack([prev, y[:-1]])
        if self.prev is None:
            out[0] = y[0]
        self.prev = y[-1].copy()
        return out

    def process(self, port, batch):
        t = sch.column(batch, "t")
        y = samples.matrix(batch).astype(np.float64)
        if not np.isfinite(y).all():
            raise DataError(f"{self.node}: non-finite dF/F at t={int(t[~np.isfinite(y).all(1)][0])} µs")
        if self._schema is None:
            self._spikes_schema = self.schemas({"in": batch.schema})["spikes"]
        self._schema = batch.schema
        y = self._filter(y)
        if self.state_ is None:
            self.held.append((t, y))
            if sum(len(h[0]) for h in self.held) < self.params.noise_frames:
                return None
            return self._start()
        return self._run(t, y)

    def _start(self):
        t = np.concatenate([h[0] for h in self.held])
        y = np.concatenate([h[1] for h in self.held])
        self.held = []
        # the noise comes from the first noise_frames frames only, however they were batched
        self.sigma = np.maximum(noise_sigma(y[: self.params.noise_frames], self.d), 1e-9)
        self.smin = np.maximum(self.params.smin_sigma * self.sigma, self.params.smin_abs)
        self.state_ = OasisState(y.shape[1], self.params.pools)
        return self._run(t, y)

    def _run(self, t, y):
        lag = self.params.lag_frames
        raw = np.zeros_like(y)
        oasis_ar1_block(np.ascontiguousarray(y), self.d, self.smin, lag, *self.state_.arrays(), self.frame, raw)
        # row i finalised frame (self.frame + i - lag): its timestamp is lag rows back
        t_all = np.concatenate([self.t_ring, t])
        first = max(0, lag - self.frame)  # rows before the first finalised frame
        self.frame += len(t)
        self.t_ring = t_all[-lag:].copy()
        return self._out(t_all[first : len(t)], raw[first:])

    def _out(self, t, s):
        rows, cols = np.nonzero(s > 0.5 * self.smin[None, :])
        self.n_spikes += len(rows)
        return [
            ("spikes", sch.spikes_batch(t[rows], cols, self._spikes_schema)),
            ("activity", samples.batch(t, s, self._schema)),
        ]

    def finish(self):
        if self.state_ is None and self.held:
            out = list(self._start())
        else:
            out = []
        if self.state_ is None or self.frame == 0:
            return out or None
        lag = min(self.params.lag_frames, self.frame)
        tail = np.zeros((self.params.lag_frames, len(self.smin)))
        st = self.state_
        oasis_ar1_pending(self.d, self.params.lag_frames, st.pv, st.pt, st.pl, st.npool, st.head, self.frame - 1, tail)
        return out + self._out(self.t_ring[-lag:], tail[-lag:])

    def state(self):
        if self.state_ is None:
            return None
        return {"arrays": [a.copy() for a in self.state_.arrays()], "frame": self.frame, "t_ring": self.t_ring.copy(), "sigma": self.sigma.copy(), "prev": None if self.prev is None else self.prev.copy()}

    def restore(self, state):
        if state is None:
            return
        n, width = state["arrays"][0].shape
        self.state_ = OasisState(n, width // 2)
        for dst, src in zip(self.state_.arrays(), state["arrays"], strict=True):
            dst[...] = src
        self.frame, self.t_ring, self.sigma, self.prev = state["frame"], state["t_ring"], state["sigma"], state["prev"]
        self.smin = np.maximum(self.params.smin_sigma * self.sigma, self.params.smin_abs)
