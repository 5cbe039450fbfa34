"""The spiking altitude controller: two complementary CubaLIF networks, evolved to mimic PID.

After the reference ("Evolving Spiking Neural Networks to Mimic PID Control for Autonomous
Blimps"): each network is
  (error, climb-rate error) -> encoding layer of P neuron *pairs* with sign-flipped input
        weights -> hidden layer of H CubaLIF neurons (plain, recurrent, or with
        input-weighted threshold adaptation) -> one leaky-integrator (LI) decoder.
Each pair mixes the error e = setpoint - altitude and its rate r = -d(altitude)/dt (the
difference of two readings: the derivative on the measurement, like the PID's, so set-point
steps do not kick), which gives the fast network what it needs against overshoot.
Network "fast" has a quick decoder and acts on error and overshoot; network "slow" has a
decoder leak close to 1, so it integrates and cancels the steady drift of non-neutral
buoyancy. The command is the sum of both decoders. All neurons use soft reset
(v -= threshold on a spike). The networks run `substeps` steps per control step (input
held), so spike counts resolve the command finer than one spike per 100 ms.

Parameters live in `SNNModel` (plain arrays, saved as JSON). The hot path is `snn_step`, a
Numba kernel over explicit state arrays; `reference_step` is its slow, obviously correct twin.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

from pipeline.errors import DataError

HIDDEN_KINDS = ("adaptive", "plain", "recurrent")
DEFAULT_MODEL = Path(__file__).parent / "models" / "blimp_snn.json"
ARRAYS = ("in_scale", "enc_w", "enc_wd", "enc_b", "w_hid", "w_rec", "hid_b", "hid_c", "w_out", "decay")


@dataclass
class SNNModel:
    """Every parameter of the two-network controller; arrays are stacked over networks (N=2)."""

    in_scale: np.ndarray  # (N,) input gain into the encoder
    enc_w: np.ndarray  # (N, P) pair weights on the error (the pair's second neuron gets -w)
    enc_wd: np.ndarray  # (N, P) pair weights on the climb-rate error
    enc_b: np.ndarray  # (N, P) pair bias current (both neurons of a pair)
    w_hid: np.ndarray  # (N, 2P, H) encoder -> hidden
    w_rec: np.ndarray  # (N, H, H) hidden -> hidden (zero unless recurrent)
    hid_b: np.ndarray  # (N, H) hidden bias current
    hid_c: np.ndarray  # (N, H) input-weighted threshold adaptation (zero unless adaptive)
    w_out: np.ndarray  # (N, H) hidden -> LI decoder
    decay: np.ndarray  # (N, 6) syn_enc, mem_enc, syn_hid, mem_hid, adapt, out (per substep)
    dt_s: float = 0.1
    hidden: str = "adaptive"
    substeps: int = 1
    meta: dict = field(default_factory=dict)

    @property
    def nets(self) -> int:
        return self.enc_w.shape[0]

    @property
    def pairs(self) -> int:
        return self.enc_w.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.w_out.shape[1]

    @property
    def neurons(self) -> int:
        """Spiking + decoder neurons in total (the reference budget is about 160)."""
        return self.nets * (2 * self.pairs + self.hidden_size + 1)

    def arrays(self) -> tuple:
        return tuple(getattr(self, k) for k in ARRAYS)

    def save(self, path: str | Path) -> None:
        data = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path | None = None) -> SNNModel:
        path = Path(path) if path else DEFAULT_MODEL
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise DataError(f"cannot read SNN model '{path}': {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"SNN model '{path}' is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DataError(f"SNN model '{path}' is not a JSON object")
        missing = set(ARRAYS) - set(data)
        if missing:
            raise DataError(f"SNN model '{path}' lacks {sorted(missing)}")
        if not isinstance(data.get("substeps", 1), int) or data.get("substeps", 1) < 1:
            raise DataError(f"SNN model '{path}': substeps must be a positive integer, got {data.get('substeps')!r}")
        try:
            kw = {k: (np.asarray(v, dtype=np.float64) if k in ARRAYS else v) for k, v in data.items()}
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise DataError(f"SNN model '{path}' has a bad field: {exc}") from None


    def check(self, where: str = "SNN model") -> SNNModel:
        """Raise DataError unless every array has the shape the others imply and is finite."""
        N, P, H = self.nets, self.pairs, self.hidden_size
        want = {"in_scale": (N,), "enc_w": (N, P), "enc_wd": (N, P), "enc_b": (N, P), "w_hid": (N, 2 * P, H),
                "w_rec": (N, H, H), "hid_b": (N, H), "hid_c": (N, H), "w_out": (N, H), "decay": (N, 6)}
        for name, shape in want.items():
            a = getattr(self, name)
            if a.shape != shape:
                raise DataError(f"{where}: '{name}' has shape {a.shape}, expected {shape} "
                                f"({N} networks, {P} pairs, {H} hidden)")
            if not np.all(np.isfinite(a)):
                raise DataError(f"{where}: '{name}' holds NaN or infinite values")
        if not (isinstance(self.dt_s, int | float) and self.dt_s > 0):
            raise DataError(f"{where}: dt_s must be a positive number, got {self.dt_s!r}")
        return self


# --- genome <-> model -----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Sizes and fixed structure; the genome fills the evolved parameters of a model."""

    pairs: int = 10
    hidden_size: int = 40
    hidden: str = "adaptive"
    dt_s: float = 0.1
    substeps: int = 5
    seed: int = 7

    def __post_init__(self):
        if self.hidden not in HIDDEN_KINDS:
            raise ValueError(f"hidden must be one of {HIDDEN_KINDS}, got {self.hidden!r}")
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}")
        if 2 * (2 * self.pairs + self.hidden_size + 1) > 160:
            raise ValueError(
                f"pairs={self.pairs}, hidden_size={self.hidden_size} give "
                f"{2 * (2 * self.pairs + self.hidden_size + 1)} neurons; the budget is 160"
            )

    @property
    def genes_per_net(self) -> int:
        return 1 + 3 * self.pairs + 1 + 2 * self.hidden_size + 6 + (1 if self.hidden == "recurrent" else 0)

    @property
    def size(self) -> int:
        """Both networks' genes, then one readout gain per network (see `readout_gains`)."""
        return 2 * self.genes_per_net + 2

    def fixed(self) -> tuple[np.ndarray, np.ndarray]:
        """The seeded random encoder->hidden and recurrent matrices the genome scales."""
        rng = np.random.default_rng(self.seed)
        w0 = rng.standard_normal((2, 2 * self.pairs, self.hidden_size)) / np.sqrt(2 * self.pairs)
        r0 = rng.standard_normal((2, self.hidden_size, self.hidden_size)) / np.sqrt(self.hidden_size)
        return w0, r0


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


