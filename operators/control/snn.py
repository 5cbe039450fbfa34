"""The spiking altitude controller: two complementary CubaLIF networks, evolved to mimic PID.

After Stroobants et al. / the reference ("Evolving Spiking Neural Networks to Mimic PID
Control for Autonomous Blimps"): each network is
  error -> encoding layer of P neuron *pairs* with sign-flipped input weights
        -> hidden layer of H CubaLIF neurons (plain, recurrent, or with input-weighted
           threshold adaptation)
        -> one leaky-integrator (LI) decoder.
Network "fast" has a quick decoder and acts on error and overshoot; network "slow" has a
decoder leak close to 1, so it integrates and cancels the steady drift of non-neutral
buoyancy. The command is the sum of both decoders. All neurons use soft reset
(v -= threshold on a spike). One network step per control step.

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


@dataclass
class SNNModel:
    """Every parameter of the two-network controller; arrays are stacked over networks (N=2)."""

    in_scale: np.ndarray  # (N,) error gain into the encoder
    enc_w: np.ndarray  # (N, P) pair weights (the pair's second neuron gets -w)
    enc_b: np.ndarray  # (N, P) pair bias current (both neurons of a pair)
    w_hid: np.ndarray  # (N, 2P, H) encoder -> hidden
    w_rec: np.ndarray  # (N, H, H) hidden -> hidden (zero unless recurrent)
    hid_b: np.ndarray  # (N, H) hidden bias current
    hid_c: np.ndarray  # (N, H) input-weighted threshold adaptation (zero unless adaptive)
    w_out: np.ndarray  # (N, H) hidden -> LI decoder
    decay: np.ndarray  # (N, 6) syn_enc, mem_enc, syn_hid, mem_hid, adapt, out (per step)
    dt_s: float = 0.1
    hidden: str = "adaptive"
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
        return (self.in_scale, self.enc_w, self.enc_b, self.w_hid, self.w_rec, self.hid_b, self.hid_c, self.w_out, self.decay)

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
        except json.JSONDecodeError as exc:
            raise DataError(f"SNN model '{path}' is not JSON: {exc}") from None
        arrays = {"in_scale", "enc_w", "enc_b", "w_hid", "w_rec", "hid_b", "hid_c", "w_out", "decay"}
        missing = arrays - set(data)
        if missing:
            raise DataError(f"SNN model '{path}' lacks {sorted(missing)}")
        kw = {k: (np.asarray(v, dtype=np.float64) if k in arrays else v) for k, v in data.items()}
        return cls(**kw)


# --- genome <-> model -----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Sizes and fixed structure; the genome fills the evolved parameters of a model."""

    pairs: int = 10
    hidden_size: int = 40
    hidden: str = "adaptive"
    dt_s: float = 0.1
    seed: int = 7

    def __post_init__(self):
        if self.hidden not in HIDDEN_KINDS:
            raise ValueError(f"hidden must be one of {HIDDEN_KINDS}, got {self.hidden!r}")
        if 2 * (2 * self.pairs + self.hidden_size + 1) > 160:
            raise ValueError(
                f"pairs={self.pairs}, hidden_size={self.hidden_size} give "
                f"{2 * (2 * self.pairs + self.hidden_size + 1)} neurons; the budget is 160"
            )

    @property
    def genes_per_net(self) -> int:
        return 1 + 2 * self.pairs + 1 + 2 * self.hidden_size + 6 + (1 if self.hidden == "recurrent" else 0)

    @property
    def size(self) -> int:
        return 2 * self.genes_per_net

    def fixed(self) -> tuple[np.ndarray, np.ndarray]:
        """The seeded random encoder->hidden and recurrent matrices the genome scales."""
        rng = np.random.default_rng(self.seed)
        w0 = rng.standard_normal((2, 2 * self.pairs, self.hidden_size)) / np.sqrt(2 * self.pairs)
        r0 = rng.standard_normal((2, self.hidden_size, self.hidden_size)) / np.sqrt(self.hidden_size)
        return w0, r0


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


# decoder leak ranges: net 0 is fast, net 1 integrates
_OUT_RANGE = ((0.0, 0.9), (0.97, 0.9995))


def decode(genome: np.ndarray, layout: Layout, w_out: np.ndarray | None = None) -> SNNModel:
    """Map an unbounded genome to a model (decays through sigmoids, gains through exp)."""
    g = np.asarray(genome, dtype=np.float64)
    if g.shape != (layout.size,):
        raise ValueError(f"genome has {g.shape} genes, layout needs ({layout.size},)")
    P, H = layout.pairs, layout.hidden_size
    w0, r0 = layout.fixed()
    shape = (2,)
    in_scale, enc_w, enc_b = np.zeros(shape), np.zeros((2, P)), np.zeros((2, P))
    w_hid, w_rec = np.zeros((2, 2 * P, H)), np.zeros((2, H, H))
    hid_b, hid_c, decay = np.zeros((2, H)), np.zeros((2, H)), np.zeros((2, 6))
    for n in range(2):
        x = g[n * layout.genes_per_net : (n + 1) * layout.genes_per_net]
        i = 0
        in_scale[n] = np.exp(x[i]) * 2.0
        i += 1
        enc_w[n] = x[i : i + P]
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
        decay[n, 5] = lo + (hi - lo) * d[5]
        i += 6
        if layout.hidden == "recurrent":
            w_rec[n] = r0[n] * 0.5 * np.tanh(x[i])
            i += 1
    return SNNModel(
        in_scale, enc_w, enc_b, w_hid, w_rec, hid_b, hid_c,
        np.zeros((2, H)) if w_out is None else np.asarray(w_out, dtype=np.float64).reshape(2, H),
        decay, layout.dt_s, layout.hidden,
    )


