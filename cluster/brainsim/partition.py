"""One partition of a network: the neurons of a global index range and their incoming synapses.

A `Partition` is what a Ray actor holds; the in-process runner holds several. Its only
traffic with the rest of the network is `step_window(spikes)`: take the spikes every
partition emitted in the previous window, return its own for this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cluster.brainsim import kernels as k
from cluster.brainsim.spec import Dist, NetworkSpec

MODEL_CODES = {"lif_cuba": k.LIF_CUBA, "lif_coba": k.LIF_COBA, "lif_delta": k.LIF_DELTA, "lif_alpha": k.LIF_ALPHA,
               "poisson": k.POISSON, "spike_source": k.SPIKE_SOURCE}
RULE_CODES = {"fixed_probability": k.FIXED_PROB, "fixed_indegree": k.FIXED_INDEGREE, "one_to_one": k.ONE_TO_ONE,
              "explicit": k.EXPLICIT}


@dataclass(frozen=True)
class Layout:
    """A network compiled to flat tables: what every partition needs to build its part."""

    names: tuple[str, ...]
    offsets: np.ndarray  # population start indices, plus the total at the end
    pops: np.ndarray  # (n_pops, POP_COLS) float64
    projs: np.ndarray  # (n_projs, PROJ_COLS) float64
    src_steps: np.ndarray  # spike-source spikes: step, sorted
    src_neurons: np.ndarray  # global index
    dt_ms: float
    seed: int
    min_delay_steps: int  # also the base that stored delays are offsets from; 0: zero-delay synapses
    max_delay_steps: int
    max_row: int
    edges: np.ndarray  # (4, E) explicit edges: global pre, global post, weight, delay ms; by projection, then post

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    @property
    def window(self) -> int:
        """Steps a partition advances alone between exchanges: the shortest delay, at least one."""
        return max(1, self.min_delay_steps)

    def population_of(self, name: str) -> tuple[int, int]:
        i = self.names.index(name)
        return int(self.offsets[i]), int(self.offsets[i + 1])


def _dist(value, dt_ms: float | None = None) -> tuple[int, float, float]:
    if isinstance(value, Dist):
        if value.dist == "normal":
            return k.NORMAL, value.mean, value.std
        return k.UNIFORM, value.low, value.high
    return k.CONST, float(value), 0.0


def _initial(value, default: float) -> tuple[int, float, float]:
    """An initial-value spec as (code, a, b): a (low, high) range or a Dist; None is `default`."""
    if value is None:
        return k.UNIFORM, default, default
    if isinstance(value, Dist):
        return _dist(value)
    return k.UNIFORM, float(value[0]), float(value[1])


def _delay_range(value, dt_ms: float) -> tuple[int, int]:
    """Shortest and longest delay in steps (at least 1, or 0 for a constant zero delay; a normal
    one is clipped by the kernel)."""
    code, a, b = _dist(value)
    if code == k.CONST and a == 0.0:
        return 0, 0  # zero delay: delivered within the step (Brian2's default)
    if code == k.CONST:
        lo = hi = a
    elif code == k.UNIFORM:
        lo, hi = a, b
    else:  # normal: clipped to [shortest, shortest + 127 steps] by the kernel
        lo, hi = max(dt_ms, a - 8 * b), a + 8 * b
    steps = lambda d: max(1, int(round(d / dt_ms)))  # noqa: E731
    return steps(lo), steps(hi)


def compile_network(spec: NetworkSpec) -> Layout:
    """Check a network and turn it into the tables the kernels read."""
    spec = spec.expanded()
    dt = spec.dt_ms
    if abs(dt * 1000 - round(dt * 1000)) > 1e-9:
        raise ValueError(f"dt_ms={dt} must be a whole number of microseconds")
    names = tuple(p.name for p in spec.populations)
    if not names:
        raise ValueError("the network has no populations")
    if len(set(names)) != len(names):
        raise ValueError(f"population names repeat: {names}")
    offsets = np.cumsum([0] + [p.size for p in spec.populations]).astype(np.int64)
    pops = np.zeros((len(names), k.POP_COLS))
    src = []
    for i, p in enumerate(spec.populations):
        row = pops[i]
        row[k.P_MODEL] = MODEL_CODES[p.model]
        row[k.P_LO], row[k.P_N] = offsets[i], p.size
        e_m, e_e, e_i = math.exp(-dt / p.tau_m_ms), math.exp(-dt / p.tau_syn_e_ms), math.exp(-dt / p.tau_syn_i_ms)
        row[k.P_P22], row[k.P_DECE], row[k.P_DECI] = e_m, e_e, e_i
        # exact propagator of an exponentially decaying current onto v (Rotter & Diesmann 1999)
        for col, tau in ((k.P_P21E, p.tau_syn_e_ms), (k.P_P21I, p.tau_syn_i_ms)):
            row[col] = dt / p.tau_m_ms * e_m if abs(tau - p.tau_m_ms) < 1e-12 else \
                tau / (tau - p.tau_m_ms) * (math.exp(-dt / tau) - e_m)
        row[k.P_VREST], row[k.P_VTH], row[k.P_VRESET] = p.v_rest_mv, p.v_thresh_mv, p.v_reset_mv
        row[k.P_REF] = int(round(p.t_ref_ms / dt))
        if p.external is not None:
            row[k.P_EXTLAM] = p.external.rate_hz * dt * 1e-3
            row[k.P_EXTW] = p.external.weight
            row[k.P_EXTCH] = 1.0 if p.external.receptor == "inh" else 0.0
        row[k.P_EE], row[k.P_EI], row[k.P_TAUM], row[k.P_DT] = p.e_rev_e_mv, p.e_rev_i_mv, p.tau_m_ms, dt
        row[k.P_RATEP] = p.rate_hz * dt * 1e-3
        if p.model == "lif_alpha":
            _alpha_propagators(row, p, dt)
        for cols, value, default in (((k.P_V0D, k.P_V0LO, k.P_V0HI), p.v_init_mv, p.v_rest_mv),
                                     ((k.P_GE0D, k.P_GE0LO, k.P_GE0HI), p.g_e_init, 0.0),
                                     ((k.P_GI0D, k.P_GI0LO, k.P_GI0HI), p.g_i_init, 0.0)):
            row[list(cols)] = _initial(value, default)
        for t_ms, n in zip(p.spike_times_ms, p.spike_neurons, strict=True):
            src.append((max(1, int(round(t_ms / dt))), offsets[i] + n))
    src.sort()
    projs = np.zeros((len(spec.projections), k.PROJ_COLS))
    d_lo, d_hi, max_row = 1 << 30, 1, 1
    edges, n_edges = [], 0
    for r, pr in enumerate(spec.projections):
        for end in (pr.pre, pr.post):
            if end not in names:
                raise ValueError(f"projection {pr.pre}->{pr.post}: no population '{end}' (have {', '.join(names)})")
        a, b = names.index(pr.pre), names.index(pr.post)
        if spec.populations[b].model in ("poisson", "spike_source"):
            raise ValueError(f"projection {pr.pre}->{pr.post}: '{pr.post}' generates spikes and takes no input")
        row = projs[r]
        row[k.J_PRELO], row[k.J_PREN] = offsets[a], offsets[a + 1] - offsets[a]
        row[k.J_POSTLO], row[k.J_POSTN] = offsets[b], offsets[b + 1] - offsets[b]
        row[k.J_RULE] = RULE_CODES[pr.rule]
        row[k.J_RP] = pr.p if pr.rule == "fixed_probability" else pr.indegree
        row[k.J_WD], row[k.J_WA], row[k.J_WB] = _dist(pr.weight)
        if isinstance(pr.weight, Dist) and pr.weight.dist == "normal":
            row[k.J_WA], row[k.J_WB] = pr.weight.mean, pr.weight.std
        row[k.J_DD], row[k.J_DA], row[k.J_DB] = _dist(pr.delay_ms)
        w0 = row[k.J_WA]
        receptor = pr.receptor or ("exc" if w0 >= 0 else "inh")
        row[k.J_CH] = 1.0 if receptor == "inh" else 0.0
        row[k.J_AUTAPSES] = 1.0 if pr.autapses else 0.0
        row[k.J_SEED] = 1000 + r
        pre_n = int(row[k.J_PREN])
        if pr.rule == "explicit":
            e = _explicit_edges(pr, int(row[k.J_PRELO]), pre_n, int(row[k.J_POSTLO]), int(row[k.J_POSTN]))
            row[k.J_EXLO], row[k.J_EXN] = n_edges, e.shape[1]
            edges.append(e)
            n_edges += e.shape[1]
            lo = hi = None
            if e.shape[1]:
                steps = np.where(e[3] == 0.0, 0, np.maximum(1, np.rint(e[3] / dt))).astype(np.int64)
                lo, hi = int(steps.min()), int(steps.max())
                max_row = max(max_row, int(np.bincount(e[1].astype(np.int64) - int(row[k.J_POSTLO])).max()))
        else:
            lo, hi = _delay_range(pr.delay_ms, dt)
            max_row = max(max_row, pr.indegree if pr.rule == "fixed_indegree" else pre_n
                          if pr.rule != "one_to_one" else 1)
        if lo is not None:
            d_lo, d_hi = min(d_lo, lo), max(d_hi, hi)
            if lo == 0 and spec.populations[b].model not in ("lif_cuba", "lif_coba"):
                raise ValueError(f"projection {pr.pre}->{pr.post}: a zero delay (delivery within the step) is "
                                 f"supported onto lif_cuba and lif_coba populations; '{pr.post}' is "
                                 f"{spec.populations[b].model}: give delay_ms >= dt_ms ({dt})")
    if d_lo > d_hi:  # no synapses
        d_lo = d_hi = 1
    if d_hi - d_lo > 127:
        steps = [_delay_range(pr.delay_ms, dt) for pr in spec.projections if pr.rule != "explicit"]
        raise ValueError(f"delays span {d_lo}-{d_hi} steps of {dt} ms; at most 127 steps beyond the shortest "
                         f"are stored (ranges per projection: {steps})")
    src_arr = np.array(src, dtype=np.int64).reshape(-1, 2)
    table = np.concatenate(edges, axis=1) if edges else np.zeros((4, 0))
    return Layout(names, offsets, pops, projs, src_arr[:, 0].copy(), src_arr[:, 1].copy(), dt, spec.seed,
                  d_lo, d_hi, max_row, np.ascontiguousarray(table))


def _alpha_propagators(row: np.ndarray, p, dt: float) -> None:
    """Exact propagators of an alpha-shaped current onto v (Rotter & Diesmann 1999), as in
    NEST's iaf_psc_alpha: I(t) = (I0 + dI0 t) exp(-t / tau_syn), C dv/dt = -(v - E_L) C / tau_m + I."""
    b = 1.0 / p.tau_m_ms
    for (c31, c32, cpsc), tau in (((k.P_P31E, k.P_P32E, k.P_PSCE), p.tau_syn_e_ms),
                                  ((k.P_P31I, k.P_P32I, k.P_PSCI), p.tau_syn_i_ms)):
        a = 1.0 / tau
        ea, eb = math.exp(-a * dt), math.exp(-b * dt)
        c = b - a
        if abs(c) < 1e-9:  # tau_syn == tau_m: the limits of the expressions below
            row[c32] = dt * eb / p.c_m_pf
            row[c31] = dt * dt / 2.0 * eb / p.c_m_pf
        else:
            row[c32] = (ea - eb) / c / p.c_m_pf
            row[c31] = (ea * (dt / c - 1.0 / c**2) + eb / c**2) / p.c_m_pf
        row[cpsc] = math.e / tau
    row[k.P_IE] = p.i_e_pa * p.tau_m_ms / p.c_m_pf * (1.0 - math.exp(-b * dt))