# decoder leak ranges per control step: net 0 is fast, net 1 integrates
_OUT_RANGE = ((0.0, 0.9), (0.97, 0.9995))
# the climb rate (m/s) enters at this weight relative to the error (m): ~ PID's kd/kp
RATE_GAIN = 1.0


def decode(genome: np.ndarray, layout: Layout, w_out: np.ndarray | None = None) -> SNNModel:
    """Map an unbounded genome to a model (decays through sigmoids, gains through exp)."""
    g = np.asarray(genome, dtype=np.float64)
    if g.shape != (layout.size,):
        raise ValueError(f"genome has {g.shape} genes, layout needs ({layout.size},)")
    P, H, K = layout.pairs, layout.hidden_size, layout.substeps
    w0, r0 = layout.fixed()
    in_scale, enc_w, enc_wd, enc_b = np.zeros(2), np.zeros((2, P)), np.zeros((2, P)), np.zeros((2, P))
    w_hid, w_rec = np.zeros((2, 2 * P, H)), np.zeros((2, H, H))
    hid_b, hid_c, decay = np.zeros((2, H)), np.zeros((2, H)), np.zeros((2, 6))
    for n in range(2):
        x = g[n * layout.genes_per_net : (n + 1) * layout.genes_per_net]
        i = 0
        in_scale[n] = np.exp(x[i]) * 2.0
        i += 1
        enc_w[n] = x[i : i + P]
        i += P
        enc_wd[n] = RATE_GAIN * x[i : i + P]
        i += P
        enc_b[n] = 0.5 * x[i : i + P]
        i += P
        w_hid[n] = w0[n] * np.exp(x[i]) * 2.0
        i += 1
        hid_b[n] = 0.3 * x[i : i + H]
        i += H
        hid_c[n] = 0.5 * x[i : i + H] if layout.hidden == "adaptive" else 0.0
        i += H
        d = _sig(x[i : i + 6])
        lo, hi = _OUT_RANGE[n]
        decay[n, :5] = 0.05 + 0.9 * d[:5]
        decay[n, 5] = (lo + (hi - lo) * d[5]) ** (1.0 / K)  # per substep
        i += 6
        if layout.hidden == "recurrent":
            w_rec[n] = r0[n] * 0.5 * np.tanh(x[i])
            i += 1
    return SNNModel(
        in_scale, enc_w, enc_wd, enc_b, w_hid, w_rec, hid_b, hid_c,
        np.zeros((2, H)) if w_out is None else np.asarray(w_out, dtype=np.float64).reshape(2, H),
        decay, layout.dt_s, layout.hidden, K,
    )