# --- the kernel -----------------------------------------------------------------------


def new_state(model: SNNModel) -> tuple[np.ndarray, ...]:
    """Zeroed state arrays: enc current/voltage, hidden current/voltage/adaptation/spikes, decoder."""
    N, P, H = model.nets, model.pairs, model.hidden_size
    return (
        np.zeros((N, 2 * P)), np.zeros((N, 2 * P)),
        np.zeros((N, H)), np.zeros((N, H)), np.zeros((N, H)), np.zeros((N, H)),
        np.zeros(N),
    )


@njit(cache=True)
def snn_core(x, in_scale, enc_w, enc_b, w_hid, w_rec, hid_b, hid_c, decay, ie, ve, ih, vh, bh, sh, feat):
    """Advance both networks one step on error `x`; hidden spikes feed `feat` (N, H) traces.

    `feat[n, h]` is the decoder's leaky trace of hidden neuron h, so the decoder output is
    `sum_h w_out[n, h] * feat[n, h]` (linear in w_out: that is what lets evolution fit it).
    """
    N, P = enc_w.shape
    H = hid_b.shape[1]
    se = np.zeros(2 * P)
    for n in range(N):
        a_se, a_me, a_sh, a_mh, a_ad, a_out = decay[n, 0], decay[n, 1], decay[n, 2], decay[n, 3], decay[n, 4], decay[n, 5]
        drive = x * in_scale[n]
        for j in range(P):
            for k in range(2):
                idx = 2 * j + k
                sgn = 1.0 if k == 0 else -1.0
                ie[n, idx] = a_se * ie[n, idx] + sgn * enc_w[n, j] * drive + enc_b[n, j]
                v = a_me * ve[n, idx] + ie[n, idx]
                if v >= 1.0:
                    se[idx] = 1.0
                    v -= 1.0
                else:
                    se[idx] = 0.0
                ve[n, idx] = v
        for h in range(H):
            cur = hid_b[n, h]
            for j in range(2 * P):
                if se[j] != 0.0:
                    cur += w_hid[n, j, h]
            for k in range(H):
                if sh[n, k] != 0.0:
                    cur += w_rec[n, k, h]
            ih[n, h] = a_sh * ih[n, h] + cur
        for h in range(H):
            bh[n, h] = a_ad * bh[n, h] + hid_c[n, h] * ih[n, h]
            thr = 1.0 + bh[n, h]
            if thr < 0.1:
                thr = 0.1
            v = a_mh * vh[n, h] + ih[n, h]
            if v >= thr:
                sh[n, h] = 1.0
                v -= thr
            else:
                sh[n, h] = 0.0
            vh[n, h] = v
            feat[n, h] = a_out * feat[n, h] + sh[n, h]


@njit(cache=True)
def snn_step(x, in_scale, enc_w, enc_b, w_hid, w_rec, hid_b, hid_c, w_out, decay, ie, ve, ih, vh, bh, sh, y):
    """One control step: error in, thrust command out (the sum of both LI decoders).

    The decoders are kept as outputs `y` (N,), updated as y = a_out * y + w_out . spikes.
    """
    N = enc_w.shape[0]
    H = hid_b.shape[1]
    feat = np.zeros((N, H))
    snn_core(x, in_scale, enc_w, enc_b, w_hid, w_rec, hid_b, hid_c, decay, ie, ve, ih, vh, bh, sh, feat)
    u = 0.0
    for n in range(N):
        acc = 0.0
        for h in range(H):
            acc += w_out[n, h] * sh[n, h]
        y[n] = decay[n, 5] * y[n] + acc
        u += y[n]
    return u


@njit(cache=True)
def snn_features(errors, in_scale, enc_w, enc_b, w_hid, w_rec, hid_b, hid_c, decay):
    """Decoder traces for a batch of error sequences: (S, T) -> (S, T, N*H), fresh state each."""
    S, T = errors.shape
    N, P = enc_w.shape
    H = hid_b.shape[1]
    out = np.zeros((S, T, N * H))
    for s in range(S):
        ie = np.zeros((N, 2 * P))
        ve = np.zeros((N, 2 * P))
        ih = np.zeros((N, H))
        vh = np.zeros((N, H))
        bh = np.zeros((N, H))
        sh = np.zeros((N, H))
        feat = np.zeros((N, H))
        for t in range(T):
            snn_core(errors[s, t], in_scale, enc_w, enc_b, w_hid, w_rec, hid_b, hid_c, decay, ie, ve, ih, vh, bh, sh, feat)
            out[s, t] = feat.ravel()
    return out


