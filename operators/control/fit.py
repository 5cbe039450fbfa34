"""The evolution's fitness: how closely an SNN genome mimics the PID on recorded PID flights.

Loss = MAE(u_snn, u_pid) + (1 - Pearson(u_snn, u_pid)), the reference's loss. The SNN is
driven open-loop by the inputs the PID saw (teacher forcing: error and climb-rate error,
stacked as (S, T, 2)), which makes one evaluation a single Numba pass. The decoder weights are linear in the output, so for each genome they
are fitted by ridge regression on the same data (`readout: lstsq`), scaled per network by
two evolved gains, and CMA-ES searches the rest (encoder, hidden biases, adaptation, time
constants); `readout: evolve` puts them in the genome instead.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from operators.control.pid import pid_step
from operators.control.plant import plant_step
from operators.control.snn import Layout, SNNModel, decode, readout_gains, snn_core, snn_features


def features(model: SNNModel, inputs: np.ndarray) -> np.ndarray:
    """Decoder traces (S, T, N*H) for inputs (S, T, 2) = (error, climb-rate error); (S, T) = errors, rate 0."""
    m = model
    x = np.asarray(inputs, dtype=np.float64)
    if x.ndim == 2:
        x = np.stack([x, np.zeros_like(x)], axis=-1)
    return snn_features(np.ascontiguousarray(x[..., 0]), np.ascontiguousarray(x[..., 1]), m.in_scale, m.enc_w,
                        m.enc_wd, m.enc_b, m.w_hid, m.w_rec, m.hid_b, m.hid_c, m.decay, m.substeps)


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


def evaluate(genome: np.ndarray, layout: Layout, inputs: np.ndarray, commands: np.ndarray,
             readout: str = "lstsq", ridge: float = 1e-3, closed: dict | None = None,
             pid_gains: np.ndarray | None = None, tracking_weight: float = 0.0,
             hold_weight: float = 0.0) -> tuple[float, np.ndarray]:
    """(loss, decoder weights) of one genome on the PID traces (`inputs` as `features` takes them).

    With `closed` scenarios the loss is the closed-loop one plus half the open-loop one: a
    genome that mimics PID on PID's own flights but drifts off once it flies itself loses.
    """
    if closed is not None:
        loss, w = evaluate(genome, layout, inputs, commands, readout, ridge)
        if loss >= 1e3:
            return loss, w
        model = decode(np.asarray(genome)[: layout.size], layout, w)
        cl, _ = closed_loop_loss(model, closed, pid_gains, tracking_weight=tracking_weight, hold_weight=hold_weight)
        return cl + 0.5 * loss, w
    H = layout.hidden_size
    if readout == "evolve":
        core, w_out = genome[: layout.size], genome[layout.size :]
        model = decode(core, layout, w_out)
        F = features(model, inputs)
        u = F.reshape(-1, 2 * H) @ w_out
        # LI decoder output = w . trace, exactly what snn_step computes
        return loss_of(u, commands.ravel()), w_out
    model = decode(genome, layout)
    F = features(model, inputs).reshape(-1, 2 * H)
    if not np.all(np.isfinite(F)):
        return 1e3, np.zeros(2 * H)
    w = (fit_readout(F, commands.ravel(), ridge).reshape(2, H) * readout_gains(genome, layout)[:, None]).ravel()
    return loss_of(F @ w, commands.ravel()), w


def build(genome: np.ndarray, layout: Layout, w_out: np.ndarray, meta: dict | None = None) -> SNNModel:
    model = decode(np.asarray(genome)[: layout.size], layout, w_out)
    model.meta = dict(meta or {})
    return model


# --- closed-loop fitness (DAgger-style: the PID shadows the SNN's own flight) ------------


@njit(cache=True)
def closed_loop_kernel(in_scale, enc_w, enc_wd, enc_b, w_hid, w_rec, hid_b, hid_c, w_out, decay, net_substeps,
                       plants, z0, setpoints, noise, forces, gains, dt, substeps, u_max):
    """Fly S scenarios with the SNN in the loop; a PID computes, but does not apply, its command.

    Returns (u_snn, u_pid, z), each (S, T). The altimeter is simplified to one control period
    of latency plus white noise, which keeps this a single compiled pass. The SNN's rate
    input is the difference of successive readings, as `SNNController` computes it.
    """
    S, T = setpoints.shape
    N, P = enc_w.shape
    H = hid_b.shape[1]
    u_snn = np.zeros((S, T))
    u_pid = np.zeros((S, T))
    zs = np.zeros((S, T))
    for s in range(S):
        x = np.array([z0[s], 0.0, 0.0, 0.0, 0.0])
        ps = np.zeros(4)
        ie = np.zeros((N, 2 * P))
        ve = np.zeros((N, 2 * P))
        ih = np.zeros((N, H))
        vh = np.zeros((N, H))
        bh = np.zeros((N, H))
        sh = np.zeros((N, H))
        feat = np.zeros((N, H))
        y = np.zeros(N)
        meas = z0[s]
        prev = meas
        for t in range(T):
            sp = setpoints[s, t]
            rate = 0.0 if t == 0 else -(meas - prev) / dt
            prev = meas
            snn_core(sp - meas, rate, in_scale, enc_w, enc_wd, enc_b, w_hid, w_rec, hid_b, hid_c, w_out, decay,
                     net_substeps, ie, ve, ih, vh, bh, sh, feat, y)
            u = min(max(y.sum(), -u_max), u_max)
            u_snn[s, t] = u
            u_pid[s, t] = pid_step(ps, sp, meas, dt, gains)
            plant_step(x, u, forces[s, t], dt, substeps, plants[s])
            zs[s, t] = x[0]
            meas = x[0] + noise[s, t]
    return u_snn, u_pid, zs


def scenarios(n: int, duration_s: float, seed: int, dt_s: float = 0.1, model: str = "heave") -> dict:
    """Randomised plants, set points, sensor noise and gusts as arrays for `closed_loop_kernel`."""
    from operators.control.plant import PlantParams, plant_vector
    from operators.control.sim import profile

    rng = np.random.default_rng(seed)
    T = int(round(duration_s / dt_s))
    plants, z0, sps = [], [], []
    for i in range(n):
        base = PlantParams(model=model)
        p = base.model_copy(update={
            "mass_kg": base.mass_kg * rng.uniform(0.8, 1.2),
            "net_lift_n": rng.uniform(-0.06, 0.04),
            "drag_lin_ns_per_m": base.drag_lin_ns_per_m * rng.uniform(0.5, 1.5),
            "di_bias": rng.uniform(-0.15, 0.1),
            "motor": base.motor.model_copy(update={"tau_s": rng.uniform(0.05, 0.2)}),
        })
        plants.append(plant_vector(p))
        z0.append(p.z0_m)
        sps.append(profile("random", duration_s, dt_s, seed=seed * 7919 + i))
    return {
        "plants": np.array(plants), "z0": np.array(z0), "setpoints": np.array(sps),
        "noise": rng.normal(0, 0.01, (n, T)), "forces": rng.normal(0, 0.005, (n, T)),
        "substeps": PlantParams().substeps, "dt": dt_s,
    }


def hold_errors(setpoints: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """(mean overshoot, mean steady-state error) in m over every hold after a set-point change.

    Overshoot: how far past the new set point the flight went; steady-state error: |mean
    error| over the last quarter of the hold (as `sim.metrics` scores a flight).
    """
    from operators.control.sim import _hold, _segments

    overs, sse = [], []
    for sp, zz in zip(setpoints, z):
        for a, b in _segments(sp):
            over, tail = _hold(sp, zz, a, b)
            overs.append(over)
            sse.append(abs(float(tail.mean())))
    return (float(np.mean(overs)), float(np.mean(sse))) if overs else (0.0, 0.0)


def closed_loop_loss(model: SNNModel, sc: dict, pid_gains: np.ndarray, u_max: float = 3.3,
                     tracking_weight: float = 0.0, hold_weight: float = 0.0) -> tuple[float, np.ndarray]:
    """The reference loss between the SNN's commands and the shadow PID's, in closed loop.

    `tracking_weight` adds that many times the tracking RMSE (m) of the SNN's own flight;
    `hold_weight` that many times its mean overshoot plus mean steady-state error (m).
    """
    m = model
    u, up, z = closed_loop_kernel(*m.arrays(), m.substeps, sc["plants"], sc["z0"], sc["setpoints"], sc["noise"],
                                  sc["forces"], pid_gains, sc["dt"], sc["substeps"], u_max)
    if not np.all(np.isfinite(u)):
        return 1e3, z
    loss = loss_of(u, up)
    if tracking_weight:
        loss += tracking_weight * float(np.sqrt(np.mean((sc["setpoints"] - z) ** 2)))
    if hold_weight:
        loss += hold_weight * sum(hold_errors(sc["setpoints"], z))
    return loss, z