def readout_gains(genome: np.ndarray, layout: Layout) -> np.ndarray:
    """The two trailing genes as gains (exp) on each network's least-squares decoder weights.

    The ridge fit makes the decoders mimic the PID as closely as the features allow; these
    gains let the search trade that for closed-loop behaviour (e.g. less integral windup,
    more damping). They are unused when the decoder weights themselves are evolved.
    """
    n = 2 * layout.genes_per_net
    return np.exp(np.asarray(genome, dtype=np.float64)[n : n + 2])


def initial_genome(layout: Layout) -> np.ndarray:
    """A structured starting point for the search (the all-zero genome feeds the encoders nothing).

    Pair j weighs error and climb rate as (cos, 0.5 sin) of an angle spread over [0, pi), so
    the pairs tile the (error, rate) plane the way the PID's kp e + kd r does; a common bias
    keeps both neurons of a pair firing at rest (push-pull, no dead zone around zero error);
    fast synapses (decay ~0.16 per network step) and slow membranes (~0.84); no adaptation
    yet; decoder leaks mid-range (net 0) and near the top (net 1, the integrator).
    """
    P, H = layout.pairs, layout.hidden_size
    theta = np.pi * (np.arange(P) + 0.5) / P
    nets = []
    for n in range(2):
        out_leak = 0.0 if n == 0 else 3.0
        parts = [[0.0], 2.0 * np.cos(theta), 1.0 * np.sin(theta), np.full(P, 0.4), [0.0], np.zeros(H), np.zeros(H),
                 [-2.0, 2.0, -2.0, 2.0, 0.0, out_leak]]
        if layout.hidden == "recurrent":
            parts.append([0.0])
        nets.append(np.concatenate([np.asarray(x, dtype=np.float64) for x in parts]))
    return np.concatenate(nets + [np.zeros(2)])  # readout gains exp(0) = 1


# --- the kernel -----------------------------------------------------------------------


def new_state(model: SNNModel) -> tuple[np.ndarray, ...]:
    """Zeroed state: enc current/voltage, hidden current/voltage/adaptation/spikes, decoder traces, decoders."""
    N, P, H = model.nets, model.pairs, model.hidden_size
    return (
        np.zeros((N, 2 * P)), np.zeros((N, 2 * P)),
        np.zeros((N, H)), np.zeros((N, H)), np.zeros((N, H)), np.zeros((N, H)),
        np.zeros((N, H)), np.zeros(N),
    )


@njit(cache=True)
def snn_core(x, xd, in_scale, enc_w, enc_wd, enc_b, w_hid, w_rec, hid_b, hid_c, w_out, decay, substeps,
             ie, ve, ih, vh, bh, sh, feat, y):
    """Advance both networks one control step (`substeps` network steps) on error `x`, rate `xd`.

    `feat[n, h]` is the decoder's leaky trace of hidden neuron h and `y[n]` the LI decoder,
    y = sum_h w_out[n, h] * feat[n, h] (linear in w_out: that is what lets a fit find it).
    """
    N, P = enc_w.shape
    H = hid_b.shape[1]
    se = np.zeros(2 * P)
    cur = np.empty(H)
    for n in range(N):
        a_se, a_me, a_sh, a_mh, a_ad, a_out = decay[n, 0], decay[n, 1], decay[n, 2], decay[n, 3], decay[n, 4], decay[n, 5]
        recurrent = np.any(w_rec[n] != 0.0)
        for _ in range(substeps):
            for j in range(P):
                drive = (enc_w[n, j] * x + enc_wd[n, j] * xd) * in_scale[n]
                for k in range(2):
                    idx = 2 * j + k
                    sgn = 1.0 if k == 0 else -1.0
                    ie[n, idx] = a_se * ie[n, idx] + sgn * drive + enc_b[n, j]
                    v = a_me * ve[n, idx] + ie[n, idx]
                    if v >= 1.0:
                        se[idx] = 1.0
                        v -= 1.0
                    else:
                        se[idx] = 0.0
                    ve[n, idx] = v
            # synaptic input row by row over the sources that spiked (spikes are sparse); the
            # per-neuron sums keep the source order, so results do not depend on this layout
            cur[:] = hid_b[n]
            for j in range(2 * P):
                if se[j] != 0.0:
                    for h in range(H):
                        cur[h] += w_hid[n, j, h]
            if recurrent:
                for k in range(H):
                    if sh[n, k] != 0.0:
                        for h in range(H):
                            cur[h] += w_rec[n, k, h]
            for h in range(H):
                ih[n, h] = a_sh * ih[n, h] + cur[h]
            acc = 0.0
            for h in range(H):
                bh[n, h] = a_ad * bh[n, h] + hid_c[n, h] * ih[n, h]
                thr = 1.0 + bh[n, h]
                if thr < 0.1:
                    thr = 0.1
                v = a_mh * vh[n, h] + ih[n, h]
                if v >= thr:
                    sh[n, h] = 1.0
                    v -= thr
                    acc += w_out[n, h]
                else:
                    sh[n, h] = 0.0
                vh[n, h] = v
                feat[n, h] = a_out * feat[n, h] + sh[n, h]
            y[n] = a_out * y[n] + acc