def _explicit_edges(pr, pre_lo: int, pre_n: int, post_lo: int, post_n: int) -> np.ndarray:
    """An explicit projection's edges as a (4, E) table in global indices, sorted by post (stable)."""
    src = np.asarray(pr.sources, np.int64)
    tgt = np.asarray(pr.targets, np.int64)
    for name, idx, size, pop in (("sources", src, pre_n, pr.pre), ("targets", tgt, post_n, pr.post)):
        bad = (idx < 0) | (idx >= size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"projection {pr.pre}->{pr.post}: {name}[{i}] = {int(idx[i])} is outside "
                             f"population '{pop}' (size {size})")
    n = len(src)
    w = np.asarray(pr.weights, float) if pr.weights is not None else np.full(n, _const(pr.weight, "weight", pr))
    d = np.asarray(pr.delays_ms, float) if pr.delays_ms is not None else \
        np.full(n, _const(pr.delay_ms, "delay_ms", pr))
    order = np.argsort(tgt, kind="stable")
    return np.stack([src[order] + pre_lo, tgt[order] + post_lo, w[order], d[order]]).astype(np.float64)


def _const(value, name: str, pr) -> float:
    if isinstance(value, Dist):
        raise ValueError(f"projection {pr.pre}->{pr.post}: an explicit projection takes a constant {name} "
                         f"or one per edge, not a distribution")
    return float(value)


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal neuron ranges for `parts` partitions."""
    edges = [n * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


class Partition:
    """Neurons [lo, hi) of a network, their state, incoming synapses and ring buffers."""

    def __init__(self, layout: Layout, lo: int, hi: int):
        self.layout, self.lo, self.hi = layout, lo, hi
        self.window = layout.window
        self.d_base = layout.min_delay_steps  # stored delays are steps beyond it
        n = hi - lo
        self.pidx = (np.searchsorted(layout.offsets, np.arange(lo, hi), side="right") - 1).astype(np.int32)
        self.v = np.zeros(n)
        self.ge = np.zeros(n)
        self.gi = np.zeros(n)
        self.de = np.zeros(n)  # lif_alpha: dI/dt of the excitatory and inhibitory currents
        self.di = np.zeros(n)
        self.refr = np.zeros(n, np.int32)
        self.rng = np.zeros(n, np.uint64)
        k.init_neurons(layout.pops, self.pidx, lo, layout.seed, self.v, self.ge, self.gi, self.rng)
        self.indptr, self.tgt, self.w, self.dch = k.build_csr(
            layout.projs, lo, hi, layout.n, layout.seed, layout.dt_ms, layout.max_row, layout.min_delay_steps,
            layout.edges)
        ring = layout.max_delay_steps + self.window + 1
        self.buf = np.zeros((ring, 2, n))
        mine = (layout.src_neurons >= lo) & (layout.src_neurons < hi)
        self.src_steps = layout.src_steps[mine]
        self.src_neurons = (layout.src_neurons[mine] - lo).astype(np.int64)
        self.src_ptr = np.zeros(1, np.int64)
        self.out_steps = np.empty(n * self.window + len(self.src_steps) + 1, np.int64)
        self.out_neurons = np.empty_like(self.out_steps)
        self.fired = k.fired_scratch(n)
        self.step = 0
        self.wait_s = 0.0  # time spent waiting for other partitions' windows (board exchange)
        self._compile()

    def _compile(self) -> None:
        """Compile (or load from cache) the per-window kernels now, not inside the first window."""
        none = np.empty(0, np.int64)
        k.deliver(none, none, self.indptr, self.tgt, self.w, self.dch, self.buf, self.d_base, self.ge, self.gi)
        k.advance(self.layout.pops, self.pidx, self.lo, 0, 0, self.v, self.ge, self.gi, self.de, self.di, self.refr,
                  self.rng,
                  self.buf, self.src_steps, self.src_neurons, self.src_ptr, self.out_steps, self.out_neurons,
                  self.fired)

    @property
    def synapses(self) -> int:
        return int(self.tgt.shape[0])

    def synapse_bytes(self) -> int:
        """Bytes of synapse storage: targets, weights, delay/channel bytes and row pointers."""
        return int(self.tgt.nbytes + self.w.nbytes + self.dch.nbytes + self.indptr.nbytes)

    def step_window(self, steps: np.ndarray, neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Deliver last window's spikes (global, sorted), advance one window, return own spikes."""
        if len(steps):
            k.deliver(steps, neurons, self.indptr, self.tgt, self.w, self.dch, self.buf, self.d_base, self.ge,
                      self.gi)
        c = k.advance(self.layout.pops, self.pidx, self.lo, self.step, self.window, self.v, self.ge, self.gi,
                      self.de, self.di, self.refr, self.rng, self.buf, self.src_steps, self.src_neurons,
                      self.src_ptr, self.out_steps, self.out_neurons, self.fired)
        self.step += self.window
        return self.out_steps[:c].copy(), self.out_neurons[:c].copy()

    def run_on_board(self, n_windows: int, board, me: int, spin_us: float = 200.0,
                     timeout_s: float = 120.0) -> np.ndarray:
        """`n_windows` windows exchanging spikes through a shared-memory `exchange.Board`.

        Returns this partition's own spikes as keys (`step << 32 | global neuron`).
        Raises `ExchangeStalled` naming the partition that did not publish in time.
        With `n_windows` 0 it only compiles (or loads from cache) the board's kernel: the
        backends do that when they attach a board, so no run pays for it in its first window.
        """
        from cluster.brainsim import exchange as x

        worst = self.out_steps.shape[0]
        chunk = np.empty(max(worst * min(n_windows, 16), 1 << 18), np.int64)
        done = np.zeros(1, np.int64)
        waited = np.zeros(1, np.int64)
        parts, left = [], n_windows
        timeout_cycles = int(timeout_s * 1e6 * x.cycles_per_us())
        spin_cycles = int(spin_us * x.cycles_per_us())
        while True:
            m = x.run_board(left, self.window, self.d_base, self.step, self.layout.pops, self.pidx, self.lo, self.v, self.ge,
                            self.gi, self.de, self.di, self.refr, self.rng, self.buf, self.indptr, self.tgt, self.w,
                            self.dch, self.src_steps, self.src_neurons, self.src_ptr, self.out_steps, self.out_neurons,
                            self.fired, board.words, me, board.layout.slots, board.layout.sync, spin_cycles, timeout_cycles,
                            chunk, done, waited)
            if m < 0:
                raise x.ExchangeStalled(-1 - m, self.step // self.window + int(done[0]), me)
            self.step += int(done[0]) * self.window
            left -= int(done[0])
            parts.append(chunk[:m].copy())
            if left <= 0:
                break
        self.wait_s += waited[0] / (x.cycles_per_us() * 1e6)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def run_windows(self, n_windows: int, steps: np.ndarray, neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`n_windows` windows in one Numba call (whole network in this partition, no spike sources)."""
        if self.lo != 0 or self.hi != self.layout.n or len(self.src_steps):
            raise ValueError("run_windows needs the whole network in one partition and no spike sources")
        out = k.run_windows(n_windows, self.window, self.step, self.layout.pops, self.pidx, self.lo, self.v,
                            self.ge, self.gi, self.de, self.di, self.refr, self.rng, self.buf, self.indptr, self.tgt,
                            self.w, self.dch, self.d_base, np.ascontiguousarray(steps, np.int64), np.ascontiguousarray(neurons, np.int64))
        self.step += n_windows * self.window
        return out

