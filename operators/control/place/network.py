"""One place-recognition module: a compact excitatory/inhibitory LIF network with STDP.

After Diehl & Cook (2015, "Unsupervised learning of digit recognition using STDP") as used
by Hussaini et al. for places: Poisson-rate inputs (one per pixel of a 28x28 patch-normalised
image) drive excitatory LIF neurons through plastic weights; each excitatory spike excites
its inhibitory partner, which inhibits every other excitatory neuron (soft winner-take-all,
folded here into one instantaneous inhibition step); adaptive thresholds (theta) rise with
each spike so that every neuron gets a share of the places. Neurons are labelled with the
reference place they respond to most; "hyperactive" neurons, which fire for more than a
calibrated number of reference places, are removed before deployment.

Queries are rate coded by default (not spiking): a neuron's response is its expected
steady-state membrane drive under the Poisson input, `drive_mv * (image . w)`, which is
deterministic and, stacked over every module, one matrix product per query batch (see
`ensemble.Stacked`). The spiking query (`query="spiking"`) is what a neuromorphic chip would
run: regular input spike trains for `spike_steps` steps drive the same neurons as
integrate-and-fire units (offset-free weights, one calibrated threshold for all modules), and
a place's score is read from output spikes only (`spike_score`). Training also shows each reference
shifted by `jitter_px` pixels, so that weights tolerate small viewpoint changes.

The kernels are Numba functions over NumPy arrays; `run_naive` is their slow plain-Python twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numba import njit


@dataclass(frozen=True)
class ModuleParams:
    """Network and learning constants (times in ms; potentials in mV above rest)."""

    n_neurons: int = 80
    steps: int = 100            # presentation length, 1 ms steps
    max_rate_hz: float = 80.0   # input rate for a white pixel
    gain: float = 0.1           # input weight scale (mV per unit weight per spike)
    tau_v_ms: float = 100.0
    v_thresh_mv: float = 10.0
    refractory_ms: int = 5
    inhibition_mv: float = 12.0
    theta_plus_mv: float = 0.2
    tau_trace_ms: float = 20.0
    nu_pre: float = 0.0002
    nu_post: float = 0.02
    x_target: float = 0.2
    weight_sum: float = 78.0    # per neuron, as in Diehl & Cook
    epochs: int = 8
    jitter_px: int = 1          # also train on the references shifted by this many pixels (4 copies; 0 = off)
    query: str = "rate"         # "rate": expected membrane drive (one matrix product); "spiking": IF run
    readout: str = "max"        # a place's best neuron (Hussaini et al.) or the "mean" of its neurons
    query_steps: int = 700      # labelling run (Poisson, D&C network): long, less inhibited presentations
    query_inhibition_mv: float = 3.0
    spike_steps: int = 32       # spiking queries: simulated steps per query
    spike_rate: float = 1.0     # spiking queries: input spikes per step of a white pixel (regular trains)
    spike_threshold: float = 0.0  # spiking queries: IF threshold; 0 = not calibrated yet (`Ensemble.calibrate`)
    spike_threshold_factor: float = 1.0  # calibrated threshold = this x the median best neuron's drive per step

    @property
    def drive_mv(self) -> float:
        """Steady-state free membrane potential (mV) per unit of w . image: rate x gain x tau."""
        return self.gain * self.max_rate_hz * 1e-3 / (1.0 - np.exp(-1.0 / self.tau_v_ms))

    def vector(self, query: bool = False) -> np.ndarray:
        v = self._vector()
        if query:
            v[0], v[6] = self.query_steps, self.query_inhibition_mv
        return v

    def _vector(self) -> np.ndarray:
        return np.array([self.steps, self.max_rate_hz, self.gain, self.tau_v_ms, self.v_thresh_mv,
                         self.refractory_ms, self.inhibition_mv, self.theta_plus_mv, self.tau_trace_ms,
                         self.nu_pre, self.nu_post, self.x_target, self.weight_sum], dtype=np.float64)


@njit(cache=True)
def present(img, w, theta, learn, p, seed, counts):
    """Show one image (flat, [0, 1]) for p[0] steps; add spikes per neuron to `counts`.

    With `learn`, applies trace STDP (pre: depress by nu_pre * x_post; post: potentiate by
    nu_post * (x_pre - x_target)), raises theta per spike and renormalises weights.
    Returns the number of excitatory spikes. w: (n_in, n_neurons); state is w and theta.
    """
    np.random.seed(seed)
    steps = int(p[0])
    prob = img * (p[1] * 1e-3)
    gain, decay = p[2], np.exp(-1.0 / p[3])
    vth, refr, inh, thp = p[4], int(p[5]), p[6], p[7]
    tdec = np.exp(-1.0 / p[8])
    nu_pre, nu_post, xtar, wsum = p[9], p[10], p[11], p[12]
    n_in, n = w.shape
    v = np.zeros(n)
    ref = np.zeros(n, np.int64)
    xpre = np.zeros(n_in)
    xpost = np.zeros(n)
    spk = np.empty(n_in, np.int64)
    total = 0
    for _ in range(steps):
        ns = 0
        for i in range(n_in):
            if np.random.random() < prob[i]:
                spk[ns] = i
                ns += 1
        for j in range(n):
            v[j] *= decay
        for k in range(ns):
            i = spk[k]
            for j in range(n):
                if ref[j] == 0:
                    v[j] += gain * w[i, j]
        if learn:
            for i in range(n_in):
                xpre[i] *= tdec
            for j in range(n):
                xpost[j] *= tdec
            for k in range(ns):
                i = spk[k]
                xpre[i] += 1.0
                for j in range(n):
                    w[i, j] = max(0.0, w[i, j] - nu_pre * xpost[j])
        fired = 0
        for j in range(n):
            if ref[j] > 0:
                ref[j] -= 1
            elif v[j] > vth + theta[j]:
                fired += 1
                counts[j] += 1
                v[j] = 0.0
                ref[j] = refr
                if learn:
                    theta[j] += thp
                    xpost[j] += 1.0
                    for i in range(n_in):
                        w[i, j] = min(1.0, max(0.0, w[i, j] + nu_post * (xpre[i] - xtar)))
        if fired > 0:
            total += fired
            for j in range(n):
                if ref[j] == 0:
                    v[j] -= inh * fired
                    if v[j] < -vth:
                        v[j] = -vth
    if learn:
        for j in range(n):
            s = 0.0
            for i in range(n_in):
                s += w[i, j]
            if s > 0:
                for i in range(n_in):
                    w[i, j] *= wsum / s
    return total


@njit(cache=True)
def respond(imgs, w, theta, p, seed):
    """Spike counts (n_images, n_neurons) without learning; image k uses seed + k."""
    out = np.zeros((imgs.shape[0], w.shape[1]), np.float64)
    for k in range(imgs.shape[0]):
        present(imgs[k], w, theta, False, p, seed + k, out[k])
    return out


@njit(cache=True)
def train(imgs, w, theta, p, epochs, seed):
    """STDP over all images, `epochs` times, in a seeded shuffled order (D&C: boost input if silent)."""
    n_img = imgs.shape[0]
    counts = np.zeros(w.shape[1])
    q = p.copy()
    np.random.seed(seed)
    k = 0
    for e in range(epochs):
        order = np.random.permutation(n_img)
        for o in order:
            q[1] = p[1]
            for _ in range(3):
                k += 1
                if present(imgs[o], w, theta, True, q, seed * 7919 + k, counts) >= 3:
                    break
                q[1] += 0.5 * p[1]
            np.random.seed(seed + 104729 * (e + 1) + k)


def jitter(imgs: np.ndarray, px: int) -> np.ndarray:
    """The images and their copies shifted by `px` up, down, left and right (edges replicated)."""
    if px <= 0:
        return imgs
    pad = np.pad(imgs, ((0, 0), (px, px), (px, px)), mode="edge")
    h, w = imgs.shape[1:]
    views = [(px, px), (0, px), (2 * px, px), (px, 0), (px, 2 * px)]
    return np.concatenate([pad[:, r:r + h, c:c + w] for r, c in views])


def input_spikes(imgs: np.ndarray, steps: int, rate: float) -> np.ndarray:
    """Regular (deterministic) rate-coded input: (steps, n_images, n_pixels) uint8 spikes.

    Pixel value x in [0, 1] spikes at x * rate spikes per step, at the steps where
    floor(x * rate * t + 1/2) steps up (half a period before its first spike): the count
    over any window is within one of x * rate * steps. No Poisson noise, so a query's
    answer depends only on the image and the number of steps.
    """
    x = np.clip(np.asarray(imgs, np.float64).reshape(len(imgs), -1), 0.0, 1.0) * min(rate, 1.0)
    t = np.arange(steps + 1, dtype=np.float64)[:, None, None]
    return np.diff(np.floor(x[None] * t + 0.5), axis=0).astype(np.uint8)


def spiking_weights(w: np.ndarray) -> np.ndarray:
    """A module's weights for the spiking query: each neuron's mean weight subtracted.

    STDP normalises every neuron's weights to the same sum and patch normalisation gives
    every image nearly the same pixel sum, so w_j . x carries a large offset common to all
    neurons; removing it (on a chip: signed weights, or a bias) leaves the part that tells
    places apart, and the ranking of drives is that of the rate-coded readout.
    """
    return (w - w.mean(axis=0, keepdims=True)).astype(np.float32)


def if_run(spikes: np.ndarray, w: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Integrate-and-fire neurons (no leak, reset to zero, fire when v > threshold) driven by
    input spikes (steps, n_images, n_pixels) through w (n_pixels, n_neurons).

    Returns spike counts and first-spike steps (1-based; steps + 1 = never), each
    (n_images, n_neurons) int32. `edge.devices.emulator` runs the same network as an
    `operators.snn` IF layer (`operators.control.place.chip`), with the chip's int8 weights.
    """
    steps, n_img = spikes.shape[:2]
    v = np.zeros((n_img, w.shape[1]), np.float32)
    count = np.zeros(v.shape, np.int32)
    first = np.full(v.shape, steps + 1, np.int32)
    for t in range(steps):
        v += spikes[t].astype(np.float32) @ w
        fire = v > threshold
        count += fire
        np.minimum(first, np.where(fire, t + 1, steps + 1), out=first)
        v[fire] = 0.0
    return count, first


