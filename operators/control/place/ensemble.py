"""The ensemble: region-specific modules trained independently, queried together.

Places are split into consecutive regions of `places_per_module`; each module learns its
region independently; one hyperactive-neuron cut for all modules is calibrated on a
held-out traversal; at query time every module reports a score per place and the
best-scoring place wins. With rate-coded queries (the default) the kept neurons of all modules are
stacked into one weight matrix (`Stacked`), so a query is one matrix product, one reduction
per place and a top-k by `argpartition`. `workers=0` runs in-process; `workers>=1` spreads
the modules over that many Ray actors (training in parallel, queries fanned out and
gathered). Also: the SAD baseline, sequence matching and the Recall@N / precision-recall
metrics.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from operators.control.place.network import Module, ModuleParams, fill_empty, jitter


class Stacked:
    """The kept neurons of some modules as one weight matrix, rows sorted by place.

    A query batch is one product with the stacked weights and one `reduceat` per place
    (best or mean neuron); columns of the result follow the modules' places in order.
    Rate-coded modules only (`Module.drive` + `Module.scores` is the slow twin).

    The exact search is linear in the number of neurons, as SAD is in places. `coarse=True`
    (past `32 * candidates` neurons) tries coarse to fine instead: drives approximated in a
    `rank`-dimensional basis of the weights (top principal directions of up to 4096 sampled
    neurons), and only each query's `candidates` best neurons get their exact drive. It is
    cheaper but not good enough yet: on the 1,000-place bench route it agreed with the exact
    best place for 66% of queries (patch-normalised textures are not low rank), so it is off
    by default.
    """

    def __init__(self, modules: list[Module], removal: bool = True, readout: str | None = None,
                 rank: int = 32, candidates: int = 128, seed: int = 0):
        ws, cols, offset = [], [], 0
        for m in modules:
            keep = m.kept(None if removal else 10**9)
            ws.append(m.w[:, keep].T * m.params.drive_mv)
            cols.append(offset + m.labels[keep])
            offset += len(m.places)
        col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        order = np.argsort(col, kind="stable")
        wt = np.concatenate(ws) if ws else np.zeros((0, 0))
        self.wt = np.ascontiguousarray(wt[order], dtype=np.float32)       # (n_neurons, n_pixels)
        self.col = col[order]                                              # each row's place column
        self.present, self.starts = np.unique(self.col, return_index=True)
        self.sizes = np.diff(np.append(self.starts, len(col))).astype(np.float32)
        self.n_places = offset
        self.readout = readout or (modules[0].params.readout if modules else "max")
        self.rank, self.candidates, self.seed = rank, candidates, seed
        self.basis = self.low = None

    def _build_coarse(self) -> None:
        if self.basis is None and self.rank and len(self.wt) > 32 * self.candidates:
            rank, rng = self.rank, np.random.default_rng(self.seed)
            sample = self.wt[rng.choice(len(self.wt), min(len(self.wt), 4096), replace=False)]
            _, _, vt = np.linalg.svd(sample.astype(np.float64), full_matrices=False)
            self.basis = np.ascontiguousarray(vt[:rank].T, dtype=np.float32)   # (n_pixels, rank)
            self.low = np.ascontiguousarray((self.wt @ self.basis).T)         # (rank, n_neurons)

    def drives(self, x: np.ndarray, coarse: bool = False) -> np.ndarray:
        """(n_images, n_neurons) drives: exact, or coarse with each query's best candidates exact."""
        if coarse:
            self._build_coarse()
        if not coarse or self.basis is None:
            return x @ self.wt.T
        d = (x @ self.basis) @ self.low
        cand = np.argpartition(-d, self.candidates - 1, axis=1)[:, :self.candidates]
        exact_d = np.einsum("qp,qcp->qc", x, self.wt[cand])
        np.put_along_axis(d, cand, exact_d, axis=1)
        return d

    def scores(self, imgs, coarse: bool = False) -> np.ndarray:
        if not len(self.present):
            return np.zeros((len(imgs), self.n_places), np.float32)
        d = self.drives(_flat(imgs), coarse)
        return self._per_place(d, self.starts, self.sizes, self.present, 0, self.n_places)

    def window(self, imgs, c0: int, c1: int) -> np.ndarray:
        """(n_images, c1 - c0) exact scores of place columns c0..c1-1 only: the localised search.

        Rows are sorted by place, so the window's neurons are one contiguous block of the
        weights and its cost is the window's size, not the route's.
        """
        r0, r1 = np.searchsorted(self.col, [c0, c1])
        p0, p1 = np.searchsorted(self.present, [c0, c1])
        if r0 == r1:
            return np.zeros((len(imgs), c1 - c0), np.float32)
        d = _flat(imgs) @ self.wt[r0:r1].T
        return self._per_place(d, self.starts[p0:p1] - r0, self.sizes[p0:p1], self.present[p0:p1], c0, c1)

    def _per_place(self, d, starts, sizes, present, c0: int, c1: int) -> np.ndarray:
        """Per-place best (or mean) neuron drive for columns c0..c1-1; places without neurons rank last."""
        if self.readout == "max":
            per = np.maximum.reduceat(d, starts, axis=1)
        else:
            per = np.add.reduceat(d, starts, axis=1) / sizes
        if len(present) == c1 - c0:
            return per
        out = np.empty((len(d), c1 - c0), np.float32)
        out[:, present - c0] = per
        has = np.zeros(c1 - c0, bool)
        has[present - c0] = True
        return fill_empty(out, has)


