"""The evolution's fitness: how closely an SNN genome mimics the PID on recorded PID flights.

Loss = MAE(u_snn, u_pid) + (1 - Pearson(u_snn, u_pid)), the reference's loss. The SNN is
driven open-loop by the errors the PID saw (teacher forcing), which makes one evaluation a
single Numba pass. The decoder weights are linear in the output, so for each genome they
are fitted by ridge regression on the same data (`readout: lstsq`) and CMA-ES searches the
rest (encoder, hidden biases, adaptation, time constants); `readout: evolve` puts them in
the genome instead.
"""

from __future__ import annotations

import numpy as np

from operators.control.snn import Layout, SNNModel, decode, snn_features


def features(model: SNNModel, errors: np.ndarray) -> np.ndarray:
    m = model
    return snn_features(np.ascontiguousarray(errors, dtype=np.float64), m.in_scale, m.enc_w, m.enc_b,
                        m.w_hid, m.w_rec, m.hid_b, m.hid_c, m.decay)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def loss_of(u: np.ndarray, target: np.ndarray, u_max: float = 3.3) -> float:
    u = np.clip(u, -u_max, u_max)
    return float(np.mean(np.abs(u - target)) + (1.0 - pearson(u.ravel(), target.ravel())))


def fit_readout(X: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Ridge regression of the target on the decoder traces (columns scaled to unit RMS)."""
    scale = np.sqrt((X * X).mean(axis=0)) + 1e-9
    Xs = X / scale
    A = Xs.T @ Xs / len(X) + ridge * np.eye(X.shape[1])
    w = np.linalg.solve(A, Xs.T @ y / len(X))
    return w / scale


def evaluate(genome: np.ndarray, layout: Layout, errors: np.ndarray, commands: np.ndarray,
             readout: str = "lstsq", ridge: float = 1e-3) -> tuple[float, np.ndarray]:
    """(loss, decoder weights) of one genome on the PID traces."""
    H = layout.hidden_size
    if readout == "evolve":
        core, w_out = genome[: layout.size], genome[layout.size :]
        model = decode(core, layout, w_out)
        F = features(model, errors)
        u = F.reshape(-1, 2 * H) @ w_out
        # LI decoder output = w . trace, exactly what snn_step computes
        return loss_of(u, commands.ravel()), w_out
    model = decode(genome, layout)
    F = features(model, errors).reshape(-1, 2 * H)
    if not np.all(np.isfinite(F)):
        return 1e3, np.zeros(2 * H)
    w = fit_readout(F, commands.ravel(), ridge)
    return loss_of(F @ w, commands.ravel()), w


def build(genome: np.ndarray, layout: Layout, w_out: np.ndarray, meta: dict | None = None) -> SNNModel:
    model = decode(np.asarray(genome)[: layout.size], layout, w_out)
    model.meta = dict(meta or {})
    return model