def reference_step(model: SNNModel, x: float, st: dict) -> float:
    """Slow, obviously correct twin of `snn_step` over dict state (for tests)."""
    m = model
    u = 0.0
    for n in range(m.nets):
        a_se, a_me, a_sh, a_mh, a_ad, a_out = m.decay[n]
        enc_in = np.repeat(m.enc_w[n], 2) * np.tile([1.0, -1.0], m.pairs) * x * m.in_scale[n] + np.repeat(m.enc_b[n], 2)
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


class SNNController:
    """Stateful wrapper with the PID's interface: `step(setpoint, measured) -> u`."""

    kind = "snn"

    def __init__(self, model: SNNModel | None = None, u_max: float = 3.3):
        self.model = model if model is not None else SNNModel.load()
        self.u_max = u_max
        self.reset()

    def reset(self) -> None:
        self.s = new_state(self.model)

    def step(self, setpoint: float, measured: float) -> float:
        m = self.model
        u = snn_step(setpoint - measured, m.in_scale, m.enc_w, m.enc_b, m.w_hid, m.w_rec, m.hid_b, m.hid_c, m.w_out, m.decay, *self.s)
        return min(max(u, -self.u_max), self.u_max)

    def state(self) -> list:
        return [a.tolist() for a in self.s]

    def restore(self, state) -> None:
        self.s = tuple(np.asarray(a, dtype=np.float64) for a in state)


# --- NIR export -----------------------------------------------------------------------


def to_nir(model: SNNModel):
    """The controller as a NIR graph: Affine -> CubaLIF -> Affine -> CubaLIF -> Affine -> LI per net.

    Discrete decays map to time constants by a = exp(-dt/tau); r is chosen so the continuous
    node integrates its input like the discrete kernel does. NIR has no threshold adaptation:
    an `adaptive` hidden layer exports as plain CubaLIF with its coupling kept in metadata,
    and recurrence appears as a self-edge through an Affine.
    """
    import nir

    dt = model.dt_s

    def tau(a):
        a = np.clip(np.asarray(a, dtype=np.float64), 1e-6, 0.999999)
        return -dt / np.log(a)

    nodes = {"input": nir.Input(input_type={"input": np.array([1])})}
    edges = []
    P2, H = 2 * model.pairs, model.hidden_size
    for n in range(model.nets):
        a = model.decay[n]
        sign = np.tile([1.0, -1.0], model.pairs)
        w_enc = (np.repeat(model.enc_w[n], 2) * sign * model.in_scale[n]).reshape(P2, 1)
        b_enc = np.repeat(model.enc_b[n], 2)
        nodes[f"net{n}_enc_in"] = nir.Affine(weight=w_enc, bias=b_enc)
        nodes[f"net{n}_enc"] = nir.CubaLIF(
            tau_syn=np.full(P2, tau(a[0])), tau_mem=np.full(P2, tau(a[1])),
            r=np.full(P2, tau(a[1]) / dt), v_leak=np.zeros(P2), v_threshold=np.ones(P2), v_reset=np.zeros(P2),
            w_in=np.full(P2, tau(a[0]) / dt),
        )
        nodes[f"net{n}_hid_in"] = nir.Affine(weight=model.w_hid[n].T.copy(), bias=model.hid_b[n].copy())
        nodes[f"net{n}_hid"] = nir.CubaLIF(
            tau_syn=np.full(H, tau(a[2])), tau_mem=np.full(H, tau(a[3])),
            r=np.full(H, tau(a[3]) / dt), v_leak=np.zeros(H), v_threshold=np.ones(H), v_reset=np.zeros(H),
            w_in=np.full(H, tau(a[2]) / dt),
            metadata={"threshold_adaptation": model.hid_c[n].tolist(), "adapt_decay": float(a[4])} if model.hidden == "adaptive" else {},
        )
        nodes[f"net{n}_out_in"] = nir.Affine(weight=model.w_out[n].reshape(1, H).copy(), bias=np.zeros(1))
        nodes[f"net{n}_dec"] = nir.LI(tau=np.array([tau(a[5])]), r=np.array([tau(a[5]) / dt]), v_leak=np.zeros(1))
        edges += [
            ("input", f"net{n}_enc_in"), (f"net{n}_enc_in", f"net{n}_enc"), (f"net{n}_enc", f"net{n}_hid_in"),
            (f"net{n}_hid_in", f"net{n}_hid"), (f"net{n}_hid", f"net{n}_out_in"), (f"net{n}_out_in", f"net{n}_dec"),
            (f"net{n}_dec", "output"),
        ]
        if model.hidden == "recurrent":
            nodes[f"net{n}_rec"] = nir.Linear(weight=model.w_rec[n].T.copy())
            edges += [(f"net{n}_hid", f"net{n}_rec"), (f"net{n}_rec", f"net{n}_hid")]
    nodes["output"] = nir.Output(output_type={"output": np.array([1])})
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt_s": dt, "hidden": model.hidden, "soft_reset": True},
                        type_check=False)