@njit(cache=True)
def snn_step(x, xd, in_scale, enc_w, enc_wd, enc_b, w_hid, w_rec, hid_b, hid_c, w_out, decay, substeps,
             ie, ve, ih, vh, bh, sh, feat, y):
    """One control step: error and climb-rate error in, thrust command out (sum of both LI decoders)."""
    snn_core(x, xd, in_scale, enc_w, enc_wd, enc_b, w_hid, w_rec, hid_b, hid_c, w_out, decay, substeps,
             ie, ve, ih, vh, bh, sh, feat, y)
    return y.sum()


@njit(cache=True)
def snn_features(errors, rates, in_scale, enc_w, enc_wd, enc_b, w_hid, w_rec, hid_b, hid_c, decay, substeps):
    """Decoder traces for a batch of input sequences: (S, T) x 2 -> (S, T, N*H), fresh state each."""
    S, T = errors.shape
    N, P = enc_w.shape
    H = hid_b.shape[1]
    out = np.zeros((S, T, N * H))
    w0 = np.zeros((N, H))
    for s in range(S):
        ie = np.zeros((N, 2 * P))
        ve = np.zeros((N, 2 * P))
        ih = np.zeros((N, H))
        vh = np.zeros((N, H))
        bh = np.zeros((N, H))
        sh = np.zeros((N, H))
        feat = np.zeros((N, H))
        y = np.zeros(N)
        for t in range(T):
            snn_core(errors[s, t], rates[s, t], in_scale, enc_w, enc_wd, enc_b, w_hid, w_rec, hid_b, hid_c, w0,
                     decay, substeps, ie, ve, ih, vh, bh, sh, feat, y)
            out[s, t] = feat.ravel()
    return out


def reference_step(model: SNNModel, x: float, xd: float, st: dict) -> float:
    """Slow, obviously correct twin of `snn_step` over dict state (for tests)."""
    m = model
    u = 0.0
    for n in range(m.nets):
        a_se, a_me, a_sh, a_mh, a_ad, a_out = m.decay[n]
        pair_in = (m.enc_w[n] * x + m.enc_wd[n] * xd) * m.in_scale[n]
        enc_in = np.repeat(pair_in, 2) * np.tile([1.0, -1.0], m.pairs) + np.repeat(m.enc_b[n], 2)
        for _ in range(m.substeps):
            st["ie"][n] = a_se * st["ie"][n] + enc_in
            v = a_me * st["ve"][n] + st["ie"][n]
            se = (v >= 1.0).astype(float)
            st["ve"][n] = v - se
            cur = m.hid_b[n] + se @ m.w_hid[n] + st["sh"][n] @ m.w_rec[n]
            st["ih"][n] = a_sh * st["ih"][n] + cur
            st["bh"][n] = a_ad * st["bh"][n] + m.hid_c[n] * st["ih"][n]
            thr = np.maximum(1.0 + st["bh"][n], 0.1)
            v = a_mh * st["vh"][n] + st["ih"][n]
            sh = (v >= thr).astype(float)
            st["vh"][n] = v - sh * thr
            st["sh"][n] = sh
            st["y"][n] = a_out * st["y"][n] + m.w_out[n] @ sh
        u += st["y"][n]
    return u


def climb_rate_error(measured: float, previous: float, dt_s: float) -> float:
    """The rate input: -(change of the measured altitude) / dt (0 before two readings)."""
    return 0.0 if previous != previous else -(measured - previous) / dt_s