def _flat(imgs) -> np.ndarray:
    """Query images as (n, n_pixels) float32 (a view when they already are float32)."""
    imgs = np.asarray(imgs, np.float32)
    return imgs.reshape(len(imgs), -1)


class _Worker:
    """Holds some modules; a Ray actor when the ensemble is distributed."""

    def __init__(self):
        self.modules: list[Module] = []
        self._stacked: dict = {}
        self._places = None

    def fit(self, jobs) -> int:
        for job in jobs:
            self.modules.append(Module.fit(*job))
        self._stacked, self._places = {}, None
        return len(self.modules)

    def cut_tops(self, imgs, cuts) -> list[tuple]:
        """Per hyperactivity cut: each image's two best places (global ids), their scores and its lowest score."""
        resp = [m.response(imgs) for m in self.modules]
        places = self.places()
        out = []
        for c in cuts:
            s = np.concatenate([m.scores(r, c) for m, r in zip(self.modules, resp, strict=True)], axis=1)
            idx, val = topk(s, 2)
            out.append((places[idx], val, s.min(axis=1)))
        return out

    def spiking(self) -> bool:
        return bool(self.modules) and all(m.params.query == "spiking" for m in self.modules)

    def best_net_drive(self, imgs) -> np.ndarray:
        """Per image, the largest per-step drive of any labelled neuron under the spiking query's input."""
        out = np.full(len(imgs), -np.inf)
        for m in self.modules:
            lab = m.labels >= 0
            if lab.any():
                out = np.maximum(out, m.net_drive(imgs)[:, lab].max(axis=1))
        return out

    def set_params(self, changes: dict) -> int:
        """Replace module parameters (e.g. the spiking threshold or steps) in every module."""
        self.modules = [replace(m, params=replace(m.params, **changes)) for m in self.modules]
        self._stacked = {}
        return len(self.modules)

    def set_cut(self, cut: int) -> int:
        for m in self.modules:
            m.max_breadth = cut
        self._stacked = {}
        return int(max((m.ref_breadth.max(initial=0) for m in self.modules), default=0))

    def _stack(self, removal: bool, readout: str | None) -> Stacked | None:
        if not (self.modules and all(m.params.query == "rate" for m in self.modules)):
            return None
        key = (removal, readout)
        if key not in self._stacked:
            self._stacked[key] = Stacked(self.modules, removal, readout)
        return self._stacked[key]

    def scores(self, imgs, removal: bool = True, readout: str | None = None, coarse: bool = False) -> np.ndarray:
        st = self._stack(removal, readout)
        if st is not None:
            return st.scores(imgs, coarse)
        out = []
        for m in self.modules:
            out.append(m.scores(m.response(imgs), None if removal else 10**9, readout))
        return np.concatenate(out, axis=1) if out else np.zeros((len(imgs), 0))

    def window(self, imgs, lo: int, hi: int, removal: bool = True,
               readout: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Global ids of this worker's places in lo..hi-1 and their scores (columns follow the ids)."""
        places = self.places()
        if not self._ascending:
            raise ValueError("window search needs a worker's modules in route order")
        c0, c1 = (int(c) for c in np.searchsorted(places, [lo, hi]))
        st = self._stack(removal, readout)
        if st is not None:
            return places[c0:c1], st.window(imgs, c0, c1)
        return places[c0:c1], self.scores(imgs, removal, readout)[:, c0:c1]

    def places(self) -> np.ndarray:
        """Global place ids of this worker's columns, ascending (modules are dealt in route order)."""
        if self._places is None:
            self._places = np.concatenate([m.places for m in self.modules]) if self.modules else np.zeros(0, int)
            self._ascending = bool(np.all(np.diff(self._places) > 0))
        return self._places

    def dump(self) -> list[Module]:
        return self.modules

    def cpu_s(self) -> float:
        return time.process_time()


class Ensemble:
    """`Ensemble.fit(data, places_per_module, params, workers)`, then `scores(imgs)`."""

    def __init__(self, workers: list, remote: bool):
        self.workers = workers
        self.remote = remote
        self._order = None
        self._identity = False

    @classmethod
    def fit(cls, reference, calibration=None, calibration_places=None, places_per_module: int = 10,
            params: ModuleParams | None = None, workers: int = 0, seed: int = 0, progress=None) -> Ensemble:
        n = len(reference)
        cal_places = np.asarray(calibration_places if calibration_places is not None else np.arange(0))
        jobs = []
        for k, a in enumerate(range(0, n, places_per_module)):
            places = np.arange(a, min(n, a + places_per_module))
            jobs.append((places, reference[places], params, seed + k))
        if workers <= 0:
            w = _Worker()
            for job in jobs:
                w.fit([job])
                if progress:
                    progress()
            ens = cls([w], remote=False)
        else:
            import ray

            actor = ray.remote(num_cpus=1)(_Worker)
            ws = [actor.remote() for _ in range(workers)]
            ray.get([w.fit.remote(jobs[i::workers]) for i, w in enumerate(ws)])
            ens = cls(ws, remote=True)
        if calibration is not None and len(cal_places):
            ens.calibrate(calibration, cal_places)
        return ens

    def _call(self, name: str, *args) -> list:
        if self.remote:
            import ray

            return ray.get([getattr(w, name).remote(*args) for w in self.workers])
        return [getattr(w, name)(*args) for w in self.workers]

    def calibrate(self, calibration, calibration_places) -> int:
        """Choose one hyperactivity cut for all modules on the held-out calibration traversal.

        Neurons that fired for more than `cut` of their module's reference places are
        removed. The cut maximises the whole ensemble's Recall@1 on the calibration frames,
        then its recall at 100% precision (hyperactive neurons mostly raise the runner-up,
        i.e. cost confidence); ties keep more neurons. Returns the cut.
        """
        top = max(self._call("set_cut", 10**9))
        if all(self._call("spiking")):
            self.calibrate_threshold(calibration)
        cuts = list(range(max(top, 1), 0, -1))
        parts = self._call("cut_tops", np.asarray(calibration, np.float32), cuts)
        truth = np.asarray(calibration_places)
        best_key, best_cut = None, cuts[0]
        for i, cut in enumerate(cuts):
            idx = np.concatenate([p[i][0] for p in parts], axis=1)
            val = np.concatenate([p[i][1] for p in parts], axis=1)
            lo = np.min([p[i][2] for p in parts], axis=0)
            o = np.argsort(-val, axis=1, kind="stable")[:, :2]
            idx, val = np.take_along_axis(idx, o, 1), np.take_along_axis(val, o, 1)
            conf = (val[:, 0] - val[:, -1]) / np.maximum(val[:, 0] - lo, 1e-9)
            pr = precision_recall(idx[:, 0] == truth, conf)
            key = (round(pr["recall@1"], 9), round(pr["recall@100%precision"], 9))
            if best_key is None or key > best_key:
                best_key, best_cut = key, cut
        self._call("set_cut", best_cut)
        self.cut = best_cut
        return best_cut

    def calibrate_threshold(self, calibration) -> float:
        """The spiking query's IF threshold, one for every module so that spike counts compare:
        `spike_threshold_factor` x the median over calibration frames of the best labelled
        neuron's per-step drive (so that neuron fires about every step; the rest rarely or
        never). Kept when already set (> 0)."""
        p = self.modules()[0].params
        if p.spike_threshold > 0:
            return p.spike_threshold
        best = np.max(self._call("best_net_drive", np.asarray(calibration, np.float32)), axis=0)
        theta = float(p.spike_threshold_factor * np.median(best))
        if not np.isfinite(theta) or theta <= 0:
            raise ValueError(f"spiking query: calibration gives no positive threshold ({theta})")
        self._call("set_params", {"spike_threshold": theta})
        return theta

    def places(self) -> np.ndarray:
        if self._order is None:
            if self.remote:
                import ray

                parts = ray.get([w.places.remote() for w in self.workers])
            else:
                parts = [w.places() for w in self.workers]
            self._order = np.concatenate(parts)
            self._identity = bool(np.array_equal(self._order, np.arange(len(self._order))))
        return self._order

    def window(self, imgs, lo: int, hi: int, removal: bool = True,
               readout: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores of places lo..hi-1 only (ascending ids, scores with one column per id): the localised search."""
        imgs = np.asarray(imgs, dtype=np.float32)
        if self.remote:
            import ray

            parts = ray.get([w.window.remote(imgs, lo, hi, removal, readout) for w in self.workers])
        else:
            parts = [w.window(imgs, lo, hi, removal, readout) for w in self.workers]
        if len(parts) == 1:
            return parts[0]
        ids = np.concatenate([p[0] for p in parts])
        o = np.argsort(ids, kind="stable")
        return ids[o], np.concatenate([p[1] for p in parts], axis=1)[:, o]

    def scores(self, imgs, removal: bool = True, readout: str | None = None, coarse: bool = False) -> np.ndarray:
        """(n_images, n_places) scores in global place order (readout: module default, max, mean).

        `coarse` asks for the (experimental) coarse-to-fine search of large stacks (see `Stacked`).
        """
        imgs = np.asarray(imgs, dtype=np.float32)
        if self.remote:
            import ray

            parts = ray.get([w.scores.remote(imgs, removal, readout, coarse) for w in self.workers])
        else:
            parts = [w.scores(imgs, removal, readout, coarse) for w in self.workers]
        return self._ordered(np.concatenate(parts, axis=1))

    def _ordered(self, s: np.ndarray) -> np.ndarray:
        order = self.places()
        if self._identity:
            return s
        out = np.empty_like(s)
        out[:, order] = s
        return out

    def top(self, imgs, k: int = 1, removal: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The k best places per image and their scores, best first."""
        return topk(self.scores(imgs, removal), k)

    def requeried(self, query: str, calibration, calibration_places, **changes) -> Ensemble:
        """The same trained modules with another query mode (and other parameters, e.g.
        `spike_steps`), hyperactivity cut (and spiking threshold, unless given) recalibrated."""
        ens = Ensemble.of([replace(m, params=replace(m.params, query=query, **changes)) for m in self.modules()])
        ens.calibrate(calibration, calibration_places)
        return ens

    @classmethod
    def of(cls, modules: list[Module]) -> Ensemble:
        """An in-process ensemble of already trained modules."""
        w = _Worker()
        # in route order (e.g. modules gathered from Ray workers come interleaved): the
        # localised search needs each worker's places ascending
        w.modules = sorted(modules, key=lambda m: int(m.places[0]) if len(m.places) else -1)
        return cls([w], remote=False)

    def modules(self) -> list[Module]:
        if self.remote:
            import ray

            return [m for part in ray.get([w.dump.remote() for w in self.workers]) for m in part]
        return [m for w in self.workers for m in w.modules]

    def close(self) -> None:
        if self.remote:
            import ray

            for w in self.workers:
                ray.kill(w)
        self.workers = []


def sad_scores(reference, query, shift_px: int = 0) -> np.ndarray:
    """Sum of absolute differences baseline, negated so that higher is better.

    With `shift_px`, each reference also counts shifted by that many pixels up, down, left
    and right, and its best (least different) view is the score: SAD with a shift search.
    """
    if shift_px:
        views = jitter(np.asarray(reference), shift_px)
        n = len(reference)
        return np.max([sad_scores(views[v * n:(v + 1) * n], query) for v in range(len(views) // n)], axis=0)
    r = reference.reshape(len(reference), -1).astype(np.float32)
    q = query.reshape(len(query), -1).astype(np.float32)
    out = np.empty((len(q), len(r)), np.float32)
    for a in range(0, len(q), 64):
        out[a:a + 64] = -np.abs(q[a:a + 64, None, :] - r[None]).sum(axis=2)
    return out


def sequence_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """Sum each score with the k-1 previous queries' scores along the route diagonal."""
    z = (scores - scores.mean(axis=1, keepdims=True)) / np.maximum(scores.std(axis=1, keepdims=True), 1e-9)
    if k <= 1:
        return z
    out, n = z.copy(), np.ones_like(z)
    for j in range(1, k):
        out[j:, j:] += z[:-j, :-j]
        n[j:, j:] += 1
    return out / n


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of each row's k largest scores, best first (argpartition: O(n) per row)."""
    k = max(1, min(k, scores.shape[1]))
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    val = np.take_along_axis(scores, idx, axis=1)
    o = np.argsort(-val, axis=1, kind="stable")
    return np.take_along_axis(idx, o, axis=1), np.take_along_axis(val, o, axis=1)


def confidence(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best place and a confidence in [0, 1]: the margin of the best over the runner-up."""
    idx, val = topk(scores, 2)
    if val.shape[1] < 2:
        val = np.concatenate([val, val], axis=1)
    span = np.maximum(val[:, 0] - scores.min(axis=1), 1e-9)
    return idx[:, 0], (val[:, 0] - val[:, 1]) / span


def metrics(scores: np.ndarray, truth: np.ndarray, tolerance: int = 0) -> dict:
    """Recall@1/@5, PR AUC and recall at 100% precision (thresholding the confidence)."""
    truth = np.asarray(truth)
    rank = np.argsort(-scores, axis=1, kind="stable")
    hit = np.abs(rank - truth[:, None]) <= tolerance
    best, conf = confidence(scores)
    pr = precision_recall(np.abs(best - truth) <= tolerance, conf)
    return {**pr, "recall@1": float(hit[:, :1].any(1).mean()), "recall@5": float(hit[:, :5].any(1).mean())}


def precision_recall(correct: np.ndarray, conf: np.ndarray) -> dict:
    """Precision-recall of best matches accepted in order of confidence: AUC, recall at 100% precision."""
    order = np.argsort(-conf, kind="stable")
    tp = np.cumsum(correct[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(len(correct), 1)
    full = np.flatnonzero(precision >= 1.0 - 1e-12)
    auc = float(np.trapezoid(precision, recall)) if len(recall) > 1 else float(precision.mean())
    return {"recall@1": float(np.mean(correct)) if len(correct) else 0.0, "pr_auc": auc,
            "recall@100%precision": float(recall[full[-1]]) if len(full) else 0.0,
            "precision": precision, "recall": recall}