def spike_score(count: np.ndarray, first: np.ndarray, steps: int) -> np.ndarray:
    """A neuron's spiking response: its spike count, ties broken by the earlier first spike.

    Both are read from output spikes alone (a counter and a latch of the step of the first
    spike per neuron); the fraction (steps + 1 - first) / (steps + 2) is below one, so it
    only orders equal counts.
    """
    return count + (steps + 1 - first.astype(np.float64)) / (steps + 2)


def run_naive(img, w, theta, p: ModuleParams, rng_uniform: np.ndarray) -> np.ndarray:
    """Slow twin of `present` without learning, for tests: uniforms (steps, n_in) given."""
    n_in, n = w.shape
    v = np.zeros(n)
    ref = np.zeros(n, int)
    counts = np.zeros(n)
    decay = np.exp(-1.0 / p.tau_v_ms)
    for t in range(p.steps):
        spikes = rng_uniform[t] < img * p.max_rate_hz * 1e-3
        v = v * decay
        drive = p.gain * w[spikes].sum(axis=0)
        v = np.where(ref == 0, v + drive, v)
        fire = np.zeros(n, bool)
        for j in range(n):
            if ref[j] > 0:
                ref[j] -= 1
            elif v[j] > p.v_thresh_mv + theta[j]:
                fire[j] = True
                v[j] = 0.0
                ref[j] = p.refractory_ms
        counts += fire
        if fire.any():
            free = ref == 0
            v[free] = np.maximum(v[free] - p.inhibition_mv * fire.sum(), -p.v_thresh_mv)
    return counts


