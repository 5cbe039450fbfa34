"""The ensemble: region-specific modules trained independently, queried together.

Places are split into consecutive regions of `places_per_module`; each module learns its
region, is calibrated on its region's calibration frames (hyperactive-neuron cut), and at
query time reports a score per place; the ensemble concatenates them and the best-scoring
place wins. `workers=0` runs in-process; `workers>=1` spreads the modules over that many
Ray actors (training in parallel, queries fanned out and gathered). Also: the SAD baseline,
sequence matching and the Recall@N / precision-recall metrics.
"""

from __future__ import annotations

import numpy as np

from operators.control.place.network import Module, ModuleParams


def _fit_region(places, ref, cal, cal_local, params, seed, calibrate=True) -> Module:
    m = Module.fit(places, ref, params, seed)
    if calibrate and len(cal):
        m.calibrate(cal, cal_local)
    return m


class _Worker:
    """Holds some modules; a Ray actor when the ensemble is distributed."""

    def __init__(self):
        self.modules: list[Module] = []

    def fit(self, jobs) -> int:
        for job in jobs:
            self.modules.append(_fit_region(*job))
        return len(self.modules)

    def scores(self, imgs, removal: bool = True, readout: str | None = None) -> np.ndarray:
        out = []
        for m in self.modules:
            out.append(m.scores(m.counts(imgs), None if removal else 10**9, readout))
        return np.concatenate(out, axis=1) if out else np.zeros((len(imgs), 0))

    def places(self) -> np.ndarray:
        return np.concatenate([m.places for m in self.modules]) if self.modules else np.zeros(0, int)

    def dump(self) -> list[Module]:
        return self.modules


class Ensemble:
    """`Ensemble.fit(data, places_per_module, params, workers)`, then `scores(imgs)`."""

    def __init__(self, workers: list, remote: bool):
        self.workers = workers
        self.remote = remote
        self._order = None

    @classmethod
    def fit(cls, reference, calibration=None, calibration_places=None, places_per_module: int = 25,
            params: ModuleParams | None = None, workers: int = 0, seed: int = 0, progress=None) -> Ensemble:
        n = len(reference)
        cal_places = np.asarray(calibration_places if calibration_places is not None else np.arange(0))
        jobs = []
        for k, a in enumerate(range(0, n, places_per_module)):
            places = np.arange(a, min(n, a + places_per_module))
            sel = (cal_places >= a) & (cal_places < places[-1] + 1)
            cal = calibration[sel] if calibration is not None else np.zeros((0,) + reference.shape[1:])
            jobs.append((places, reference[places], cal, cal_places[sel] - a, params, seed + k))
        if workers <= 0:
            w = _Worker()
            for job in jobs:
                w.fit([job])
                if progress:
                    progress()
            return cls([w], remote=False)
        import ray

        actor = ray.remote(num_cpus=1)(_Worker)
        ws = [actor.remote() for _ in range(workers)]
        ray.get([w.fit.remote(jobs[i::workers]) for i, w in enumerate(ws)])
        return cls(ws, remote=True)

    def places(self) -> np.ndarray:
        if self._order is None:
            if self.remote:
                import ray

                parts = ray.get([w.places.remote() for w in self.workers])
            else:
                parts = [w.places() for w in self.workers]
            self._order = np.concatenate(parts)
        return self._order

    def scores(self, imgs, removal: bool = True, readout: str | None = None) -> np.ndarray:
        """(n_images, n_places) scores in global place order (readout: module default, max, mean)."""
        imgs = np.asarray(imgs, dtype=np.float32)
        if self.remote:
            import ray

            parts = ray.get([w.scores.remote(imgs, removal, readout) for w in self.workers])
        else:
            parts = [w.scores(imgs, removal, readout) for w in self.workers]
        s = np.concatenate(parts, axis=1)
        out = np.zeros_like(s)
        out[:, self.places()] = s
        return out

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


def sad_scores(reference, query) -> np.ndarray:
    """Sum of absolute differences baseline, negated so that higher is better."""
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


def confidence(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best place and a confidence in [0, 1]: the margin of the best over the runner-up."""
    best = scores.argmax(axis=1)
    top2 = np.sort(scores, axis=1)[:, -2:] if scores.shape[1] > 1 else np.concatenate([scores, scores], 1)
    lo = scores.min(axis=1)
    span = np.maximum(top2[:, 1] - lo, 1e-9)
    return best, (top2[:, 1] - top2[:, 0]) / span


def metrics(scores: np.ndarray, truth: np.ndarray, tolerance: int = 0) -> dict:
    """Recall@1/@5, PR AUC and recall at 100% precision (thresholding the confidence)."""
    truth = np.asarray(truth)
    rank = np.argsort(-scores, axis=1, kind="stable")
    hit = np.abs(rank - truth[:, None]) <= tolerance
    best, conf = confidence(scores)
    correct = np.abs(best - truth) <= tolerance
    order = np.argsort(-conf, kind="stable")
    tp = np.cumsum(correct[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(len(truth), 1)
    full = np.flatnonzero(precision >= 1.0 - 1e-12)
    auc = float(np.trapezoid(precision, recall)) if len(recall) > 1 else float(precision.mean())
    return {"recall@1": float(hit[:, :1].any(1).mean()), "recall@5": float(hit[:, :5].any(1).mean()),
            "pr_auc": auc, "recall@100%precision": float(recall[full[-1]]) if len(full) else 0.0,
            "precision": precision, "recall": recall}