class SNNController:
    """Stateful wrapper with the PID's interface: `step(setpoint, measured) -> u`."""

    kind = "snn"

    def __init__(self, model: SNNModel | None = None, u_max: float = 3.3):
        self.model = model if model is not None else SNNModel.load()
        self.u_max = u_max
        self.reset()

    def reset(self) -> None:
        self.s = new_state(self.model)
        self.prev = float("nan")

    def step(self, setpoint: float, measured: float) -> float:
        m = self.model
        xd = climb_rate_error(measured, self.prev, m.dt_s)
        self.prev = measured
        u = snn_step(setpoint - measured, xd, *m.arrays(), m.substeps, *self.s)
        return min(max(u, -self.u_max), self.u_max)

    def state(self) -> dict:
        return {"arrays": [a.tolist() for a in self.s], "prev": self.prev}

    def restore(self, state) -> None:
        self.s = tuple(np.asarray(a, dtype=np.float64) for a in state["arrays"])
        self.prev = float(state["prev"])


# --- NIR export -----------------------------------------------------------------------


def to_nir(model: SNNModel):
    """The controller as a NIR graph: Affine -> CubaLIF -> Affine -> CubaLIF -> Affine -> LI per net.

    The input is 2-D: (error, climb-rate error), the rate computed by the host from two
    readings as `climb_rate_error` does. The networks step at dt / substeps; discrete decays
    map to time constants by a = exp(-h/tau) with that step h, and r is chosen so the
    continuous node integrates its input like the discrete kernel does. NIR has no threshold
    adaptation: an `adaptive` hidden layer exports as plain CubaLIF with its coupling kept
    in metadata, and recurrence appears as a self-edge through a Linear.
    """
    import nir

    h = model.dt_s / model.substeps

    def tau(a):
        a = np.clip(np.asarray(a, dtype=np.float64), 1e-6, 0.999999)
        return -h / np.log(a)

    nodes = {"input": nir.Input(input_type={"input": np.array([2])})}
    edges = []
    P2, H = 2 * model.pairs, model.hidden_size
    for n in range(model.nets):
        a = model.decay[n]
        sign = np.tile([1.0, -1.0], model.pairs)[:, None]
        w_enc = np.stack([np.repeat(model.enc_w[n], 2), np.repeat(model.enc_wd[n], 2)], axis=1) * sign * model.in_scale[n]
        b_enc = np.repeat(model.enc_b[n], 2)
        nodes[f"net{n}_enc_in"] = nir.Affine(weight=w_enc, bias=b_enc)
        nodes[f"net{n}_enc"] = nir.CubaLIF(
            tau_syn=np.full(P2, tau(a[0])), tau_mem=np.full(P2, tau(a[1])),
            r=np.full(P2, tau(a[1]) / h), v_leak=np.zeros(P2), v_threshold=np.ones(P2), v_reset=np.zeros(P2),
            w_in=np.full(P2, tau(a[0]) / h),
        )
        nodes[f"net{n}_hid_in"] = nir.Affine(weight=model.w_hid[n].T.copy(), bias=model.hid_b[n].copy())
        nodes[f"net{n}_hid"] = nir.CubaLIF(
            tau_syn=np.full(H, tau(a[2])), tau_mem=np.full(H, tau(a[3])),
            r=np.full(H, tau(a[3]) / h), v_leak=np.zeros(H), v_threshold=np.ones(H), v_reset=np.zeros(H),
            w_in=np.full(H, tau(a[2]) / h),
            metadata={"threshold_adaptation": model.hid_c[n].tolist(), "adapt_decay": float(a[4])} if model.hidden == "adaptive" else {},
        )
        nodes[f"net{n}_out_in"] = nir.Affine(weight=model.w_out[n].reshape(1, H).copy(), bias=np.zeros(1))
        nodes[f"net{n}_dec"] = nir.LI(tau=np.array([tau(a[5])]), r=np.array([tau(a[5]) / h]), v_leak=np.zeros(1))
        edges += [
            ("input", f"net{n}_enc_in"), (f"net{n}_enc_in", f"net{n}_enc"), (f"net{n}_enc", f"net{n}_hid_in"),
            (f"net{n}_hid_in", f"net{n}_hid"), (f"net{n}_hid", f"net{n}_out_in"), (f"net{n}_out_in", f"net{n}_dec"),
            (f"net{n}_dec", "output"),
        ]
        if model.hidden == "recurrent":
            nodes[f"net{n}_rec"] = nir.Linear(weight=model.w_rec[n].T.copy())
            edges += [(f"net{n}_hid", f"net{n}_rec"), (f"net{n}_rec", f"net{n}_hid")]
    nodes["output"] = nir.Output(output_type={"output": np.array([1])})
    return nir.NIRGraph(nodes=nodes, edges=edges,
                        metadata={"dt_s": model.dt_s, "substeps": model.substeps, "step_s": h, "hidden": model.hidden,
                                  "soft_reset": True, "inputs": ["error_m", "climb_rate_error_m_per_s"]},
                        type_check=False)