@dataclass
class Module:
    """A trained module: weights, thresholds, neuron -> place labels, hyperactivity counts."""

    places: np.ndarray                      # global place ids this module knows
    w: np.ndarray
    theta: np.ndarray
    labels: np.ndarray                      # (n_neurons,) index into places, -1 = silent
    ref_breadth: np.ndarray                 # (n_neurons,) number of reference places it fired for
    params: ModuleParams = field(default_factory=ModuleParams)
    max_breadth: int = 10**9                # neurons firing for more places are removed
    seed: int = 0
    ref_peak: np.ndarray | None = None      # (n_neurons,) count on its own reference place

    @classmethod
    def fit(cls, places, ref_imgs, params: ModuleParams | None = None, seed: int = 0) -> Module:
        """STDP on the region's references (and their jittered copies); labels from a spiking run."""
        p = params or ModuleParams()
        rng = np.random.default_rng(seed)
        flat = np.ascontiguousarray(ref_imgs.reshape(len(ref_imgs), -1), dtype=np.float64)
        shown = jitter(ref_imgs.reshape(len(ref_imgs), *_side(flat.shape[1])), p.jitter_px)
        w = rng.uniform(0.0, 0.3, (flat.shape[1], p.n_neurons))
        w *= p.weight_sum / w.sum(axis=0)
        theta = np.zeros(p.n_neurons)
        train(np.ascontiguousarray(shown.reshape(len(shown), -1), dtype=np.float64), w, theta, p.vector(),
              p.epochs, seed)
        counts = respond(flat, w, theta, p.vector(query=True), seed + 1_000_003)
        labels = np.where(counts.max(axis=0) > 0, counts.argmax(axis=0), -1)
        breadth = (counts > 0).sum(axis=0)
        m = cls(np.asarray(places), w, theta, labels, breadth, p, 10**9, seed)
        m.ref_peak = np.maximum(counts.max(axis=0), 1.0)
        return m

    def spikes(self, imgs) -> tuple[np.ndarray, np.ndarray]:
        """The spiking query: spike counts and first-spike steps of every neuron (`if_run`)."""
        p = self.params
        if p.spike_threshold <= 0:
            raise ValueError("spiking query: spike_threshold is not calibrated (Ensemble.calibrate sets it)")
        return if_run(input_spikes(imgs, p.spike_steps, p.spike_rate), spiking_weights(self.w), p.spike_threshold)

    def net_drive(self, imgs) -> np.ndarray:
        """Per-step drive of each neuron under the spiking query's input, offset removed."""
        x = np.clip(np.asarray(imgs, np.float64).reshape(len(imgs), -1), 0, 1) * min(self.params.spike_rate, 1.0)
        return x @ spiking_weights(self.w)

    def counts(self, imgs) -> np.ndarray:
        """Spike counts of a Poisson presentation (query_steps long) per image and neuron."""
        flat = np.ascontiguousarray(imgs.reshape(len(imgs), -1), dtype=np.float64)
        return respond(flat, self.w, self.theta, self.params.vector(query=True), self.seed + 2_000_003)

    def drive(self, imgs) -> np.ndarray:
        """Expected steady-state membrane drive (mV) per image and neuron: the rate-coded response.

        Deterministic and one matrix product; the weights of every neuron sum to `weight_sum`,
        so drives of independently trained modules compare without rescaling.
        """
        return (imgs.reshape(len(imgs), -1) @ self.w) * self.params.drive_mv

    def response(self, imgs) -> np.ndarray:
        if self.params.query == "rate":
            return self.drive(imgs)
        count, first = self.spikes(imgs)
        return spike_score(count, first, self.params.spike_steps)

    def kept(self, max_breadth: int | None = None) -> np.ndarray:
        """Mask of labelled neurons that are not hyperactive (fire for at most max_breadth references)."""
        mb = self.max_breadth if max_breadth is None else max_breadth
        return (self.labels >= 0) & (self.ref_breadth <= mb)

    def scores(self, resp: np.ndarray, max_breadth: int | None = None, readout: str | None = None) -> np.ndarray:
        """Per-place score (n_images, n_places) from the kept neurons labelled with each place.

        `resp` is `response(imgs)`. Drives and spiking scores (one threshold for every
        module) compare across modules without rescaling. `max`: the
        best-responding neuron (Hussaini et al.); `mean`: the mean over the place's neurons.
        """
        keep = self.kept(max_breadth)
        rel = resp[:, keep]
        lab = self.labels[keep]
        out = np.full((len(resp), len(self.places)), -np.inf)
        if (readout or self.params.readout) == "max":
            for k in range(len(lab)):
                out[:, lab[k]] = np.maximum(out[:, lab[k]], rel[:, k])
        else:
            n = np.bincount(lab, minlength=len(self.places))
            out[:, n > 0] = 0.0
            np.add.at(out.T, lab, rel.T)
            out[:, n > 0] /= n[n > 0]
        return fill_empty(out, np.isin(np.arange(len(self.places)), lab))

    def calibrate_threshold(self, cal_imgs) -> float:
        """A lone module's spiking threshold (`Ensemble.calibrate_threshold` sets one for all
        modules): `spike_threshold_factor` x the median best labelled neuron's drive per step."""
        lab = self.labels >= 0
        best = self.net_drive(cal_imgs)[:, lab].max(axis=1) if lab.any() else np.zeros(1)
        theta = float(self.params.spike_threshold_factor * np.median(best))
        if not np.isfinite(theta) or theta <= 0:
            raise ValueError(f"spiking query: calibration gives no positive threshold ({theta})")
        self.params = replace(self.params, spike_threshold=theta)
        return theta

    def calibrate(self, cal_imgs, cal_local: np.ndarray) -> int:
        """Pick the hyperactivity cut that maximises this module's Recall@1 on calibration frames
        (spiking queries: the threshold first, if not yet set)."""
        if self.params.query == "spiking" and self.params.spike_threshold <= 0:
            self.calibrate_threshold(cal_imgs)
        c = self.response(cal_imgs)
        best, best_r = -1.0, int(self.ref_breadth.max(initial=1))
        for r in range(int(self.ref_breadth.max(initial=1)), 0, -1):
            if not self.kept(r).any():
                break
            s = self.scores(c, r)
            acc = float(np.mean(s.argmax(axis=1) == cal_local)) if len(cal_local) else 0.0
            if acc > best:
                best, best_r = acc, r
        self.max_breadth = best_r
        return best_r


def fill_empty(scores: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Give places without a kept neuron (has[p] false) the row's lowest score: last, not -inf."""
    if not has.all():
        scores[:, ~has] = scores[:, has].min(axis=1, keepdims=True) if has.any() else 0.0
    return scores


def _side(n_pixels: int) -> tuple[int, int]:
    side = int(round(np.sqrt(n_pixels)))
    return side, n_pixels // side
